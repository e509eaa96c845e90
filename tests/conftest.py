"""Shared fixtures: a tiny trained-and-exported model, reused by export/inference/CLI tests."""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from tests.helpers import QUICKSTART, SHARED_DATA, fer_pixels, once_per_run, tiny_overrides, write_image


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each imports TensorFlow and builds models: about 1.5 GB)."""
    return max(1, min(4, os.cpu_count() or 1))


def _train_quickstart(*overrides):
    """The quickstart's smoke variant trained and exported into a shared folder, once per test run (about 15 s).

    Returns:
        `(build, load)` for `once_per_run`: `load` gives the same `TrainResult`, the model read back from the
        copy `build` saved beside the run.
    """
    def build(folder):
        from facemtl.config import load_recipe
        from facemtl.training.trainer import train

        recipe = load_recipe(QUICKSTART, overrides=[*tiny_overrides(folder), *overrides], smoke=True)
        result = train(recipe, log=lambda *_: None)
        result.model.save(folder / "model.keras")
        record = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "model"}
        (folder / "result.json").write_text(json.dumps(record, default=lambda x: x.tolist()))  # NumPy numbers
        return result

    def load(folder):
        import keras

        from facemtl.training.runs import TrainResult

        record = json.loads((folder / "result.json").read_text())
        return TrainResult(model=keras.saving.load_model(folder / "model.keras", compile=False), **record)

    return build, load


@pytest.fixture(scope="session")
def trained(tmp_path_factory, worker_id):
    """The quickstart's smoke variant, trained and exported once for the whole run."""
    return once_per_run(tmp_path_factory, worker_id, "trained", *_train_quickstart())


@pytest.fixture(scope="session")
def trained_arcface(tmp_path_factory, worker_id):
    """The quickstart's smoke variant with an ArcFace identity head, exported once for the whole run."""
    return once_per_run(tmp_path_factory, worker_id, "trained_arcface",
                        *_train_quickstart("model.identity_head=arcface", "export.name=arcface"))


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


@pytest.fixture
def fer_csv(tmp_path):
    path = tmp_path / "fer2013.csv"
    usages = ["Training"] * 14 + ["PublicTest"] * 3 + ["PrivateTest"] * 3
    rows = [f'{i % 7},"{fer_pixels(i)}",{u}' for i, u in enumerate(usages)]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def vggface2(tmp_path):
    root = tmp_path / "vggface2"
    for cls in ("n000002", "n000003", "n000005"):
        (root / "train" / cls).mkdir(parents=True)
        for k in (1, 2):
            write_image(root / "train" / cls / f"000{k}_01.jpg", (100, 120))
    (root / "identity_meta.csv").write_text(
        'Class_ID, Name, Sample_Num, Flag, Gender\nn000002, "Ann_A", 2, 1, f\nn000003, "Bob_B", 2, 1, m\n'
        'n000005, "Cy_C", 2, 1, m\n')
    (root / "train_list.txt").write_text("\n".join(f"{c}/000{k}_01.jpg" for c in ("n000002", "n000003", "n000005")
                                                   for k in (1, 2)) + "\n")
    (root / "bb_landmark").mkdir()
    (root / "bb_landmark" / "loose_bb_train.csv").write_text(
        "NAME_ID,X,Y,W,H\n" + "\n".join(f"{c}/000{k}_01,10,20,50,60" for c in ("n000002", "n000003", "n000005")
                                        for k in (1, 2)) + "\n")
    return root
