"""Per-task accuracy, macro-F1, per-class tables and confusion-matrix pictures."""

from __future__ import annotations

import os

import numpy as np

from facemtl.data.utkface import GENDERS, RACES
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
        "confusion": np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).tolist()
        if k <= MAX_CONFUSION_CLASSES else None,
    }


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
    preds, trues = {}, {}
    for x, y in dataset:
        out = model(x, training=False)
        for task in ("identity", "expression"):
            if task in out:
                preds.setdefault(task, []).append(np.argmax(out[task], axis=-1))
                trues.setdefault(task, []).append(np.asarray(y[task]))
    return write_report({t: np.concatenate(v) for t, v in preds.items()},
                        {t: np.concatenate(v) for t, v in trues.items()}, names, out_dir, title)


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


def labelled(task, y):
    """Which faces carry `task`'s label (missing: `IGNORE_LABEL` for classes, NaN for numbers)."""
    return y != IGNORE_LABEL if task.kind == "classification" else ~np.isnan(y)


def scores(tasks, labels, predicted, mask):
    """`{task: {"mae": ...} or {"accuracy": ...}, "count"}` over the faces in `mask` that carry each label."""
    out = {}
    for t in tasks:
        y = labels[t.name]
        have = mask & labelled(t, y)
        metric, value = (("accuracy", predicted[t.name][have] == y[have]) if t.kind == "classification"
                         else ("mae", np.abs(predicted[t.name][have] - y[have])))
        out[t.name] = {metric: float(value.mean()), "count": int(have.sum())}
    return out


def bias_table(tasks, faces, predicted, mask):
    """Accuracy per UTKFace race x gender group and per age band, on the faces in `mask`."""
    g = faces.groups
    table = {"groups": {}, "age_bands": {}}
    for r, race in enumerate(RACES):
        for s, gender in enumerate(GENDERS):
            m = mask & (g["race"] == r) & (g["gender"] == s)
            if m.any():
                table["groups"][f"{race}/{gender}"] = scores(tasks, faces.labels, predicted, m)
    for lo, hi in ((0, 12), (13, 19), (20, 39), (40, 59), (60, 116)):
        m = mask & (g["age"] >= lo) & (g["age"] <= hi)
        if m.any():
            table["age_bands"][f"{lo}-{hi}"] = scores(tasks, faces.labels, predicted, m)
    return table
