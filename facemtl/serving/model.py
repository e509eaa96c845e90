"""One served export: its SavedModel's signatures behind a dynamic batcher, and its LiteRT copy for photos."""

from __future__ import annotations

import os

import numpy as np

from facemtl.images import load_image
from facemtl.inference import Predictor
from facemtl.installed import resolve_model
from facemtl.serving.batching import DynamicBatcher
from facemtl.serving.rest import RequestError

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
PHOTO_SIGNATURE = "analyze_photo"
# Signatures whose input is encoded images (`tf.string`).
ENCODED_SIGNATURES = (BYTES_SIGNATURE, PHOTO_SIGNATURE)


class ServedModel:
    """A loaded facemtl export whose calls from concurrent requests are batched together.

    Args:
        path: a version folder, a model's base folder (its newest version is
            served) or `None` for the release model.
        name: the name in `/v1/models/<name>` (default: the export's name).
        max_batch_size: most crops per forward pass.
        max_wait_ms: how long a request waits for others to share its pass
            (0: batch-of-one serving).

    Example:
        >>> served = ServedModel(None)
        >>> served.predict(None, crops).result()["expression"]
    """

    def __init__(self, path=None, *, name=None, max_batch_size=32, max_wait_ms=0.0):
        import tensorflow as tf

        self._tf = tf
        self.predictor = Predictor(resolve_model(path), batch_size=max_batch_size)
        self.path = self.predictor.path
        self.metadata = self.predictor.metadata
        self.name = name or self.metadata.get("name") or os.path.basename(os.path.dirname(self.path))
        self.version = int(self.metadata.get("version") or os.path.basename(self.path))
        self.signatures = dict(self.predictor.saved_model.signatures)
        self.batcher = DynamicBatcher(self._call, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
        if self.predictor.engine == "savedmodel":  # no LiteRT copy: FaceAnalyzer's crops share `:predict`'s batcher
            self.predictor.forward = lambda batch: self.batcher.submit((DEFAULT_SIGNATURE, batch.shape[1:]),
                                                                       batch).result()
        # With one, `/v1/analyze` answers as `facemtl analyze` does, on the copy (each analysis thread its own
        # interpreter: faster than the SavedModel's batches on a CPU); `:predict` stays TF Serving's SavedModel.

    def _call(self, key, inputs):
        signature = self.signatures[key[0]]
        if key[0] in ENCODED_SIGNATURES:
            tensor = self._tf.constant(list(inputs), dtype=self._tf.string)
        else:
            tensor = self._tf.constant(inputs, dtype=self._tf.uint8)
        try:
            out = signature(images=tensor)
        except self._tf.errors.InvalidArgumentError as exc:  # e.g. a crop that decode_image cannot read
            raise RequestError(f"The model could not read the input: {exc.message.splitlines()[0]}") from None
        return {k: v.numpy() for k, v in out.items()}

    def predict(self, signature, images):
        """Queues images for a signature; returns a future of the outputs.

        Args:
            signature: `serving_default`, `serving_bytes`, `analyze_photo`
                (encoded whole photos) or `None` (chosen by the input kind:
                encoded crops go to `serving_bytes`).
            images: a list of encoded crops or photos (`bytes`) or `uint8 [n, h, w, 3]` crops.

        Raises:
            RequestError: an unknown signature, or inputs of the wrong kind for it.
        """
        encoded = isinstance(images, list)
        if signature is not None and signature not in self.signatures:
            raise RequestError(f"Serving signature name: {signature!r} not found in signature def "
                               f"(known: {sorted(self.signatures)})")
        if signature == PHOTO_SIGNATURE:
            if not encoded:
                raise RequestError("analyze_photo takes encoded photos: send each as {\"b64\": \"...\"}")
            return self.batcher.submit((PHOTO_SIGNATURE,), images)
        if encoded:
            # serving_default and serving_bytes give the same outputs; {"b64"} crops need the decoding one.
            if BYTES_SIGNATURE in self.signatures:
                return self.batcher.submit((BYTES_SIGNATURE,), images)
            # an export from before serving_bytes: decoded here
            arrays = [load_image(data) for data in images]
            if len({a.shape for a in arrays}) > 1:
                raise RequestError("This export has no serving_bytes signature: its encoded crops must share one size")
            images = np.stack(arrays)
        elif signature == BYTES_SIGNATURE:
            raise RequestError("serving_bytes takes encoded images: send each as {\"b64\": \"...\"}")
        return self.batcher.submit((DEFAULT_SIGNATURE, images.shape[1:]), images)

    def close(self):
        """Answers what is queued, then stops the batcher."""
        self.batcher.close()
