"""Embeddings of photos (detected and aligned) or face crops, and of labelled face datasets."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from facemtl.config import SourceConfig
from facemtl.data.materialize import materialize
from facemtl.errors import FacemtlError
from facemtl.faces.detect import DEFAULT_DETECTOR
from facemtl.images import load_image
from facemtl.inference import FaceAnalyzer, Predictor

NO_FACE = "no face found"


@dataclasses.dataclass
class FaceEmbedding:
    """The embedding of the face used from one photo, or why there is none."""

    source: str
    embedding: np.ndarray | None
    faces: int = 1
    error: str | None = None


class Embedder:
    """Turns photos into one embedding each, through the exported model.

    Args:
        model_dir: a facemtl SavedModel version folder.
        crops: the inputs are already aligned face crops (skip detection).
        detector: `"blazeface"` (default), `"mtcnn"` or `"haar"` for photos.

    Example:
        >>> embedder = Embedder("saved_models/celeba_arcface/1")
        >>> [f.embedding.shape for f in embedder.embed(["ann.jpg"])]
        [(128,)]
    """

    def __init__(self, model_dir, *, crops=False, detector=DEFAULT_DETECTOR, **analyzer_kwargs):
        self.crops = crops
        if crops:
            self.analyzer = None
            self.predictor = Predictor(model_dir)
        else:
            self.analyzer = FaceAnalyzer(model_dir, detector=detector, **analyzer_kwargs)
            self.predictor = self.analyzer.predictor
        if "identity" not in self.predictor.metadata.get("tasks", ["identity"]):
            raise FacemtlError(f"{model_dir}: this model has no identity head, so no embedding")
        self.metadata = self.predictor.metadata

    def embed(self, sources):
        """One `FaceEmbedding` per source (path, bytes or array).

        A photo without a face gets `error`; with several faces, the largest is
        used and a warning says so (the face count is kept in `faces`).
        """
        results, crops, owners = [], [], []
        for source in sources:
            name = source if isinstance(source, str) else f"<{type(source).__name__}>"
            try:
                if self.crops:
                    crop, faces = load_image(source), 1
                else:
                    image = self.analyzer.load(source)
                    detections, photo_crops = self.analyzer.detect_and_align(image)
                    faces = len(detections)
                    if not faces:
                        results.append(FaceEmbedding(name, None, 0, NO_FACE))
                        continue
                    largest = int(np.argmax([d.box[2] * d.box[3] for d in detections]))
                    if faces > 1:
                        warnings.warn(f"{name}: {faces} faces found; using the largest", stacklevel=2)
                    crop = photo_crops[largest]
            except FacemtlError as exc:
                results.append(FaceEmbedding(name, None, 0, str(exc)))
                continue
            owners.append(len(results))
            results.append(FaceEmbedding(name, None, faces))
            crops.append(crop)
        for i, raw in zip(owners, self.predictor.run(crops) if crops else []):
            results[i].embedding = np.asarray(raw["embedding"], np.float32)
        return results


def embed_arrays(predictor, images):
    """Embeddings `[n, d]` of uint8 face crops (already at any size) through a `Predictor`."""
    raw = predictor.run(list(np.asarray(images, np.uint8)))
    return np.stack([r["embedding"] for r in raw]) if raw else np.zeros((0, 0), np.float32)


def load_labelled_faces(path, *, fmt="identity_folders", split=None, align=False, size=112,
                        cache_dir="data/cache", log=print, layout="arcface"):
    """Reads a labelled face dataset (any facemtl reader) into uint8 crops and person labels.

    Args:
        path: the dataset's root (e.g. one folder per person).
        fmt: a `data.sources[].format` with identities (`identity_folders`,
            `celeba`, `vggface2`).
        split: the split to read (e.g. `test`), where the format has splits.
        align: detect and align in-the-wild photos first (cached).
        layout: the crop template of the alignment (the model's `crop.layout`).
        size: crop side.
        cache_dir: where aligned crops and decoded arrays are cached.

    Returns:
        `(images [n, size, size, 3] uint8, labels [n] int, names)`.
    """
    from facemtl.data.catalog import read_source  # deferred: the dataset readers import TensorFlow

    # Aligned at the crop size itself: no second resize of the aligned crop.
    cfg = SourceConfig(format=fmt, path=path, align=align, **({"split": split} if split else {}))
    source = read_source(cfg, cache_dir=cache_dir, log=log, layout=layout, size=size)
    if "identity" not in source.tasks:
        raise FacemtlError(f"{path}: the {fmt} data has no identity labels")
    mat = materialize(source, size, cache_dir=cache_dir)
    return mat.images, np.asarray(mat.identity), list(mat.identity_names)
