"""Small custom layers used inside the multi-task graph."""

from __future__ import annotations

import keras
from keras import ops

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# dlib's face ResNet (input_rgb_image_sized, read from its model file): (x - mean) / 256.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
MODES = ("tf", "caffe", "dlib")


@keras.saving.register_keras_serializable(package="facemtl")
class ImageNormalization(keras.layers.Layer):
    """Maps pixel values in [0, 255] to what the backbone was trained on.

    Keeping this inside the model means the SavedModel applies exactly the
    training-time scaling to the uint8 images it is served.

    Args:
        mode: `"tf"` scales to [-1, 1]; `"caffe"` converts RGB to BGR and
            subtracts the ImageNet mean (what `keras.applications` ResNet50
            ImageNet weights expect); `"dlib"` subtracts dlib's RGB mean and
            divides by 256 (dlib's face ResNet).
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "dlib":
            return (x - ops.convert_to_tensor(DLIB_MEAN_RGB, dtype=x.dtype)) / 256.0
        if x.shape[-1] == 1:
            return x - sum(_CAFFE_MEAN_BGR) / 3
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="facemtl")
class CosineClassifier(keras.layers.Layer):
    """Cosine similarity of each feature vector to one learned direction per class.

    The logits of margin-trained heads (ArcFace, CosFace): both the features
    and the class weights are L2-normalised, so training shapes the angles
    between embeddings, which is what open-set verification compares.

    Args:
        units: number of classes.

    Example:
        >>> layer = CosineClassifier(10)
        >>> layer(np.ones((2, 4))).shape
        (2, 10)
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        if units < 1:
            raise ValueError(f"units must be >= 1. Received: units={units}")
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")

    def call(self, inputs):
        x = ops.normalize(ops.cast(inputs, self.compute_dtype), axis=-1)
        w = ops.normalize(ops.cast(self.kernel, self.compute_dtype), axis=0)
        return ops.matmul(x, w)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="facemtl")
class FlipLeftRight(keras.layers.Layer):
    """Mirror images: `[batch, h, w, c]` flipped along the width.

    With `MeanOfHalves` after a branch fed the images and their mirrors in one
    batch, a model averages its answers for a face and its mirror image
    (test-time mirror averaging inside the exported graph).
    """

    def call(self, inputs):
        return ops.flip(inputs, axis=2)


@keras.saving.register_keras_serializable(package="facemtl")
class MeanOfHalves(keras.layers.Layer):
    """`[2 * batch, ...]` -> `[batch, ...]`: the mean of the first and second halves of the batch."""

    def call(self, inputs):
        n = ops.shape(inputs)[0] // 2
        return (inputs[:n] + inputs[n:]) / 2

    def compute_output_shape(self, input_shape):
        return (None if input_shape[0] is None else input_shape[0] // 2, *input_shape[1:])


@keras.saving.register_keras_serializable(package="facemtl")
class Mean(keras.layers.Layer):
    """The mean of same-shape tensors, as `keras.layers.Average` computes it.

    Average's add, run eagerly on a batch of 0 or 1 rows (a mirror gate's
    uncertain faces), takes the second tensor for a bias and fails.
    """

    def call(self, inputs):
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total / len(inputs)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


@keras.saving.register_keras_serializable(package="facemtl")
class UncertainRows(keras.layers.Layer):
    """`[batch, classes]` probabilities -> `int32 [k]`: the rows whose top probability is below `threshold`.

    With `TakeRows` and `MergeMirror`, a model runs its mirror pass only for the
    faces whose answer is uncertain (a data-dependent part of the batch).
    """

    def __init__(self, threshold, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def call(self, probs):
        import tensorflow as tf  # ops.nonzero unstacks tf.where's columns, which LiteRT cannot convert

        return tf.cast(tf.reshape(tf.where(ops.max(probs, axis=-1) < self.threshold), [-1]), tf.int32)

    def compute_output_shape(self, input_shape):
        return (None,)

    def compute_output_spec(self, probs):
        return keras.KerasTensor((None,), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="facemtl")
class TakeRows(keras.layers.Layer):
    """`([batch, ...], int32 [k])` -> `[max(k, 1), ...]`: the rows of a batch at the given indices.

    With no index it takes the batch's first row (`MergeMirror` drops that
    answer): the network after it never gets an empty batch, which TensorFlow
    2.21's oneDNN convolution (on by default on CPUs with AVX-512 VNNI, BF16 or
    AMX) answers with its input's shape, failing the next layer.
    """

    def call(self, inputs):
        x, rows = inputs
        first = ops.zeros((ops.minimum(ops.shape(x)[0], 1),), dtype=rows.dtype)
        return ops.take(x, ops.cond(ops.shape(rows)[0] > 0, lambda: rows, lambda: first), axis=0)

    def compute_output_shape(self, input_shapes):
        return (None, *input_shapes[0][1:])


@keras.saving.register_keras_serializable(package="facemtl")
class MergeMirror(keras.layers.Layer):
    """`(probs [batch, c], rows int32 [k], mirror probs [k or 1, c])` -> `[batch, c]`: each listed row averaged with
    its mirror image's answer, the other rows as they are (`TakeRows`' stand-in row, when none is listed, dropped)."""

    def call(self, inputs):
        probs, rows, mirrored = inputs
        averaged = (ops.take(probs, rows, axis=0) + mirrored[:ops.shape(rows)[0]]) / 2
        return ops.scatter_update(probs, ops.expand_dims(rows, -1), averaged)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


@keras.saving.register_keras_serializable(package="facemtl")
class ExpectedValue(keras.layers.Layer):
    """`[batch, bins]` probabilities over the values 0, 1, ..., bins - 1 -> `[batch]` their expected value.

    A distribution head (e.g. age over 0..116 years) answers with the mean of
    its distribution: one number per face, trained through the distribution.
    """

    def call(self, inputs):
        values = ops.arange(ops.shape(inputs)[-1], dtype=inputs.dtype)
        return ops.sum(inputs * values, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])
