"""The one `fit` loop every recipe trains through: phases, resumable, one best-checkpoint rule, one history file.

The multi-task model (`facemtl.training.trainer`), each expression branch on
the feature cache (`facemtl.training.feature_cache`) and the attribute heads
(`facemtl.training.attribute_heads`) all call `fit_phases`. What differs is
what they pass: each phase's compiled model, the data, and the logged metric
checkpoints are chosen on (an `AtomicBestCheckpoint`). What is the same:

- resume: a `TrainingBackup` in `backup_dir` (`facemtl.training.backup`), saved
  at each epoch's end; the same command restores it and goes on from the next
  epoch, skipping finished phases (and finished fits); `history.csv` is cut
  back to the epochs done;
- history: `history.csv` in the run folder, one row per epoch (`read_history`);
- a NaN or infinite loss stops the run with a clear error, the last good
  checkpoint kept and the backup (which may hold diverged weights) dropped;
- early stopping in one phase ends the later phases too.

Example:
    >>> checkpoint = AtomicBestCheckpoint(model, "runs/x/checkpoints/best.keras", monitor="val_loss")
    >>> history = fit_phases([Phase(0, 10, lambda: compiled)], run_dir="runs/x", checkpoint=checkpoint,
    ...                      fit_kwargs={"x": train_ds, "validation_data": val_ds})
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

import keras

from facemtl.errors import FacemtlError
from facemtl.training.backup import BackupCallback, TrainingBackup
from facemtl.training.callbacks import StopOnNaN
from facemtl.training.history import read_history, truncate_history


@dataclasses.dataclass
class Phase:
    """Epochs `first .. last - 1`, fitted on what `compile()` returns (called only when the phase runs)."""

    first: int
    last: int
    compile: Callable


def fit_phases(phases, *, run_dir, checkpoint, fit_kwargs, callbacks=(), first_callbacks=(), backup_dir=None,
               backup=True, backup_every_steps=None, verbose=2, log=print):
    """Fits phase after phase with Keras `fit`, resuming from the run's backup.

    Args:
        phases: `Phase`s, in order.
        run_dir: where `history.csv` goes.
        checkpoint: an `AtomicBestCheckpoint` (the best epoch's weights, written atomically).
        fit_kwargs: what `fit` takes besides epochs and callbacks (`x`, `y`, `validation_data`, ...).
        callbacks: more callbacks, after the checkpoint and the history.
        first_callbacks: callbacks that put metrics into the logs the checkpoint
            and the history read (run before them).
        backup_dir: the `TrainingBackup` folder (default `run_dir/backup`). It is kept when the fit ends (the
            same call again has nothing left to do; a run of several fits resumes after the finished ones):
            the run removes it once it has finished (`facemtl.training.runs.close_run`).
        backup: back up at each epoch's end and resume from it (a recipe's `train.backup`).
        backup_every_steps: also back up every this many batches.
        verbose: `fit`'s verbosity.
        log: where progress lines go.

    Returns:
        The history (`read_history` of `run_dir/history.csv`: every epoch, resumes included).

    Raises:
        FacemtlError: the loss became NaN or infinite.
    """
    history_csv = os.path.join(run_dir, "history.csv")
    backup_dir = backup_dir or os.path.join(run_dir, "backup")
    done = TrainingBackup(backup_dir, None).epochs_done() if backup else 0
    if done:
        log(f"facemtl: {done} epoch(s) already done; continuing from the last backup")
        truncate_history(history_csv, done)
    os.makedirs(run_dir, exist_ok=True)
    nan_guard = StopOnNaN()
    every = [*first_callbacks, nan_guard, checkpoint, keras.callbacks.CSVLogger(history_csv, append=True),
             *callbacks]
    for i, phase in enumerate(phases):
        if phase.last <= done:  # a resumed run skips the phases it has finished
            continue
        trainee = phase.compile()
        if hasattr(fit_kwargs.get("x"), "element_spec"):
            # Metrics, loss and optimizer built from the data's spec, as Keras's `fit` does under a strategy: built
            # inside the first traced step instead, their new variables make it trace the step twice (seconds).
            with trainee.distribute_strategy.scope():
                trainee._symbolic_build(data_batch=fit_kwargs["x"].element_spec)
        state = TrainingBackup(backup_dir, trainee, phase=i)
        if done:  # the weights; the optimizer state only if this phase wrote the backup (its phase tag)
            state.restore()
        with warnings.catch_warnings():
            # A streamed validation set has no known length (unreadable files drop out), so
            # Keras warns when it ends; the endless training stream never does.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            trainee.fit(**fit_kwargs, initial_epoch=max(phase.first, done), epochs=phase.last, verbose=verbose,
                        callbacks=[*every, *([BackupCallback(state, backup_every_steps)] if backup else [])])
        if nan_guard.bad_batch is not None:
            state.remove()
            raise FacemtlError(
                f"Training stopped: the loss became NaN or infinite at batch {nan_guard.bad_batch}. "
                f"The last good checkpoint is kept at {checkpoint.path}. "
                "Try a lower optimizer.learning_rate or train.precision=float32.")
        if getattr(trainee, "stop_training", False):  # early stopping ends the later phases too
            break
    return read_history(history_csv)
