import os

import pytest

from facemtl.config import load_recipe, recipe_from_dict
from facemtl.errors import RecipeError
from tests.helpers import QUICKSTART


def test_quickstart_recipe_loads_and_overrides():
    recipe = load_recipe(QUICKSTART, overrides=["train.epochs=3", "loss_weights.expression=2.5"])
    assert recipe.name == "quickstart"
    assert recipe.train.epochs == 3
    assert recipe.loss_weights.expression == 2.5
    assert recipe.model.backbone == "resnet18"


def test_smoke_variant_applies_before_overrides():
    recipe = load_recipe(QUICKSTART, overrides=["train.epochs=2"], smoke=True)
    assert recipe.model.stage_blocks == [1, 1]
    assert recipe.train.epochs == 2


@pytest.mark.parametrize(
    "raw, overrides, message",
    [
        ({"model": {"backbon": "resnet18"}}, [], "'model.backbon'"),
        ({"train": {"epochs": "many"}}, [], "train.epochs='many'"),
        ({"train": {"epochs": 0}}, [], "must be > 0"),
        ({"loss_weights": {"identity": -1}}, [], "loss_weights.identity"),
        ({"model": {"channels": 2}}, [], "model.channels=2"),
        ({}, ["train.epoch=3"], "'train.epoch'"),
        ({}, ["train.epochs"], "KEY=VALUE"),
        ({"model": "resnet18"}, [], "expected a mapping"),
        ({"model": {"expression_branches": 2}, "feature_cache": {"branches": [{}]}}, [], "one entry per expression branch"),
        ({"feature_cache": {"branches": [{"label_smothing": 0}]}}, [], "'feature_cache.branches[0].label_smothing'"),
        ({"feature_cache": {"branches": [{"map_shift": "two"}]}}, [], "feature_cache.branches[0].map_shift='two'"),
        ({"feature_cache": {"branches": [{"keep": True}]}}, [], "needs model.init_from"),
        ({"model": {"init_from": "release"}, "feature_cache": {"branches": [{"keep": True, "map_shift": 0}]}}, [],
         "takes no training settings"),
        ({"data": {"sources": [{"path": "a"}]}}, ["data.sources.1.path=b"], "has 1 entries; '1'"),
        ({"data": {"sources": [{"path": "a"}]}}, ["data.sources.0.pth=b"], "'data.sources.0.pth'"),
        ({}, ["model.mirror_threshold=1.5"], "'model.mirror_threshold': must be in [0, 1]"),
    ],
)
def test_bad_recipes_name_the_key(raw, overrides, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace(".", r"\.").replace("(", r"\(")):
        recipe_from_dict(raw, overrides, source="r.yaml")


def test_an_unregistered_backbone_is_refused_before_training_naming_the_key():
    """Recipes name any backbone of the registry (`models.multitask.BACKBONES`), so the check runs before training,
    not in the schema (which sits below the models)."""
    from facemtl.training.runs import check_before_training

    recipe = recipe_from_dict({"model": {"backbone": "resnet99"}}, [], source="r.yaml")
    with pytest.raises(RecipeError, match=r"model\.backbone='resnet99'"):
        check_before_training(recipe, None)


def test_an_override_can_set_a_key_of_one_list_entry():
    recipe = recipe_from_dict({"data": {"source": "mixed", "sources": [{"path": "a"}, {"path": "b"}]}},
                              ["data.sources.1.path=mine", "data.sources.0.val_fraction=0.2"])
    assert [s.path for s in recipe.data.sources] == ["a", "mine"] and recipe.data.sources[0].val_fraction == 0.2


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml"):
        load_recipe(path)


def test_exponent_notation_is_a_number():
    recipe = recipe_from_dict({"optimizer": {"learning_rate": "1e-4"}}, ["optimizer.weight_decay=5e-5"])
    assert recipe.optimizer.learning_rate == 1e-4 and recipe.optimizer.weight_decay == 5e-5
    with pytest.raises(RecipeError, match="expected a number"):
        recipe_from_dict({"optimizer": {"learning_rate": "fast"}})


def test_learning_rate_scales_linearly_with_the_global_batch():
    from facemtl.training.optimizers import learning_rate

    recipe = recipe_from_dict({"optimizer": {"learning_rate": 0.1, "reference_batch_size": 256},
                               "train": {"batch_size": 1024}})
    assert learning_rate(recipe, steps_per_epoch=10) == pytest.approx(0.4)
    recipe = recipe_from_dict({"optimizer": {"learning_rate": 0.1}, "train": {"batch_size": 1024}})
    assert learning_rate(recipe, steps_per_epoch=10) == pytest.approx(0.1)


def test_branch_settings_apply_each_branchs_overrides_to_the_shared_section():
    from facemtl.config import branch_settings

    recipe = recipe_from_dict({"model": {"expression_branches": 3, "init_from": "release"},
                               "feature_cache": {"label_smoothing": 0.1, "map_shift": 2, "branches": [
                                   {"keep": True}, {}, {"map_shift": 0, "views": ["plain"]}]}})
    kept, same, own = branch_settings(recipe)
    assert kept is None
    assert (same.label_smoothing, same.map_shift) == (0.1, 2)
    assert (own.label_smoothing, own.map_shift, own.views) == (0.1, 0, ["plain"])
    assert len(branch_settings(recipe_from_dict({}))) == 1  # no list: one branch, the section's settings


_UTK = {"source": "mixed", "sources": [{"format": "utkface", "path": "u"}]}


@pytest.mark.parametrize(
    "tasks, extra, message",
    [
        ([{"name": "age", "kind": "distribution", "sources": ["utkface"]}], {}, "train on cached embeddings"),
        ([{"name": "Age", "kind": "distribution", "sources": ["utkface"]}], {}, "'tasks[0].name'"),
        ([{"name": "embedding", "kind": "regression", "sources": ["utkface"]}], {}, "reserved"),
        ([{"name": "gender", "kind": "classification", "classes": ["f"], "sources": ["utkface"]}],
         {"feature_cache": {"enabled": True}}, "'tasks[0].classes'"),
        ([{"name": "age", "kind": "regression", "sources": ["imdb"]}], {"feature_cache": {"enabled": True}},
         "'tasks[0].sources'"),
        ([{"name": "age", "kind": "regression", "sources": ["utkface"]}] * 2, {"feature_cache": {"enabled": True}},
         "repeated"),
        ([{"name": "age", "kind": "regression", "sources": ["utkface"], "level": "trunk"}],
         {"feature_cache": {"enabled": True}}, "'tasks[0].level'"),
        ([{"name": "age", "kind": "regression", "sources": ["utkface"], "loss_weight": -1}],
         {"feature_cache": {"enabled": True}}, "'tasks[0].loss_weight': must be >= 0"),
        ([{"name": "age", "kind": "regression", "sources": ["utkface"]},
          {"name": "old", "kind": "distribution", "max_value": 0, "sources": ["utkface"]}],
         {"feature_cache": {"enabled": True}}, "'tasks[1].max_value': must be > 0"),
    ],
)
def test_bad_tasks_name_the_key(tasks, extra, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace(".", r"\.")):
        recipe_from_dict({"data": _UTK, "tasks": tasks, **extra}, source="r.yaml")


def test_tasks_are_data_and_two_tasks_stay_the_default():
    from facemtl.config import attribute_tasks, task_list

    plain = recipe_from_dict({"loss_weights": {"expression": 2.0}})
    assert [(t.name, t.loss_weight) for t in task_list(plain)] == [("identity", 1.0), ("expression", 2.0)]
    recipe = recipe_from_dict({"data": _UTK, "feature_cache": {"enabled": True}, "tasks": [
        {"name": "age", "kind": "distribution", "sources": ["utkface"], "loss_weight": 0.5},
        {"name": "gender", "classes": ["female", "male"], "sources": ["utkface"]},
        {"name": "expression", "loss_weight": 3.0}]}, ["tasks.0.loss_weight=0.25"])
    assert [(t.name, t.loss_weight) for t in task_list(recipe)] == [
        ("identity", 1.0), ("expression", 3.0), ("age", 0.25), ("gender", 1.0)]
    assert [t.name for t in attribute_tasks(recipe)] == ["age", "gender"]


def test_shipped_recipes_are_named_and_listed():
    from facemtl.config import RECIPES_DIR, recipe_path, shipped_recipes
    from tests.helpers import run_cli_here

    names = shipped_recipes()
    assert {"quickstart", "finetune_release", "release_cpu"} <= set(names)
    assert all(line and len(line) <= 110 for line in names.values())
    assert recipe_path("quickstart") == os.path.join(RECIPES_DIR, "quickstart.yaml")
    assert load_recipe("quickstart", smoke=True).name == load_recipe(QUICKSTART, smoke=True).name
    with pytest.raises(RecipeError, match="Recipe file not found: nope .*quickstart.*`facemtl recipes`"):
        recipe_path("nope")
    r = run_cli_here("recipes")
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()] == list(names)
