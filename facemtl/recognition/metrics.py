"""Verification and identification metrics on L2-normalised embeddings.

Scores are cosine similarities (dot products of unit vectors); a pair is
accepted as "same person" when its score is >= the threshold.
"""

from __future__ import annotations

import numpy as np

from facemtl.errors import FacemtlError


def normalize(embeddings):
    """Rows scaled to unit length (zero rows stay zero)."""
    e = np.asarray(embeddings, np.float32)
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    return e / np.maximum(norms, 1e-12)


MAX_PAIRS = 5_000_000


def all_pairs(embeddings, labels, max_pairs=MAX_PAIRS, seed=0):
    """Cosine scores and same-person flags of the unordered pairs of samples: all, or a bounded sample.

    Up to `max_pairs` pairs, every pair is scored. Beyond that (about 3,100
    faces), memory stays bounded: genuine pairs (same person) are all kept
    while they fit in half the budget, else sampled, and impostor pairs are
    sampled uniformly to fill the budget; scores are computed in blocks, never
    as an n x n matrix.

    Args:
        embeddings: `[n, d]` L2-normalised embeddings.
        labels: `[n]` person labels.
        max_pairs: most pairs to score.
        seed: for the sampled pairs.

    Returns:
        `(scores, same)`: float32 and bool arrays of equal length (n(n-1)/2 when not sampled).
    """
    e = normalize(embeddings)
    labels = np.asarray(labels)
    n = len(e)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        sims = e @ e.T
        return sims[i, j], labels[i] == labels[j]
    rng = np.random.default_rng(seed)
    genuine = [np.stack(np.triu_indices(len(idx), k=1)).T for idx in _groups(labels)]
    genuine = np.concatenate([idx[g] for idx, g in zip(_groups(labels), genuine)]) if genuine else np.zeros((0, 2), int)
    if len(genuine) > max_pairs // 2:
        genuine = genuine[rng.choice(len(genuine), max_pairs // 2, replace=False)]
    impostors = np.zeros((0, 2), int)
    want = max_pairs - len(genuine)
    while len(impostors) < want:  # uniform over ordered pairs, kept when the two people differ
        cand = rng.integers(0, n, size=(2 * (want - len(impostors)) + 16, 2))
        cand = cand[labels[cand[:, 0]] != labels[cand[:, 1]]]
        impostors = np.concatenate([impostors, cand[: want - len(impostors)]])
    pairs = np.concatenate([genuine, impostors])
    scores = np.concatenate([np.einsum("ij,ij->i", e[pairs[k:k + 65536, 0]], e[pairs[k:k + 65536, 1]])
                             for k in range(0, len(pairs), 65536)])
    return scores.astype(np.float32), labels[pairs[:, 0]] == labels[pairs[:, 1]]


def _groups(labels):
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [g for g in np.split(order, bounds) if len(g) > 1]


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
    """ROC AUC and TAR at the given FARs over all pairs of the samples (a bounded sample of many; see `all_pairs`).

    Returns:
        A dict with `pairs`, `genuine_pairs`, `auc`, per-FAR `tar`/`threshold`,
        and the curve (`roc`: far, tar) for plotting.
    """
    scores, same = all_pairs(embeddings, labels)
    far, tar, _ = roc_curve(scores, same)
    n = len(labels)
    report = {"pairs": int(len(scores)), "genuine_pairs": int(same.sum()), "auc": float(np.trapezoid(tar, far)),
              "sampled": bool(len(scores) < n * (n - 1) // 2), "at_far": {}}
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
    if override is not None:
        return float(override), "--threshold"
    calibration = metadata.get("verification")
    if not calibration:
        raise FacemtlError(f"The model {metadata.get('name')}/{metadata.get('version')} has no calibrated threshold: "
                           "run `facemtl calibrate --model DIR --data LABELLED_FACES` or pass --threshold")
    return float(calibration["threshold"]), (f"calibrated at FAR {calibration['target_far']:g} on "
                                             f"{calibration['pairs']} pairs of {calibration['data']}")
