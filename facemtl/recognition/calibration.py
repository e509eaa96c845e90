"""Calibrating a model's verification threshold on labelled faces (`facemtl calibrate`)."""

from __future__ import annotations

import os

import numpy as np

from facemtl.errors import FacemtlError
from facemtl.export.metadata import crop_layout, read_metadata, update_metadata
from facemtl.files import write_json_atomically
from facemtl.inference import Predictor
from facemtl.installed import resolve_model
from facemtl.recognition.embed import embed_arrays, load_labelled_faces
from facemtl.recognition.metrics import plot_roc, verification_report


def roc_points(far, tar, points=600):
    """A ROC curve thinned to about `points` points, log-spaced in FAR (the low FARs are where thresholds live)."""
    far, tar = np.asarray(far), np.asarray(tar)
    if len(far) <= points:
        return far, tar
    targets = np.r_[0.0, np.logspace(-7, 0, points - 1)]
    idx = np.unique(np.clip(np.searchsorted(far, targets, side="right") - 1, 0, len(far) - 1))
    return far[idx], tar[idx]


def calibrate(model, data, *, far=1e-3, fmt="identity_folders", split=None, align=False, out=None, dry_run=False,
              log=print):
    """Picks the verification threshold of `model` for a target false-accept rate on labelled faces.

    Every pair of faces is scored (a bounded sample beyond 5 million pairs, see
    `facemtl.recognition.metrics.all_pairs`); the threshold is the lowest whose
    FAR on the impostor pairs is at most `far`.

    Args:
        model: a SavedModel version folder.
        data: labelled faces (e.g. one folder per person).
        far: the target false-accept rate.
        fmt, split, align: how to read `data` (see `load_labelled_faces`).
        out: where to write `calibration.json` and `roc.png` (default: the
            export's `assets.extra/calibration`; with `dry_run`, nowhere unless given).
        dry_run: compute and return, store nothing in the model.
        log: progress messages.

    Returns:
        The calibration dict (`threshold`, `target_far`, `far`, `tar`, `auc`,
        pair and people counts), also stored in the export's metadata unless `dry_run`.

    Example:
        >>> calibrate("saved_models/celeba_identity_cpu/1", "../shared/data/lfw_subset", split="train", align=True)
    """
    model = resolve_model(model)  # a model's base folder means its newest version
    meta = read_metadata(model)
    images, labels, _ = load_labelled_faces(data, fmt=fmt, split=split, align=align,
                                            size=max(meta["input"]["height"], meta["input"]["width"]), log=log,
                                            layout=crop_layout(meta))
    if len(np.unique(labels)) < 2:
        raise FacemtlError(f"{data}: calibration needs labelled faces of at least 2 people")
    embeddings = embed_arrays(Predictor(model), images)
    report = verification_report(embeddings, labels, fars=sorted({far, 1e-2, 1e-3}, reverse=True))
    impostors = report["pairs"] - report["genuine_pairs"]
    if impostors * far < 10:
        log(f"facemtl: warning: {impostors} impostor pairs resolve FAR {far:g} poorly "
            "(fewer than 10 false accepts to count); use more people")
    chosen = report["at_far"][f"{far:g}"]
    roc_far, roc_tar = report.pop("roc")
    calibration = {"threshold": chosen["threshold"], "target_far": far, "far": chosen["far"], "tar": chosen["tar"],
                   "auc": report["auc"], "pairs": report["pairs"], "genuine_pairs": report["genuine_pairs"],
                   "sampled_pairs": report["sampled"], "people": int(len(np.unique(labels))),
                   "images": int(len(labels)),
                   "data": os.path.basename(os.path.normpath(data))}  # its name: the model may travel
    if out is None and not dry_run:
        out = os.path.join(model, "assets.extra", "calibration")
    if out:
        os.makedirs(out, exist_ok=True)
        plot_roc({f"{meta.get('name')}/{meta.get('version')} (AUC {report['auc']:.3f})": (roc_far, roc_tar)},
                 os.path.join(out, "roc.png"), title=f"Verification ROC on {data}")
        thin_far, thin_tar = roc_points(roc_far, roc_tar)
        write_json_atomically(os.path.join(out, "calibration.json"),
                              {**calibration, "at_far": report["at_far"],
                               "roc": {"far": thin_far.tolist(), "tar": thin_tar.tolist()}})
    if not dry_run:
        update_metadata(model, {"verification": calibration})
    return {**calibration, "written_to": out}
