"""The open-set identity rule: a trained name only for a face close enough to that person, else "unknown".

A closed-set classifier names *someone* for every face, strangers included. The
rule used by every surface (the SavedModel's `identity` string, the LiteRT copy,
`Predictor`, `FaceAnalyzer`, the CLI, REST, annotated pictures and the web page)
is this one:

    similarity_k = cos(embedding, direction_k)       for each trained person k
    closest      = argmax_k similarity_k
    identity     = names[closest] if similarity_closest >= threshold else "unknown"

`direction_k` is the mean embedding of person k's training photos (normalised),
and `threshold` is calibrated on faces of people outside the trained set at a
stated false-positive identification rate (FPIR: the share of strangers that get
a name). Both live in the export: the directions in the graph and in
`assets.extra/identity_directions.npy`, the threshold in the graph and in the
metadata's `open_set` entry. It is written twice, in NumPy and in TensorFlow,
and a test checks the two agree.

Example:
    >>> rule = OpenSetRule(directions, ["ann", "bob"], threshold=0.94)
    >>> rule.decide(embeddings)[0]
    {'label': 'unknown', 'closest': 'bob', 'similarity': 0.71}
"""

from __future__ import annotations

import os

import numpy as np

from facemtl.recognition.metrics import normalize

UNKNOWN = "unknown"
DIRECTIONS_FILE = os.path.join("assets.extra", "identity_directions.npy")


def class_directions(embeddings, labels, num_classes):
    """Each class's mean embedding, normalised: `float32 [num_classes, D]`.

    Raises:
        ValueError: a class has no embedding.
    """
    embeddings, labels = normalize(embeddings), np.asarray(labels)
    missing = [k for k in range(num_classes) if not np.any(labels == k)]
    if missing:
        raise ValueError(f"Every class needs at least one embedding for its direction. Received none for classes "
                         f"{missing}")
    return normalize(np.stack([embeddings[labels == k].mean(0) for k in range(num_classes)]))


def threshold_for_fpir(stranger_scores, fpir):
    """The lowest threshold at which at most a share `fpir` of strangers' best similarities reach it.

    Args:
        stranger_scores: each stranger face's highest similarity to any known person.
        fpir: the target false-positive identification rate, e.g. 0.005.

    Returns:
        A float threshold (`similarity >= threshold` names the face).
    """
    scores = np.sort(np.asarray(stranger_scores, np.float64))[::-1]
    if not len(scores):
        raise ValueError("Calibrating needs at least one stranger's face")
    if not 0 <= fpir < 1:
        raise ValueError(f"fpir must be in [0, 1). Received: fpir={fpir}")
    allowed = int(np.floor(fpir * len(scores)))  # this many strangers may be named
    # Just above the first stranger score that must stay unknown.
    return float(np.nextafter(scores[allowed], np.inf))


class OpenSetRule:
    """The rule (see the module docstring) over fixed directions, names and threshold.

    Args:
        directions: `[N, D]` one direction per trained person (normalised here).
        names: the N names, in label order.
        threshold: the similarity a face needs to be named; `None` names every
            face after its closest person (an export that was never calibrated).
    """

    def __init__(self, directions, names, threshold):
        self.directions = normalize(directions)
        self.names = list(names)
        if len(self.names) != len(self.directions):
            raise ValueError(f"One name per direction. Received: {len(self.names)} names, "
                             f"{len(self.directions)} directions")
        self.threshold = None if threshold is None else float(threshold)

    def similarities(self, embeddings):
        """Cosine similarity of each face to each person: `float32 [n, N]`."""
        return normalize(np.atleast_2d(embeddings)) @ self.directions.T

    def decide(self, embeddings):
        """One `{label, closest, similarity}` per face (`label` is a name or "unknown")."""
        sims = self.similarities(embeddings)
        out = []
        for row in sims:
            k = int(np.argmax(row))
            named = self.threshold is None or row[k] >= self.threshold
            out.append({"label": self.names[k] if named else UNKNOWN, "closest": self.names[k],
                        "similarity": round(float(row[k]), 6)})
        return out

    def np_outputs(self, embeddings):
        """`decide` as `serving_default`'s outputs (NumPy; labels as bytes): what `tf_outputs` gives in the graph."""
        decided = self.decide(embeddings)
        return {"identity": np.array([d["label"].encode() for d in decided], dtype=object),
                "identity_closest": np.array([d["closest"].encode() for d in decided], dtype=object),
                "identity_similarity": np.array([d["similarity"] for d in decided], np.float32)}

    def tf_outputs(self, embedding):
        """The same rule in TensorFlow, for the SavedModel's graph.

        Returns:
            `{"identity": string [n], "identity_closest": string [n],
            "identity_similarity": float32 [n]}`.
        """
        import tensorflow as tf

        names = tf.constant(self.names)
        directions = tf.constant(self.directions)
        unit = tf.math.l2_normalize(tf.cast(embedding, tf.float32), axis=-1, epsilon=1e-12)
        sims = tf.matmul(unit, directions, transpose_b=True)
        k = tf.argmax(sims, axis=-1)
        best = tf.reduce_max(sims, axis=-1)
        closest = tf.gather(names, k)
        if self.threshold is None:
            label = closest
        else:
            label = tf.where(best >= self.threshold, closest, tf.fill(tf.shape(closest), UNKNOWN))
        return {"identity": label, "identity_closest": closest, "identity_similarity": best}


def gallery_threshold(table, people):
    """The 1:N search threshold for a gallery of `people` people from a calibrated table.

    The chance that a stranger passes the threshold against *someone* grows with
    the number of people enrolled, so a larger gallery needs a higher threshold
    for the same false-positive identification rate. `table` maps gallery sizes
    (e.g. `{"1": t1, "10": t10, "100": t100, "1000": t1000}`) to thresholds;
    sizes between are interpolated in log(size), sizes outside take the nearest end.
    """
    sizes = sorted((int(k), float(v)) for k, v in table.items())
    if not sizes:
        raise ValueError("An empty gallery-threshold table")
    x = np.log([n for n, _ in sizes])
    return float(np.interp(np.log(max(int(people), 1)), x, [t for _, t in sizes]))


def stranger_fpir(stranger_scores, threshold):
    """The share of strangers named at `threshold` (their best similarity reaches it)."""
    scores = np.asarray(stranger_scores)
    return float((scores >= threshold).mean()) if len(scores) else 0.0


def export_open_set(saved_model_dir, metadata):
    """An export's open-set entry with its directions (`{"directions": array, "threshold": ..., ...}`), or `None`.

    This is what `facemtl.export.export_saved_model(open_set=...)` takes, so a
    re-export keeps the rule.
    """
    info = metadata.get("open_set")
    path = os.path.join(saved_model_dir, DIRECTIONS_FILE)
    if not info or not os.path.isfile(path):
        return None
    return {**info, "directions": np.load(path)}


def rule_for_export(saved_model_dir, metadata):
    """The export's `OpenSetRule`, or `None` for an export made without one (closed-set answers)."""
    entry = export_open_set(saved_model_dir, metadata)
    return None if entry is None else OpenSetRule(entry["directions"], metadata["identities"], entry.get("threshold"))
