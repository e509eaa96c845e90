"""`facemtl align` on Apache Beam: the aligned crops of a folder tree, written as `facemtl align` writes them.

Each photo's crop is `DST/<same relative path>.png` (made by
`facemtl.faces.align_folder.main_face_crop`, the one rule for a training
crop), written whole under a temporary name and renamed; a crop already there
is kept (a rerun or a retried bundle redoes nothing). Photos without a face,
with several faces (the largest is kept) and unreadable files are listed in
`DST-align-report-00000-of-00001.jsonl`, as `facemtl align` lists them.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from facemtl.errors import FacemtlError
from facemtl.faces.align_folder import crop_name, encode_png, main_face_crop
from facemtl.faces.detect import DEFAULT_DETECTOR, get_detector
from facemtl.pipelines.io import DEAD_LETTER, MatchFiles, WriteShards, join, read_photo, relative_to, write_atomically
from facemtl.pipelines.runner import counter, pipeline_options, run_pipeline


class _Align(beam.DoFn):
    """`(path, root)` -> the crop written; report lines (no face, several faces, unreadable) as dead letters."""

    def __init__(self, dst, detector, size, face_scale, max_side, layout):
        self.dst, self.detector_name = dst, detector
        self.size, self.face_scale, self.max_side, self.layout = size, face_scale, max_side, layout

    def setup(self):
        self.detector = get_detector(self.detector_name)

    def process(self, element):
        path, root = element
        target = join(self.dst, crop_name(relative_to(path, root)))
        if FileSystems.exists(target):
            counter("cached").inc()
            return
        try:
            image = read_photo(path, self.max_side)
        except FacemtlError as exc:
            counter("unreadable").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, "status": "unreadable", "error": str(exc)})
            return
        crop, faces = main_face_crop(image, self.detector, self.size, self.face_scale, self.layout)
        if crop is None:
            counter("no_face").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, "status": "no face"})
            return
        if faces > 1:
            counter("several_faces").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, "status": "several faces (largest kept)"})
        write_atomically(target, encode_png(crop))
        counter("aligned").inc()


def report_prefix(dst):
    """Where an align run's report goes: beside `dst`, never inside it (a recipe reads `dst`)."""
    return dst.rstrip("/") + "-align-report"


def align_collection(src, dst, *, detector=DEFAULT_DETECTOR, size=(112, 112), face_scale=1.0, max_side=2048,
                     layout="arcface", runner="beam", beam_args=()):
    """Aligns the main face of every photo under `src` into `dst` on Beam, as `facemtl align` does.

    Args:
        src: a folder (local or on a Beam filesystem) of photos, e.g.
            VGGFace2's `train/` (`<identity>/<photo>.jpg`).
        dst: the crops' folder; sub-folders are kept.
        detector, size, face_scale, max_side, layout: as in `align_folder`.
        runner, beam_args: see `facemtl.pipelines.runner.pipeline_options`.

    Returns:
        Counts: `aligned`, `cached`, `no_face`, `several_faces`, `unreadable`
        (the paths are in `report_prefix(dst)-00000-of-00001.jsonl`).

    Example:
        >>> align_collection("gs://bucket/vggface2/train/", "gs://bucket/vggface2-112/", runner="DataflowRunner",
        ...                  beam_args=["--project=p", "--region=europe-west4", "--temp_location=gs://bucket/tmp"])
    """
    src = src if src.endswith("/") else src + "/"
    pipeline = beam.Pipeline(options=pipeline_options(runner, beam_args))
    files = pipeline | "Match" >> MatchFiles([src])
    aligned = files["files"] | "Align" >> beam.ParDo(
        _Align(dst, detector, size, face_scale, max_side, layout)).with_outputs(DEAD_LETTER, main="done")
    report = (files[DEAD_LETTER], aligned[DEAD_LETTER]) | "Report" >> beam.Flatten()
    report | "WriteReport" >> WriteShards(report_prefix(dst), 1)
    counts = run_pipeline(pipeline)
    return {name: int(counts.get(name, 0)) for name in ("aligned", "cached", "no_face", "several_faces",
                                                        "unreadable", "ignored")}
