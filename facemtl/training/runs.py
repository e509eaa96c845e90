"""Run folders: where a training run writes, how an interrupted run is found again, what a run returns.

Every recipe's run (`facemtl.training.trainer.train`, whichever task it
trains) opens its folder here, so `facemtl train RECIPE` resumes any of them
the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import time

import yaml

from facemtl.config import save_recipe
from facemtl.errors import FacemtlError
from facemtl.files import write_json_atomically
from facemtl.models.multitask import check_backbone


@dataclasses.dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: str
    model: object  # the keras.Model trained
    history: dict
    test_report: dict
    export_dir: str | None
    seconds: float


def find_unfinished_run(recipe):
    """The newest run folder of this very recipe that was interrupted (has a backup, no summary)."""
    base = os.path.join(recipe.output_dir, recipe.name)
    if not os.path.isdir(base):
        return None
    wanted = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    for name in sorted(os.listdir(base), reverse=True):
        run = os.path.join(base, name)
        backed_up = any(os.path.isdir(os.path.join(run, folder)) for folder in backup_folders(run))
        if not backed_up or os.path.exists(os.path.join(run, "summary.json")):
            continue
        try:
            with open(os.path.join(run, "recipe.yaml"), encoding="utf-8") as f:
                if f.read() == wanted:
                    return run
        except OSError:
            continue
    return None


def new_run_dir(recipe):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(recipe.output_dir, recipe.name, stamp)
    suffix = 1
    while os.path.exists(path):
        suffix += 1
        path = os.path.join(recipe.output_dir, recipe.name, f"{stamp}-{suffix}")
    return path


def check_before_training(recipe, run_dir):
    """Refuses, before any work, what would fail later; returns the training loop (`fit` or `custom`)."""
    check_backbone(recipe.model.backbone)
    if recipe.export.enabled and recipe.export.version is not None:
        # Refused now, not after hours of training: versions are never overwritten.
        target = os.path.join(recipe.export.base_dir, recipe.export.name or recipe.name, str(recipe.export.version))
        if os.path.exists(target):
            raise FacemtlError(f"{target} already exists and versions are never overwritten: set export.version to "
                               "a new number, or leave it unset for the next free one")
    loop = recipe.train.loop
    if loop == "auto":
        loop = "custom" if recipe.train.strategy == "multi_worker" else "fit"
    if recipe.train.strategy == "multi_worker":
        if loop == "fit":
            raise FacemtlError("Keras 3's model.fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585): "
                               "use train.loop=custom (or auto)")
        if run_dir is None:
            raise FacemtlError("Multi-worker training needs --run-dir: the same path on every worker")
    if loop == "custom":
        if len(training_phases(recipe)) > 1 or recipe.loss_weighting != "fixed":
            raise FacemtlError("train.unfreeze_at_epoch and loss_weighting=uncertainty are not supported by the "
                               "custom loop yet")
    return loop


def training_phases(recipe):
    """`[(first_epoch, end_epoch, lr_factor)]`: one phase, or a frozen-backbone phase then a fine-tuning one."""
    epochs = recipe.train.epochs
    unfreeze = recipe.train.unfreeze_at_epoch if recipe.model.freeze_backbone else None
    if unfreeze is not None and 0 < unfreeze < epochs:
        return [(0, unfreeze, 1.0), (unfreeze, epochs, recipe.train.finetune_lr_factor)]
    return [(0, epochs, 1.0)]


def open_run(recipe, run_dir, chief, log):
    """The run folder: the one given, else the newest unfinished run of this recipe (resume), else a new one."""
    resumed = None
    if run_dir is None and recipe.train.backup:
        run_dir = resumed = find_unfinished_run(recipe)
    run_dir = run_dir or new_run_dir(recipe)
    os.makedirs(run_dir, exist_ok=True)
    if chief:
        save_recipe(recipe, os.path.join(run_dir, "recipe.yaml"))
        log(f"facemtl: {'resuming interrupted run in' if resumed else 'run directory'} {run_dir}")
    return run_dir


def close_run(run_dir, start, summary, log=print):
    """Ends a run the one way every recipe's run ends: `summary.json` written, the backups removed.

    `summary.json` is what marks the run finished (`find_unfinished_run`): the
    backups kept until then (`run_dir/backup`, each branch's, the attribute
    heads') are no longer needed.

    Args:
        start: the run's start (`time.time()`).
        summary: what the run reports (export folder, test scores...); `seconds` is added first.

    Returns:
        The run's seconds.
    """
    seconds = time.time() - start
    write_json_atomically(os.path.join(run_dir, "summary.json"), {"seconds": round(seconds, 1), **summary}, indent=2)
    for folder in backup_folders(run_dir):
        shutil.rmtree(os.path.join(run_dir, folder), ignore_errors=True)
    log(f"facemtl: done in {seconds:.0f} s")
    return seconds


def backup_folders(run_dir):
    """Where a run's fits back up (relative to the run folder): the run's own `backup`, each expression
    branch's (`branch<k>/backup`, a feature-cache run with several) and the attribute heads'."""
    branches = [d for d in os.listdir(run_dir) if d.startswith("branch")] if os.path.isdir(run_dir) else []
    return ["backup", os.path.join("attributes", "backup"), *(os.path.join(d, "backup") for d in sorted(branches))]
