"""One training stream for two tasks, mixed from several sources.

Each source contributes `(image, {"identity": id or -1, "expression": e or -1})`
samples; `mix` draws from the sources with recipe-set ratios, element by
element, so every batch (and every replica's contiguous slice of it) carries
both tasks. Identity label spaces of several sources are laid end to end
(`"<source>/<name>"`), so they never collide.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from facemtl.data.streaming import StreamedSource, part_labels
from facemtl.labels import EXPRESSIONS, IGNORE_LABEL
from facemtl.preprocessing import prepare_batch


def merge_identity_spaces(parts):
    """Offsets each part's identity labels so that label spaces are disjoint.

    Args:
        parts: list of `(source_name, Materialized)`.

    Returns:
        `(identity_arrays, names, offsets)`: one relabelled array per part, the
        merged names `"<source>/<name>"` in label order, and each part's offset
        (to relabel its other splits alike).
    """
    names, arrays, offsets, offset = [], [], [], 0
    for source_name, m in parts:
        offsets.append(offset)
        arrays.append(shift_identities(m.identity, offset))
        if (m.identity != IGNORE_LABEL).any():
            names += [f"{source_name}/{n}" for n in m.identity_names]
            offset += len(m.identity_names)
    return arrays, names, offsets


def shift_identities(identity, offset):
    """Adds `offset` to identity labels, leaving `IGNORE_LABEL` alone."""
    identity = np.asarray(identity)
    return np.where(identity == IGNORE_LABEL, IGNORE_LABEL, identity + offset).astype(np.int32)


def expression_class_weights(expression, num_classes=len(EXPRESSIONS)):
    """`n / (k * n_c)` per class over the labelled samples (1 for absent classes), e.g. for FER2013's imbalance."""
    labels = np.asarray(expression)
    labels = labels[labels != IGNORE_LABEL]
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return weights.tolist()


def mix(parts, weights, batch_size, model_config, *, augmenters=(), grayscale_probability=0.0, seed=0,
        balance_expressions=False):
    """An endless, shuffled, batched training stream mixed from several materialised sources.

    Args:
        parts: list of `(images uint8 [n, s, s, 3], identity int32 [n], expression int32 [n])`
            or `StreamedSource`s (read from disk), identity labels already merged
            (`merge_identity_spaces`).
        weights: sampling ratio per part (normalised).
        batch_size: global batch size.
        model_config: the recipe's `model` section (input size and channels).
        augmenters: Keras 3 augmentation layers, applied per batch.
        grayscale_probability: per-sample chance of random grayscale.
        seed: sampling and shuffling seed.
        balance_expressions: draw expression-labelled parts class-balanced
            (each class equally often) instead of in their natural frequency.

    Returns:
        A `tf.data.Dataset` of `(images float32 [b, h, w, c], {"identity", "expression"})`; it repeats forever
        (give `fit` a `steps_per_epoch`).
    """
    if len(parts) != len(weights) or not parts:
        raise ValueError(f"Need one weight per part. Received: {len(parts)} parts, weights={weights}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Weights must be >= 0 and not all 0. Received: weights={weights}")
    streams, stream_weights = [], []
    for k, (part, w) in enumerate(zip(parts, weights)):
        if w == 0:
            continue
        exprs = part_labels(part)[1]
        if balance_expressions and (exprs != IGNORE_LABEL).any():
            classes = [c for c in range(len(EXPRESSIONS)) if (exprs == c).any()]
            for c in classes:
                streams.append(_stream(part, np.flatnonzero(exprs == c), seed + 1000 * k + c))
                stream_weights.append(w / len(classes))
        else:
            streams.append(_stream(part, None, seed + 1000 * k))
            stream_weights.append(w)
    total = sum(stream_weights)
    ds = tf.data.Dataset.sample_from_datasets(streams, weights=[w / total for w in stream_weights], seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    c = model_config

    def prepare(x, y):
        return prepare_batch(x, c.height, c.width, c.channels, augmenters=augmenters,
                             grayscale_probability=grayscale_probability), y

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _stream(part, index, seed):
    """An endless shuffled stream of one part (or its samples at `index`)."""
    if isinstance(part, StreamedSource):
        return (part if index is None else part.subset(index)).dataset(shuffle=True, repeat=True, seed=seed)
    images, ids, exprs = part if index is None else (p[index] for p in part)
    ds = tf.data.Dataset.from_tensor_slices((images, {"identity": ids, "expression": exprs}))
    return ds.shuffle(min(len(images), 20000), seed=seed, reshuffle_each_iteration=True).repeat()
