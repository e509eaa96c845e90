"""Losses and metrics that ignore missing labels.

In a merged FER2013 + VGGFace2 stream each sample has only one task's label;
the other is `IGNORE_LABEL` (-1). Keras' default reduction divides a task's
summed loss by the whole batch, so unlabelled samples would shrink that task's
loss and silently skew λ. Here each task's loss is averaged over the samples
that carry its label only.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from facemtl.labels import IGNORE_LABEL


def _flatten_labels(y_true):
    return ops.reshape(ops.cast(y_true, "int32"), (-1,))


@dataclasses.dataclass(frozen=True)
class Margin:
    """An additive margin on the target class's cosine (ArcFace or CosFace).

    Args:
        kind: `"arcface"` (additive angular margin, cos(θ + m); Deng et al.,
            2019) or `"cosface"` (additive cosine margin, cos θ - m; Wang et
            al., 2018).
        margin: `m` (radians for ArcFace).
        scale: `s`, the logits are `s * cos`.
    """

    kind: str
    margin: float
    scale: float

    def __post_init__(self):
        if self.kind not in ("arcface", "cosface"):
            raise ValueError(f"kind must be 'arcface' or 'cosface'. Received: kind={self.kind!r}")
        if not 0.0 <= self.margin < 1.5:
            raise ValueError(f"margin must be in [0, 1.5). Received: margin={self.margin}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0. Received: scale={self.scale}")

    def logits(self, labels, cosines):
        """`s * cos` with the margin applied to each sample's labelled class."""
        cos = ops.clip(ops.cast(cosines, "float32"), -1.0, 1.0)
        onehot = ops.one_hot(labels, ops.shape(cos)[-1], dtype="float32")
        target = ops.sum(cos * onehot, axis=-1, keepdims=True)
        if self.kind == "cosface":
            shifted = target - self.margin
        else:
            m = self.margin
            sin = ops.sqrt(ops.maximum(1.0 - target * target, 1e-7))  # finite gradient at cos = 1
            # cos(θ + m) only decreases while θ + m <= π; past it, fall back to
            # CosFace's linear penalty so the target logit stays monotonic (InsightFace).
            shifted = ops.where(target > math.cos(math.pi - m), target * math.cos(m) - sin * math.sin(m),
                                target - math.sin(math.pi - m) * m)
        return self.scale * (cos + onehot * (shifted - target))

    def to_dict(self):
        return dataclasses.asdict(self)


def identity_margin(model_config):
    """The `Margin` a recipe's identity head is trained with (`None` for plain softmax).

    Defaults follow the papers: ArcFace m = 0.5 rad, CosFace m = 0.35.
    """
    c = model_config
    if c.identity_head == "softmax":
        return None
    default = 0.5 if c.identity_head == "arcface" else 0.35
    return Margin(c.identity_head, default if c.margin is None else c.margin, c.margin_scale)


def replicas_in_sync():
    """Replicas of the current `tf.distribute` strategy (1 outside one, or off the TensorFlow backend)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_for_replicas(loss):
    """A replica's loss as Keras expects it under `tf.distribute`: divided by the replicas in sync.

    Keras sums the replicas' gradients and multiplies logged losses back by
    the replica count, so a replica's mean loss must come divided by it.
    """
    n = replicas_in_sync()
    return loss if n == 1 else loss * (1.0 / n)


def masked_crossentropy_sum(y_true, y_pred, class_weights=None, ignore_label=IGNORE_LABEL, margin=None):
    """Summed cross-entropy over labelled samples and the summed weight it is to be divided by.

    Kept apart from the division so that a distributed loop can divide by the
    count over *all* replicas and get exactly the single-device mean.

    Args:
        y_true: integer labels, `ignore_label` where a sample has none.
        y_pred: probabilities; cosines when `margin` is given.
        class_weights: optional per-class weights.
        ignore_label: the "no label" value.
        margin: a `Margin` for margin-trained heads (ArcFace/CosFace).

    Returns:
        `(loss_sum, weight_sum)` float32 scalars.
    """
    labels = _flatten_labels(y_true)
    valid = ops.not_equal(labels, ignore_label)
    safe = ops.where(valid, labels, ops.zeros_like(labels))
    if margin is None:
        per_sample = keras.losses.sparse_categorical_crossentropy(safe, ops.cast(y_pred, "float32"))
    else:
        per_sample = keras.losses.sparse_categorical_crossentropy(safe, margin.logits(safe, y_pred), from_logits=True)
    weights = ops.cast(valid, "float32")
    if class_weights is not None:
        weights = weights * ops.take(ops.convert_to_tensor(class_weights, "float32"), safe)
    return ops.sum(per_sample * weights), ops.sum(weights)


@keras.saving.register_keras_serializable(package="facemtl")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Cross-entropy over probabilities, averaged over labelled samples only.

    A batch where no sample has a label gives 0 (and zero gradients), not NaN.

    Args:
        class_weights: optional per-class weights (e.g. for FER2013's
            imbalance); the mean is then weighted, normalised by the weights'
            sum over labelled samples.
        ignore_label: the label value that means "no label".
        margin: a `Margin` (or its dict) when `y_pred` are the cosines of a
            margin-trained head (ArcFace/CosFace).
        name: loss name.

    Example:
        >>> loss = MaskedSparseCategoricalCrossentropy()
        >>> float(loss([1, -1], [[0.5, 0.5], [0.9, 0.1]]))  # only the first counts
        0.6931...
    """

    def __init__(self, class_weights=None, ignore_label=IGNORE_LABEL, margin=None,
                 name="masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ignore_label = int(ignore_label)
        self.margin = Margin(**margin) if isinstance(margin, dict) else margin

    def call(self, y_true, y_pred):
        total, count = masked_crossentropy_sum(y_true, y_pred, self.class_weights, self.ignore_label, self.margin)
        # Keras' reduction passes a scalar through untouched, including the 1/replicas scaling it
        # applies to per-sample losses; without it each replica's gradient counts in full and
        # MirroredStrategy trains at N times the loss (tests/training/test_trainer.py compares).
        return scale_for_replicas(total / ops.maximum(count, 1e-12))

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights, "ignore_label": self.ignore_label,
                "margin": self.margin.to_dict() if self.margin else None}


@keras.saving.register_keras_serializable(package="facemtl")
class MaskedMeanAbsoluteError(keras.losses.Loss):
    """Mean absolute error over the samples with a value (NaN means "no label"), e.g. age in years.

    Example:
        >>> float(MaskedMeanAbsoluteError()([30.0, float("nan")], [27.0, 50.0]))  # only the first counts
        3.0
    """

    def __init__(self, name="masked_mean_absolute_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        have = ops.logical_not(ops.isnan(y_true))
        error = ops.where(have, ops.abs(ops.where(have, y_true, 0.0) - y_pred), 0.0)
        count = ops.sum(ops.cast(have, "float32"))
        return scale_for_replicas(ops.sum(error) / ops.maximum(count, 1e-12))


@keras.saving.register_keras_serializable(package="facemtl")
class MaskedSparseCategoricalAccuracy(keras.metrics.Metric):
    """Top-1 accuracy over the samples that carry a label (ignores `-1`)."""

    def __init__(self, ignore_label=IGNORE_LABEL, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_label = int(ignore_label)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = _flatten_labels(y_true)
        valid = ops.cast(ops.not_equal(labels, self.ignore_label), "float32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        hit = ops.cast(ops.equal(ops.reshape(predicted, (-1,)), labels), "float32") * valid
        self.correct.assign_add(ops.sum(hit))
        self.count.assign_add(ops.sum(valid))

    def result(self):
        return ops.divide_no_nan(self.correct, self.count)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label}
