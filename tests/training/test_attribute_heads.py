"""Age and gender heads on cached embeddings: joint masked training, the epoch chosen on validation, scores."""

import numpy as np
import pytest

from facemtl.config import recipe_from_dict
from facemtl.data.utkface import task_labels
from facemtl.evaluation import bias_table, scores
from facemtl.labels import IGNORE_LABEL
from facemtl.training import attribute_heads as ah


def _recipe(tmp_path, epochs=8):
    return recipe_from_dict({
        "data": {"source": "mixed", "cache_dir": str(tmp_path), "sources": [{"format": "utkface", "path": "u"}]},
        "feature_cache": {"enabled": True, "attribute_epochs": epochs, "attribute_learning_rate": 0.01},
        "tasks": [{"name": "age", "kind": "distribution", "max_value": 20, "sources": ["utkface"], "units": 16},
                  {"name": "gender", "classes": ["female", "male"], "sources": ["utkface"], "units": 16}]})


def _faces(n=600, dim=8, seed=0):
    """Embeddings whose first value says the gender and second the age; some faces lack one label."""
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    age = rng.integers(0, 21, n).astype(np.float32)
    x = rng.normal(size=(n, dim)).astype(np.float32) * 0.1
    x[:, 0] = np.where(gender == 1, 1.0, -1.0)
    x[:, 1] = age / 10 - 1
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    views = np.stack([x, x + rng.normal(size=x.shape).astype(np.float32) * 0.01])
    labels = {"age": age.copy(), "gender": gender.astype(np.int32)}
    labels["age"][:50] = np.nan  # a source that does not label age...
    labels["gender"][50:100] = IGNORE_LABEL  # ...or gender: masked out of that task's loss
    split = np.zeros(n, np.int8)
    split[400:500], split[500:] = 1, 2
    groups = {"race": rng.integers(0, 5, n), "gender": gender, "age": age}
    return ah.AttributeFaces(views, labels, split, groups, {})


def test_heads_learn_both_tasks_jointly_and_keep_the_best_epoch(tmp_path):
    recipe = _recipe(tmp_path)
    faces = _faces()
    heads, validation, epoch = ah.train_heads(recipe, faces, str(tmp_path), log=lambda *_: None)
    assert 1 <= epoch <= 8 and (tmp_path / "attributes" / "best.weights.h5").is_file()
    assert validation["gender"]["accuracy"] > 0.95
    assert validation["age"]["mae"] < 3.0  # of 0..20 years; a constant guess is off by ~5
    tasks = recipe.tasks
    predicted = ah.answers(heads, tasks, faces.embeddings[0])
    test = scores(tasks, faces.labels, predicted, faces.split == 2)
    assert test["age"]["count"] == 100 and test["gender"]["count"] == 100
    table = bias_table(tasks, faces, predicted, faces.split == 2)
    assert sum(g["gender"]["count"] for g in table["groups"].values()) == 100
    assert set(table["age_bands"]) <= {"0-12", "13-19", "20-39", "40-59", "60-116"}


def test_the_full_model_takes_the_trained_heads(tmp_path):
    from facemtl.config import ModelConfig
    from facemtl.models.multitask import build_multitask

    recipe = _recipe(tmp_path, epochs=2)
    config = ModelConfig(stage_blocks=[1, 1], base_filters=16, identity_units=[32], expression_units=[32],
                         embedding_dim=8)
    model = build_multitask(config, 3, attributes=recipe.tasks)
    heads, _, _ = ah.train_heads(recipe, _faces(dim=8), str(tmp_path), log=lambda *_: None)
    copied = ah.copy_heads(heads, model)
    assert sorted(copied) == ["age_dense1", "age_distribution", "gender", "gender_dense1"]
    x = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3)).astype("float32")
    out = model(x)
    embedding = np.asarray(out["embedding"])
    expected = ah.answers(heads, recipe.tasks, embedding)
    np.testing.assert_allclose(np.asarray(out["age"]), expected["age"], rtol=1e-4, atol=1e-4)
    assert (np.asarray(out["gender"]).argmax(1) == expected["gender"]).all()


@pytest.mark.parametrize("task, message", [({"name": "race", "kind": "classification", "classes": ["a", "b"]},
                                            "not labelled by utkface"),
                                           ({"name": "gender", "kind": "classification", "classes": ["f", "m"]},
                                            "are not utkface's")])
def test_a_task_utkface_does_not_label_is_refused(task, message):
    from facemtl.config import TaskConfig
    from facemtl.data.utkface import UTKFaces
    from facemtl.errors import RecipeError

    faces = UTKFaces(["a"], np.array([3.0]), np.array([1]), np.array([0]), np.array([False]), [])
    with pytest.raises(RecipeError, match=message):
        task_labels(faces, TaskConfig(**task))
