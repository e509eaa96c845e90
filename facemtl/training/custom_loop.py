"""A training loop over `strategy.run`, for `MultiWorkerMirroredStrategy`.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so multi-host training runs this loop instead. It
uses the same model, masked losses, λ, metrics, best checkpoint and export as
`fit`, and divides each task's summed loss by the number of labelled samples
in the *global* batch (all-reduced), so its gradients equal a single process's
on the same global batch.

Every worker reads the same global batches in the same order (same shuffle
seed) and takes its own contiguous slice of each, so the data order does not
depend on the number of workers.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from facemtl.errors import FacemtlError
from facemtl.files import write_json_atomically
from facemtl.training.history import truncate_history
from facemtl.training.losses import MaskedSparseCategoricalAccuracy, masked_crossentropy_sum


def is_chief(strategy):
    """Worker 0 (or the only process) writes the run folder, checkpoints and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "cluster_spec", None) or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (resolver.task_type == "worker" and resolver.task_id == 0)


def worker_index(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0


def distribute_train_dataset(strategy, make_global_dataset, global_batch):
    """Shards global batches across input pipelines by contiguous slices, then per replica."""

    def dataset_fn(ctx):
        per_pipeline = global_batch // ctx.num_input_pipelines
        start = ctx.input_pipeline_id * per_pipeline
        ds = make_global_dataset()
        ds = ds.map(lambda x, y: (x[start:start + per_pipeline], {k: v[start:start + per_pipeline] for k, v in y.items()}))
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        if per_replica != per_pipeline:
            ds = ds.unbatch().batch(per_replica, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


class _Backup:
    """Per-worker training state (weights, optimizer variables, finished epochs); never shared between workers."""

    def __init__(self, directory, view, optimizer):
        self.dir, self.view, self.optimizer = directory, view, optimizer

    def _recover(self):
        # A kill between `save`'s two renames leaves no state folder, but a complete new one
        # (`.tmp`: its state.json is written last) or the previous one (`.old`): take the newest.
        if os.path.isdir(self.dir):
            return
        for candidate in (f"{self.dir}.tmp", f"{self.dir}.old"):
            if os.path.isfile(os.path.join(candidate, "state.json")):
                os.rename(candidate, self.dir)
                return

    def epochs_done(self):
        self._recover()
        try:
            with open(os.path.join(self.dir, "state.json"), encoding="utf-8") as f:
                return int(json.load(f)["epoch"])
        except (OSError, ValueError, KeyError):
            return 0

    def restore(self):
        done = self.epochs_done()
        if done:
            self.view.load_weights(os.path.join(self.dir, "model.weights.h5"))
            saved = np.load(os.path.join(self.dir, "optimizer.npz"))
            for i, var in enumerate(self.optimizer.variables):
                var.assign(saved[f"v{i}"])
        return done

    def save(self, epochs_done):
        # Written to a fresh folder and swapped in, so a kill never leaves a half-written state.
        tmp = f"{self.dir}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.view.save_weights(os.path.join(tmp, "model.weights.h5"))
        np.savez(os.path.join(tmp, "optimizer.npz"), **{f"v{i}": np.asarray(v) for i, v in enumerate(self.optimizer.variables)})
        write_json_atomically(os.path.join(tmp, "state.json"), {"epoch": epochs_done})
        old = f"{self.dir}.old"
        if os.path.isdir(self.dir):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(self.dir, old)
        os.rename(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)


def evaluate_losses(view, dataset, loss_weights, margins=None):
    """Masked per-task loss and accuracy of `view` on `dataset`, plus the λ-weighted total (Keras' names)."""
    sums, counts, hits = {}, {}, {}
    for x, y in dataset:
        out = view(x, training=False)
        for t in view.output_names:
            s, c = masked_crossentropy_sum(y[t], out[t], margin=(margins or {}).get(t))
            labels = np.asarray(y[t]).reshape(-1)
            valid = labels != -1
            sums[t] = sums.get(t, 0.0) + float(s)
            counts[t] = counts.get(t, 0.0) + float(c)
            hits[t] = hits.get(t, 0.0) + float((np.argmax(out[t], -1)[valid] == labels[valid]).sum())
    logs = {}
    for t in sums:
        logs[f"{t}_loss"] = sums[t] / max(counts[t], 1e-12)
        logs[f"{t}_accuracy"] = hits[t] / max(counts[t], 1e-12)
    logs["loss"] = sum(loss_weights[t] * logs[f"{t}_loss"] for t in sums)
    return logs


def fit_custom_loop(view, optimizer, strategy, make_train_dataset, val_ds, *, epochs, global_batch, steps_per_epoch,
                    loss_weights, run_dir, checkpoint=None, log=print, verbose=1, class_weights=None, margins=None):
    """Trains `view` for `epochs` with `strategy.run`; returns the per-epoch history.

    Args:
        view: the training view (outputs `identity`, `expression`), built in `strategy.scope()`.
        optimizer: a Keras optimizer created in `strategy.scope()`.
        strategy: any `tf.distribute` strategy (MultiWorkerMirroredStrategy included).
        make_train_dataset: returns the global-batch training dataset, same order on every worker.
        val_ds: validation dataset (evaluated on every worker alike, undistributed).
        epochs, global_batch, steps_per_epoch: loop sizes.
        loss_weights: `{task: λ}`.
        run_dir: this worker's folder (`history.csv` on the chief, `backup/worker-<i>/` on each worker).
        checkpoint: an `AtomicBestCheckpoint` (chief only), called after each epoch.
        class_weights: optional `{task: per-class weights}` for the losses.
        margins: optional `{task: Margin}` for margin-trained heads (the view's output are then cosines).
        log: progress lines.
        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.

    Returns:
        `{metric: [per-epoch values]}` with the names `fit` uses (`loss`, `identity_loss`, `val_loss`, ...).
    """
    tasks = list(view.output_names)
    class_weights = class_weights or {}
    margins = margins or {}
    chief = is_chief(strategy)
    with strategy.scope():
        optimizer.build(view.trainable_variables)
        train_acc = {t: MaskedSparseCategoricalAccuracy(name=f"{t}_accuracy") for t in tasks}
    dist_ds = distribute_train_dataset(strategy, make_train_dataset, global_batch)
    backup = _Backup(os.path.join(run_dir, "backup", f"worker-{worker_index(strategy)}"), view, optimizer)
    first_epoch = backup.restore()
    history_path = os.path.join(run_dir, "history.csv")
    if first_epoch:
        log(f"facemtl: {first_epoch} epoch(s) already done; continuing from the last backup")
        if chief:
            truncate_history(history_path, first_epoch)

    @tf.function
    def train_step(x, y):
        def step_fn(x, y):
            ctx = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                out = view(x, training=True)
                losses = {}
                for t in tasks:
                    s, c = masked_crossentropy_sum(y[t], out[t], class_weights.get(t), margin=margins.get(t))
                    # Divide by the labelled count of the whole global batch: the
                    # gradient all-reduce (a sum) then yields the global mean.
                    losses[t] = s / tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, c), 1e-12)
                total = tf.add_n([loss_weights[t] * losses[t] for t in tasks])
                # A LossScaleOptimizer (mixed_float16) scales here and unscales in apply.
                scaled = optimizer.scale_loss(total)
            grads = tape.gradient(scaled, view.trainable_variables)
            optimizer.apply_gradients(zip(grads, view.trainable_variables))
            for t in tasks:
                train_acc[t].update_state(y[t], out[t])
            return losses

        per_replica = strategy.run(step_fn, args=(x, y))
        return {t: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for t, v in per_replica.items()}

    history = {}
    for epoch in range(first_epoch, epochs):
        if verbose:
            log(f"Epoch {epoch + 1}/{epochs}")
        for metric in train_acc.values():
            metric.reset_state()
        sums = dict.fromkeys(tasks, 0.0)
        bar = keras.utils.Progbar(steps_per_epoch) if (verbose == 1 and chief) else None
        steps = 0
        for x, y in dist_ds:
            losses = train_step(x, y)
            step_losses = {t: float(v) for t, v in losses.items()}
            if not all(math.isfinite(v) for v in step_losses.values()):
                shutil.rmtree(backup.dir, ignore_errors=True)  # it may hold diverged weights
                raise FacemtlError(f"Training stopped: the loss became NaN or infinite at batch {steps} of epoch "
                                   f"{epoch + 1}. The last good checkpoint is kept.")
            for t in tasks:
                sums[t] += step_losses[t]
            steps += 1
            if bar:
                bar.update(steps, [(f"{t}_loss", step_losses[t]) for t in tasks])
            if steps >= steps_per_epoch:
                break
        logs = {}
        for t in tasks:
            logs[f"{t}_accuracy"] = float(train_acc[t].result())
            logs[f"{t}_loss"] = sums[t] / max(steps, 1)
        logs["loss"] = sum(loss_weights[t] * logs[f"{t}_loss"] for t in tasks)
        logs.update({f"val_{k}": v for k, v in evaluate_losses(view, val_ds, loss_weights, margins).items()})
        if verbose:
            log(" - ".join([f"{steps}/{steps_per_epoch}"] + [f"{k}: {v:.4f}" for k, v in sorted(logs.items())]))
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if chief:
            if checkpoint is not None:
                checkpoint.on_epoch_end(epoch, logs)
            _append_csv(history_path, epoch, logs)
        backup.save(epoch + 1)
    shutil.rmtree(backup.dir, ignore_errors=True)  # each worker removes only its own state...
    try:
        os.rmdir(os.path.dirname(backup.dir))  # ...and the last one to finish, the emptied backup folder
    except OSError:
        pass
    return history


def _append_csv(path, epoch, logs):
    keys = sorted(logs)
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["epoch", *keys])
        writer.writerow([epoch, *[logs[k] for k in keys]])
