"""What `serving_default` answers: its outputs' names, and the labels decoded from its numbers.

One rule for both engines: the SavedModel decodes inside its graph
(`facemtl.export.saved_model`) and the LiteRT copy on the host
(`facemtl.inference.Predictor`), each by calling `label_outputs` with its own
arrays (TensorFlow tensors or NumPy), so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np


def attribute_output(task):
    """The name of the output that carries an attribute head's tensor.

    `<name>_probs` for classes (then `<name>` is the label), else `<name>`
    itself (a number: age in years). The SavedModel, the LiteRT copy and the
    answers name them alike.

    Args:
        task: an export's `attributes` entry (`name`, `kind`).
    """
    return f"{task['name']}_probs" if task["kind"] == "classification" else task["name"]


def label_outputs(out, expressions, identities, attributes=(), rule=None, engine="numpy"):
    """`serving_default`'s outputs: the numeric ones given, the labels added.

    Args:
        out: `expression_probs`, `identity_probs` and `embedding` (those the
            model has), and each attribute's `attribute_output`.
        expressions, identities: the class names, in the model's order.
        attributes: the export's `attributes` entries.
        rule: the export's `facemtl.recognition.open_set.OpenSetRule`, or `None`
            (closed set: the identity label is the top class).
        engine: `"tf"` (tensors, inside a graph) or `"numpy"` (arrays; labels as
            bytes, as a SavedModel's string outputs read).

    Returns:
        A new dict: `out` plus `expression`, `identity` (with a rule also
        `identity_closest`, `identity_similarity`) and each classification
        attribute's label.
    """
    if engine == "tf":
        import tensorflow as tf  # only inside the exporter's graph

        def top(names, probs):
            return tf.gather(tf.constant(list(names)), tf.argmax(probs, axis=-1))

        open_set = rule.tf_outputs if rule is not None else None
    else:
        def top(names, probs):
            return np.array([n.encode() for n in names], dtype=object)[np.argmax(probs, axis=-1)]

        open_set = rule.np_outputs if rule is not None else None
    out = dict(out)
    if "expression_probs" in out:
        out["expression"] = top(expressions, out["expression_probs"])
    if "identity_probs" in out:
        out.update(open_set(out["embedding"]) if open_set else {"identity": top(identities, out["identity_probs"])})
    for task in attributes:
        if task["kind"] == "classification":
            out[task["name"]] = top(task["classes"], out[attribute_output(task)])
    return out
