"""`facemtl analyze` on Apache Beam: the same JSON lines, from many workers.

Files are matched and spread over the workers, decoded (a video into its
sampled frames) in their own step, then answered by `RunInference` with a
`FaceAnalyzerHandler`: one `FaceAnalyzer` per worker process, shared by its
threads, faces of several photos in one forward pass. Records are written by
`WriteShards` (sorted, deterministic); unreadable files go to a dead-letter
file with their reason.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from facemtl.errors import FacemtlError
from facemtl.faces.detect import DEFAULT_DETECTOR
from facemtl.inference import FaceAnalyzer, photo_record
from facemtl.media import is_video, video_frames
from facemtl.pipelines.io import (
    DEAD_LETTER,
    MatchFiles,
    WriteShards,
    local_copy,
    read_bytes,
    read_photo,
    remove_other_shards,
    single_shard,
)
from facemtl.pipelines.runner import counter, pipeline_options, run_pipeline
from facemtl.recognition.gallery import Gallery


class _Decode(beam.DoFn):
    """`(path, root)` -> `((path, frame), image)` for a photo, or for each sampled frame of a video."""

    def __init__(self, max_side, every, max_frames):
        self.max_side, self.every, self.max_frames = max_side, every, max_frames

    def process(self, element):
        path = local = element[0]
        try:
            if is_video(path):
                with local_copy(path) as local:
                    for frame, image in video_frames(local, self.every, self.max_side, self.max_frames):
                        yield (path, frame), image
            else:
                yield (path, None), read_photo(path, self.max_side)
        except FacemtlError as exc:  # the file is bad: a dead letter, never retried (a video's earlier frames stay)
            counter("unreadable").inc()
            message = str(exc).replace(local, path)  # a remote video is read from a local copy
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, "error": message})


class FaceAnalyzerHandler(ModelHandler):
    """Beam's `ModelHandler` for `FaceAnalyzer`: decoded photos in, their faces out.

    Args:
        analyzer: `FaceAnalyzer` keyword arguments (model, detector,
            fallback, min_score, min_face_size, max_side, threshold...).
        gallery, store: name the faces from this gallery (opened by each worker).
        batch_photos: most photos per forward pass.
        share_across_processes: one model per machine instead of per worker
            process (Beam's `large_model`): less memory, but every batch is
            sent to the process that holds it.

    Example:
        >>> handler = FaceAnalyzerHandler({"saved_model_dir": None})
        >>> photos | RunInference(handler)  # PCollection of uint8 [h, w, 3] arrays
    """

    def __init__(self, analyzer, gallery=None, store=None, batch_photos=16, share_across_processes=False):
        super().__init__(min_batch_size=1, max_batch_size=batch_photos, large_model=share_across_processes)
        self.analyzer = dict(analyzer)
        self.gallery, self.store = gallery, store

    def load_model(self):
        gallery = None
        if self.gallery:
            gallery = Gallery.open(self.gallery, self.store)
        return FaceAnalyzer(**self.analyzer, gallery=gallery)

    def run_inference(self, batch, model, inference_args=None):
        """Faces per photo; a photo whose analysis raises gets `{"error": ...}` (the others keep theirs)."""
        batch = list(batch)
        try:
            answers = model.analyze_images(batch)
        except Exception:  # find the photo at fault: each alone
            answers = []
            for image in batch:
                try:
                    answers.extend(model.analyze_images([image]))
                except Exception as exc:
                    answers.append({"error": f"analysis failed ({type(exc).__name__}: {exc})"})
        return [PredictionResult(image, faces) for image, faces in zip(batch, answers)]

    def get_num_bytes(self, batch):
        # Beam's default pickles the whole batch to measure it.
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self):
        return "facemtl_analyze"


class _Records(beam.DoFn):
    def __init__(self, embedding):
        self.embedding = embedding

    def process(self, element):
        (path, frame), result = element
        faces = result.inference
        if isinstance(faces, dict):
            counter("unreadable").inc()
            where = f" (frame {frame})" if frame is not None else ""
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, **({"frame": frame} if frame is not None
                                                                            else {}),
                                                         "error": f"{path}{where}: {faces['error']}"})
            return
        counter("frames" if frame is not None else "photos").inc()
        counter("faces").inc(len(faces))
        yield photo_record(path, frame, result.example, faces, self.embedding)


class AnalyzePhotos(beam.PTransform):
    """Command-line inputs -> `{"records": ..., "dead_letter": ...}`, as `facemtl analyze` answers them.

    Args:
        paths: files, folders (walked recursively) and globs, local or on any
            filesystem Beam reads (`gs://bucket/photos/**`).
        model: a SavedModel folder the workers can read (None: the release
            model shipped with facemtl).
        detector, fallback, min_score, min_face_size, max_side, threshold,
        every, max_frames, batch_photos, embedding, gallery, store: as in
            `facemtl analyze`.
        share_across_processes: see `FaceAnalyzerHandler`.
    """

    def __init__(self, paths, model=None, *, detector=DEFAULT_DETECTOR, fallback=None, min_score=None,
                 min_face_size=20, max_side=2048, every=10, max_frames=None, batch_photos=16, embedding=False,
                 gallery=None, store=None, threshold=None, share_across_processes=False):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be a positive number of frames. Received: every={every}")
        if batch_photos < 1:
            raise ValueError(f"batch_photos must be positive. Received: batch_photos={batch_photos}")
        self.paths = list(paths)
        self.decode = _Decode(max_side, every, max_frames)
        self.handler = FaceAnalyzerHandler(
            {"saved_model_dir": model, "detector": detector, "fallback": fallback, "min_score": min_score,
             "min_face_size": min_face_size, "max_side": max_side, "threshold": threshold},
            gallery=gallery, store=store, batch_photos=batch_photos, share_across_processes=share_across_processes)
        self.embedding = embedding

    def expand(self, pbegin):
        files = pbegin | "Match" >> MatchFiles(self.paths)
        decoded = files["files"] | "Decode" >> beam.ParDo(self.decode).with_outputs(DEAD_LETTER, main="images")
        answered = decoded.images | "Analyze" >> RunInference(KeyedModelHandler(self.handler))
        records = answered | "Records" >> beam.ParDo(_Records(self.embedding)).with_outputs(DEAD_LETTER,
                                                                                           main="records")
        dead = ((files[DEAD_LETTER], decoded[DEAD_LETTER], records[DEAD_LETTER])
                | "DeadLetters" >> beam.Flatten())
        return {"records": records.records, DEAD_LETTER: dead}


def dead_letter_prefix(output):
    return f"{output}-dead-letter"


def analyze_collection(paths, output, *, runner="beam", beam_args=(), num_shards=8, parquet=False, **kwargs):
    """Runs `AnalyzePhotos` and writes its records; returns the counters.

    Args:
        paths: see `AnalyzePhotos`.
        output: output prefix: records in `OUTPUT-SSSSS-of-NNNNN.jsonl` (and
            `.parquet` with `parquet`), unreadable files in
            `OUTPUT-dead-letter-00000-of-00001.jsonl`.
        runner, beam_args: see `facemtl.pipelines.runner.pipeline_options`.
        num_shards: output files (about one per 100,000 photos).
        **kwargs: `AnalyzePhotos`'s options.

    Returns:
        `{"photos", "frames", "faces", "unreadable", "ignored"}` counts.

    Example:
        >>> analyze_collection(["photos/"], "out/answers", beam_args=["--direct_num_workers=2"])
        {'photos': 200, 'frames': 0, 'faces': 212, 'unreadable': 1, 'ignored': 0}
    """
    pipeline = beam.Pipeline(options=pipeline_options(runner, beam_args))
    out = pipeline | "AnalyzePhotos" >> AnalyzePhotos(paths, **kwargs)
    out["records"] | "WriteRecords" >> WriteShards(output, num_shards, parquet)
    out[DEAD_LETTER] | "WriteDeadLetters" >> WriteShards(dead_letter_prefix(output), 1)
    counts = run_pipeline(pipeline)
    remove_other_shards(output, num_shards, parquet)
    # Beam's local runners count a failed bundle's attempt too; the dead-letter file is exact.
    counts["unreadable"] = len(read_bytes(single_shard(dead_letter_prefix(output))).splitlines())
    return {name: int(counts.get(name, 0)) for name in ("photos", "frames", "faces", "unreadable", "ignored")}
