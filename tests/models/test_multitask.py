import keras
import numpy as np
import pytest

from facemtl.labels import EXPRESSIONS
from facemtl.models import build_multitask_model, set_backbone_trainable
from tests.helpers import TINY_MODEL


def test_outputs_are_named_and_shaped():
    model = build_multitask_model(5, input_shape=(64, 64, 3), **TINY_MODEL)
    assert model.input.name == "image" or model.inputs[0].name == "image"
    assert set(model.output_names) == {"identity", "expression", "embedding"}
    out = model(np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32"))
    assert out["identity"].shape == (4, 5)
    assert out["expression"].shape == (4, len(EXPRESSIONS))
    assert out["embedding"].shape == (4, 16)
    np.testing.assert_allclose(np.sum(out["identity"], -1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1, atol=1e-5)


def test_gray_input_is_replicated_to_rgb():
    model = build_multitask_model(3, input_shape=(64, 64, 1), **TINY_MODEL)
    assert model.get_layer("backbone").input_shape[-1] == 3
    assert model.get_layer("gray_to_rgb") is not None
    out = model(np.full((2, 64, 64, 1), 128, "float32"))
    assert out["expression"].shape == (2, 7)
    gray = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype("float32")
    rgb = np.asarray(keras.Model(model.inputs, model.get_layer("gray_to_rgb").output)(gray))
    normalized = np.asarray(keras.Model(model.inputs, model.get_layer("normalize").output)(gray))
    assert rgb.shape == (2, 64, 64, 3) and normalized.shape == (2, 64, 64, 1)
    assert np.corrcoef(normalized.ravel(), gray.ravel())[0, 1] > 0.999  # the gray values, scaled
    for channel in range(3):  # ...in each of the three channels the backbone reads
        np.testing.assert_array_equal(rgb[..., channel], normalized[..., 0])


def test_each_task_has_its_own_feature_layers():
    model = build_multitask_model(3, input_shape=(64, 64, 3), **TINY_MODEL)
    names = [layer.name for layer in model.layers]
    assert "identity_dense1" in names and "expression_dense1" in names
    # Both heads hang off the single shared backbone.
    assert names.count("backbone") == 1


def test_freeze_and_unfreeze_backbone():
    model = build_multitask_model(3, input_shape=(64, 64, 3), freeze_backbone=True, **TINY_MODEL)
    backbone_weights = len(model.get_layer("backbone").weights)
    head_trainable = len(model.trainable_weights)
    assert not model.get_layer("backbone").trainable
    set_backbone_trainable(model, True)
    assert len(model.trainable_weights) > head_trainable
    assert backbone_weights > 0


def test_single_task_variants():
    only_expr = build_multitask_model(3, input_shape=(64, 64, 3), tasks=("expression",), **TINY_MODEL)
    assert only_expr.output_names == ["expression"]
    with pytest.raises(ValueError, match="tasks"):
        build_multitask_model(3, tasks=("age",), **TINY_MODEL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_shape=(64, 64, 2)), "input_shape"),
        (dict(input_shape=(16, 16, 3)), ">= 32"),
        (dict(backbone="vgg16"), "model.backbone='vgg16'"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {**TINY_MODEL, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_multitask_model(3, **args)


def test_a_registered_backbone_can_be_named_in_a_recipe(monkeypatch):
    from facemtl.config import load_recipe
    from facemtl.models import multitask
    from tests.helpers import QUICKSTART

    monkeypatch.setitem(multitask.BACKBONES, "tiny_resnet", multitask.ResNetBackbone("resnet18"))
    recipe = load_recipe(QUICKSTART, overrides=["model.backbone=tiny_resnet", "model.stage_blocks=[1, 1]",
                                                "model.base_filters=8"])
    model = multitask.build_multitask(recipe.model, 3)
    assert sorted(model.output_names) == ["embedding", "expression", "identity"]
    assert model.get_layer("backbone").count_params() < 200_000  # the registered ResNet, at the recipe's size


def test_zero_identities_rejected():
    with pytest.raises(ValueError, match="num_identities"):
        build_multitask_model(0, **TINY_MODEL)


@pytest.mark.parametrize("head", ["arcface", "cosface"])
def test_margin_heads_train_on_cosines_and_serve_probabilities(head, tmp_path):
    import keras

    from facemtl.training.task import training_view

    model = build_multitask_model(5, input_shape=(64, 64, 3), identity_head=head, margin_scale=16.0, **TINY_MODEL)
    x = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3)).astype("float32")
    out = model(x)
    np.testing.assert_allclose(np.sum(out["identity"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-5)
    view = training_view(model)
    assert sorted(view.output_names) == ["expression", "identity"]
    cos = np.asarray(view(x)["identity"])
    assert cos.shape == (3, 5) and np.all(np.abs(cos) <= 1 + 1e-5)
    # The served probabilities are the softmax of the scaled cosines.
    np.testing.assert_allclose(out["identity"], keras.ops.softmax(16.0 * cos), rtol=1e-4, atol=1e-6)
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x)["embedding"], out["embedding"], atol=1e-5)


def test_unknown_identity_head_is_refused():
    with pytest.raises(ValueError, match="head=.sphereface."):
        build_multitask_model(5, identity_head="sphereface", **TINY_MODEL)


def test_attribute_heads_sit_on_the_embedding():
    from facemtl.config import ModelConfig, TaskConfig
    from facemtl.models.multitask import build_multitask

    config = ModelConfig(stage_blocks=[1, 1], base_filters=16, identity_units=[32], expression_units=[32],
                         embedding_dim=16)
    age = TaskConfig("age", "distribution", max_value=9, units=8)
    gender = TaskConfig("gender", "classification", classes=["female", "male"], units=8)
    model = build_multitask(config, 3, attributes=[age, gender])
    out = model(np.zeros((2, 64, 64, 3), "float32"))
    assert out["age"].shape == (2,) and out["gender"].shape == (2, 2)
    probs = keras.Model(model.input, model.get_layer("age_distribution").output)(np.zeros((2, 64, 64, 3)))
    np.testing.assert_allclose(out["age"], np.asarray(probs) @ np.arange(10), rtol=1e-5)  # the expected age
    assert 0 <= float(out["age"][0]) <= 9
    # The heads read the embedding only: the trunk's weights and the other outputs are the same without them.
    with pytest.raises(ValueError, match="must include identity"):
        build_multitask(config, 3, tasks=("expression",), attributes=[age])
