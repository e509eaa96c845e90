"""Turns a recipe's `data.sources` into train/validation/test splits of real datasets."""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from facemtl.data.celeba import read_celeba
from facemtl.data.fer2013 import read_fer2013_csv, read_fer2013_folders
from facemtl.data.folders import read_expression_folders, read_identity_folders
from facemtl.data.materialize import materialize
from facemtl.data.mixing import expression_class_weights, merge_identity_spaces, shift_identities
from facemtl.data.streaming import SkipLog, StreamedSource, StreamedSplit, part_labels
from facemtl.data.vggface2 import read_vggface2
from facemtl.errors import FacemtlError
from facemtl.faces.align_folder import align_folder
from facemtl.faces.detect import get_detector
from facemtl.labels import IGNORE_LABEL


class MixedData(NamedTuple):
    """What `load_mixed` returns (see there)."""

    parts: list
    weights: list
    val: object
    test: object
    identity_names: list
    class_weights: Optional[list]
    skips: Optional[SkipLog]


def aligned_copy(folder, cfg, cache_dir, log=print, layout="arcface", size=112, face_scale=1.0):
    """Aligns every photo under `folder` once into the cache (reused afterwards); returns the crops' folder.

    Args:
        folder: the photos.
        cfg: the `SourceConfig` (its `align_detector`, and `align_size` if set).
        cache_dir: the cache root.
        layout: the crop template (`facemtl.faces.align.LAYOUTS`).
        size: the crop side when `cfg.align_size` is unset (the model's input side).
        face_scale: see `facemtl.faces.align.template`.

    Every setting that changes the crops (detector, layout, size, face scale)
    is part of the cache folder's name, so a changed setting never reuses crops.
    """
    size = cfg.align_size or size
    rel = os.path.abspath(folder).strip(os.sep).replace(os.sep, "_")
    kind = f"aligned-{cfg.align_detector}-{layout}-{size}px-scale{face_scale:g}"
    target = os.path.join(cache_dir, kind, rel)
    report = align_folder(folder, target, get_detector(cfg.align_detector), size=(size, size), layout=layout,
                          face_scale=face_scale)
    log(f"facemtl: aligned {folder} -> {target}: {report.summary()}")
    return target


def read_source(cfg, split=None, cache_dir="data/cache", log=print, layout="arcface", size=112):
    """Reads one `SourceConfig` (at `split`, default its own) with the matching reader.

    Photos of sources with `align: true` are aligned with the crop `layout`, at
    `size` pixels (the model's input side) unless the source sets `align_size`.
    """
    split = split or cfg.split
    if not cfg.path:
        raise FacemtlError(f"data.sources: a {cfg.format} source needs a path")
    if cfg.align and cfg.format in ("fer2013_csv", "fer2013_folders"):
        raise FacemtlError("data.sources: FER2013 faces are already cropped; align applies to photo datasets")
    if cfg.format == "utkface":
        raise FacemtlError("data.sources: a utkface source labels attribute tasks (age, gender), which train on "
                           "cached embeddings: see tasks and feature_cache in recipes/release_cpu.yaml")
    if cfg.format == "fer2013_folders":
        src = read_fer2013_folders(cfg.path, split)
    elif cfg.format == "fer2013_csv":
        src = read_fer2013_csv(cfg.path, usage=split)
    elif cfg.format == "vggface2":
        src = read_vggface2(cfg.path, split)
    elif cfg.format == "expression_folders":
        # Another split answers in the training split's classes, in its label order.
        classes = None if split == cfg.split else read_expression_folders(cfg.path, cfg.split).expression_names
        src = read_expression_folders(cfg.path, split, classes)
    elif cfg.format == "celeba":
        images = cfg.images
        if cfg.align:
            images = aligned_copy(images or os.path.join(cfg.path, "img_celeba"), cfg, cache_dir, log, layout, size)
        # The training split reads every photo unless CelebA's partition file says otherwise;
        # any other split (a test_split) needs that file: never the training photos again.
        has_partition = os.path.isfile(os.path.join(cfg.path, "list_eval_partition.txt"))
        src = read_celeba(cfg.path, images=images, min_images=cfg.min_images,
                          split=split if (split != cfg.split or has_partition) else None)
    else:
        folder = os.path.join(cfg.path, split)
        if not os.path.isdir(folder):
            flat = not any(os.path.isdir(os.path.join(cfg.path, s)) for s in ("train", "test", "val", "validation"))
            if split != cfg.split or not flat:  # a test split, or a dataset with split folders: never fall back
                raise FacemtlError(f"{folder}: no such split folder in {cfg.path}")
            folder = cfg.path  # a dataset without split folders (one folder per person): its whole tree
        if cfg.align:
            folder = aligned_copy(folder, cfg, cache_dir, log, layout, size)
        src = read_identity_folders(folder, name=cfg.name or os.path.basename(os.path.normpath(cfg.path)),
                                    min_images=cfg.min_images)
    if cfg.name:
        src.name = cfg.name
    return src


def holdout(source, fractions, seed=0):
    """Splits a source into parts of the given fractions, stratified by its label (the rest first).

    Returns:
        `[rest, part_1, part_2, ...]` index arrays; every class keeps at least
        one sample in `rest` when it has one.
    """
    labels = source.expression if "expression" in source.tasks else source.identity
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(len(fractions) + 1)]
    # Group by label once (a shuffled, stable sort): linear in the dataset, also for
    # VGGFace2's 3.3M photos of 8,631 people.
    shuffled = rng.permutation(len(labels))
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    _, starts = np.unique(labels[grouped], return_index=True)
    for idx in np.split(grouped, starts[1:]):
        start = 0
        for k, f in enumerate(fractions):
            take = min(int(round(f * len(idx))), max(0, len(idx) - start - 1))
            parts[k + 1].append(idx[start:start + take])
            start += take
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, int) for p in parts]


def _align_names(test, train):
    """Maps a separate test split's identity labels onto the training split's names."""
    if "identity" not in test.tasks:
        return test
    index = {n: i for i, n in enumerate(train.identity_names)}
    unknown = sorted(set(test.identity_names) - set(index))
    if unknown:
        raise FacemtlError(f"{test.name} {test.split}: identities not in the training split: {unknown[:5]}")
    test.identity = np.array([index[test.identity_names[i]] if i != IGNORE_LABEL else IGNORE_LABEL
                              for i in test.identity], np.int32)
    test.identity_names = list(train.identity_names)
    return test


def _relabelled(mat, identity):
    """A training/evaluation part with merged identity labels: an array triple, or the streamed source."""
    if isinstance(mat, StreamedSource):
        return mat.with_identity(identity)
    return mat.images, identity, mat.expression


def _concat(parts):
    if any(isinstance(p, StreamedSource) for p in parts):
        return StreamedSplit(parts)
    images = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts])
    exprs = np.concatenate([p[2] for p in parts])
    return images, {"identity": ids, "expression": exprs}


class SourceSplits(NamedTuple):
    """One source read and split (`split_source`): the whole training split and its three parts (`FaceSource`s)."""

    source: object
    train: object
    val: object
    test: object


def split_source(recipe, k, log=print):
    """Reads `data.sources[k]` and holds out its validation and test parts: the one assembly every trainer uses.

    Validation (`val_fraction`) and, without a separate `test_split`, test
    (`test_fraction`) are held out of the source's split, stratified by label,
    with the seed `train.seed + k`; a separate `test_split` answers in the
    training split's identity names. Photos of sources with `align: true` are
    aligned with the model's crop layout at its input side.

    Returns:
        A `SourceSplits` of `FaceSource`s, not yet decoded (`materialize` or
        `StreamedSource` read them).
    """
    cfg, data, m = recipe.data.sources[k], recipe.data, recipe.model
    size = max(m.height, m.width)
    src = read_source(cfg, cache_dir=data.cache_dir, log=log, layout=m.crop_layout, size=size)
    fractions = [cfg.val_fraction] + ([] if cfg.test_split else [cfg.test_fraction])
    subsets = [src.subset(i) for i in holdout(src, fractions, seed=recipe.train.seed + k)]
    for sub, part in zip(subsets, ("train", "val", "test")):
        sub.split = f"{src.split or cfg.split}-{part}"
    test = (_align_names(read_source(cfg, cfg.test_split, data.cache_dir, log, m.crop_layout, size), src)
            if cfg.test_split else subsets[2])
    return SourceSplits(src, subsets[0], subsets[1], test)


def load_mixed(recipe, log=print):
    """Reads, splits and materialises every source of the recipe.

    With `data.streaming`, file-based sources are not decoded into memory:
    their parts are `StreamedSource`s read from disk at every epoch, and the
    validation/test splits holding them are `StreamedSplit`s.

    Returns:
        A `MixedData`: the
        training parts as `(images, identity, expression)` (or `StreamedSource`)
        for `mixing.mix`, their sampling weights, validation and test splits as
        `(images, labels)` (or `StreamedSplit`), merged identity names, and
        expression class weights (or None), and the `SkipLog` of the streamed
        sources (None without streaming).
    """
    data = recipe.data
    if not data.sources:
        raise FacemtlError("data.source is 'mixed' but data.sources is empty")
    size = max(recipe.model.height, recipe.model.width)
    skips = SkipLog("streamed data") if data.streaming else None
    per_source = []
    for k, cfg in enumerate(data.sources):
        src, *subsets = split_source(recipe, k, log)
        if skips is not None and src.paths is not None:
            mats = [StreamedSource(s, size, data.crop_margin, skips) for s in subsets]
            log(f"facemtl: {src.name}: {len(mats[0])} train, {len(mats[1])} val, {len(mats[2])} test "
                f"({', '.join(src.tasks)}; streamed from disk, unreadable files counted as they are met)")
        else:
            mats = [materialize(s, size, margin=data.crop_margin, cache_dir=data.cache_dir) for s in subsets]
            log(f"facemtl: {src.name}: {len(mats[0].images)} train, {len(mats[1].images)} val, "
                f"{len(mats[2].images)} test ({', '.join(src.tasks)}; "
                f"{sum(len(m.skipped) for m in mats)} unreadable skipped)")
        per_source.append((src.name, mats, cfg.weight))
    # One identity label space over all sources, the same offsets for every split.
    train_ids, names, offsets = merge_identity_spaces([(n, mats[0]) for n, mats, _ in per_source])
    parts, val, test = [], [], []
    for (_, mats, _), ids, offset in zip(per_source, train_ids, offsets):
        parts.append(_relabelled(mats[0], ids))
        val.append(_relabelled(mats[1], shift_identities(mats[1].identity, offset)))
        test.append(_relabelled(mats[2], shift_identities(mats[2].identity, offset)))
    class_weights = None
    if data.expression_balance == "class_weights":
        class_weights = expression_class_weights(np.concatenate([part_labels(p)[1] for p in parts]))
    return MixedData(parts, [w for *_, w in per_source], _concat(val), _concat(test), names, class_weights, skips)
