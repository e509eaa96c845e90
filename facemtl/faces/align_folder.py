"""Alignment as a dataset preprocessing step: photos in, aligned face crops out.

Training crops made here go through the very detector and aligner that
`FaceAnalyzer` uses at serving time, so both look alike to the model. Crops are
cached: a photo whose crop already exists is not detected again.
"""

from __future__ import annotations

import dataclasses
import io
import os

from PIL import Image

from facemtl.errors import FacemtlError
from facemtl.files import write_bytes_atomically
from facemtl.images import load_image
from facemtl.media import Progress, expand_paths
from facemtl.preprocessing import Preprocessor


@dataclasses.dataclass
class AlignReport:
    """What `align_folder` did. Lists hold source paths."""

    aligned: int = 0
    cached: int = 0
    no_face: list = dataclasses.field(default_factory=list)
    several_faces: list = dataclasses.field(default_factory=list)
    unreadable: list = dataclasses.field(default_factory=list)

    def summary(self):
        return (f"{self.aligned} aligned, {self.cached} already cached, {len(self.no_face)} without a face, "
                f"{len(self.unreadable)} unreadable, {len(self.several_faces)} with several faces (largest kept)")


def largest(detections):
    """The detection with the largest box (the photo's subject in labelled datasets)."""
    return max(detections, key=lambda d: d.box[2] * d.box[3]) if detections else None


def main_face_crop(image, detector, size=(112, 112), face_scale=1.0, layout="arcface"):
    """The aligned crop of a photo's main (largest) face, and how many faces it has.

    The one rule for a training photo's crop: `align_folder` and the Beam
    pipeline (`facemtl.pipelines.align`) both call it.

    Returns:
        `(crop, faces)`: `crop` is `uint8 [h, w, 3]`, or None when `faces` is 0.
    """
    detections = detector.detect(image)
    main = largest(detections)
    if main is None:
        return None, 0
    return Preprocessor(*size, layout, face_scale=face_scale).align(image, main)[0], len(detections)


def encode_png(crop):
    """A crop as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()


def crop_name(rel):
    """The crop file of a photo at `rel` (a path relative to the source folder): same path, `.png`."""
    return os.path.splitext(rel)[0] + ".png"


def align_folder(src, dst, detector, size=(112, 112), face_scale=1.0, max_side=2048, progress=True,
                 layout="arcface"):
    """Detects and aligns the main face of every photo under `src` into `dst`, mirroring its folders.

    Args:
        src: folder of photos (walked recursively; sub-folders such as
            `<identity>/` are kept).
        dst: output folder; each crop is `<same relative path>.png`.
        detector: a detector from `facemtl.faces.detect.get_detector`.
        size: `(height, width)` of the crops.
        face_scale, layout: see `facemtl.faces.align.template`.
        max_side: photos are decoded at most this long.
        progress: show a progress bar on stderr.

    Returns:
        An `AlignReport`; nothing is silently dropped: photos without a face,
        with several faces, or unreadable are listed.

    Example:
        >>> report = align_folder("celeba/img_celeba", "cache/aligned", get_detector("mtcnn"))
        >>> print(report.summary())
    """
    report = AlignReport()
    files = expand_paths([src])
    bar = Progress(len(files), "align") if progress else None
    for path, error in files:
        rel = os.path.relpath(path, src)
        target = os.path.join(dst, crop_name(rel))
        try:
            if error:  # a path that vanished since the folder was listed
                report.unreadable.append(path)
                continue
            if os.path.isfile(target):
                report.cached += 1
                continue
            try:
                image = load_image(path, max_side=max_side)
            except FacemtlError:
                report.unreadable.append(path)
                continue
            crop, faces = main_face_crop(image, detector, size, face_scale, layout)
            if crop is None:
                report.no_face.append(path)
                continue
            if faces > 1:
                report.several_faces.append(path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # Written under a hidden temporary name (never read as a photo) and renamed into place: a crash never
            # leaves a half-written crop in the cache.
            write_bytes_atomically(target, encode_png(crop))
            report.aligned += 1
        finally:
            if bar:
                bar.update()
    if bar:
        bar.close()
    return report
