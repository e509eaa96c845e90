"""ResNet backbones (ResNet-18/34/50) built functionally.

`keras.applications` ships ResNet50 but not 18/34, so all three are built here
from one block-stacking routine. `resnet50` with the standard stem and layout
is taken from `keras.applications` so that its ImageNet weights can be
downloaded by users whose network allows it.
"""

from __future__ import annotations

import os
import warnings

import keras
from keras import layers

# name -> (block type, blocks per stage)
RESNET_SPECS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _conv_bn(x, filters, kernel, stride, name, relu=True, sync_bn=False):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, synchronized=sync_bn, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_block(x, filters, stride, block, name, sync_bn=False):
    expansion = 4 if block == "bottleneck" else 1
    out_filters = filters * expansion
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = _conv_bn(x, out_filters, 1, stride, f"{name}_proj", relu=False, sync_bn=sync_bn)
    if block == "basic":
        y = _conv_bn(x, filters, 3, stride, f"{name}_1", sync_bn=sync_bn)
        y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False, sync_bn=sync_bn)
    else:
        y = _conv_bn(x, filters, 1, 1, f"{name}_1", sync_bn=sync_bn)
        y = _conv_bn(y, filters, 3, stride, f"{name}_2", sync_bn=sync_bn)
        y = _conv_bn(y, out_filters, 1, 1, f"{name}_3", relu=False, sync_bn=sync_bn)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def build_resnet(name="resnet18", input_shape=(64, 64, 3), *, stage_blocks=None, stem="standard",
                 base_filters=64, weights=None, sync_bn=False):
    """Builds a ResNet feature extractor (no pooling, no classifier).

    Args:
        name: `"resnet18"`, `"resnet34"` or `"resnet50"`.
        input_shape: `(height, width, channels)` of the normalised input.
        stage_blocks: blocks per stage, overriding the standard layout (e.g.
            `[1, 1]` for a tiny test network: fewer stages, fewer blocks).
        stem: `"standard"` (7x7/2 conv + 3x3/2 max-pool, for >= 96 px faces)
            or `"small"` (one 3x3/1 conv, for 48-64 px faces such as FER2013).
        base_filters: filters of the first stage (doubling each stage).
        sync_bn: synchronise BatchNormalization statistics across replicas
            (as if the global batch were on one device; not for the
            keras.applications ResNet-50).
        weights: `None`, `"imagenet"` (ResNet-50 only, downloaded by
            `keras.applications`) or the path of a `.weights.h5` file saved from
            a backbone of the same configuration.

    Returns:
        A `keras.Model` named `"backbone"` mapping images to a feature map.

    Example:
        >>> backbone = build_resnet("resnet18", (64, 64, 3), stage_blocks=[1, 1], base_filters=16)
        >>> backbone.output_shape
        (None, 8, 8, 32)
    """
    if name not in RESNET_SPECS:
        raise ValueError(f"Unknown backbone. Expected one of {sorted(RESNET_SPECS)}. Received: name={name!r}")
    if stem not in ("standard", "small"):
        raise ValueError(f"stem must be 'standard' or 'small'. Received: stem={stem!r}")
    block, default_blocks = RESNET_SPECS[name]
    blocks = tuple(stage_blocks) if stage_blocks else default_blocks
    if not blocks or any(b < 1 for b in blocks):
        raise ValueError(f"stage_blocks must be a non-empty list of positive integers. Received: stage_blocks={stage_blocks}")
    if base_filters < 1:
        raise ValueError(f"base_filters must be positive. Received: base_filters={base_filters}")

    standard = blocks == default_blocks and stem == "standard" and base_filters == 64 and not sync_bn
    if weights == "imagenet" and not (name == "resnet50" and standard and input_shape[-1] == 3):
        raise ValueError(
            "ImageNet weights exist only for the standard resnet50 on RGB input (keras.applications). "
            f"Received: name={name!r}, stage_blocks={stage_blocks}, stem={stem!r}, base_filters={base_filters}, "
            f"channels={input_shape[-1]}. Use a local weights file instead."
        )
    if name == "resnet50" and standard:
        app = keras.applications.ResNet50(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                                          input_shape=tuple(input_shape))
        backbone = keras.Model(app.inputs, app.outputs, name="backbone")
    else:
        inputs = keras.Input(shape=tuple(input_shape), name="backbone_input")
        if stem == "standard":
            x = _conv_bn(inputs, base_filters, 7, 2, "stem", sync_bn=sync_bn)
            x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        else:
            x = _conv_bn(inputs, base_filters, 3, 1, "stem", sync_bn=sync_bn)
        for s, count in enumerate(blocks):
            for b in range(count):
                stride = 2 if (b == 0 and s > 0) else 1
                x = _residual_block(x, base_filters * 2**s, stride, block, f"stage{s + 1}_block{b + 1}", sync_bn)
        backbone = keras.Model(inputs, x, name="backbone")
    if weights not in (None, "imagenet"):
        if not os.path.isfile(weights):
            raise ValueError(f"Backbone weights file not found. Received: weights={weights!r}")
        try:
            with warnings.catch_warnings():  # a mismatch is reported below as one clear error
                warnings.simplefilter("ignore", UserWarning)
                backbone.load_weights(weights)
        except ValueError as exc:
            raise ValueError(f"Backbone weights in {weights!r} do not fit backbone {name!r}: {exc}") from None
    return backbone
