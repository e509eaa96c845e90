"""A training loop over `strategy.run`, for `MultiWorkerMirroredStrategy`.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so multi-host training runs this loop instead. It
uses the same model, masked losses, λ, metrics, best checkpoint and export as
`fit`, and divides each task's summed loss by the number of labelled samples
in the *global* batch (all-reduced), so its gradients equal a single process's
on the same global batch. The losses, λ and step are the task's
(`facemtl.training.task`); the backup and resume are `fit`'s
(`facemtl.training.backup`).

Every worker reads the same global batches in the same order (same shuffle
seed) and takes its own contiguous slice of each, so the data order does not
depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os

import keras
import tensorflow as tf

from facemtl.errors import FacemtlError
from facemtl.training.backup import BackupCallback, TrainingBackup
from facemtl.training.history import truncate_history
from facemtl.training.losses import MaskedSparseCategoricalAccuracy


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


def fit_custom_loop(task, view, optimizer, strategy, make_train_dataset, val_ds, *, epochs, global_batch,
                    steps_per_epoch, run_dir, checkpoint=None, log=print, verbose=1, backup_every_steps=None):
    """Trains `view` for `epochs` with `strategy.run`; returns the per-epoch history.

    Args:
        task: the `MultiTaskTask` (masked losses with λ, the step, the evaluation), as `fit` uses it.
        view: the training view (outputs `identity`, `expression`), built in `strategy.scope()`.
        optimizer: a Keras optimizer created in `strategy.scope()`.
        strategy: any `tf.distribute` strategy (MultiWorkerMirroredStrategy included).
        make_train_dataset: returns the global-batch training dataset, same order on every worker.
        val_ds: validation dataset (evaluated on every worker alike, undistributed).
        epochs, global_batch, steps_per_epoch: loop sizes.
        run_dir: this worker's folder (`history.csv` on the chief, `backup/worker-<i>/` on each worker).
        checkpoint: an `AtomicBestCheckpoint` (chief only), called after each epoch.
        log: progress lines.
        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        backup_every_steps: also back up every this many steps (`None`: at each epoch's end only).

    Returns:
        `{metric: [per-epoch values]}` with the names `fit` uses (`loss`, `identity_loss`, `val_loss`, ...).
    """
    tasks = list(view.output_names)
    lambdas = task.loss_weights(tasks)
    chief = is_chief(strategy)
    with strategy.scope():
        optimizer.build(view.trainable_variables)
        train_acc = {t: MaskedSparseCategoricalAccuracy(name=f"{t}_accuracy") for t in tasks}
    dist_ds = distribute_train_dataset(strategy, make_train_dataset, global_batch)
    backup = TrainingBackup(os.path.join(run_dir, "backup", f"worker-{worker_index(strategy)}"), view, optimizer)
    saver = BackupCallback(backup, backup_every_steps)
    first_epoch = backup.restore()
    history_path = os.path.join(run_dir, "history.csv")
    if first_epoch:
        log(f"facemtl: {first_epoch} epoch(s) already done; continuing from the last backup")
        if chief:
            truncate_history(history_path, first_epoch)

    @tf.function
    def train_step(x, y):
        per_replica = strategy.run(lambda x, y: task.train_step(view, optimizer, x, y, train_acc), args=(x, y))
        return {t: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for t, v in per_replica.items()}

    history = {}
    for epoch in range(first_epoch, epochs):
        if verbose:
            log(f"Epoch {epoch + 1}/{epochs}")
        saver.on_epoch_begin(epoch)
        for metric in train_acc.values():
            metric.reset_state()
        sums = dict.fromkeys(tasks, 0.0)
        bar = keras.utils.Progbar(steps_per_epoch) if (verbose == 1 and chief) else None
        steps = 0
        for x, y in dist_ds:
            losses = train_step(x, y)
            step_losses = {t: float(v) for t, v in losses.items()}
            if not all(math.isfinite(v) for v in step_losses.values()):
                backup.remove()  # it may hold diverged weights
                raise FacemtlError(f"Training stopped: the loss became NaN or infinite at batch {steps} of epoch "
                                   f"{epoch + 1}. The last good checkpoint is kept.")
            for t in tasks:
                sums[t] += step_losses[t]
            steps += 1
            saver.on_train_batch_end(steps - 1)
            if bar:
                bar.update(steps, [(f"{t}_loss", step_losses[t]) for t in tasks])
            if steps >= steps_per_epoch:
                break
        logs = {}
        for t in tasks:
            logs[f"{t}_accuracy"] = float(train_acc[t].result())
            logs[f"{t}_loss"] = sums[t] / max(steps, 1)
        logs["loss"] = sum(lambdas[t] * logs[f"{t}_loss"] for t in tasks)
        logs.update({f"val_{k}": v for k, v in task.evaluate(view, val_ds).items()})
        if verbose:
            log(" - ".join([f"{steps}/{steps_per_epoch}"] + [f"{k}: {v:.4f}" for k, v in sorted(logs.items())]))
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
        if chief:
            if checkpoint is not None:
                checkpoint.on_epoch_end(epoch, logs)
            _append_csv(history_path, epoch, logs)
        saver.on_epoch_end(epoch)
    backup.remove()  # each worker removes only its own state...
    with contextlib.suppress(OSError):  # ...and the last one to finish, the emptied backup folder
        os.rmdir(os.path.dirname(backup.dir))
    return history


def _append_csv(path, epoch, logs):
    keys = sorted(logs)
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["epoch", *keys])
        writer.writerow([epoch, *[logs[k] for k in keys]])
