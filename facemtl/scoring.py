"""The `facemtl evaluate` command: an export (or a run's export) scored on its recipe's test or validation split.

The metrics and pictures are `facemtl.evaluation`'s, the answers the export's
own (`facemtl.inference.Predictor`, the engine users call).
"""

from __future__ import annotations

import os

import numpy as np

from facemtl.config import load_recipe
from facemtl.data.pipeline import load_splits
from facemtl.data.streaming import StreamedSplit
from facemtl.errors import FacemtlError
from facemtl.evaluation import write_report
from facemtl.export.metadata import read_metadata
from facemtl.export.saved_model import run_export
from facemtl.inference import Predictor
from facemtl.labels import IGNORE_LABEL


def predict_saved_model(saved_model_dir, images, labels, names, batch_size=256):
    """Predictions of an exported model on uint8 images, labels mapped onto the model's own names.

    Args:
        saved_model_dir: the export.
        images: `uint8 [n, h, w, 3]`, or a `tf.data.Dataset` of `(uint8 image,
            labels)` samples (streamed data; `labels` is then ignored).
        labels: `{"identity", "expression"}` arrays.
        names: the data's class names per task.
        batch_size: crops per forward pass.

    Returns:
        `(preds, trues, model_names)` per task, ready for `write_report`.
    """
    predictor = Predictor(saved_model_dir, batch_size=batch_size)
    model_names = {"identity": predictor.identities, "expression": predictor.expressions}
    # Only each sample's top class is kept (not its probabilities or embedding): memory grows by
    # two integers per sample however many classes the model has or however long the stream is.
    top = {"identity": [], "expression": []}

    def score(batch):
        out = predictor.forward(np.asarray(batch, np.uint8))
        for task in top:
            top[task].append(np.argmax(out[f"{task}_probs"], axis=1))

    if isinstance(images, np.ndarray):
        for start in range(0, len(images), batch_size):
            score(images[start:start + batch_size])
    else:  # streamed: batch by batch, labels as they come
        got = {"identity": [], "expression": []}
        for x, y in images.batch(batch_size):
            score(x.numpy())
            for task in got:
                got[task].append(y[task].numpy())
        labels = {task: np.concatenate(v) if v else np.zeros(0, np.int32) for task, v in got.items()}
    preds, trues = {}, {}
    for task in ("identity", "expression"):
        y = np.asarray(labels[task])
        if not (y != IGNORE_LABEL).any():
            continue
        index = {n: i for i, n in enumerate(model_names[task])}
        missing = sorted({names[task][v] for v in y[y != IGNORE_LABEL]} - set(index))
        if missing:
            raise ValueError(f"The data has {task} classes the model does not know: {missing[:5]}")
        trues[task] = np.array([index[names[task][v]] if v != IGNORE_LABEL else IGNORE_LABEL for v in y])
        preds[task] = np.concatenate(top[task]) if top[task] else np.zeros(0, np.int64)
    return preds, trues, model_names


def resolve_evaluation(target, recipe=None, split="test", out=None):
    """What `facemtl evaluate TARGET` evaluates: the SavedModel, the recipe giving the data, the report folder.

    Args:
        target: a SavedModel version folder, or a finished run folder (its export is used).
        recipe: the recipe to take the data from (default: the export's run's, or the run's own).
        split: `test` or `val`.
        out: the report folder (default: for a SavedModel, `eval-<version>-<split>`
            beside its version folder, never inside it: TF Serving watches those;
            for a run folder, `eval-<split>` inside the run).

    Returns:
        `(saved_model_dir, recipe_path, out_dir)`.

    Raises:
        FacemtlError: the target is neither, the run exported nothing or did not finish, or no recipe is known.
    """
    if os.path.isfile(os.path.join(target, "saved_model.pb")):
        recipe = recipe or os.path.join(read_metadata(target).get("run_dir", ""), "recipe.yaml")
        model = target
        version = os.path.abspath(target)
        out = out or os.path.join(os.path.dirname(version), f"eval-{os.path.basename(version)}-{split}")
    elif os.path.isfile(os.path.join(target, "recipe.yaml")):  # a run folder: use its export
        model = run_export(target)
        if not model:
            raise FacemtlError(f"{target}: this run exported no SavedModel to evaluate")
        recipe = recipe or os.path.join(target, "recipe.yaml")
    else:
        raise FacemtlError(f"{target}: neither a SavedModel version folder nor a run folder")
    if not os.path.isfile(recipe):
        raise FacemtlError(f"No recipe to take the data from ({recipe}): pass --recipe")
    return model, recipe, out or os.path.join(target, f"eval-{split}")


def evaluate_target(target, *, recipe=None, split="test", overrides=(), out=None, log=print):
    """Evaluates an export (or a run's export) on its recipe's test or validation split and writes the report.

    Args:
        target, recipe, split, out: see `resolve_evaluation`.
        overrides: `--set`-style recipe overrides (e.g. another data path).
        log: where progress lines go.

    Returns:
        `(report, out_dir)`: per task accuracy, macro-F1 and per-class table; the
        report's files (JSON, confusion matrices) are in `out_dir`.

    Example:
        >>> report, folder = evaluate_target("saved_models/quickstart/1")
        >>> report["expression"]["accuracy"]
    """
    model, recipe_path, out = resolve_evaluation(target, recipe, split, out)
    recipe = load_recipe(recipe_path, overrides=overrides)
    splits = load_splits(recipe, log=log)
    data = splits.test if split == "test" else splits.val
    images, labels = (data.dataset(), None) if isinstance(data, StreamedSplit) else data
    names = {"identity": splits.identity_names, "expression": splits.expression_names}
    preds, trues, model_names = predict_saved_model(model, images, labels, names)
    return write_report(preds, trues, model_names, out, title=f"{recipe.name} {split} "), out
