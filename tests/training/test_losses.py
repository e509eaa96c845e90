import numpy as np
import pytest

from facemtl.models import build_multitask_model
from facemtl.training.losses import MaskedSparseCategoricalAccuracy, MaskedSparseCategoricalCrossentropy
from facemtl.training.task import training_view
from tests.helpers import TINY_MODEL


def _probs(n, k, seed):
    logits = np.random.default_rng(seed).normal(size=(n, k))
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")


def test_unlabelled_samples_do_not_dilute_the_loss():
    loss = MaskedSparseCategoricalCrossentropy()
    labels = np.array([0, 3, 6] + [-1] * 29)
    probs = _probs(32, 7, 0)
    full = float(loss(labels, probs))
    alone = float(loss(labels[:3], probs[:3]))
    expected = -np.mean(np.log(probs[np.arange(3), labels[:3]]))
    assert full == pytest.approx(alone, rel=1e-6)
    assert full == pytest.approx(expected, rel=1e-5)


def test_batch_without_labels_gives_zero_not_nan():
    loss = MaskedSparseCategoricalCrossentropy()
    assert float(loss(np.full(8, -1), _probs(8, 7, 1))) == 0.0


def test_class_weights_make_a_weighted_mean():
    probs = _probs(4, 3, 2)
    labels = np.array([0, 1, 2, -1])
    w = [1.0, 2.0, 3.0]
    ce = -np.log(probs[np.arange(3), labels[:3]])
    expected = (ce * w).sum() / sum(w)
    assert float(MaskedSparseCategoricalCrossentropy(class_weights=w)(labels, probs)) == pytest.approx(expected, rel=1e-5)


def test_masked_accuracy_ignores_missing_labels():
    metric = MaskedSparseCategoricalAccuracy()
    metric.update_state(np.array([1, -1, 0, -1]), np.array([[0, 1], [0, 1], [0, 1], [1, 0]], "float32"))
    assert float(metric.result()) == 0.5
    metric.reset_state()
    metric.update_state(np.array([-1, -1]), np.array([[0, 1], [1, 0]], "float32"))
    assert float(metric.result()) == 0.0


def test_compiled_model_3_labelled_in_32_equals_the_3_alone():
    """The issue's check, through Keras' own compile/evaluate with loss weights."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_multitask_model(5, input_shape=(64, 64, 3), **TINY_MODEL)
    view = training_view(model)
    view.compile(
        optimizer="sgd",
        loss={t: MaskedSparseCategoricalCrossentropy() for t in ("identity", "expression")},
        loss_weights={"identity": 0.7, "expression": 1.3},
        metrics={t: [MaskedSparseCategoricalAccuracy()] for t in ("identity", "expression")},
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 64, 64, 3)).astype("float32")
    ids = np.r_[[0, 2, 4], np.full(29, -1)].astype("int32")
    exprs = np.full(32, -1, "int32")  # no expression label at all in this batch
    full = view.evaluate(x, {"identity": ids, "expression": exprs}, batch_size=32, return_dict=True, verbose=0)
    alone = view.evaluate(x[:3], {"identity": ids[:3], "expression": exprs[:3]}, batch_size=32, return_dict=True,
                          verbose=0)
    assert full["identity_loss"] == pytest.approx(alone["identity_loss"], rel=1e-5)
    assert full["identity_accuracy"] == pytest.approx(alone["identity_accuracy"])
    assert full["expression_loss"] == 0.0 and not np.isnan(full["loss"])
    assert full["loss"] == pytest.approx(0.7 * full["identity_loss"], rel=1e-5)


def test_arcface_and_cosface_penalise_only_the_labelled_class():
    from facemtl.training.losses import Margin

    cos = np.array([[0.8, 0.3, -0.2], [0.1, -0.97, 0.5]], np.float32)
    labels = np.array([0, 1])
    arc = np.asarray(Margin("arcface", 0.5, 10.0).logits(labels, cos))
    np.testing.assert_allclose(arc[0], 10 * np.array([np.cos(np.arccos(0.8) + 0.5), 0.3, -0.2]), rtol=1e-5)
    # θ + m past π: the linear fallback keeps the target logit below the plain cosine.
    assert arc[1, 1] < 10 * -0.97 and arc[1, 0] == pytest.approx(1.0) and arc[1, 2] == pytest.approx(5.0)
    cosface = np.asarray(Margin("cosface", 0.35, 10.0).logits(labels, cos))
    np.testing.assert_allclose(cosface, 10 * (cos - 0.35 * np.eye(3)[labels]), rtol=1e-5)


def test_margin_loss_is_masked_and_larger_than_plain_softmax():
    from facemtl.training.losses import Margin

    cos = np.array([[0.8, 0.3], [0.2, 0.6], [0.9, 0.1]], np.float32)
    loss = MaskedSparseCategoricalCrossentropy(margin=Margin("cosface", 0.35, 30.0))
    only_first_two = float(loss(np.array([0, 1]), cos[:2]))
    assert float(loss(np.array([0, 1, -1]), cos)) == pytest.approx(only_first_two, rel=1e-6)
    plain = MaskedSparseCategoricalCrossentropy(margin=Margin("cosface", 0.0, 30.0))
    assert only_first_two > float(plain(np.array([0, 1]), cos[:2]))
    config = loss.get_config()
    assert MaskedSparseCategoricalCrossentropy.from_config(config).margin == loss.margin


@pytest.mark.parametrize("kwargs", [dict(kind="sphereface", margin=0.5, scale=30), dict(kind="arcface", margin=-0.1,
                                    scale=30), dict(kind="cosface", margin=0.3, scale=0)])
def test_bad_margins_are_refused(kwargs):
    from facemtl.training.losses import Margin

    with pytest.raises(ValueError, match="Received"):
        Margin(**kwargs)


def test_masked_mean_absolute_error_ignores_missing_values():
    from facemtl.training.losses import MaskedMeanAbsoluteError

    loss = MaskedMeanAbsoluteError()
    assert float(loss(np.array([30.0, np.nan, 10.0]), np.array([27.0, 99.0, 11.0]))) == pytest.approx(2.0)
    assert float(loss(np.array([np.nan]), np.array([5.0]))) == 0.0  # nothing labelled: 0, not NaN
