"""Runs an exported facemtl SavedModel on face crops."""

from __future__ import annotations

import numpy as np

from facemtl.export import read_metadata
from facemtl.images import load_image


class Predictor:
    """Loads a facemtl SavedModel and answers for face crops.

    Args:
        saved_model_dir: a version folder, e.g. `saved_models/quickstart/1`.
        batch_size: most crops per forward pass.

    Example:
        >>> predictor = Predictor("saved_models/quickstart/1")
        >>> predictor.predict(["face.png"])[0]["expression"]["label"]
        'happy'
    """

    def __init__(self, saved_model_dir, batch_size=64):
        import tensorflow as tf  # heavy; imported when a model is actually used

        self.metadata = read_metadata(saved_model_dir)
        self.path = saved_model_dir
        self.batch_size = batch_size
        self._tf = tf
        self._loaded = tf.saved_model.load(saved_model_dir)
        self._serve = self._loaded.signatures["serving_default"]
        self.expressions = self.metadata["expressions"]
        self.identities = self.metadata["identities"]

    def run(self, images):
        """Runs the serving signature on uint8 RGB arrays; returns numpy outputs per crop.

        Crops of the same size are batched together (a batch must share one
        shape); every crop goes through the graph's own resize.

        Args:
            images: list of `uint8 [h, w, 3]` arrays.

        Returns:
            A list (input order) of dicts of numpy values, keys as the signature's outputs.
        """
        results = [None] * len(images)
        groups = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = self._tf.constant(np.stack([images[i] for i in chunk]), dtype=self._tf.uint8)
                out = {k: v.numpy() for k, v in self._serve(images=batch).items()}
                for j, i in enumerate(chunk):
                    results[i] = {k: v[j] for k, v in out.items()}
        return results

    def describe(self, raw):
        """Turns one crop's raw outputs into the JSON-able answer."""
        probs = raw["expression_probs"]
        ident = raw["identity_probs"]
        top = int(np.argmax(ident))
        return {
            "expression": {
                "label": raw["expression"].decode(),
                "probabilities": {name: round(float(p), 6) for name, p in zip(self.expressions, probs)},
            },
            "identity": {"label": raw["identity"].decode(), "probability": round(float(ident[top]), 6)},
            "embedding_size": int(raw["embedding"].shape[-1]),
            "embedding": raw["embedding"].astype(float).round(6).tolist(),
        }

    def predict(self, sources):
        """Answers for face crops given as paths, bytes or arrays (any size, gray/RGB/RGBA).

        Returns:
            One dict per source: expression label and probabilities, identity
            label and probability, embedding and its size.
        """
        images = [load_image(s) for s in sources]
        return [self.describe(r) for r in self.run(images)]
