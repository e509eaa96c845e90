"""Training runs: resume after kill -9, NaN stop, MirroredStrategy over two logical CPUs, unfreezing."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facemtl.config import load_recipe
from facemtl.errors import FacemtlError
from facemtl.training.trainer import train
from tests.helpers import QUICKSTART, REPO, run_cli_here, tiny_overrides

pytestmark = pytest.mark.slow


def _history_epochs(run_dir):
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_kill_9_then_same_command_resumes(tmp_path):
    args = [sys.executable, "-m", "facemtl", "train", QUICKSTART, "--smoke",
            "--set", "train.epochs=8", "--set", "train.backup_every_steps=3",
            "--set", "data.synthetic.train_per_pair=6", "--set", "export.enabled=false"]
    for o in tiny_overrides(tmp_path):
        args += ["--set", o]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = tmp_path / "runs" / "quickstart"
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline and proc.poll() is None:
        dirs = list(runs.glob("*")) if runs.exists() else []
        if dirs and len(_history_epochs(dirs[0])) >= 3:
            run_dir = dirs[0]
            break
        time.sleep(0.05)
    assert run_dir is not None, "training finished or failed before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(_history_epochs(run_dir))
    assert 3 <= finished_before < 8
    assert (run_dir / "backup").is_dir()

    # The same command again, through the CLI's own entry in this process (TensorFlow is started here already).
    out = run_cli_here(*args[3:])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming interrupted run in {run_dir}" in out.stdout
    assert list(runs.glob("*")) == [run_dir]  # no second run folder
    # Same history length as an uninterrupted run, every epoch once.
    assert _history_epochs(run_dir) == list(range(8))
    # Finished epochs were not repeated: the resumed process started at or after the last backed-up epoch.
    first_resumed = int(out.stdout.split("Epoch ")[1].split("/")[0])
    assert first_resumed >= finished_before
    assert not (run_dir / "backup").exists() and (run_dir / "summary.json").is_file()


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """Epoch 1 trains and checkpoints; epoch 2 diverges: the best checkpoint stays byte for byte as epoch 1 left it."""
    import hashlib

    import keras
    import numpy as np

    import facemtl.training.callbacks as callbacks_module
    import facemtl.training.task as task_module

    def exploding(recipe, steps_per_epoch, factor=1.0, first_epoch=0):  # sane for one epoch, then a rate of 1e30
        return keras.optimizers.SGD(keras.optimizers.schedules.PiecewiseConstantDecay([steps_per_epoch - 1],
                                                                                        [0.01, 1e30]))

    saved = []
    real_save = callbacks_module.save_model_atomically

    def recording_save(model, path, weights_only=False):
        real_save(model, path, weights_only)
        with open(path, "rb") as f:
            saved.append(hashlib.sha256(f.read()).hexdigest())

    monkeypatch.setattr(task_module, "build_optimizer", exploding)
    monkeypatch.setattr(callbacks_module, "save_model_atomically", recording_save)
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + ["train.epochs=3"])
    lines = []
    with pytest.raises(FacemtlError, match="NaN or infinite"):
        train(recipe, log=lines.append)
    run_dir = next((tmp_path / "runs" / "quickstart").iterdir())
    assert _history_epochs(run_dir)[:1] == [0] and len(saved) == 1  # epoch 1 finished and was checkpointed
    best = run_dir / "checkpoints" / "best.keras"
    assert hashlib.sha256(best.read_bytes()).hexdigest() == saved[0]
    model = keras.saving.load_model(best, compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert not (run_dir / "backup").exists()
    assert not (tmp_path / "saved_models").exists()  # nothing exported from a diverged model


_MIRRORED = r"""
import json, sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from facemtl.config import load_recipe
from facemtl.training.trainer import train
out = {}
for strategy in ("mirrored", "default"):  # the same data, seed and model: two replicas, then one device
    recipe = load_recipe(sys.argv[1], smoke=True, overrides=sys.argv[2:] + [
        f"output_dir={sys.argv[2].split('=', 1)[1]}/{strategy}", f"train.strategy={strategy}",
        "train.devices=['/cpu:0', '/cpu:1']", "train.epochs=2", "model.dropout=0.0", "export.enabled=false"])
    lines = []
    result = train(recipe, log=lines.append)
    out[strategy] = {"lines": [l for l in lines if "replica(s)" in l], "loss": result.history["loss"],
                     "val_loss": result.history["val_loss"]}
print(json.dumps(out))
"""


def test_mirrored_strategy_over_two_logical_cpus_matches_one_device(tmp_path):
    """Two replicas train like one device on the same data: same losses (up to per-replica batch norm)."""
    import json

    out = subprocess.run([sys.executable, "-c", _MIRRORED, QUICKSTART, *tiny_overrides(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert "MirroredStrategy with 2 replica(s)" in runs["mirrored"]["lines"][0]
    assert "with 1 replica(s)" in runs["default"]["lines"][0]
    for key in ("loss", "val_loss"):
        mirrored, single = runs["mirrored"][key], runs["default"][key]
        assert len(mirrored) == len(single) == 2 and all(v == v for v in mirrored)
        for m, o in zip(mirrored, single):  # summed instead of averaged over replicas, these were 2x apart
            assert m == pytest.approx(o, rel=0.05), (key, mirrored, single)


def test_frozen_backbone_then_unfreeze(tmp_path, monkeypatch):
    """The backbone's weights (moving statistics included) stay fixed while frozen, then train."""
    import keras
    import numpy as np

    import facemtl.training.task as task_module
    import facemtl.training.trainer as trainer_module

    snapshots = {}
    real_build, real_callbacks = task_module.build_multitask, trainer_module.fit_callbacks

    def weights(model, backbone):
        return [w.numpy().copy() for layer in model.layers if (layer.name == "backbone") == backbone
                for w in layer.weights]

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        snapshots["model"], snapshots["start"] = model, weights(model, True)
        snapshots["heads"] = weights(model, False)
        return model

    def fit_callbacks(*args, **kwargs):
        model = snapshots["model"]
        return real_callbacks(*args, **kwargs) + [keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: snapshots.setdefault(epoch, (weights(model, True), weights(model, False))))]

    monkeypatch.setattr(task_module, "build_multitask", build)
    monkeypatch.setattr(trainer_module, "fit_callbacks", fit_callbacks)
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + [
        "model.freeze_backbone=true", "train.unfreeze_at_epoch=1", "train.epochs=2", "export.enabled=false"])
    lines = []
    result = train(recipe, log=lines.append)
    assert any("unfreezing the backbone at epoch 2" in line for line in lines)
    assert result.model.get_layer("backbone").trainable
    assert len(result.history["loss"]) == 2
    frozen_backbone, frozen_heads = snapshots[0]
    assert len(frozen_backbone) > 10
    for before, after in zip(snapshots["start"], frozen_backbone):
        np.testing.assert_array_equal(before, after)  # frozen: not one value moved
    assert any(not np.array_equal(a, b) for a, b in zip(snapshots["heads"], frozen_heads))  # the heads trained
    assert any(not np.allclose(a, b) for a, b in zip(frozen_backbone, snapshots[1][0]))  # unfrozen: it trains


def test_early_stopping_ends_the_run(tmp_path):
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + [
        "train.epochs=5", "train.early_stopping_patience=1", "train.early_stopping_min_delta=1e9",
        "export.enabled=false"])
    result = train(recipe, log=lambda *_: None)
    # Epoch 1 improves on nothing; epoch 2 cannot improve by 1e9, and patience 1 stops there.
    assert len(result.history["loss"]) == 2
    assert (Path(result.run_dir) / "summary.json").is_file()


def test_custom_loop_resumes_from_its_backup(tmp_path, monkeypatch):
    """The strategy.run loop (used for multi-worker runs) resumes after an interruption too."""
    from facemtl.training.backup import TrainingBackup

    overrides = tiny_overrides(tmp_path) + ["train.loop=custom", "train.epochs=3", "export.enabled=false"]
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=overrides)
    run_dir = str(tmp_path / "run")
    real_save = TrainingBackup.save

    def save_then_die(self, epochs_done):
        real_save(self, epochs_done)
        if epochs_done == 2:
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(TrainingBackup, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, run_dir=run_dir, log=lambda *_: None)
    assert _history_epochs(run_dir) == [0, 1]
    monkeypatch.setattr(TrainingBackup, "save", real_save)
    lines = []
    result = train(recipe, run_dir=run_dir, log=lines.append)
    assert any("2 epoch(s) already done" in line for line in lines)
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 3/3"]
    assert _history_epochs(run_dir) == [0, 1, 2]
    assert len(result.history["loss"]) == 3


def test_uncertainty_weighting_learns_task_weights(tmp_path):
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + [
        "loss_weighting=uncertainty", "train.epochs=2", "optimizer.learning_rate=0.01", "export.enabled=false"])
    result = train(recipe, log=lambda *_: None)
    h = result.history
    for key in ("loss", "identity_loss", "expression_loss", "identity_weight", "expression_weight",
                "val_identity_accuracy", "val_expression_accuracy"):
        assert key in h and all(v == v for v in h[key]), key
    # The learned weights moved away from their start (exp(0) = 1).
    assert abs(h["identity_weight"][-1] - 1.0) > 1e-3 or abs(h["expression_weight"][-1] - 1.0) > 1e-3


def test_an_existing_export_version_is_refused_before_training(tmp_path):
    existing = tmp_path / "saved_models" / "quickstart" / "3"
    existing.mkdir(parents=True)
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + ["export.version=3"])
    lines = []
    with pytest.raises(FacemtlError, match="3 already exists"):
        train(recipe, log=lines.append)
    assert lines == [] and not (tmp_path / "runs").exists()  # refused before any run folder or data


def test_run_files_are_written_atomically_and_leave_no_temporaries(tmp_path, monkeypatch):
    """A crash while summary.json is written keeps the old one; no temporary file is left behind."""
    import json

    from facemtl import files

    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path))
    result = train(recipe, log=lambda *_: None)
    summary = os.path.join(result.run_dir, "summary.json")
    good = open(summary).read()
    real_fsync = os.fsync

    def crash(fd):
        raise OSError("disk vanished")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="disk vanished"):
        files.write_json_atomically(summary, {"broken": True})
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert open(summary).read() == good and json.loads(good)["export_dir"]
    leftovers = [f for root, _, fs in os.walk(tmp_path) for f in fs if f.startswith(".tmp-") or ".tmp" in f]
    assert leftovers == []
