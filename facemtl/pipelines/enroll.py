"""Gallery enrolment of a labelled folder tree (`<person>/<photos>`) on Apache Beam.

Photos are spread over the workers and embedded there (`Embedder`: the
largest face of each, one model per worker); a person's embeddings are then
grouped and written by `Gallery.enroll_new`, people in batches of 64 per
commit. The gallery must be reachable from every worker: a Milvus server
(`milvus://`), or the embedded store in a folder they share.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from facemtl.errors import FacemtlError
from facemtl.faces.detect import DEFAULT_DETECTOR
from facemtl.pipelines.io import DEAD_LETTER, MatchFiles, WriteShards, read_photo, relative_to
from facemtl.pipelines.runner import counter, pipeline_options, run_pipeline
from facemtl.recognition.embed import Embedder
from facemtl.recognition.enrolment import person_of, unused_photo
from facemtl.recognition.gallery import Gallery

PEOPLE_PER_COMMIT = 64


class _Decode(beam.DoFn):
    def __init__(self, max_side):
        self.max_side = max_side

    def process(self, element):
        path, root = element
        try:
            yield (person_of(relative_to(path, root)), path), read_photo(path, self.max_side)
        except FacemtlError as exc:
            counter("unreadable").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, "status": "unreadable", "error": str(exc)})


class EmbedderHandler(ModelHandler):
    """Beam's `ModelHandler` for `Embedder`: decoded photos in, the embedding of each one's largest face out."""

    def __init__(self, model=None, detector=DEFAULT_DETECTOR, max_side=2048, batch_photos=16):
        super().__init__(min_batch_size=1, max_batch_size=batch_photos)
        self.model, self.detector, self.max_side = model, detector, max_side

    def load_model(self):
        return Embedder(self.model, detector=self.detector, max_side=self.max_side)

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(None, face) for face in model.embed(list(batch))]

    def get_num_bytes(self, batch):
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self):
        return "facemtl_enroll"


@beam.typehints.with_output_types(tuple[str, tuple[str, object]])
class _Faces(beam.DoFn):
    def process(self, element):
        (person, path), result = element
        face = result.inference
        if face.embedding is None:
            line = unused_photo(face, path)
            counter("no_face" if line["status"] == "no face" else "unreadable").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, line)
            return
        if face.faces > 1:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": path, "status": "several faces"})
        yield person, (path, face.embedding)


class _Enroll(beam.DoFn):
    """Batches of `(person, [(path, embedding)])` -> one `enroll_new` commit each."""

    def __init__(self, gallery, store):
        self.gallery_name, self.store = gallery, store

    def setup(self):
        self.gallery = Gallery.open(self.gallery_name, self.store)

    def process(self, people):
        batch = []
        for person, faces in people:
            faces = sorted(faces, key=lambda f: f[0])  # the same order on every run
            batch.append((person, [f[1] for f in faces], [f[0] for f in faces]))
        for (_, _, sources), (_, added, _) in zip(batch, self.gallery.enroll_new(batch)):
            counter("people").inc()
            counter("enrolled").inc(added)
            counter("already").inc(len(sources) - added)
        yield len(batch)


def enroll_collection(root, gallery, report, *, store=None, model=None, detector=DEFAULT_DETECTOR, max_side=2048,
                      batch_photos=16, runner="beam", beam_args=()):
    """Enrols every `root/<person>/<photo>` into gallery `gallery` on Beam.

    The gallery must exist (made by `Gallery.open(..., create=True)` with the
    model's info: `facemtl gallery enroll-folders` does it before the run).

    Args:
        root: the labelled folder tree, local or on a Beam filesystem.
        gallery, store: the gallery's name and store URI (reachable from the
            workers: `milvus://HOST:19530` on a cluster).
        report: the report's prefix (somewhere the workers can write): the
            photos not used, and those with several faces, are listed in
            `REPORT-00000-of-00001.jsonl`.
        model, detector, max_side, batch_photos: the embedding model and its
            face finding, as in `facemtl gallery enroll`.
        runner, beam_args: see `facemtl.pipelines.runner.pipeline_options`.

    Returns:
        Counts of `people`, `enrolled` (photos added), `already` (photos the
        gallery had from an earlier run), `no_face`, `unreadable`.
    """
    root = root if root.endswith("/") else root + "/"
    pipeline = beam.Pipeline(options=pipeline_options(runner, beam_args))
    files = pipeline | "Match" >> MatchFiles([root])
    decoded = files["files"] | "Decode" >> beam.ParDo(_Decode(max_side)).with_outputs(DEAD_LETTER, main="images")
    embedded = decoded.images | "Embed" >> RunInference(KeyedModelHandler(
        EmbedderHandler(model, detector, max_side, batch_photos)))
    faces = embedded | "Faces" >> beam.ParDo(_Faces()).with_outputs(DEAD_LETTER, main="faces")
    (faces.faces | "ByPerson" >> beam.GroupByKey()
     | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=PEOPLE_PER_COMMIT)
     | "Enroll" >> beam.ParDo(_Enroll(gallery, store)))
    ((files[DEAD_LETTER], decoded[DEAD_LETTER], faces[DEAD_LETTER]) | "Report" >> beam.Flatten()
     | "WriteReport" >> WriteShards(report, 1))
    counts = run_pipeline(pipeline)
    return {name: int(counts.get(name, 0)) for name in ("people", "enrolled", "already", "no_face", "unreadable")}
