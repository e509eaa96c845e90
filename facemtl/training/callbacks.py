"""Training callbacks that never leave a half-written file in place of a good one."""

from __future__ import annotations

import json
import math
import os

import keras

from facemtl.files import replaced_atomically, write_json_atomically


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves `model` whenever `monitor` improves: the one best-checkpoint rule of every training loop.

    The file is written beside the target and renamed over it only once
    complete, so an interrupted save leaves the previous best intact. A NaN
    value of `monitor` never counts as an improvement. The best value and its
    epoch are recorded beside it (`record_path`), so a resumed run keeps
    competing against the best of its earlier part.

    Args:
        model_to_save: the model to write (may differ from the one being fit,
            e.g. the full model while a training view of it is fit).
        path: target file (`.keras`; `.weights.h5` with `weights_only`).
        monitor: a logged metric, e.g. `val_loss`.
        mode: `"min"` or `"max"`.
        weights_only: write only the weights (a branch or heads assembled into another model later).
    """

    def __init__(self, model_to_save, path, monitor="val_loss", mode="min", weights_only=False):
        super().__init__()
        self.model_to_save = model_to_save
        self.path = path
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.weights_only = weights_only
        self.best = math.inf
        self.best_epoch = None
        self.record_path = record_path(path)
        if os.path.isfile(self.record_path) and os.path.isfile(path):
            with open(self.record_path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("monitor") == monitor:
                self.best, self.best_epoch = self.sign * saved["value"], saved["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(value):
            return
        if self.sign * value < self.best:
            self.keep(value, epoch)

    def keep(self, value, epoch):
        """Writes the model as the best, `value` of `monitor` at `epoch` (0-based, or a label such as an average)."""
        self.best, self.best_epoch = self.sign * value, epoch
        save_model_atomically(self.model_to_save, self.path, weights_only=self.weights_only)
        write_json_atomically(self.record_path, {"monitor": self.monitor, "value": value, "epoch": epoch})

    @property
    def best_value(self):
        return self.sign * self.best


def record_path(path):
    """Where a best checkpoint's value and epoch are recorded: beside it (`best.keras`, `best.weights.h5`: `best.json`)."""
    stem = path[:-len(".weights.h5")] if path.endswith(".weights.h5") else os.path.splitext(path)[0]
    return f"{stem}.json"


def save_model_atomically(model, path, weights_only=False):
    """`model.save(path)` (or `save_weights`) through a temporary file and an atomic rename.

    A crash never leaves half a file at `path`; the temporary name keeps the
    ending (`.keras`, `.weights.h5`) Keras asks for.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replaced_atomically(path) as tmp:
        (model.save_weights if weights_only else model.save)(tmp)



class StopOnNaN(keras.callbacks.Callback):
    """Stops training with a clear message when the loss becomes NaN or infinite."""

    def __init__(self):
        super().__init__()
        self.bad_batch = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_batch = batch
            self.model.stop_training = True
