"""Task heads: each task's own feature layers and output layer."""

from __future__ import annotations

from keras import layers

from facemtl.models.layers import CosineClassifier, ExpectedValue

IDENTITY_HEADS = ("softmax", "arcface", "cosface")
# The margin-trained heads' cosine layer: the training view's `identity` output.
COSINE_LAYER = "identity_cosine"


def feature_stack(x, units, *, activation="relu", dropout=0.0, name):
    """Dense -> activation -> Dropout, once per entry of `units`.

    Args:
        x: input tensor (pooled backbone features).
        units: widths of the dense layers, e.g. `[256]`; empty for none.
        activation: Keras activation name.
        dropout: dropout rate after each layer.
        name: prefix for layer names (the task name).

    Returns:
        The output tensor.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
    for i, width in enumerate(units):
        if width < 1:
            raise ValueError(f"Head widths must be positive. Received: units={units}")
        x = layers.Dense(width, name=f"{name}_dense{i + 1}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout{i + 1}")(x)
    return x


def identity_head(x, num_identities, *, units, embedding_dim, activation="relu", dropout=0.0, sync_bn=False,
                  head="softmax", scale=30.0):
    """Identity branch: features -> embedding -> probabilities over training identities.

    Args:
        x: pooled backbone features.
        num_identities: number of training identities.
        units, activation, dropout: the task's feature layers.
        embedding_dim: size of the embedding.
        sync_bn: synchronised BatchNormalization.
        head: `"softmax"` (a dense softmax layer) or `"arcface"` / `"cosface"`:
            cosine logits on normalised embeddings (layer `identity_cosine`),
            trained with a margin loss; `identity` is then `softmax(scale * cos)`.
        scale: the margin heads' logit scale `s`.

    Returns:
        `(identity_probs, embedding)`: the probabilities over `num_identities`
        and the L2-normalised embedding (both float32, also under mixed precision).
    """
    if num_identities < 1:
        raise ValueError(f"num_identities must be >= 1. Received: num_identities={num_identities}")
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be >= 1. Received: embedding_dim={embedding_dim}")
    if head not in IDENTITY_HEADS:
        raise ValueError(f"head must be one of {IDENTITY_HEADS}. Received: head={head!r}")
    h = feature_stack(x, units, activation=activation, dropout=dropout, name="identity")
    h = layers.Dense(embedding_dim, name="embedding_dense")(h)
    h = layers.BatchNormalization(synchronized=sync_bn, name="embedding_bn")(h)
    if head == "softmax":
        probs = layers.Dense(num_identities, activation="softmax", dtype="float32", name="identity")(h)
    else:
        cos = CosineClassifier(num_identities, dtype="float32", name=COSINE_LAYER)(h)
        probs = layers.Activation("softmax", dtype="float32", name="identity")(
            layers.Rescaling(scale, dtype="float32", name="identity_scale")(cos))
    embedding = layers.UnitNormalization(dtype="float32", name="embedding")(h)
    return probs, embedding


def expression_head(x, num_classes, *, units, activation="relu", dropout=0.0):
    """Expression branch: features -> softmax over the expression classes (float32)."""
    h = feature_stack(x, units, activation=activation, dropout=dropout, name="expression")
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="expression")(h)


def attribute_head(embedding, task):
    """A task's head on the identity embedding (age, gender...): one hidden layer, then its output.

    The embedding is L2-normalised (values ~1/sqrt(dim)); it is scaled by
    sqrt(dim) first so the head sees unit-scale inputs.

    Args:
        embedding: `[batch, dim]`, the model's `embedding` output.
        task: a `TaskConfig` (or its dict): `name`, `kind` (classification,
            regression or distribution), `classes`, `max_value`, `units`, `dropout`.

    Returns:
        `(answer, trained)`: the served output (class probabilities, a number,
        or a distribution's expected value) and the output the loss reads
        (the same tensor, or the distribution's probabilities).

    Example:
        >>> answer, trained = attribute_head(embedding, TaskConfig("age", "distribution"))
    """
    t = task if isinstance(task, dict) else vars(task)
    name, kind, dim = t["name"], t["kind"], embedding.shape[-1]
    if kind not in ("classification", "regression", "distribution"):
        raise ValueError(f"An attribute head is a classification, regression or distribution. Received: kind={kind!r}")
    x = layers.Rescaling(float(dim) ** 0.5, dtype="float32", name=f"{name}_scale")(embedding)
    x = feature_stack(x, [t.get("units", 256)], dropout=t.get("dropout", 0.3), name=name)
    if kind == "classification":
        answer = layers.Dense(len(t["classes"]), activation="softmax", dtype="float32", name=name)(x)
        return answer, answer
    if kind == "regression":
        answer = layers.Reshape((), dtype="float32", name=name)(layers.Dense(1, dtype="float32",
                                                                                name=f"{name}_value")(x))
        return answer, answer
    probs = layers.Dense(int(t.get("max_value", 116)) + 1, activation="softmax", dtype="float32",
                         name=f"{name}_distribution")(x)
    return ExpectedValue(dtype="float32", name=name)(probs), probs
