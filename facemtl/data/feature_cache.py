"""The feature cache: views of each face and the frozen trunk's maps of every view, stored once and batched.

With dlib's trunk frozen (stem and stages 1-2), every face goes through the
trunk once per view and the maps are kept on disk (`build_trunk_cache`, a
memory map): the expression branch then trains on them for many epochs at a
fraction of the cost. An epoch draws one view per face at random (`batches`),
with the maps shifted, cut out or mixed as the recipe's `feature_cache` says.

Views of each face (at the model's input size): `plain` (the crop resized as
served), `framed` (framed like a served photo, `facemtl.data.photo_framing`),
their `_mirror`s, and `_jitter` (a random similarity warp and flip).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from facemtl.config import TRAIN_VIEWS, FeatureCacheConfig
from facemtl.files import content_key, replaced_atomically
from facemtl.preprocessing import resize_face

# Views cached for validation faces (no jitter: scored as served).
EVAL_VIEWS = ("plain", "plain_mirror", "framed", "framed_mirror")
# Bumped whenever what a trunk cache holds changes, so older caches are not reused.
CACHE_FORMAT = 1


def view_images(images, framed, view, rng=None, cfg=None):
    """One view of every face, `uint8 [n, size, size, 3]` (see the module docstring)."""
    import cv2

    size = framed.shape[1]
    base = framed if view.startswith("framed") else np.stack([resize_face(im, size) for im in images])
    if view.endswith("_mirror"):
        return base[:, :, ::-1].copy()
    if not view.endswith("_jitter"):
        return base
    cfg = cfg or FeatureCacheConfig()
    rng = rng or np.random.default_rng(0)
    out = np.empty_like(base)
    centre = (size / 2.0, size / 2.0)
    for i, im in enumerate(base):
        scale = 1.0 + rng.uniform(-cfg.jitter_scale, cfg.jitter_scale)
        matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-cfg.jitter_rotation, cfg.jitter_rotation), scale)
        matrix[:, 2] += rng.uniform(-cfg.jitter_shift, cfg.jitter_shift, 2) * size
        im = cv2.warpAffine(im, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out[i] = im[:, ::-1] if rng.random() < 0.5 else im
    return out


@dataclasses.dataclass
class TrunkCache:
    """Cached trunk maps: `features float16 [views, n, h, w, c]` (a memory map) and the labels."""

    features: np.ndarray
    labels: np.ndarray
    views: tuple


def build_trunk_cache(images, framed, labels, trunk, cache_dir, name, views=TRAIN_VIEWS, cfg=None, batch_size=256,
                      log=print):
    """Runs the frozen trunk once over every view of every face; stores the maps in `cache_dir` (`model_views`).

    Returns:
        A `TrunkCache` over the stored file (memory-mapped).
    """
    maps = model_views(trunk, images, framed, cache_dir, f"{name}-trunk", views, cfg=cfg, batch_size=batch_size,
                       log=log, key=(labels,))
    return TrunkCache(maps, np.asarray(labels), tuple(views))


def model_views(model, images, framed, cache_dir, name, views, *, cfg=None, dtype=np.float16, batch_size=256,
                log=print, key=()):
    """A frozen model's outputs for every view of every face, `[views, n, ...]`, computed once and kept on disk.

    The file is keyed by the faces' pixels, the framed crops, the views, the
    jitter settings, the model's weights and `key` (more arrays); it is written
    under a temporary name and renamed when complete, so an interrupted run
    never reuses half a cache.

    Args:
        model: a Keras model (the trunk; the embedding's part of the network).
        images: the crops the `plain` views are made of (`None`: framed views only).
        framed: the faces framed like served photos.
        views: `view_images`' names.
        dtype: how the outputs are stored (float16: trunk maps).

    Returns:
        The stored array, memory-mapped.
    """
    cfg = cfg or FeatureCacheConfig()
    settings = [CACHE_FORMAT, list(views), cfg.jitter_shift, cfg.jitter_scale, cfg.jitter_rotation, cfg.seed,
                np.dtype(dtype).name]
    arrays = [a for a in (images, framed, *key) if a is not None]
    path = os.path.join(cache_dir, f"{name}-{content_key(settings, *arrays, *model.get_weights())}.npy")
    if os.path.isfile(path):
        log(f"{name}: cached ({path})")
        return np.load(path, mmap_mode="r")
    os.makedirs(cache_dir, exist_ok=True)
    run = tf.function(lambda x: model(x, training=False), jit_compile=False, reduce_retracing=True)
    with replaced_atomically(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                        shape=(len(views), len(framed), *model.output_shape[1:]))
        rng = np.random.default_rng(cfg.seed)
        start = time.time()
        for v, view in enumerate(views):
            for s in range(0, len(framed), 2048):
                pixels = view_images(None if images is None else images[s:s + 2048], framed[s:s + 2048], view, rng,
                                     cfg)
                for b in range(0, len(pixels), batch_size):
                    out[v, s + b:s + b + len(pixels[b:b + batch_size])] = run(
                        tf.constant(pixels[b:b + batch_size], tf.float32)).numpy().astype(dtype)
            log(f"{name}: view {view!r} done ({v + 1}/{len(views)}, {time.time() - start:.0f} s)")
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def _shift_maps(x, shift, rng):
    """Each map shifted by up to `shift` cells in each direction (edges padded with zeros)."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
    return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _cutout(x, side, rng):
    n, h, w, _ = x.shape
    ys, xs = rng.integers(0, h - side + 1, n), rng.integers(0, w - side + 1, n)
    for i in range(n):
        x[i, ys[i]:ys[i] + side, xs[i]:xs[i] + side] = 0
    return x


def batches(cache, indices, batch_size, cfg, num_classes, rng, class_weights=None):
    """One epoch of `(maps, one-hot targets[, weights])` batches: a random view per face, augmented maps."""
    order = rng.permutation(indices)
    views = [cache.views.index(v) for v in cfg.views]
    for s in range(0, len(order), batch_size):
        idx = np.sort(order[s:s + batch_size])
        pick = rng.choice(views, len(idx))
        x = np.empty((len(idx), *cache.features.shape[2:]), np.float32)
        for v in np.unique(pick):
            x[pick == v] = cache.features[v, idx[pick == v]]
        y = np.eye(num_classes, dtype=np.float32)[cache.labels[idx]]
        if cfg.map_shift:
            x = _shift_maps(x, cfg.map_shift, rng)
        if cfg.cutout:
            x = _cutout(x, cfg.cutout, rng)
        if cfg.mixup:
            lam = rng.beta(cfg.mixup, cfg.mixup, (len(idx), 1)).astype(np.float32)
            lam = np.maximum(lam, 1 - lam)
            other = rng.permutation(len(idx))
            x = lam[:, :, None, None] * x + (1 - lam[:, :, None, None]) * x[other]
            y = lam * y + (1 - lam) * y[other]
        if class_weights is not None:
            yield x, y, class_weights[cache.labels[idx]]
        else:
            yield x, y


def class_weight_vector(labels, power, num_classes):
    """Loss weights `(1 / frequency) ** power` per class, scaled to mean 1 over the samples."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = (counts.sum() / np.maximum(counts, 1)) ** power
    w /= (w[labels]).mean()
    return w.astype(np.float32)
