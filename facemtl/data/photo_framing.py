"""Frames pre-cropped faces (FER2013's 48x48 crops) the way served photos are framed.

`facemtl analyze`, `analyze_photo` and `/v1/analyze` find a face with BlazeFace
and warp it onto the model's crop layout (dlib's chip). A dataset of loose
crops never went through that step, so a model trained on them sees faces
framed one way in training and another way in serving. `frame_like_photos`
runs the serving step on each crop: the crop is upscaled to a small photo
(`upscale` px, by the one resize of `facemtl.preprocessing`), the serving
detector finds the face, and `facemtl.faces.align.align_face` warps it.

For the few crops where no face is found, one fixed mapping is used instead:
the mean of the similarity transforms fitted on the crops where a face was
found (FER2013's crops are roughly registered, so one mapping fits them all
well). How many crops took it is counted and reported.

Example:
    >>> framed = frame_like_photos(np.zeros((2, 48, 48, 3), np.uint8), size=150)
    >>> framed.crops.shape, framed.fallback
    ((2, 150, 150, 3), 2)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from facemtl.faces.detect import get_detector
from facemtl.faces.detection import DEFAULT_DETECTOR
from facemtl.files import content_key, replaced_atomically
from facemtl.media import Progress
from facemtl.preprocessing import CROP_UPSCALE as UPSCALE  # the photo side a crop is upscaled to before detection
from facemtl.preprocessing import Preprocessor

# Bumped whenever framing changes, so older caches are not reused.
FRAMING_FORMAT = 1


@dataclasses.dataclass
class FramedFaces:
    """Crops framed like served photos.

    Attributes:
        crops: `uint8 [n, size, size, 3]`.
        found: `bool [n]`: the detector found the face (else the fixed mapping was used).
        matrix: the fixed `2x3` mapping (upscaled photo -> crop) used where no face was found.
    """

    crops: np.ndarray
    found: np.ndarray
    matrix: np.ndarray

    @property
    def fallback(self):
        """How many crops took the fixed mapping."""
        return int((~self.found).sum())

    def summary(self):
        n = len(self.found)
        return (f"{n - self.fallback} of {n} faces found by the detector, "
                f"{self.fallback} ({self.fallback / max(n, 1):.1%}) framed by the fixed mapping")


def frame_like_photos(images, *, size=150, layout="dlib", detector=DEFAULT_DETECTOR, upscale=UPSCALE, face_scale=1.0,
                      progress=None):
    """Detects and aligns each face crop like a served photo.

    Args:
        images: `uint8 [n, h, w, 3]` face crops (gray ones copied to RGB).
        size: side of the aligned crops (the model's input size).
        layout: crop layout of `facemtl.faces.align` (the model's `crop.layout`).
        detector: a detector name of `facemtl.faces.detect.get_detector`, or an
            object with `detect(image)` (what serving uses: BlazeFace).
        upscale: side of the photo each crop becomes before detection.
        face_scale: see `facemtl.faces.align.template`.
        progress: optional callable taking the number of faces done.

    Returns:
        A `FramedFaces`.

    Raises:
        ValueError: `images` is not `[n, h, w, 3]`.
    """
    import cv2

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [n, h, w, 3]. Received: shape={images.shape}")
    p = Preprocessor(size, size, layout, detector if isinstance(detector, str) else DEFAULT_DETECTOR, face_scale,
                     crop_upscale=upscale)
    if isinstance(detector, str):
        detector = get_detector(detector, min_face_size=p.crop_min_face)
    n = len(images)
    crops = np.zeros((n, size, size, 3), np.uint8)
    found = np.zeros(n, bool)
    matrices = []
    for i in range(n):
        framed = p.frame(p.crop_photo(images[i], always=True), detector)
        if framed is not None:
            crops[i], matrix = framed
            found[i] = True
            matrices.append(matrix)
        if progress:
            progress(1)
    # The identity mapping of the whole photo onto the crop when no face was found anywhere.
    matrix = (np.mean(matrices, axis=0) if matrices
              else np.array([[size / upscale, 0, 0], [0, size / upscale, 0]], np.float64))
    for i in np.flatnonzero(~found):
        crops[i] = cv2.warpAffine(p.crop_photo(images[i], always=True), matrix, (size, size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT)
    return FramedFaces(crops, found, matrix)


def cached_framing(images, cache_dir, name, log=print, **settings):
    """`frame_like_photos`, stored in `cache_dir` keyed by the pixels and settings, and reused.

    The file is written under a temporary name and renamed when complete, so an
    interrupted run never leaves a half-written cache.
    """
    settings = {"size": 150, "layout": "dlib", "detector": DEFAULT_DETECTOR, "upscale": UPSCALE, "face_scale": 1.0,
                **settings}
    path = os.path.join(cache_dir, f"{name}-framed-{settings['detector']}-{settings['layout']}-{settings['size']}px-"
                                   f"{content_key([FRAMING_FORMAT, sorted(settings.items())], images)}.npz")
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as z:
            framed = FramedFaces(z["crops"], z["found"], z["matrix"])
        log(f"{name}: framed like photos (cached {path}): {framed.summary()}")
        return framed
    bar = Progress(len(images), f"{name}: framing like photos")
    framed = frame_like_photos(images, progress=bar.update, **settings)
    bar.close()
    os.makedirs(cache_dir, exist_ok=True)
    with replaced_atomically(path) as tmp:
        np.savez(tmp, crops=framed.crops, found=framed.found, matrix=framed.matrix)
    log(f"{name}: {framed.summary()}")
    return framed
