"""Training callbacks that never leave a half-written file in place of a good one."""

from __future__ import annotations

import json
import math
import os

import keras

from facemtl.files import replaced_atomically, write_json_atomically


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Saves `model` (the full multi-task model) whenever `monitor` improves.

    The file is written beside the target and renamed over it only once
    complete, so an interrupted save leaves the previous best intact. A NaN
    value of `monitor` never counts as an improvement.

    Args:
        model_to_save: the model to write (may differ from the one being fit,
            e.g. the full model while a training view of it is fit).
        path: target `.keras` file.
        monitor: a logged metric, e.g. `val_loss`.
        mode: `"min"` or `"max"`.
    """

    def __init__(self, model_to_save, path, monitor="val_loss", mode="min"):
        super().__init__()
        self.model_to_save = model_to_save
        self.path = path
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf
        self.best_epoch = None
        # A resumed run keeps competing against the best of its earlier part.
        self._record = f"{os.path.splitext(path)[0]}.json"
        if os.path.isfile(self._record) and os.path.isfile(path):
            with open(self._record, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("monitor") == monitor:
                self.best, self.best_epoch = self.sign * saved["value"], saved["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(value):
            return
        if self.sign * value < self.best:
            self.best = self.sign * value
            self.best_epoch = epoch
            save_model_atomically(self.model_to_save, self.path)
            write_json_atomically(self._record, {"monitor": self.monitor, "value": value, "epoch": epoch})


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
