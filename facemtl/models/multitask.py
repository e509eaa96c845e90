"""The multi-task network: one shared ResNet backbone, one head per task."""

from __future__ import annotations

import keras
from keras import layers

from facemtl.labels import EXPRESSIONS
from facemtl.models.backbones import build_resnet
from facemtl.models import heads
from facemtl.models.layers import ImageNormalization

TASKS = ("identity", "expression")


def build_multitask_model(num_identities, *, input_shape=(64, 64, 3), backbone="resnet18", stage_blocks=None,
                          stem="standard", base_filters=64, identity_units=(256,), expression_units=(256,),
                          activation="relu", dropout=0.3, embedding_dim=128, backbone_weights=None,
                          normalization="auto", freeze_backbone=False, tasks=TASKS,
                          num_expressions=len(EXPRESSIONS), sync_bn=False, identity_head="softmax",
                          margin_scale=30.0):
    """Builds the functional multi-task model.

    The input `image` holds pixel values in [0, 255] at the recipe's size. Gray
    input (1 channel) is replicated to 3 channels for the backbone.

    Args:
        num_identities: number of training identities (size of `identity`).
        input_shape: `(height, width, channels)`, channels 1 or 3.
        backbone: `"resnet18"`, `"resnet34"` or `"resnet50"`.
        stage_blocks, stem, base_filters: see `build_resnet`.
        identity_units, expression_units: widths of each task's feature layers.
        activation, dropout: for the task feature layers.
        embedding_dim: size of the L2-normalised `embedding` output.
        backbone_weights: `None`, `"imagenet"` or a local `.weights.h5` file.
        normalization: `"tf"`, `"caffe"`, or `"auto"` (caffe for ImageNet weights).
        freeze_backbone: make the backbone non-trainable (heads-only training).
        tasks: which heads to build; both by default. A single task gives the
            single-task baselines used by the benchmarks.
        num_expressions: number of expression classes.
        sync_bn: synchronised BatchNormalization across replicas (multi-device runs
            then match a single device on the same global batch).
        identity_head: `"softmax"`, `"arcface"` or `"cosface"` (see `identity_head`).
        margin_scale: the margin heads' logit scale.

    Returns:
        A `keras.Model` named `facemtl` with dict outputs `identity` (softmax),
        `expression` (softmax) and `embedding` (when the identity task is built).

    Example:
        >>> model = build_multitask_model(5, input_shape=(64, 64, 1), stage_blocks=[1, 1], base_filters=16)
        >>> sorted(model.output_names)
        ['embedding', 'expression', 'identity']
    """
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(f"input_shape must be (height, width, 1 or 3). Received: input_shape={input_shape}")
    if min(input_shape[:2]) < 32:
        raise ValueError(f"Input height and width must be >= 32. Received: input_shape={input_shape}")
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}. Received: tasks={tasks}")
    if normalization == "auto":
        normalization = "caffe" if backbone_weights == "imagenet" else "tf"

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImageNormalization(normalization, name="normalize")(inputs)
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    net = build_resnet(backbone, (*input_shape[:2], 3), stage_blocks=stage_blocks, stem=stem,
                       base_filters=base_filters, weights=backbone_weights, sync_bn=sync_bn)
    net.trainable = not freeze_backbone
    # training=False is not forced here: a frozen backbone's BatchNormalization
    # already runs in inference mode in Keras 3 (trainable=False).
    features = layers.GlobalAveragePooling2D(name="pool")(net(x))

    outputs = {}
    if "identity" in tasks:
        outputs["identity"], outputs["embedding"] = heads.identity_head(
            features, num_identities, units=list(identity_units), embedding_dim=embedding_dim,
            activation=activation, dropout=dropout, sync_bn=sync_bn, head=identity_head, scale=margin_scale)
    if "expression" in tasks:
        outputs["expression"] = heads.expression_head(features, num_expressions, units=list(expression_units),
                                                activation=activation, dropout=dropout)
    return keras.Model(inputs, outputs, name="facemtl")


def build_from_recipe(model_config, num_identities, tasks=TASKS, num_expressions=7):
    """Builds the model described by a recipe's `model` section (`num_expressions` classes: FER2013's 7 by default)."""
    c = model_config
    if c.backbone == "dlib_resnet":
        from facemtl.models.dlib_resnet import build_dlib_multitask

        if tuple(tasks) != TASKS:
            raise ValueError(f"dlib_resnet builds both tasks. Received: tasks={tasks}")
        if c.identity_head != "softmax":
            raise ValueError("dlib_resnet's identity head is a cosine classifier on dlib's descriptor; "
                             f"margin heads are not supported. Received: identity_head={c.identity_head!r}")
        return build_dlib_multitask(
            num_identities, input_shape=(c.height, c.width, c.channels), split_stage=c.split_stage,
            expression_last_stage=c.expression_last_stage, expression_units=c.expression_units, dropout=c.dropout,
            freeze_shared=c.freeze_backbone, freeze_identity_branch=c.freeze_identity_branch,
            identity_scale=c.margin_scale, weights=c.backbone_weights or "auto",
            mirror_expression=c.mirror_expression, expression_branches=c.expression_branches,
            expression_pool=c.expression_pool, learnable_affine=c.learnable_affine, num_expressions=num_expressions)
    return build_multitask_model(
        num_identities, input_shape=(c.height, c.width, c.channels), backbone=c.backbone,
        stage_blocks=c.stage_blocks, stem=c.stem, base_filters=c.base_filters,
        identity_units=c.identity_units, expression_units=c.expression_units, activation=c.activation,
        dropout=c.dropout, embedding_dim=c.embedding_dim, backbone_weights=c.backbone_weights,
        normalization=c.normalization, freeze_backbone=c.freeze_backbone, tasks=tasks, sync_bn=c.sync_batchnorm,
        identity_head=c.identity_head, margin_scale=c.margin_scale, num_expressions=num_expressions)


def set_backbone_trainable(model, trainable):
    """Freezes or unfreezes the shared backbone (recompile afterwards)."""
    model.get_layer("backbone").trainable = trainable
