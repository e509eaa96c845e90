"""One resume mechanism for every training loop: a backup of the training state, swapped in atomically.

`model.fit` (`facemtl train`), the multi-worker custom loop and the feature-cache
branch training all back up the same way: the trained model's weights, the
optimizer's variables (its step counter included, so a learning-rate schedule
goes on where it stopped) and the number of finished epochs, written to a fresh
folder and swapped in with two renames. A kill at any moment leaves either the
previous state or the new one, never half of one. The same command then
restores it and goes on from the next epoch.

Example:
    >>> backup = TrainingBackup("runs/x/backup/worker-0", model, optimizer)
    >>> first_epoch = backup.restore()  # 0 when there is nothing to resume
    >>> model.fit(ds, initial_epoch=first_epoch, epochs=10, callbacks=[BackupCallback(backup)])
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import keras
import numpy as np

from facemtl.files import write_json_atomically


class TrainingBackup:
    """A folder holding one training state of `model` and `optimizer` (per worker; never shared).

    Args:
        directory: the state's folder (`<dir>.tmp` and `<dir>.old` are used beside it while swapping).
        model: the model whose weights are trained (for `fit`, the compiled model).
        optimizer: its optimizer (default: `model.optimizer`).
        phase: which training phase this is (a later phase's new optimizer does not take an earlier
            phase's optimizer state; the weights it does take).
    """

    def __init__(self, directory, model, optimizer=None, phase=0):
        self.dir, self.model, self.phase = directory, model, phase
        self.optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)

    def _recover(self):
        # A kill between `save`'s two renames leaves no state folder, but a complete new one
        # (`.tmp`: its state.json is written last) or the previous one (`.old`): take the newest.
        if os.path.isdir(self.dir):
            return
        for candidate in (f"{self.dir}.tmp", f"{self.dir}.old"):
            if os.path.isfile(os.path.join(candidate, "state.json")):
                os.rename(candidate, self.dir)
                return

    def _state(self):
        self._recover()
        try:
            with open(os.path.join(self.dir, "state.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def epochs_done(self):
        """Finished epochs according to the backup (0 when there is none)."""
        return int(self._state().get("epoch", 0))

    def restore(self):
        """Sets the model (and, from the same phase, the optimizer) to the backed-up state.

        Returns:
            The number of finished epochs (0: nothing restored).
        """
        state = self._state()
        done = int(state.get("epoch", 0))
        if not done:
            return 0
        with warnings.catch_warnings():
            # The weights file also holds the optimizer Keras knew of when it was written; the state
            # below is what counts (a later phase's optimizer has other variables: Keras warns and skips).
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            self.model.load_weights(os.path.join(self.dir, "model.weights.h5"))
        if self.optimizer is not None and state.get("phase", 0) == self.phase:
            if not self.optimizer.built:
                self.optimizer.build(self.model.trainable_variables)
            saved = np.load(os.path.join(self.dir, "optimizer.npz"))
            for i, var in enumerate(self.optimizer.variables):
                var.assign(saved[f"v{i}"])
        return done

    def save(self, epochs_done):
        """Backs up the current state as `epochs_done` finished epochs."""
        # Written to a fresh folder and swapped in, so a kill never leaves a half-written state.
        tmp = f"{self.dir}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_weights(os.path.join(tmp, "model.weights.h5"))
        variables = self.optimizer.variables if self.optimizer is not None else []
        np.savez(os.path.join(tmp, "optimizer.npz"), **{f"v{i}": np.asarray(v) for i, v in enumerate(variables)})
        write_json_atomically(os.path.join(tmp, "state.json"), {"epoch": epochs_done, "phase": self.phase})
        old = f"{self.dir}.old"
        if os.path.isdir(self.dir):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.dir, old)
        os.rename(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def remove(self):
        """Deletes the state (a finished run; or weights that diverged)."""
        for path in (self.dir, f"{self.dir}.tmp", f"{self.dir}.old"):
            shutil.rmtree(path, ignore_errors=True)


class BackupCallback(keras.callbacks.Callback):
    """Saves a `TrainingBackup` at each epoch's end, and every `every_steps` batches when set.

    A backup made inside an epoch counts the epochs finished before it: a
    resumed run does that epoch again, from the weights of the backup.
    """

    def __init__(self, backup, every_steps=None):
        super().__init__()
        self.backup, self.every_steps = backup, every_steps
        self._epoch, self._steps = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.every_steps and self._steps % self.every_steps == 0:
            self.backup.save(self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.backup.save(epoch + 1)
