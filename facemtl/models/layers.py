"""Small custom layers used inside the multi-task graph."""

from __future__ import annotations

import keras
from keras import ops

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="facemtl")
class ImageNormalization(keras.layers.Layer):
    """Maps pixel values in [0, 255] to what the backbone was trained on.

    Keeping this inside the model means the SavedModel applies exactly the
    training-time scaling to the uint8 images it is served.

    Args:
        mode: `"tf"` scales to [-1, 1]; `"caffe"` converts RGB to BGR and
            subtracts the ImageNet mean (what `keras.applications` ResNet50
            ImageNet weights expect).
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe"):
            raise ValueError(f"mode must be 'tf' or 'caffe'. Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if x.shape[-1] == 1:
            return x - sum(_CAFFE_MEAN_BGR) / 3
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
