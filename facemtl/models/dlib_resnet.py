"""dlib's face-recognition ResNet, rebuilt in Keras functional layers.

The network (dlib's `dnn_face_recognition_ex.cpp`, `anet_type`): a 7x7/2 stem
(unpadded) and a 3x3/2 max-pool, then five stages of residual blocks with
32, 64, 128, 256 and 256 filters (3, 4, 3, 3, 1 blocks); the first block of each
stage but the first down-samples with an unpadded 3x3/2 convolution and an
average-pooled shortcut. dlib's `affine` layers are frozen per-channel scales
and shifts (batch normalisation folded at the end of training), and its
`add_prev` adds tensors of different sizes as if the smaller were zero-padded at
the end (channels, and twice the spatial size). A 128-d projection (no bias) of
the globally averaged last stage is the face descriptor (not normalised; dlib
calls two faces the same person below Euclidean distance 0.6).

The stages are built by `dlib_stages` on any tensor, under a name prefix, so the
multi-task model can build the shared lower stages once and each task its own
copy of the upper ones, all initialised from the same file.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from facemtl.models.dlib_format import STAGES, DlibResNetWeights, default_weights, read_dlib_resnet
from facemtl.models.heads import feature_stack
from facemtl.models.layers import CosineClassifier, ImageNormalization
from facemtl.preprocessing import prepare_images

INPUT_SIZE = 150
NUM_STAGES = len(STAGES)  # stage 0 is the stem; stages 1..5 are residual


@keras.saving.register_keras_serializable(package="facemtl")
class Affine(layers.Layer):
    """dlib's `affine_` layer: `x * scale + shift` per channel (dlib's folded batch norm).

    Args:
        learnable: train the scale and shift too (by default they stay dlib's).
    """

    def __init__(self, learnable=False, **kwargs):
        super().__init__(**kwargs)
        self.learnable = bool(learnable)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.scale = self.add_weight(shape=(channels,), initializer="ones", trainable=self.learnable, name="scale")
        self.shift = self.add_weight(shape=(channels,), initializer="zeros", trainable=self.learnable, name="shift")

    def get_config(self):
        return {**super().get_config(), "learnable": self.learnable}

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype) + ops.cast(self.shift, inputs.dtype)


@keras.saving.register_keras_serializable(package="facemtl")
class PadAdd(layers.Layer):
    """dlib's `add_prev`: the sum of two feature maps, the smaller zero-padded at its end.

    Padding is at the bottom, right and last channels, as dlib aligns the
    tensors at their first element.
    """

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (a[0], *[max(x, y) for x, y in zip(a[1:], b[1:])])

    def call(self, inputs):
        a, b = inputs
        target = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

        def pad(t):
            missing = [(0, 0)] + [(0, n - s) for s, n in zip(t.shape[1:], target)]
            return ops.pad(t, missing) if any(m[1] for m in missing) else t

        return pad(a) + pad(b)


def _conv(x, filters, size, stride, name):
    # dlib pads a stride-1 convolution by size // 2 ("same") and leaves a stride-2 one unpadded.
    return layers.Conv2D(filters, size, strides=stride, padding="same" if stride == 1 else "valid",
                         name=name)(x)


def conv_names(stages=range(NUM_STAGES + 1)):
    """Names (without prefix) of the conv and affine layers of `stages`, in network order."""
    names = []
    for s in stages:
        if s == 0:
            names.append("stem")
            continue
        for b in range(STAGES[s - 1][1]):
            names += [f"stage{s}_block{b + 1}_1", f"stage{s}_block{b + 1}_2"]
    return names


def dlib_stages(x, first, last, prefix="", learnable_affine=False):
    """Applies dlib's stages `first..last` (0 = stem and max-pool, 1..5 residual) to `x`.

    Args:
        x: the input tensor: the normalised image for `first=0`, else the output
            of stage `first - 1`.
        first, last: the stages to build, `0 <= first <= last <= 5`.
        prefix: layer-name prefix (e.g. `"expression_"` for a task's copy).
        learnable_affine: train the residual stages' `Affine` scales and shifts.

    Returns:
        The output tensor of stage `last`.
    """
    if not 0 <= first <= last <= NUM_STAGES:
        raise ValueError(f"Stages must satisfy 0 <= first <= last <= {NUM_STAGES}. Received: first={first}, last={last}")
    for s in range(first, last + 1):
        if s == 0:
            x = _conv(x, 32, 7, 2, f"{prefix}stem_conv")
            x = Affine(name=f"{prefix}stem_affine")(x)
            x = layers.ReLU(name=f"{prefix}stem_relu")(x)
            x = layers.MaxPooling2D(3, strides=2, padding="valid", name=f"{prefix}stem_pool")(x)
            continue
        filters, blocks, down = STAGES[s - 1]
        for b in range(blocks):
            name = f"{prefix}stage{s}_block{b + 1}"
            stride = 2 if (down and b == 0) else 1
            y = _conv(x, filters, 3, stride, f"{name}_1_conv")
            y = layers.ReLU(name=f"{name}_1_relu")(Affine(learnable_affine, name=f"{name}_1_affine")(y))
            y = _conv(y, filters, 3, 1, f"{name}_2_conv")
            y = Affine(learnable_affine, name=f"{name}_2_affine")(y)
            shortcut = layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}_pool")(x) if stride == 2 else x
            x = layers.ReLU(name=f"{name}_out")(PadAdd(name=f"{name}_add")([y, shortcut]))
    return x


def descriptor_head(x, prefix=""):
    """Global average, then dlib's 128-d projection (no bias): the face descriptor, not normalised."""
    x = layers.GlobalAveragePooling2D(name=f"{prefix}avg_pool")(x)
    return layers.Dense(128, use_bias=False, name=f"{prefix}descriptor")(x)


def load_dlib_weights(model, weights=None, prefixes=("",), stages=None):
    """Copies dlib's parameters into the dlib layers of `model` (every copy, under each prefix).

    Args:
        model: a Keras model containing layers built by `dlib_stages` / `descriptor_head`.
        weights: `DlibResNetWeights`, a `.dat` (or `.npz` copy) path, or `"auto"`
            (or `None`) for dlib's network as shipped in facemtl (`default_weights`).
        prefixes: the name prefixes of the copies to fill.
        stages: the stages to fill (default: every stage found in the model).

    Returns:
        How many layers were filled.

    Raises:
        DlibModelError: the `.dat` file is missing or unreadable.
    """
    weights = _read_weights(weights)
    names = conv_names(stages if stages is not None else range(NUM_STAGES + 1))
    by_name = dict(zip(conv_names(), zip(weights.convs, weights.affines)))
    filled = 0
    layer_names = {layer.name for layer in model.layers}
    get = model.get_layer

    for prefix in prefixes:
        for name in names:
            if f"{prefix}{name}_conv" not in layer_names:
                continue
            (kernel, bias, _), (scale, shift) = by_name[name]
            get(f"{prefix}{name}_conv").set_weights([kernel, bias])
            get(f"{prefix}{name}_affine").set_weights([scale, shift])
            filled += 1
        if f"{prefix}descriptor" in layer_names:
            get(f"{prefix}descriptor").set_weights([weights.fc])
            filled += 1
    return filled


def _read_weights(weights):
    if isinstance(weights, DlibResNetWeights):
        return weights
    return default_weights() if weights in (None, "auto") else read_dlib_resnet(weights)


def build_dlib_resnet(weights="auto", input_shape=(INPUT_SIZE, INPUT_SIZE, 3), name="dlib_resnet"):
    """dlib's whole face-recognition network: uint8-range RGB chips in, 128-d descriptors out.

    Args:
        weights: `"auto"` (dlib's network as shipped in facemtl), a `.dat`
            path, `DlibResNetWeights`, or `None` (random initialisation).
        input_shape: `(150, 150, 3)` for dlib's own chips; other sizes run but
            change what the network sees.
        name: the model's name.

    Returns:
        A `keras.Model` mapping `float [batch, h, w, 3]` pixel values in [0, 255]
        (RGB) to dlib's descriptors `[batch, 128]` (dlib's scale: compare with
        Euclidean distance, 0.6 threshold).

    Example:
        >>> model = build_dlib_resnet()
        >>> model(np.zeros((1, 150, 150, 3))).shape
        TensorShape([1, 128])
    """
    if len(input_shape) != 3 or input_shape[-1] != 3 or min(input_shape[:2]) < 64:
        raise ValueError(f"input_shape must be (h >= 64, w >= 64, 3). Received: input_shape={input_shape}")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImageNormalization("dlib", name="normalize")(inputs)
    outputs = descriptor_head(dlib_stages(x, 0, NUM_STAGES))
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        load_dlib_weights(model, weights)
    return model


__all__ = ["Affine", "PadAdd", "build_dlib_resnet", "descriptor_head", "dlib_stages", "load_dlib_weights",
           "INPUT_SIZE", "NUM_STAGES"]


class DlibBackbone:
    """dlib's face ResNet as a backbone: stages 0..`split_stage` shared, each task's branch its own upper stages.

    The identity branch is dlib's own stages `split_stage + 1 .. 5` and 128-d
    projection: its L2-normalised descriptor is the `embedding`, and
    `identity` a cosine classifier over the training identities on it. Each
    expression branch is its own copy of stages `split_stage + 1 ..
    expression_last_stage` and a head (`expression_branch`). Its config
    section is the recipe's `model` keys `split_stage`, `expression_last_stage`,
    `freeze_identity_branch`, `expression_pool`, `learnable_affine` and
    `backbone_weights` (a `.dat` file; default: dlib's network as shipped in facemtl).
    """

    name = "dlib_resnet"

    def check(self, c, input_shape, tasks):
        if min(input_shape[:2]) < 64:
            raise ValueError(f"input_shape must be (h >= 64, w >= 64, 1 or 3). Received: input_shape={input_shape}")
        if not 0 <= c.split_stage < NUM_STAGES:
            raise ValueError(f"split_stage must be in 0..{NUM_STAGES - 1}. Received: split_stage={c.split_stage}")
        if not c.split_stage < c.expression_last_stage <= NUM_STAGES:
            raise ValueError(f"expression_last_stage must be in {c.split_stage + 1}..{NUM_STAGES}. "
                             f"Received: expression_last_stage={c.expression_last_stage}")
        if tuple(tasks) != ("identity", "expression"):
            raise ValueError(f"dlib_resnet builds both tasks. Received: tasks={tasks}")
        if c.identity_head != "softmax":
            raise ValueError("dlib_resnet's identity head is a cosine classifier on dlib's descriptor; "
                             f"margin heads are not supported. Received: identity_head={c.identity_head!r}")

    def trunk(self, c, input_shape):
        gray = layers.Concatenate(name="gray_to_rgb") if input_shape[-1] == 1 else None
        shared = build_trunk((*input_shape[:2], 3), c.split_stage, weights=None, frozen=False)
        return (lambda inputs: gray([inputs, inputs, inputs]) if gray is not None else inputs), shared

    def identity(self, features, c, num_identities):
        branch_in = keras.Input(shape=features.shape[1:], name="identity_branch_input")
        identity_net = keras.Model(
            branch_in, descriptor_head(dlib_stages(branch_in, c.split_stage + 1, NUM_STAGES, "identity_"), "identity_"),
            name="identity_branch")
        embedding = layers.UnitNormalization(dtype="float32", name="embedding")(identity_net(features))
        # Not named like the margin heads' cosine layer: this head is trained with plain
        # softmax cross-entropy on `identity`, so the training view must keep the probabilities.
        cos = CosineClassifier(num_identities, dtype="float32", name="identity_similarity")(embedding)
        identity = layers.Activation("softmax", dtype="float32", name="identity")(
            layers.Rescaling(c.margin_scale, dtype="float32", name="identity_scale")(cos))
        return identity, embedding

    def expression(self, features, c, num_expressions, prefix="expression"):
        return expression_branch(features, split_stage=c.split_stage, last_stage=c.expression_last_stage,
                                 units=c.expression_units, dropout=c.dropout, num_classes=num_expressions,
                                 prefix=prefix, pool=c.expression_pool, learnable_affine=c.learnable_affine)

    def finish(self, model, c, branch_prefixes, weights="auto"):
        """Loads dlib's weights into the trunk and every branch, then freezes what the config keeps."""
        shared, identity_net = model.get_layer("backbone"), model.get_layer("identity_branch")
        if weights is not None:
            weights = _read_weights(weights)  # read once for the trunk and every branch
            load_dlib_weights(shared, weights)
            load_dlib_weights(identity_net, weights, prefixes=("identity_",))
            try:
                holder = model.get_layer("expression_branch")
            except ValueError:
                holder = model
            load_dlib_weights(holder, weights, prefixes=tuple(f"{p}_" for p in branch_prefixes))
        shared.trainable = not c.freeze_backbone
        identity_net.trainable = not c.freeze_identity_branch


EXPRESSION_POOLS = ("average", "spatial")


def expression_branch(h, *, split_stage, last_stage, units, dropout, num_classes, prefix="expression",
                      pool="average", learnable_affine=False):
    """One expression branch on the trunk's maps: dlib's stages `split_stage + 1 .. last_stage`, a head, softmax.

    The one definition of the branch, used by the multi-task model and by the
    branch trained alone on cached maps (`facemtl.training.feature_cache`), so
    their weights copy over by layer name.

    Args:
        h: the trunk's output (stage `split_stage`).
        split_stage, last_stage: the dlib stages the branch copies.
        units, dropout: the head's dense layers (`heads.feature_stack`).
        num_classes: expression classes.
        prefix: layer-name prefix: `expression`, `expression2`, ...
        pool: `"average"` (global average pooling) or `"spatial"` (a 1x1
            convolution to 32 channels, then the flattened map: keeps where a
            feature is, e.g. brows vs mouth).
        learnable_affine: train the stages' `Affine` scales and shifts.

    Returns:
        The probabilities (float32).

    Example:
        >>> x = keras.Input((17, 17, 64))
        >>> expression_branch(x, split_stage=2, last_stage=4, units=[8], dropout=0.0, num_classes=7).shape
        (None, 7)
    """
    if pool not in EXPRESSION_POOLS:
        raise ValueError(f"pool must be one of {EXPRESSION_POOLS}. Received: pool={pool!r}")
    h = dlib_stages(h, split_stage + 1, last_stage, f"{prefix}_", learnable_affine=learnable_affine)
    if pool == "spatial":
        h = layers.Conv2D(32, 1, activation="relu", name=f"{prefix}_reduce")(h)
        h = layers.Flatten(name=f"{prefix}_flatten")(h)
    else:
        h = layers.GlobalAveragePooling2D(name=f"{prefix}_pool")(h)
    h = feature_stack(h, list(units), activation="relu", dropout=dropout, name=prefix)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=prefix)(h)


def expression_branch_prefix(k):
    """The layer-name prefix of expression branch `k` (1-based): `expression`, `expression2`, ..."""
    if k < 1:
        raise ValueError(f"Branches are numbered from 1. Received: k={k}")
    return "expression" if k == 1 else f"expression{k}"


def imprint_identity_classifier(model, images, identity, batch_size=64):
    """Points each identity's classifier direction at the mean embedding of its training faces.

    Weight imprinting (Qi et al., CVPR 2018): with a frozen, already
    discriminative embedding (dlib's), the class means are a near-optimal
    starting point for the cosine classifier, which plain gradient steps at a
    fine-tuning learning rate would take many epochs to reach. Identities
    without images keep their random directions.

    Args:
        model: a dlib-backbone model from `build_multitask` (layer `identity_similarity`).
        images: `uint8 [n, h, w, c]` training faces at the model's input size.
        identity: `int [n]` identity labels (`IGNORE_LABEL` entries are skipped).
        batch_size: faces per forward pass.

    Returns:
        How many identities were imprinted.
    """
    identity = np.asarray(identity)
    keep = identity >= 0
    images, identity = images[keep], identity[keep]
    if not len(identity):
        return 0
    height, width, channels = model.input_shape[1:]
    embed = keras.Model(model.input, model.get_layer("embedding").output)
    emb = np.concatenate([np.asarray(embed(prepare_images(images[i:i + batch_size], height, width, channels),
                                           training=False))
                          for i in range(0, len(images), batch_size)])
    layer = model.get_layer("identity_similarity")
    (kernel,) = layer.get_weights()
    present = np.unique(identity)
    for k in present:
        mean = emb[identity == k].mean(axis=0)
        kernel[:, k] = mean / max(np.linalg.norm(mean), 1e-12)
    layer.set_weights([kernel])
    return len(present)


def build_trunk(input_shape=(150, 150, 3), split_stage=2, weights="auto", frozen=True):
    """The shared part of the dlib backbone (`DlibBackbone`): normalisation, stem and stages `0..split_stage`.

    Args:
        weights: `"auto"` (dlib's network as shipped), a `.dat` path, or `None` (random: the builder loads them).
        frozen: not trainable (the feature cache runs it once over every face).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="backbone_input")
    trunk = keras.Model(inputs, dlib_stages(ImageNormalization("dlib", name="normalize")(inputs), 0, split_stage),
                        name="backbone")
    if weights is not None:
        load_dlib_weights(trunk, weights)
    trunk.trainable = not frozen
    return trunk


def build_expression_branch(input_shape, *, split_stage=2, last_stage=4, units=(512,), dropout=0.5,
                            num_classes=7, weights="auto", pool="average", learnable_affine=False):
    """The expression branch of the dlib backbone as its own model: trunk maps in, probabilities out.

    Its layers are named as in the multi-task model (`expression_stage3_...`,
    `expression_dense1`, `expression`), so its weights copy over by name
    (`copy_weights_by_name`).

    Args:
        input_shape: the trunk maps' shape, e.g. `(17, 17, 64)`.
        split_stage, last_stage: the dlib stages `split_stage + 1 .. last_stage` it copies.
        units, dropout: the head's dense layers.
        num_classes: expression classes.
        weights: `"auto"` (dlib's weights for the stages), a `.dat` path, or `None`.
        pool, learnable_affine: see `facemtl.models.dlib_resnet.expression_branch`.

    Returns:
        A `keras.Model`.
    """
    inputs = keras.Input(shape=tuple(input_shape), name="trunk_maps")
    outputs = expression_branch(inputs, split_stage=split_stage, last_stage=last_stage, units=units,
                                dropout=dropout, num_classes=num_classes, pool=pool,
                                learnable_affine=learnable_affine)
    branch = keras.Model(inputs, outputs, name="expression_branch")
    if weights is not None:
        load_dlib_weights(branch, weights, prefixes=("expression_",))
    return branch
