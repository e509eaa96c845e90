"""The training backup (every loop's resume) survives a kill at any point of its swap."""

import os

import keras
import numpy as np
import pytest

import facemtl.training.backup as backup_module
from facemtl.training.backup import TrainingBackup


def _model_and_optimizer(value):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.set_weights([np.full((3, 2), value, "float32"), np.zeros(2, "float32")])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return model, optimizer


@pytest.mark.parametrize("killed_after, expected", [(1, 2), (0, 1)])  # renames done before the kill
def test_a_kill_between_the_two_renames_keeps_a_backup(tmp_path, monkeypatch, killed_after, expected):
    directory = str(tmp_path / "backup" / "worker-0")
    model, optimizer = _model_and_optimizer(1.0)
    TrainingBackup(directory, model, optimizer).save(1)
    model.set_weights([np.full((3, 2), 2.0, "float32"), np.zeros(2, "float32")])
    renames = []
    real_rename = os.rename

    def dying_rename(src, dst):
        if len(renames) == killed_after:
            raise KeyboardInterrupt("killed")
        renames.append((src, dst))
        real_rename(src, dst)

    monkeypatch.setattr(backup_module.os, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        TrainingBackup(directory, model, optimizer).save(2)
    monkeypatch.setattr(backup_module.os, "rename", real_rename)
    fresh, fresh_optimizer = _model_and_optimizer(0.0)
    done = TrainingBackup(directory, fresh, fresh_optimizer).restore()
    # Killed between the renames: the new state was complete (its state.json is written last), so it is
    # recovered; killed before them: the previous state is still in place and is the one read.
    assert done == expected
    np.testing.assert_array_equal(fresh.get_weights()[0], np.full((3, 2), float(expected)))
    assert os.path.isdir(directory)


def test_an_interrupted_write_falls_back_to_the_previous_state(tmp_path, monkeypatch):
    directory = str(tmp_path / "worker-0")
    model, optimizer = _model_and_optimizer(1.0)
    TrainingBackup(directory, model, optimizer).save(1)
    os.rename(directory, f"{directory}.old")  # as left by a kill after the first rename...
    os.makedirs(f"{directory}.tmp")  # ...of a save whose new state never got its state.json
    fresh, fresh_optimizer = _model_and_optimizer(0.0)
    assert TrainingBackup(directory, fresh, fresh_optimizer).restore() == 1
    np.testing.assert_array_equal(fresh.get_weights()[0], np.full((3, 2), 1.0))


def test_a_later_phase_takes_the_weights_but_not_an_earlier_phases_optimizer(tmp_path):
    directory = str(tmp_path / "backup" / "worker-0")
    model, optimizer = _model_and_optimizer(3.0)
    optimizer.iterations.assign(7)
    TrainingBackup(directory, model, optimizer, phase=0).save(4)
    fresh, fresh_optimizer = _model_and_optimizer(0.0)
    assert TrainingBackup(directory, fresh, fresh_optimizer, phase=1).restore() == 4
    np.testing.assert_array_equal(fresh.get_weights()[0], np.full((3, 2), 3.0))
    assert int(fresh_optimizer.iterations) == 0  # a new phase's optimizer starts afresh
    assert TrainingBackup(directory, fresh, fresh_optimizer, phase=0).restore() == 4
    assert int(fresh_optimizer.iterations) == 7  # the same phase goes on with its optimizer state


def test_the_callback_backs_up_inside_an_epoch_as_the_epochs_before_it(tmp_path):
    from facemtl.training.backup import BackupCallback

    model, optimizer = _model_and_optimizer(1.0)
    backup = TrainingBackup(str(tmp_path / "b"), model, optimizer)
    saver = BackupCallback(backup, every_steps=2)
    saver.on_epoch_begin(3)
    saver.on_train_batch_end(0)
    assert backup.epochs_done() == 0  # one step: not yet
    saver.on_train_batch_end(1)
    assert backup.epochs_done() == 3  # mid-epoch 4: three epochs are done
    saver.on_epoch_end(3)
    assert backup.epochs_done() == 4
