"""Presets: the shipped model as a Keras model, its weights file, and its SavedModel written on first use."""

import json
import os

import numpy as np
import pytest

from facemtl.errors import ModelFormatError
from facemtl.export import cache
from facemtl.export.metadata import read_metadata
from facemtl.models import presets
from tests.helpers import run_cli_here

HERE = os.path.dirname(__file__)


def _tiny_preset(tmp_path, seed=0):
    """A 112-px dlib multi-task model with random weights, written as a preset; returns (model, folder)."""
    from facemtl.config import ModelConfig
    from facemtl.labels import EXPRESSIONS
    from facemtl.models import build_multitask

    config = ModelConfig(backbone="dlib_resnet", height=112, width=112, crop_layout="dlib", expression_units=[8],
                         freeze_backbone=True)
    model = build_multitask(config, num_identities=2)
    rng = np.random.default_rng(seed)
    for v in model.variables:  # everything but the trunk's stem: what the builder loads must come from dlib
        if "seed_generator" not in v.path and not v.path.startswith("stem_"):
            v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))
    import dataclasses

    meta = {"name": "tiny", "version": 1, "model_id": "abc", "identities": ["ann", "bob"],
            "expressions": list(EXPRESSIONS), "crop": {"layout": "dlib"}, "model_config": dataclasses.asdict(config)}
    return model, presets.write_preset(model, meta, str(tmp_path / "tiny" / "1"))


@pytest.mark.slow
def test_a_preset_stores_only_what_the_builder_cannot_load_and_rebuilds_the_same_model(tmp_path):
    model, folder = _tiny_preset(tmp_path)
    stored = np.load(os.path.join(folder, presets.WEIGHTS_FILE)).files
    assert not [k for k in stored if k.startswith("stem_")]  # dlib's own weights are not shipped twice
    assert any(k.startswith("expression_stage3") for k in stored)
    again = presets.from_preset(folder)
    x = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3)).astype("float32")
    a, b = model(x), again(x)
    for key in ("identity", "expression", "embedding"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-6)
    with pytest.raises(FileExistsError):
        presets.write_preset(model, read_metadata(folder), folder)


@pytest.mark.slow
def test_a_damaged_or_foreign_preset_is_a_clear_error(tmp_path):
    _, folder = _tiny_preset(tmp_path)
    weights = os.path.join(folder, presets.WEIGHTS_FILE)
    stored = dict(np.load(weights))
    info = json.loads(str(stored["__preset__"]))
    # dlib's file differs from the one the preset was made with: the fingerprint says so.
    np.savez(weights, **{**stored, "__preset__": np.array(json.dumps({**info, "built_fingerprint": "0" * 40}))})
    with pytest.raises(ModelFormatError, match="the weights the builder loads .dlib.s network.*reinstall facemtl"):
        presets.from_preset(folder)
    key = next(k for k in stored if k.startswith("expression_dense1"))
    np.savez(weights, **{**stored, key: stored[key][:1]})
    with pytest.raises(ModelFormatError, match="expression_dense1"):
        presets.from_preset(folder)
    with open(weights, "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(ModelFormatError, match="preset.weights.npz"):
        presets.from_preset(folder)
    with pytest.raises(ModelFormatError, match="release/5"):  # an unknown name lists the installed presets
        presets.preset_dir("nonesuch")


def test_the_release_preset_is_listed_and_small():
    listed = presets.list_presets()
    assert [(p["name"], p["version"]) for p in listed] == [("release", 5)]
    folder = listed[0]["path"]
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    assert size < 60 * 2**20, size  # the package stays under 60 MB: dlib's trunk is not shipped twice
    assert not os.path.exists(os.path.join(folder, "saved_model.pb"))


@pytest.mark.slow
def test_release_preset_answers_as_the_shipped_savedmodel_did_on_a_real_face():
    """from_preset("release") and the SavedModel written from it, against version 3's SavedModel's recorded answers.

    Release 4 added age and gender heads on the embedding and kept everything else; release 5 keeps release 4's
    weights and runs the mirror pass only for uncertain faces: identity and embedding are version 3's, and so is
    the expression answer where the mirror pass runs (the astronaut, a confident "happy", keeps her face's answer).
    """
    import tensorflow as tf
    from skimage import data

    from facemtl.inference import FaceAnalyzer
    from facemtl.installed import default_model
    from facemtl.models.multitask import split_mirror_gate

    with open(os.path.join(HERE, "data", "release3_astronaut.json"), encoding="utf-8") as f:
        shipped = json.load(f)
    path = default_model()
    analyzer = FaceAnalyzer(path)
    chip = np.stack(analyzer.detect_and_align(analyzer.load(data.astronaut()))[1])
    model = presets.from_preset("release")
    keras_out = model(chip.astype("float32"), training=False)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(chip))
    pairs = {"expression_probs": "expression", "identity_probs": "identity", "embedding": "embedding"}
    for served_key, keras_key in pairs.items():
        np.testing.assert_allclose(np.asarray(keras_out[keras_key])[0], served[served_key].numpy()[0], atol=1e-4)
        if served_key != "expression_probs":
            np.testing.assert_allclose(served[served_key].numpy()[0], shipped[served_key], atol=1e-4)
    face_model, mirror_model = split_mirror_gate(model)
    face = np.asarray(face_model(chip.astype("float32"), training=False)["expression"])
    mirror = np.asarray(mirror_model(chip.astype("float32"), training=False))
    gate = read_metadata(presets.preset_dir("release"))["model_config"]["mirror_threshold"]
    assert face[0].max() >= gate  # confident: the face's own answer, no mirror pass
    np.testing.assert_allclose(served["expression_probs"].numpy()[0], face[0], atol=1e-4)
    np.testing.assert_allclose((face[0] + mirror[0]) / 2, shipped["expression_probs"], atol=1e-4)  # version 3's
    meta = read_metadata(presets.preset_dir("release"))
    with open(os.path.join(path, presets.METADATA_FILE), encoding="utf-8") as f:
        assert json.load(f)["model_id"] == meta["model_id"]  # galleries made with the shipped SavedModel still match
    assert os.path.isfile(os.path.join(path, "assets.extra", "model.tflite"))
    # Age and gender from the same forward pass: an adult woman.
    np.testing.assert_allclose(np.asarray(keras_out["age"])[0], served["age"].numpy()[0], atol=1e-3)
    assert 25 < float(served["age"].numpy()[0]) < 55 and served["gender"].numpy()[0] == b"female"


@pytest.mark.slow
def test_an_exports_weights_are_read_from_its_files_as_the_model_held_them(trained, tmp_path):
    """`export_variables` (no graph loaded) gives every weight of the exported model, by name, to the bit."""
    values = presets.export_variables(trained.export_dir)
    weights = {v.path: np.asarray(v) for v in trained.model.weights if "seed_generator" not in v.path}
    assert set(weights) <= set(values)
    for name, value in weights.items():
        np.testing.assert_array_equal(values[name], value, err_msg=name)
    (tmp_path / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(ModelFormatError, match=f"^{tmp_path}: not a readable SavedModel"):
        presets.export_variables(str(tmp_path))


@pytest.mark.slow
def test_export_command_writes_the_release_savedmodel_without_a_run_folder(tmp_path):
    r = run_cli_here("export", "release", "--base-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    path = json.loads(r.stdout.strip().splitlines()[-1])["export_dir"]
    assert path == str(tmp_path / "release" / "5")
    assert {"saved_model.pb", "variables", "assets.extra"} <= set(os.listdir(path))
    r = run_cli_here("export", "nonesuch", "--base-dir", str(tmp_path))
    assert r.returncode != 0 and "release/5" in r.stderr


@pytest.mark.slow
def test_processes_asking_at_once_for_a_presets_savedmodel_write_it_once(tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("FACEMTL_HOME", str(tmp_path / "home"))
    _, folder = _tiny_preset(tmp_path)
    writes, export = [], cache.export_preset

    def counted(*args, **kwargs):
        writes.append(args)
        return export(*args, **kwargs)

    monkeypatch.setattr(cache, "export_preset", counted)
    got = []
    # Each thread opens the lock file itself, as another process would: flock excludes them the same way.
    threads = [threading.Thread(target=lambda: got.append(cache.saved_model_for(folder))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(writes) == 1 and len(got) == 2 and got[0] == got[1]
    assert os.path.isfile(os.path.join(got[0], "saved_model.pb"))


@pytest.mark.slow
def test_the_savedmodel_is_written_once_and_a_reinstall_of_the_same_weights_is_not_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEMTL_HOME", str(tmp_path / "home"))
    _, folder = _tiny_preset(tmp_path)
    target = cache.saved_model_for(folder)
    assert target == presets.cached_saved_model(read_metadata(folder))
    written = os.path.getmtime(os.path.join(target, "saved_model.pb"))
    weights = os.path.join(folder, presets.WEIGHTS_FILE)
    os.utime(weights, ns=(1, 10**18))  # the same file installed again: a new time, the same bytes
    monkeypatch.setattr(cache, "export_preset", lambda *a, **k: pytest.fail("written again"))
    assert cache.saved_model_for(folder) == target
    with open(os.path.join(target, presets.METADATA_FILE), encoding="utf-8") as f:
        assert json.load(f)["preset"]["weights_stamp"] == [os.path.getsize(weights), 10**18]  # recorded: no more hashing
    sha1 = cache._sha1  # the weights are not hashed again (the small metadata file is)
    monkeypatch.setattr(cache, "_sha1", lambda folder, name: pytest.fail("hashed again") if name == presets.WEIGHTS_FILE
                        else sha1(folder, name))
    assert cache.saved_model_for(folder) == target
    assert os.path.getmtime(os.path.join(target, "saved_model.pb")) == written
    # Newer metadata for the same weights (a calibration measured later) reaches the SavedModel without a rewrite.
    presets.update_preset_metadata(folder, {"clustering": {"threshold": 0.5}})
    assert cache.saved_model_for(folder) == target
    with open(os.path.join(target, presets.METADATA_FILE), encoding="utf-8") as f:
        assert json.load(f)["clustering"] == {"threshold": 0.5}
    assert os.path.getmtime(os.path.join(target, "saved_model.pb")) == written
