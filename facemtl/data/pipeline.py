"""Builds the train/validation/test `tf.data` streams named by a recipe."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from facemtl.data import synthetic
from facemtl.data.catalog import load_mixed
from facemtl.data.mixing import mix
from facemtl.data.streaming import StreamedSplit
from facemtl.labels import EXPRESSIONS, IGNORE_LABEL
from facemtl.preprocessing import prepare_batch


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
    # Mixed real data: `train_stream(batch_size, seed, augment)` gives the endless
    # mixed training stream (`train` then only counts the training images).
    train_stream: Optional[Callable] = None
    class_weights: Optional[list] = None
    # Streamed sources (`data.streaming`): where unreadable files are counted.
    skips: Optional[object] = None


def split_size(split):
    """Number of samples listed in a split (arrays or a `StreamedSplit`)."""
    return len(split) if isinstance(split, StreamedSplit) else len(split[0])


def labelled_images(split, task, limit=None):
    """The in-memory images of `split` that carry a `task` label, with those labels.

    Args:
        split: a split as in `Splits` (arrays, or a `StreamedSplit` whose parts
            read from disk are left out).
        task: `"identity"` or `"expression"`.
        limit: at most this many images (the first ones).

    Returns:
        `(images uint8 [n, h, w, c], labels int [n])`.
    """
    if isinstance(split, StreamedSplit):
        parts = [(p[0], p[1] if task == "identity" else p[2]) for p in split.parts if isinstance(p, tuple)]
    else:
        parts = [(split[0], split[1][task])]
    images, labels = [], []
    for imgs, labs in parts:
        keep = np.flatnonzero(np.asarray(labs) != IGNORE_LABEL)
        images.append(imgs[keep])
        labels.append(np.asarray(labs)[keep])
    if not images:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int32)
    images, labels = np.concatenate(images), np.concatenate(labels)
    return images[:limit], labels[:limit]


def split_labels(identity, expression, seed=0):
    """Keeps only one task's label per sample, alternating, as in merged datasets."""
    rng = np.random.default_rng(seed)
    keep_identity = rng.permutation(len(identity)) % 2 == 0
    return (np.where(keep_identity, identity, IGNORE_LABEL).astype(np.int32),
            np.where(keep_identity, IGNORE_LABEL, expression).astype(np.int32))


def load_splits(recipe, log=print):
    """Materialises the recipe's data source as `Splits`."""
    data = recipe.data
    if data.source == "mixed":
        return _load_mixed_splits(recipe, log)
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


def _load_mixed_splits(recipe, log):
    parts, weights, val, test, names, class_weights, skips = load_mixed(recipe, log)
    data = recipe.data
    if not isinstance(val, StreamedSplit):  # (streamed splits interleave their sources themselves)
        # The sources come concatenated. Keras averages a task's validation loss over
        # batches, so a batch holding only another task's source would count as a
        # loss of 0 and dilute val_loss (and the checkpoint choice) by the sources'
        # sizes instead of λ. One fixed shuffle makes every batch carry both tasks.
        order = np.random.default_rng(recipe.train.seed).permutation(len(val[0]))
        val = (val[0][order], {t: y[order] for t, y in val[1].items()})

    def train_stream(batch_size, seed, augment):
        return mix(parts, weights, batch_size, recipe.model, augmenters=augmentation_layers(augment, seed),
                   grayscale_probability=data.grayscale_probability, seed=seed,
                   balance_expressions=data.expression_balance == "sampling")

    train = StreamedSplit(parts)  # counts and labels only: training reads `train_stream`
    return Splits(train, val, test, names, train_stream=train_stream, class_weights=class_weights, skips=skips)


def augmentation_layers(augment, seed=0):
    """Keras 3 augmentation layers for a recipe's `data.augment` section (an empty list when all are off)."""
    from keras import layers

    a = augment
    out = []
    if a.flip:
        out.append(layers.RandomFlip("horizontal", seed=seed))
    if a.rotation:
        out.append(layers.RandomRotation(a.rotation, fill_mode="reflect", seed=seed))
    if a.translation:
        out.append(layers.RandomTranslation(a.translation, a.translation, fill_mode="reflect", seed=seed))
    if a.zoom:
        out.append(layers.RandomZoom(a.zoom, fill_mode="reflect", seed=seed))
    if a.brightness:
        out.append(layers.RandomBrightness(a.brightness, value_range=(0, 255), seed=seed))
    if a.contrast:
        out.append(layers.RandomContrast(a.contrast, value_range=(0, 255), seed=seed))
    return out


def make_dataset(split, model_config, batch_size, *, training, shuffle_buffer=10000, seed=0, augment=None,
                 drop_remainder=False):
    """Turns one split into a batched, preprocessed `tf.data.Dataset`.

    Args:
        split: `(images, labels)` as in `Splits`, or a `StreamedSplit` (evaluation only).
        model_config: the recipe's `model` section (input size and channels).
        batch_size: the global batch size.
        training: shuffle (reshuffled each epoch) when true.
        shuffle_buffer: shuffle buffer size.
        seed: shuffle and augmentation seed.
        augment: the recipe's `data.augment` section, applied when `training`.
        drop_remainder: drop a last, smaller batch (the distributed loop wants full global batches).

    Returns:
        A dataset of `(images float32 [b, h, w, c], {"identity", "expression"})`.
    """
    if isinstance(split, StreamedSplit):  # evaluation of data streamed from disk
        if training:
            raise ValueError("Streamed splits are for evaluation; training reads Splits.train_stream")
        ds = split.dataset()
    else:
        images, labels = split
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training:
        ds = ds.shuffle(min(shuffle_buffer, len(images)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    c = model_config
    augmenters = augmentation_layers(augment, seed) if (training and augment is not None) else []
    ds = ds.map(lambda x, y: (prepare_batch(x, c.height, c.width, c.channels, augmenters=augmenters), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
