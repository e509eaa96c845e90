"""Per-task accuracy, macro-F1, per-class tables and confusion-matrix pictures."""

from __future__ import annotations

import os

import numpy as np

from facemtl.files import write_json_atomically
from facemtl.labels import IGNORE_LABEL

MAX_CONFUSION_CLASSES = 100


def classification_report(y_true, y_pred, names):
    """Scores one task, ignoring samples labelled `IGNORE_LABEL`.

    Args:
        y_true: int labels (may hold `IGNORE_LABEL`).
        y_pred: int predictions, same length.
        names: class names, in label order.

    Returns:
        A dict with `accuracy`, `macro_f1`, `count`, `per_class`
        (precision, recall, f1, support per name) and `confusion`
        (rows: true class, columns: predicted; `None` beyond
        `MAX_CONFUSION_CLASSES` classes, where no one reads a matrix).

    Example:
        >>> classification_report([0, 1, -1], [0, 0, 1], ["a", "b"])["accuracy"]
        0.5
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    keep = y_true != IGNORE_LABEL
    y_true, y_pred = y_true[keep], y_pred[keep]
    k = len(names)
    # Counted per class, not from a k x k matrix: VGGFace2 has 8,631 identities.
    tp = np.bincount(y_true[y_true == y_pred], minlength=k).astype(float)
    support = np.bincount(y_true, minlength=k)
    predicted = np.bincount(y_pred, minlength=k)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "count": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        # Macro-F1 over the classes present in the labels, as sklearn does with `labels=present`.
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(names)
        },
        "confusion": _confusion(y_true, y_pred, k).tolist() if k <= MAX_CONFUSION_CLASSES else None,
    }


def _confusion(y_true, y_pred, k):
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    return confusion


def plot_confusion(confusion, names, path, title):
    """Writes a row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predict_splits(model, dataset):
    """Runs the in-memory model over a dataset; returns (predicted, true) labels per task."""
    preds = {"identity": [], "expression": []}
    trues = {"identity": [], "expression": []}
    for x, y in dataset:
        out = model(x, training=False)
        for task in preds:
            if task in out:
                preds[task].append(np.argmax(out[task], axis=-1))
                trues[task].append(np.asarray(y[task]))
    return ({t: np.concatenate(v) for t, v in preds.items() if v},
            {t: np.concatenate(v) for t, v in trues.items() if v})


def write_report(preds, trues, names, out_dir, title=""):
    """Scores each task's predictions; writes `report.json` and one confusion-matrix PNG per task."""
    os.makedirs(out_dir, exist_ok=True)
    report = {}
    for task in preds:
        if not (np.asarray(trues[task]) != IGNORE_LABEL).any():
            continue  # no labelled sample of this task in the data: nothing to score
        report[task] = classification_report(trues[task], preds[task], names[task])
        if report[task]["confusion"] is not None:
            plot_confusion(report[task]["confusion"], names[task], os.path.join(out_dir, f"confusion_{task}.png"),
                           f"{title}{task}: accuracy {report[task]['accuracy']:.3f}")
    write_json_atomically(os.path.join(out_dir, "report.json"), report, indent=2)
    return report


def format_report(report):
    """A per-class table per task, as text."""
    lines = []
    for task, r in report.items():
        lines.append(f"{task}: accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} ({r['count']} images)")
        lines.append(f"  {'class':24s} {'precision':>9s} {'recall':>9s} {'f1':>9s} {'support':>8s}")
        for name, c in r["per_class"].items():
            if c["support"] or len(r["per_class"]) <= 20:
                lines.append(f"  {name[:24]:24s} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1']:9.4f} "
                             f"{c['support']:8d}")
    return "\n".join(lines)


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
    from facemtl.inference import Predictor

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


def evaluate_model(model, dataset, names, out_dir, title=""):
    """Scores every task of `model` on `dataset`; writes `report.json` and confusion PNGs.

    Args:
        model: a facemtl Keras model.
        dataset: yields `(images, {"identity", "expression"})`.
        names: `{"identity": [...], "expression": [...]}` class names.
        out_dir: where to write the report and pictures.
        title: prefix for plot titles.

    Returns:
        `{task: classification_report}`.
    """
    preds, trues = predict_splits(model, dataset)
    return write_report(preds, trues, names, out_dir, title)


def plot_history(history_csv, path):
    """Plots training curves (loss and per-task accuracy, train vs validation) from a CSV log."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    panels = [k for k in ("loss", "identity_accuracy", "expression_accuracy") if k in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
    for ax, key in zip(np.atleast_1d(axes), panels):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    from facemtl.errors import FacemtlError
    from facemtl.export import read_metadata, run_export

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
    from facemtl.config import load_recipe
    from facemtl.data.pipeline import load_splits
    from facemtl.data.streaming import StreamedSplit

    model, recipe_path, out = resolve_evaluation(target, recipe, split, out)
    recipe = load_recipe(recipe_path, overrides=overrides)
    splits = load_splits(recipe, log=log)
    data = splits.test if split == "test" else splits.val
    images, labels = (data.dataset(), None) if isinstance(data, StreamedSplit) else data
    names = {"identity": splits.identity_names, "expression": splits.expression_names}
    preds, trues, model_names = predict_saved_model(model, images, labels, names)
    return write_report(preds, trues, model_names, out, title=f"{recipe.name} {split} "), out
