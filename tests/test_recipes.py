"""Every shipped recipe validates (full and smoke); the GPU recipe's smoke runs on fixture data."""

import glob
import os

import pytest

from facemtl.config import load_recipe
from tests.helpers import REPO, write_image

RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml")))


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
@pytest.mark.parametrize("smoke", [False, True])
def test_recipe_validates(path, smoke):
    recipe = load_recipe(path, smoke=smoke)
    assert recipe.name == os.path.splitext(os.path.basename(path))[0]
    if smoke:
        assert recipe.output_dir.startswith("runs/smoke")


def test_gpu_recipe_is_the_full_scale_one():
    r = load_recipe(os.path.join(REPO, "recipes", "fer2013_vggface2_resnet50.yaml"))
    assert (r.model.backbone, r.model.identity_head, r.data.streaming) == ("resnet50", "arcface", True)
    assert [s.format for s in r.data.sources] == ["fer2013_csv", "vggface2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fer2013_vggface2_resnet50", "fer2013_vggface2_dlib"])
def test_gpu_recipe_smoke_streams_vggface2(tmp_path, fer_csv, name):  # noqa: F811
    from facemtl.training.trainer import train

    vggface2 = tmp_path / "vggface2"  # the tree without the optional CSVs: 3 people x 4 photos
    for cls in ("n000002", "n000003", "n000005"):
        (vggface2 / "train" / cls).mkdir(parents=True)
        for k in range(4):
            write_image(vggface2 / "train" / cls / f"000{k}_01.jpg", (100, 120))

    sources = (f"[{{format: fer2013_csv, path: '{fer_csv}', split: Training, test_split: PublicTest, val_fraction: 0.5, weight: 0.5}},"
               f" {{format: vggface2, path: '{vggface2}', val_fraction: 0.25, test_fraction: 0.25, weight: 0.5}}]")
    recipe = load_recipe(os.path.join(REPO, "recipes", f"{name}.yaml"), smoke=True, overrides=[
        f"data.sources={sources}", f"output_dir={tmp_path / 'runs'}", f"export.base_dir={tmp_path / 'models'}",
        f"data.cache_dir={tmp_path / 'cache'}"])
    logs = []
    result = train(recipe, log=logs.append)
    assert any("vggface2" in line and "streamed from disk" in line for line in logs)
    assert set(result.test_report) == {"identity", "expression"}
    assert os.path.isfile(os.path.join(result.export_dir, "saved_model.pb"))
    from facemtl.export import read_metadata

    meta = read_metadata(result.export_dir)
    assert (meta["backbone"], meta["crop"]["layout"]) == (recipe.model.backbone, recipe.model.crop_layout)
