"""Verification and identification metrics on L2-normalised embeddings.

Scores are cosine similarities (dot products of unit vectors); a pair is
accepted as "same person" when its score is >= the threshold.
"""

from __future__ import annotations

import numpy as np


def normalize(embeddings):
    """Rows scaled to unit length (zero rows stay zero)."""
    e = np.asarray(embeddings, np.float32)
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    return e / np.maximum(norms, 1e-12)


def all_pairs(embeddings, labels):
    """Cosine scores and same-person flags of every unordered pair of samples.

    Args:
        embeddings: `[n, d]` L2-normalised embeddings.
        labels: `[n]` person labels.

    Returns:
        `(scores, same)`: float32 and bool arrays of length n(n-1)/2.
    """
    e = normalize(embeddings)
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(e), k=1)
    sims = e @ e.T
    return sims[i, j], labels[i] == labels[j]


def roc_curve(scores, same):
    """False- and true-accept rates at every distinct threshold, highest threshold first.

    Returns:
        `(far, tar, thresholds)`, starting at `(0, 0, +inf)`.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    if same.all() or not same.any():
        raise ValueError(f"ROC needs both genuine and impostor pairs. Received: {int(same.sum())} genuine, "
                         f"{int((~same).sum())} impostor")
    order = np.argsort(-scores, kind="stable")
    s, g = scores[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each run of tied scores
    tar = np.cumsum(g)[last] / g.sum()
    far = np.cumsum(~g)[last] / (~g).sum()
    return np.r_[0.0, far], np.r_[0.0, tar], np.r_[np.inf, s[last]]


def threshold_at_far(scores, same, far):
    """The lowest threshold whose false-accept rate on these pairs is <= `far`.

    Returns:
        `(threshold, measured_far, tar)`.

    Example:
        >>> threshold_at_far([0.9, 0.8, 0.3, 0.1], [True, False, True, False], 0.5)
        (0.8, 0.5, 0.5)
    """
    if not 0.0 < far <= 1.0:
        raise ValueError(f"far must be in (0, 1]. Received: far={far}")
    fars, tars, thresholds = roc_curve(scores, same)
    k = int(np.flatnonzero(fars <= far + 1e-12)[-1])
    return float(thresholds[k]), float(fars[k]), float(tars[k])


def verification_report(embeddings, labels, fars=(1e-2, 1e-3)):
    """ROC AUC and TAR at the given FARs over all pairs of the samples.

    Returns:
        A dict with `pairs`, `genuine_pairs`, `auc`, per-FAR `tar`/`threshold`,
        and the curve (`roc`: far, tar) for plotting.
    """
    scores, same = all_pairs(embeddings, labels)
    far, tar, _ = roc_curve(scores, same)
    report = {"pairs": int(len(scores)), "genuine_pairs": int(same.sum()), "auc": float(np.trapezoid(tar, far)),
              "at_far": {}}
    for f in fars:
        threshold, measured, t = threshold_at_far(scores, same, f)
        report["at_far"][f"{f:g}"] = {"tar": t, "threshold": threshold, "far": measured}
    report["roc"] = (far, tar)
    return report


def rank1_identification(embeddings, labels, trials=10, seed=0):
    """Rank-1 accuracy with one enrolled image per person, averaged over random draws.

    Each trial enrols one random image of every person and identifies all their
    other images by the most similar enrolled image (people with one image are
    enrolled as distractors only).

    Returns:
        `(mean, std, probes_per_trial)`.
    """
    e = normalize(embeddings)
    labels = np.asarray(labels)
    people = np.unique(labels)
    if len(people) < 2:
        raise ValueError(f"rank-1 identification needs at least 2 people. Received: {len(people)}")
    rng = np.random.default_rng(seed)
    accuracies, probes = [], 0
    for _ in range(trials):
        enrolled = np.array([rng.choice(np.flatnonzero(labels == p)) for p in people])
        probe = np.setdiff1d(np.arange(len(labels)), enrolled)
        if not len(probe):
            raise ValueError("rank-1 identification needs people with at least 2 images")
        best = np.argmax(e[probe] @ e[enrolled].T, axis=1)
        accuracies.append(float(np.mean(labels[enrolled][best] == labels[probe])))
        probes = len(probe)
    return float(np.mean(accuracies)), float(np.std(accuracies)), probes


def plot_roc(curves, path, title="Verification ROC"):
    """Writes a PNG of ROC curves (log-scale FAR).

    Args:
        curves: `{label: (far, tar)}`.
        path: output PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, (far, tar) in curves.items():
        keep = far > 0
        ax.plot(far[keep], tar[keep], label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_threshold(metadata, override=None):
    """The verification threshold to use: `override`, else the model's calibrated one.

    Returns:
        `(threshold, where_it_came_from)`.

    Raises:
        FacemtlError: when neither exists.
    """
    from facemtl.errors import FacemtlError

    if override is not None:
        return float(override), "--threshold"
    calibration = metadata.get("verification")
    if not calibration:
        raise FacemtlError(f"The model {metadata.get('name')}/{metadata.get('version')} has no calibrated threshold: "
                           "run `facemtl calibrate --model DIR --data LABELLED_FACES` or pass --threshold")
    return float(calibration["threshold"]), (f"calibrated at FAR {calibration['target_far']:g} on "
                                             f"{calibration['pairs']} pairs of {calibration['data']}")
