"""The multi-task network for any backbone: a shared trunk, then one branch per task.

A backbone (`BACKBONES`, picked by the recipe's `model.backbone`) says what is
shared and what each task's own branch is; `build_multitask` wires any of them
the same way (input, trunk, branches, mirror averaging and branch ensembles of
the expression branch, outputs `identity`, `expression`, `embedding`):

- `ResNetBackbone` (ResNet-18/34/50, `backbones.build_resnet`): the whole ResNet
  and its global pooling are shared; each task's branch is its head (`heads.py`).
- `DlibBackbone` (dlib's face ResNet, `dlib_resnet.py`): stages 0..`split_stage`
  are shared; the identity branch is dlib's own upper stages and descriptor (so
  `embedding` is dlib's descriptor, normalised) with a cosine classifier; each
  expression branch is its own copy of dlib's upper stages and a head.
"""

from __future__ import annotations

import keras
from keras import layers

from facemtl.config import ModelConfig
from facemtl.errors import RecipeError
from facemtl.labels import EXPRESSIONS
from facemtl.models import heads
from facemtl.models.backbones import build_resnet
from facemtl.models.dlib_resnet import DlibBackbone, expression_branch_prefix
from facemtl.models.heads import attribute_head
from facemtl.models.layers import (
    FlipLeftRight,
    ImageNormalization,
    Mean,
    MeanOfHalves,
    MergeMirror,
    TakeRows,
    UncertainRows,
)
from facemtl.preprocessing import Preprocessor

TASKS = ("identity", "expression")


class ResNetBackbone:
    """ResNet-18/34/50: the whole network and its pooling shared; each task's branch is its head.

    Its config section is the recipe's `model` keys `stage_blocks`, `stem`,
    `base_filters`, `backbone_weights`, `normalization` and `sync_batchnorm`.
    """

    def __init__(self, name):
        self.name = name

    def check(self, c, input_shape, tasks):
        if min(input_shape[:2]) < 32:
            raise ValueError(f"Input height and width must be >= 32. Received: input_shape={input_shape}")

    def trunk(self, c, input_shape):
        """`(prepare, shared)`: the input to the trunk's input, and the shared trunk (maps or features)."""
        normalize = ImageNormalization(Preprocessor.from_model_config(c).scaling, name="normalize")
        gray = layers.Concatenate(name="gray_to_rgb") if input_shape[-1] == 1 else None

        def prepare(inputs):
            x = normalize(inputs)
            return gray([x, x, x]) if gray is not None else x

        net = build_resnet(self.name, (*input_shape[:2], 3), stage_blocks=c.stage_blocks, stem=c.stem,
                           base_filters=c.base_filters, weights=c.backbone_weights, sync_bn=c.sync_batchnorm)
        net.trainable = not c.freeze_backbone
        # training=False is not forced here: a frozen backbone's BatchNormalization
        # already runs in inference mode in Keras 3 (trainable=False).
        pool = layers.GlobalAveragePooling2D(name="pool")
        return prepare, lambda x: pool(net(x))

    def identity(self, features, c, num_identities):
        return heads.identity_head(features, num_identities, units=list(c.identity_units),
                                   embedding_dim=c.embedding_dim, activation=c.activation, dropout=c.dropout,
                                   sync_bn=c.sync_batchnorm, head=c.identity_head, scale=c.margin_scale)

    def expression(self, features, c, num_expressions, prefix="expression"):
        if prefix != "expression":
            raise ValueError(f"ResNet backbones build one expression branch. Received: prefix={prefix!r}")
        return heads.expression_head(features, num_expressions, units=list(c.expression_units),
                                     activation=c.activation, dropout=c.dropout)

    def finish(self, model, c, branch_prefixes, weights="auto"):
        """Loads pretrained weights the builder did not (ResNets load theirs in `build_resnet`)."""


BACKBONES = {name: ResNetBackbone(name) for name in ("resnet18", "resnet34", "resnet50")}
BACKBONES["dlib_resnet"] = DlibBackbone()


def register_backbone(name, backbone):
    """Adds a backbone to `BACKBONES`, so recipes can name it (`model.backbone`).

    Args:
        name: the recipe's name for it.
        backbone: an object with `check`, `trunk`, `identity`, `expression` and
            `finish` (see `ResNetBackbone`, `DlibBackbone`).

    Example:
        >>> register_backbone("my_resnet", ResNetBackbone("resnet18"))
    """
    BACKBONES[name] = backbone
    return backbone


def check_backbone(name):
    """Refuses a `model.backbone` that no backbone is registered under (a recipe error naming the key)."""
    if name not in BACKBONES:
        raise RecipeError(f"Bad value for 'model.backbone': expected one of {sorted(BACKBONES)} (or a name given to "
                          f"register_backbone). Received: model.backbone={name!r}")


def build_multitask(config, num_identities, *, num_expressions=len(EXPRESSIONS), tasks=TASKS, weights="auto",
                    attributes=()):
    """The multi-task model a recipe's `model` section describes, for any backbone of `BACKBONES`.

    The input `image` holds pixel values in [0, 255] at the recipe's size (1
    channel: copied to RGB). With `mirror_expression` the expression branches
    also answer for the mirror image and average (the trunk runs on both in
    one batch; identity sees only the face), and with `mirror_threshold` only
    for the faces whose answer's top probability is below it (the others keep
    the face's answer); with `expression_branches > 1`
    the branches' probabilities are averaged (an ensemble in one forward pass;
    branch k's layers are `expression{k}_*`). Either makes the branches the
    sub-model layer `expression_branch`.

    Args:
        config: a `ModelConfig`.
        num_identities: training identities (size of `identity`).
        num_expressions: expression classes.
        tasks: the heads to build (a single task: the benchmarks' baselines).
        weights: the dlib backbone's weights: `"auto"` (`backbone_weights`, else
            dlib's network as shipped in facemtl), a `.dat` path, `DlibResNetWeights`,
            or `None` (random: tests of the graph only).
        attributes: attribute tasks (`TaskConfig`s or their dicts, e.g. age and
            gender) whose heads sit on the embedding (`heads.attribute_head`);
            each adds an output of its name.

    Returns:
        A `keras.Model` named `facemtl` with dict outputs `identity`, `expression`, `embedding`
        (and one per head).

    Example:
        >>> model = build_multitask(ModelConfig(stage_blocks=[1, 1], base_filters=16), 5)
        >>> sorted(model.output_names)
        ['embedding', 'expression', 'identity']
    """
    c = config
    input_shape = (c.height, c.width, c.channels)
    check_backbone(c.backbone)
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(f"input_shape must be (height, width, 1 or 3). Received: input_shape={input_shape}")
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}. Received: tasks={tasks}")
    if num_identities < 1:
        raise ValueError(f"num_identities must be >= 1. Received: num_identities={num_identities}")
    if c.expression_branches < 1:
        raise ValueError(f"expression_branches must be >= 1. Received: expression_branches={c.expression_branches}")
    if c.mirror_threshold is not None and not (c.mirror_expression and 0.0 <= c.mirror_threshold <= 1.0):
        raise ValueError("mirror_threshold gates the mirror pass: it needs mirror_expression and a value in [0, 1]. "
                         f"Received: mirror_expression={c.mirror_expression}, mirror_threshold={c.mirror_threshold}")
    backbone = BACKBONES[c.backbone]
    backbone.check(c, input_shape, tasks)

    inputs = keras.Input(shape=input_shape, name="image")
    prepare, shared = backbone.trunk(c, input_shape)
    x = prepare(inputs)
    features = shared(x)
    outputs = {}
    if "identity" in tasks:
        outputs["identity"], outputs["embedding"] = backbone.identity(features, c, num_identities)
    prefixes = [expression_branch_prefix(k) for k in range(1, c.expression_branches + 1)]
    if "expression" in tasks:
        branch = None
        if c.mirror_expression or len(prefixes) > 1:
            branch_in = keras.Input(shape=features.shape[1:], name="expression_branch_input")
            outs = [backbone.expression(branch_in, c, num_expressions, p) for p in prefixes]
            out = outs[0] if len(outs) == 1 else Mean(dtype="float32", name="expression_ensemble")(outs)
            branch = keras.Model(branch_in, out, name="expression_branch")
        if c.mirror_expression and c.mirror_threshold is not None:
            # The mirror pass for the uncertain faces only: the same answer where it would change, at a fraction
            # of its cost (docs/expression.md).
            face = branch(features)
            rows = UncertainRows(c.mirror_threshold, name="mirror_gate")(face)
            uncertain = TakeRows(name="uncertain_faces")([x, rows])
            mirrored = branch(shared(FlipLeftRight(name="mirror_images")(uncertain)))
            outputs["expression"] = layers.Activation("linear", dtype="float32", name="expression")(
                MergeMirror(dtype="float32", name="mirror_average")([face, rows, mirrored]))
        elif c.mirror_expression:
            mirrored = shared(FlipLeftRight(name="mirror_images")(x))
            both = layers.Concatenate(axis=0, name="face_and_mirror")([features, mirrored])
            outputs["expression"] = layers.Activation("linear", dtype="float32", name="expression")(
                MeanOfHalves(dtype="float32", name="mirror_average")(branch(both)))
        elif branch is not None:
            outputs["expression"] = layers.Activation("linear", dtype="float32", name="expression")(branch(features))
        else:
            outputs["expression"] = backbone.expression(features, c, num_expressions)
    if attributes and "embedding" not in outputs:
        raise ValueError(f"Attribute heads sit on the identity embedding: tasks must include identity. "
                         f"Received: tasks={tasks}")
    for task in attributes:
        outputs[task["name"] if isinstance(task, dict) else task.name] = attribute_head(outputs["embedding"], task)[0]
    model = keras.Model(inputs, outputs, name="facemtl")
    backbone.finish(model, c, prefixes, (c.backbone_weights or "auto") if weights == "auto" else weights)
    return model


def build_multitask_model(num_identities, *, input_shape=(64, 64, 3), backbone="resnet18", stage_blocks=None,
                          stem="standard", base_filters=64, identity_units=(256,), expression_units=(256,),
                          activation="relu", dropout=0.3, embedding_dim=128, backbone_weights=None,
                          normalization="auto", freeze_backbone=False, tasks=TASKS,
                          num_expressions=len(EXPRESSIONS), sync_bn=False, identity_head="softmax",
                          margin_scale=30.0):
    """`build_multitask` for a ResNet backbone, from keyword arguments (see `ResNetBackbone`, `build_resnet`).

    Example:
        >>> model = build_multitask_model(5, input_shape=(64, 64, 1), stage_blocks=[1, 1], base_filters=16)
        >>> sorted(model.output_names)
        ['embedding', 'expression', 'identity']
    """
    config = ModelConfig(backbone=backbone, height=input_shape[0], width=input_shape[1], channels=input_shape[2],
                         stage_blocks=stage_blocks, stem=stem, base_filters=base_filters,
                         identity_units=list(identity_units), expression_units=list(expression_units),
                         activation=activation, dropout=dropout, embedding_dim=embedding_dim,
                         backbone_weights=backbone_weights, normalization=normalization,
                         freeze_backbone=freeze_backbone, sync_batchnorm=sync_bn, identity_head=identity_head,
                         margin_scale=margin_scale)
    return build_multitask(config, num_identities, num_expressions=num_expressions, tasks=tasks)


def split_mirror_gate(model):
    """A mirror-gated model as two passes, for an engine that cannot run part of a batch (LiteRT).

    Returns `(face_model, mirror_model)`, or `None` for a model without a
    mirror gate (`model.mirror_threshold`): `face_model` answers everything for
    the face alone (its `expression`: the branches' answer before the mirror
    pass); `mirror_model` is the branches' answer for the mirror image of its
    input. The engine runs `mirror_model` on the faces whose `expression` top
    probability is below `mirror_threshold` and averages the two answers: the
    gated model's answer.

    Example:
        >>> face_model, mirror_model = split_mirror_gate(from_preset("release"))
    """
    try:
        gate = model.get_layer("mirror_gate")
    except ValueError:
        return None
    outputs = dict(zip(model.output_names, model.outputs))
    outputs["expression"] = gate.input
    face_model = keras.Model(model.input, outputs, name="facemtl_face")
    images = model.get_layer("uncertain_faces").input[0]  # the input as the trunk takes it
    mirrored = model.get_layer("expression_branch")(model.get_layer("backbone")(FlipLeftRight()(images)))
    return face_model, keras.Model(model.input, mirrored, name="facemtl_mirror")


def set_backbone_trainable(model, trainable):
    """Freezes or unfreezes the shared backbone (recompile afterwards)."""
    model.get_layer("backbone").trainable = trainable
