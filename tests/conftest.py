"""Shared fixtures: a tiny trained-and-exported model, reused by export/inference/CLI tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))
QUICKSTART = os.path.join(REPO, "recipes", "quickstart.yaml")

# Tiny networks everywhere: 64x64 input, two stages of one block, 16 filters.
TINY_MODEL = dict(stage_blocks=[1, 1], base_filters=16, identity_units=(32,), expression_units=(32,), embedding_dim=16)


def tiny_overrides(tmp_path):
    return [f"output_dir={tmp_path / 'runs'}", f"export.base_dir={tmp_path / 'saved_models'}"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Trains the quickstart's smoke variant once and exports it (about 15 s)."""
    from facemtl.config import load_recipe
    from facemtl.training.trainer import train

    tmp = tmp_path_factory.mktemp("trained")
    recipe = load_recipe(QUICKSTART, overrides=tiny_overrides(tmp), smoke=True)
    result = train(recipe, log=lambda *_: None)
    return result


@pytest.fixture(scope="session")
def trained_arcface(tmp_path_factory):
    """The quickstart's smoke variant with an ArcFace identity head, exported (about 15 s)."""
    from facemtl.config import load_recipe
    from facemtl.training.trainer import train

    tmp = tmp_path_factory.mktemp("trained_arcface")
    recipe = load_recipe(QUICKSTART, overrides=[*tiny_overrides(tmp), "model.identity_head=arcface",
                                                "export.name=arcface"], smoke=True)
    return train(recipe, log=lambda *_: None)


@pytest.fixture
def face_files(tmp_path):
    """A few generated face crops written as PNG/JPEG files in several modes."""
    from PIL import Image

    from facemtl.data.synthetic import generate_faces

    images, _, _ = generate_faces(1, 1, size=80, seed=3)
    paths = {}
    paths["rgb"] = tmp_path / "rgb.png"
    Image.fromarray(images[0]).save(paths["rgb"])
    paths["gray"] = tmp_path / "gray.jpg"
    Image.fromarray(images[1]).convert("L").save(paths["gray"])
    paths["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(images[2]).convert("RGBA").save(paths["rgba"])
    paths["text"] = tmp_path / "notes.png"
    paths["text"].write_text("this is not an image")
    return paths


def pytest_collection_modifyitems(config, items):
    if os.path.isdir(SHARED_DATA):
        return
    skip = pytest.mark.skip(reason=f"needs {SHARED_DATA} (absent on this machine)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)
