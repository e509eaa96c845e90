"""Training from a recipe: strategy, precision, compile with λ, fit, evaluate, export."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings

import keras
import tensorflow as tf

from facemtl.data.pipeline import labelled_images, load_splits, make_dataset, split_size
from facemtl.errors import FacemtlError
from facemtl.evaluation import evaluate_model, plot_history
from facemtl.export.saved_model import export_saved_model, run_relative
from facemtl.models.dlib_resnet import imprint_identity_classifier
from facemtl.models.multitask import set_backbone_trainable
from facemtl.preprocessing import Preprocessor
from facemtl.training.callbacks import AtomicBestCheckpoint
from facemtl.training.custom_loop import fit_custom_loop, is_chief
from facemtl.training.feature_cache import train_on_cache
from facemtl.training.history import read_history
from facemtl.training.loop import Phase, fit_phases
from facemtl.training.runs import TrainResult, check_before_training, close_run, open_run, training_phases
from facemtl.training.task import MultiTaskTask


def select_strategy(name="auto", devices=None):
    """Picks the `tf.distribute` strategy a recipe asks for.

    `auto` is MirroredStrategy when more than one GPU is visible, else the
    default (single-device) strategy. `mirrored` takes explicit `devices`
    (e.g. two logical CPUs in tests) or all visible GPUs.
    """
    if name == "multi_worker":
        # The cluster comes from TF_CONFIG. Created before anything else touches
        # the TensorFlow runtime (listing devices included), as it must be.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    raise ValueError(f"Unknown strategy. Received: strategy={name!r}")


def train(recipe, run_dir=None, log=print):
    """Trains, evaluates and exports the model a recipe describes.

    The steps, each a function below: check what would be refused later
    (`check_before_training`), open or resume the run folder (`open_run`),
    prepare the data (`prepare_data`), build and compile the model in the
    strategy's scope (`build_model`), fit (`fit_model`: `model.fit` phases or
    the custom loop), then restore the best weights, evaluate on the test
    split and export (`finish_run`).

    Args:
        recipe: a validated `Recipe`.
        run_dir: where logs, checkpoints and reports go (a new
            `output_dir/name/<timestamp>` folder when `None`).
        log: where progress lines go.

    Returns:
        A `TrainResult`.

    Example:
        >>> result = train(load_recipe("recipes/quickstart.yaml", smoke=True))
        >>> result.test_report["expression"]["accuracy"]
    """
    if recipe.feature_cache.enabled:  # the expression branch on cached trunk maps (a CPU recipe)
        return train_on_cache(recipe, run_dir, log)
    start = time.time()
    loop = check_before_training(recipe, run_dir)
    # Created first: MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs.
    strategy = select_strategy(recipe.train.strategy, recipe.train.devices)
    chief = is_chief(strategy)
    keras.utils.set_random_seed(recipe.train.seed)
    keras.mixed_precision.set_global_policy(recipe.train.precision)
    run_dir = open_run(recipe, run_dir, chief, log)
    data = prepare_data(recipe, log)
    if recipe.train.batch_size % strategy.num_replicas_in_sync:
        raise FacemtlError(f"train.batch_size={recipe.train.batch_size} must divide evenly over "
                           f"{strategy.num_replicas_in_sync} replicas")
    log(f"facemtl: strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s), "
        f"global batch {recipe.train.batch_size}, precision {recipe.train.precision}, "
        f"{'model.fit' if loop == 'fit' else 'custom loop'}")
    task = MultiTaskTask(recipe, data.class_weights)
    model, view, trainee = build_model(task, data, strategy, log)
    checkpoint = AtomicBestCheckpoint(model, os.path.join(run_dir, "checkpoints", "best.keras"), monitor="val_loss")
    history = fit_model(task, data, strategy, loop, run_dir, model, view, trainee, checkpoint, chief, log)
    if not chief:  # workers other than the chief leave evaluation, export and reports to it
        return TrainResult(run_dir, model, history, {}, None, time.time() - start)
    return finish_run(recipe, data, run_dir, model, checkpoint, start, log)


@dataclasses.dataclass
class PreparedData:
    """The recipe's data as `tf.data` pipelines, with what training needs to know about it."""

    splits: object
    train_ds: object
    val_ds: object
    test_ds: object
    steps_per_epoch: int
    class_weights: dict

    def make_train_ds(self, recipe, drop_remainder=False):
        """A fresh training dataset (the custom loop builds its own, distributed)."""
        if self.splits.train_stream is not None:
            return self.splits.train_stream(recipe.train.batch_size, recipe.train.seed, recipe.data.augment)
        return make_dataset(self.splits.train, recipe.model, recipe.train.batch_size, training=True,
                            drop_remainder=drop_remainder, shuffle_buffer=recipe.data.shuffle_buffer,
                            seed=recipe.train.seed, augment=recipe.data.augment)


def prepare_data(recipe, log):
    """Loads the recipe's splits and builds the training, validation and test pipelines."""
    log("facemtl: preparing data ...")
    splits = load_splits(recipe, log)
    batch = recipe.train.batch_size
    if splits.train_stream is not None:  # mixed real datasets: an endless stream
        steps_per_epoch = recipe.data.steps_per_epoch or max(1, split_size(splits.train) // batch)
    else:
        steps_per_epoch = math.ceil(split_size(splits.train) / batch)
    if not split_size(splits.val):
        raise FacemtlError("No validation images: raise data.sources[].val_fraction (or the synthetic val_per_pair)")
    data = PreparedData(splits, None, make_dataset(splits.val, recipe.model, batch, training=False),
                        make_dataset(splits.test, recipe.model, batch, training=False), steps_per_epoch,
                        {"expression": splits.class_weights} if splits.class_weights else {})
    data.train_ds = data.make_train_ds(recipe)
    log(f"facemtl: {split_size(splits.train)} training, {split_size(splits.val)} validation, "
        f"{split_size(splits.test)} test "
        f"images; {len(splits.identity_names)} identities, {len(splits.expression_names)} expressions")
    return data


def build_model(task, data, strategy, log):
    """Builds the model, its training view and the compiled model to fit, inside the strategy's scope."""
    recipe = task.recipe
    with strategy.scope():
        model = task.build_model(len(data.splits.identity_names))
        if recipe.model.backbone == "dlib_resnet":
            images, labels = labelled_images(data.splits.train, "identity", limit=20000)
            log(f"facemtl: identity classifier imprinted from {len(labels)} training faces "
                f"({imprint_identity_classifier(model, images, labels)} identities)")
        view = task.training_view(model)
        trainee = task.compile(view, data.steps_per_epoch)
    return model, view, trainee


def fit_model(task, data, strategy, loop, run_dir, model, view, trainee, checkpoint, chief, log):
    """Fits (resuming from the run's backup), keeping the best checkpoint; returns the history.

    Both loops resume the same way (`facemtl.training.backup`): a `TrainingBackup`
    per worker in `run_dir/backup/worker-<i>/`, restored before training goes on
    from the next epoch.
    """
    recipe = task.recipe
    verbose = recipe.train.verbose
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if loop == "custom":  # it removes each worker's backup, and the emptied backup folder, itself
        batch = recipe.train.batch_size
        return fit_custom_loop(
            task, view, view.optimizer, strategy, lambda: data.make_train_ds(recipe, drop_remainder=True),
            data.val_ds, epochs=recipe.train.epochs, global_batch=batch,
            steps_per_epoch=recipe.data.steps_per_epoch or split_size(data.splits.train) // batch, run_dir=run_dir,
            backup_every_steps=recipe.train.backup_every_steps if recipe.train.backup else None,
            checkpoint=checkpoint if chief else None, log=log if chief else (lambda *_: None), verbose=verbose)
    compiled = [trainee]

    def unfreeze(first, lr_factor):
        def compile_phase():
            log(f"facemtl: unfreezing the backbone at epoch {first + 1} (learning rate x{lr_factor})")
            with strategy.scope():
                set_backbone_trainable(model, True)
                compiled.append(task.compile(view, data.steps_per_epoch, lr_factor, first_epoch=first,
                                             previous=compiled[-1]))
            return compiled[-1]
        return compile_phase

    phases = [Phase(first, last, (lambda: trainee) if i == 0 else unfreeze(first, lr_factor))
              for i, (first, last, lr_factor) in enumerate(training_phases(recipe))]
    try:
        return fit_phases(phases, run_dir=run_dir, checkpoint=checkpoint, callbacks=fit_callbacks(recipe, data, run_dir),
                          backup_dir=os.path.join(run_dir, "backup", "worker-0"), backup=recipe.train.backup,
                          backup_every_steps=recipe.train.backup_every_steps, verbose=verbose, log=log,
                          fit_kwargs=dict(x=data.train_ds, validation_data=data.val_ds, shuffle=False,
                                          steps_per_epoch=data.steps_per_epoch
                                          if data.splits.train_stream is not None else None))
    finally:  # empty once a NaN dropped the backup (it may hold diverged weights); `close_run` removes the rest
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(run_dir, "backup"))


def fit_callbacks(recipe, data, run_dir):
    """`model.fit`'s own callbacks besides `fit_phases`' (best checkpoint, history, backup, NaN stop): TensorBoard,
    the streamed data's skip report, early stopping.

    TensorBoard logs (`<run>/logs`) are written where the `tensorboard` package is
    installed (`pip install tensorboard`, which also views them); the history CSV and
    its PNG always are.
    """
    import importlib.util

    callbacks = []
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False,
                                                     profile_batch=0))
    if data.splits.skips is not None:  # streamed files: report unreadable ones as they are met, epoch by epoch
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: data.splits.skips.report()))
    if recipe.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(patience=recipe.train.early_stopping_patience,
                                                       min_delta=recipe.train.early_stopping_min_delta))
    return callbacks


def finish_run(recipe, data, run_dir, model, checkpoint, start, log):
    """Restores the best weights, evaluates on the test split, exports, and writes `summary.json`."""
    if checkpoint.best_epoch is not None:
        log(f"facemtl: restoring the best weights (epoch {checkpoint.best_epoch + 1}, val_loss {checkpoint.best:.4f})")
        with warnings.catch_warnings():  # the checkpoint's optimizer state is not needed here
            warnings.simplefilter("ignore", UserWarning)
            model.load_weights(checkpoint.path)
    history_csv = os.path.join(run_dir, "history.csv")
    history = read_history(history_csv)
    plot_history(history_csv, os.path.join(run_dir, "training_curves.png"))
    log("facemtl: evaluating on held-out test data ...")
    splits = data.splits
    names = {"identity": splits.identity_names, "expression": splits.expression_names}
    report = evaluate_model(model, data.test_ds, names, os.path.join(run_dir, "test"), title=f"{recipe.name} test ")
    if splits.skips is not None:
        splits.skips.report()
        log(f"facemtl: {len(splits.skips.paths)} unreadable file(s) skipped while streaming")
    for task, r in report.items():
        log(f"facemtl: test {task}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} ({r['count']} images)")

    export_dir = None
    if recipe.export.enabled:
        keras.mixed_precision.set_global_policy("float32")
        export_dir = export_saved_model(
            model, splits.identity_names, splits.expression_names, base_dir=recipe.export.base_dir,
            name=recipe.export.name or recipe.name, version=recipe.export.version, max_faces=recipe.export.max_faces,
            preprocessor=Preprocessor.from_model_config(recipe.model),
            extra_metadata={"recipe": recipe.name, "run_dir": os.path.abspath(run_dir),
                            "identity_head": recipe.model.identity_head,
                            "backbone": recipe.model.backbone,
                            # What `presets.from_export` rebuilds the Keras model from (no run folder needed).
                            "model_config": dataclasses.asdict(recipe.model),
                            "test_accuracy": {t: r["accuracy"] for t, r in report.items()}})
        log(f"facemtl: exported SavedModel to {export_dir}")
    seconds = close_run(run_dir, start, {"export_dir": run_relative(run_dir, export_dir), "test": {
        t: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for t, r in report.items()}}, log)
    return TrainResult(run_dir, model, history, report, export_dir, seconds)
