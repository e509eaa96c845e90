"""The one image preprocessing step shared by training data and the SavedModel.

Training pipelines and the exported serving graph both call `prepare_images`,
so a face crop is resized and converted identically wherever it goes. Scaling
to the backbone's range happens inside the model (`ImageNormalization`).
"""

from __future__ import annotations

import tensorflow as tf


def prepare_images(images, height, width, channels):
    """Resizes RGB images to the model's input and converts their channels.

    Args:
        images: `[batch, h, w, 3]` (or unbatched `[h, w, 3]`) uint8 or float
            tensor with values in [0, 255], any `h, w`.
        height, width: the model's input size.
        channels: 1 (converted to gray with ITU-R 601 weights) or 3.

    Returns:
        A float32 tensor `[..., height, width, channels]` in [0, 255].
    """
    x = tf.cast(images, tf.float32)
    # tf.image.resize is a no-op copy when the size already matches, so
    # pre-sized training crops and served crops take the same path.
    x = tf.image.resize(x, (height, width), method="bilinear", antialias=True)
    if channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    return tf.clip_by_value(x, 0.0, 255.0)
