"""CelebA in its own layout: `img_celeba/` or `img_align_celeba/` with `identity_CelebA.txt`.

`list_bbox_celeba.txt` (boxes for `img_celeba`) is used when present. Photos
without boxes are in-the-wild scenes: run them through `facemtl align`
(`facemtl.faces.align_folder.align_folder`) once to get aligned crops, then read
the crops with `read_celeba(..., images="aligned/")`.
"""

from __future__ import annotations

import os

import numpy as np

from facemtl.data.sources import FaceSource, no_labels, warn_skipped
from facemtl.errors import FacemtlError

PARTITIONS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


def read_partition(root, split):
    """The photo stems of one split of CelebA's `list_eval_partition.txt` (0 train, 1 val, 2 test).

    Raises:
        FacemtlError: no partition file (a test split must not silently be the
            training photos), an unknown split, or a malformed line.
    """
    path = os.path.join(root, "list_eval_partition.txt")
    if split not in PARTITIONS:
        raise FacemtlError(f"Unknown CelebA split {split!r}: expected one of {sorted(PARTITIONS)}")
    if not os.path.isfile(path):
        raise FacemtlError(f"{path}: not found, so CelebA's {split!r} split is unknown; use test_fraction to hold "
                           "photos out instead of a test_split")
    stems = set()
    with open(path, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise FacemtlError(f"{path}:{line}: expected '<file> <0|1|2>', found {text.strip()!r}")
            if int(parts[1]) == PARTITIONS[split]:
                stems.add(os.path.splitext(parts[0])[0])
    return stems


def read_celeba(root, images=None, min_images=1, split=None):
    """Reads CelebA identities.

    Args:
        root: folder with `identity_CelebA.txt` and an image folder.
        images: the image folder (default: `img_align_celeba/` if present, else
            `img_celeba/`); a folder of aligned crops named like the originals
            (`000001.png` for `000001.jpg` is accepted) works too.
        min_images: leave out identities with fewer photos present.
        split: `None` for every photo, or `train`/`val`/`test` from CelebA's
            `list_eval_partition.txt` (an error when that file is missing).

    Returns:
        A `FaceSource` of paths with identity labels (names are CelebA's ids).
        Listed photos missing from the image folder are skipped with one warning.
    """
    ident_file = os.path.join(root, "identity_CelebA.txt")
    if not os.path.isfile(ident_file):
        raise FacemtlError(f"{ident_file}: not found (CelebA's identity list)")
    if images is None:
        aligned = os.path.join(root, "img_align_celeba")
        images = aligned if os.path.isdir(aligned) else os.path.join(root, "img_celeba")
    if not os.path.isdir(images):
        raise FacemtlError(f"{images}: no such image folder")
    wanted = read_partition(root, split) if split is not None else None
    present = {}
    for f in os.listdir(images):
        stem = os.path.splitext(f)[0]
        if wanted is None or stem in wanted:
            present.setdefault(stem, f)
    files, ids, missing = [], [], []
    with open(ident_file, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise FacemtlError(f"{ident_file}:{line}: expected '<file> <identity>', found {text.strip()!r}")
            stem = os.path.splitext(parts[0])[0]
            if wanted is not None and stem not in wanted:
                continue  # another split's photo
            if stem not in present:
                missing.append(parts[0])
                continue
            files.append(present[stem])
            ids.append(int(parts[1]))
    warn_skipped(ident_file, missing, "listed photos missing from " + images)
    ids = np.array(ids)
    counts = {i: c for i, c in zip(*np.unique(ids, return_counts=True))}
    keep = np.array([counts[i] >= min_images for i in ids], bool)
    if not keep.any():
        raise FacemtlError(f"{ident_file}: no identity with at least {min_images} photo(s) present")
    kept_ids = sorted({int(i) for i in ids[keep]})
    index = {c: k for k, c in enumerate(kept_ids)}
    paths = [os.path.join(images, f) for f, k in zip(files, keep) if k]
    boxes = None
    bbox_file = os.path.join(root, "list_bbox_celeba.txt")
    if os.path.isfile(bbox_file) and os.path.basename(os.path.normpath(images)) == "img_celeba":
        table = _read_bbox_list(bbox_file)
        boxes = np.array([table.get(os.path.basename(p), (np.nan,) * 4) for p in paths], np.float32)
    return FaceSource(name="celeba", paths=paths, identity=np.array([index[int(i)] for i in ids[keep]], np.int32),
                      expression=no_labels(len(paths)), identity_names=[str(c) for c in kept_ids], boxes=boxes)


def _read_bbox_list(path):
    """CelebA's `list_bbox_celeba.txt`: a count line, a header line, then `file x y w h`."""
    table = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line, text in enumerate(lines[2:], start=3):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise FacemtlError(f"{path}:{line}: expected '<file> x y w h', found {text.strip()!r}")
        try:
            table[parts[0]] = tuple(float(v) for v in parts[1:])
        except ValueError:
            raise FacemtlError(f"{path}:{line}: box values must be numbers") from None
    return table
