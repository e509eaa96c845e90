"""Builds the train/validation/test `tf.data` streams named by a recipe."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from facemtl.data import synthetic
from facemtl.labels import EXPRESSIONS, IGNORE_LABEL
from facemtl.preprocessing import prepare_images


@dataclasses.dataclass
class Splits:
    """Arrays for each split plus the label vocabularies.

    Each split is `(images uint8 [n, h, w, 3], {"identity": int32 [n], "expression": int32 [n]})`
    with `IGNORE_LABEL` where a sample has no label for a task.
    """

    train: tuple
    val: tuple
    test: tuple
    identity_names: list
    expression_names: list = dataclasses.field(default_factory=lambda: list(EXPRESSIONS))


def split_labels(identity, expression, seed=0):
    """Keeps only one task's label per sample, alternating, as in merged datasets."""
    rng = np.random.default_rng(seed)
    keep_identity = rng.permutation(len(identity)) % 2 == 0
    return (np.where(keep_identity, identity, IGNORE_LABEL).astype(np.int32),
            np.where(keep_identity, IGNORE_LABEL, expression).astype(np.int32))


def load_splits(recipe):
    """Materialises the recipe's data source as `Splits`."""
    data = recipe.data
    if data.source != "synthetic":
        raise ValueError(f"Unknown data source. Received: data.source={data.source!r}")
    cfg = data.synthetic
    size = max(recipe.model.height, recipe.model.width)
    splits = {}
    # Same people (style_seed) in every split, different pose/lighting/noise (seed).
    for offset, (name, per_pair) in enumerate(
            [("train", cfg.train_per_pair), ("val", cfg.val_per_pair), ("test", cfg.test_per_pair)]):
        images, ids, exprs = synthetic.generate_faces(cfg.num_identities, per_pair, size=size,
                                                      seed=cfg.seed * 10 + offset + 1, style_seed=cfg.seed)
        if name == "train" and cfg.label_mode == "split":
            ids, exprs = split_labels(ids, exprs, seed=cfg.seed)
        splits[name] = (images, {"identity": ids, "expression": exprs})
    return Splits(splits["train"], splits["val"], splits["test"], synthetic.identity_names(cfg.num_identities))


def make_dataset(split, model_config, batch_size, *, training, shuffle_buffer=10000, seed=0):
    """Turns one split into a batched, preprocessed `tf.data.Dataset`.

    Args:
        split: `(images, labels)` as in `Splits`.
        model_config: the recipe's `model` section (input size and channels).
        batch_size: the global batch size.
        training: shuffle (reshuffled each epoch) when true.
        shuffle_buffer: shuffle buffer size.
        seed: shuffle seed.

    Returns:
        A dataset of `(images float32 [b, h, w, c], {"identity", "expression"})`.
    """
    images, labels = split
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(min(shuffle_buffer, len(images)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    c = model_config
    ds = ds.map(lambda x, y: (prepare_images(x, c.height, c.width, c.channels), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
