"""Decoding a `FaceSource` once into model-sized uint8 arrays (cached on disk).

Small and medium datasets (FER2013, the CelebA and LFW subsets, ORL) fit in
memory at training size; decoding, cropping and resizing them once makes the
training pipeline a cheap in-memory shuffle + augmentation. Unreadable images
are skipped and counted (one warning with the count and the first paths),
never a crash and never a silent loss.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from facemtl.data.sources import warn_skipped
from facemtl.errors import FacemtlError
from facemtl.files import content_key, replaced_atomically
from facemtl.images import load_image
from facemtl.preprocessing import resize_face


@dataclasses.dataclass
class Materialized:
    """A source decoded to `images uint8 [n, size, size, 3]` with its labels; `skipped` lists unreadable paths."""

    images: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    identity_names: list
    skipped: list


def crop_box(image, box, margin=0.2):
    """Crops `box` (x, y, w, h) enlarged by `margin` on each side, clamped to the image.

    A box partly outside the image is clamped to it; a box entirely outside
    (or empty after clamping) raises `ValueError`.
    """
    x, y, w, h = box
    h_img, w_img = image.shape[:2]
    x0, y0 = int(round(x - margin * w)), int(round(y - margin * h))
    x1, y1 = int(round(x + w * (1 + margin))), int(round(y + h * (1 + margin)))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w_img, x1), min(h_img, y1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)} lies outside the {w_img}x{h_img} image")
    return image[y0:y1, x0:x1]


def load_face(image, box, size, margin=0.2):
    """One face at training size: decode (path, bytes or array), crop its box (with `margin`) if any, resize.

    The resize is the serving graph's own (`facemtl.preprocessing.resize_face`).

    Raises:
        ImageError: when the image cannot be decoded.
    """
    img = load_image(image)
    if box is not None and not np.isnan(box).any():
        img = crop_box(img, box, margin)
    return resize_face(img, size)


# Bumped whenever the decoding or resizing of a crop changes, so older caches are not reused.
CACHE_FORMAT = 2  # 2: the serving graph's resize (facemtl.preprocessing.resize_face) instead of PIL's


def cache_key(source, size, margin):
    """A digest of everything that decides a materialised source's content.

    The crop settings, the labels and class names, the boxes, and the images
    themselves: their pixels (a FER2013 CSV's bytes, not its row count), or each
    file's path, size and modification time.
    """
    files = []
    for path in source.paths or ():
        try:
            st = os.stat(path)
            files.append((path, st.st_size, st.st_mtime_ns))
        except OSError:  # unreadable now: skipped when decoded; part of the key all the same
            files.append((path, "missing"))
    arrays = (source.identity, source.expression, source.boxes, source.pixels)
    return content_key([CACHE_FORMAT, source.name, source.split, size, margin, list(source.identity_names), files,
                        [a is None for a in arrays]], *(a for a in arrays if a is not None))


def materialize(source, size, *, margin=0.2, cache_dir=None, progress=None):
    """Decodes, crops (boxes with `margin`) and resizes every image of `source` to `size` x `size` RGB.

    Args:
        source: a `FaceSource`.
        size: output side length.
        margin: box enlargement on each side (fraction of the box).
        cache_dir: if set, the result is stored there (keyed by `cache_key`:
            the images' content, labels, size and margin) and reused next time.
        progress: an optional callable taking the number of images done.

    Returns:
        A `Materialized`.
    """
    key = None
    if cache_dir:
        key = os.path.join(cache_dir, f"{source.name}-{source.split or 'all'}-{size}px-{cache_key(source, size, margin)}.npz")
        if os.path.isfile(key):
            with np.load(key, allow_pickle=False) as z:
                return Materialized(z["images"], z["identity"], z["expression"], list(source.identity_names),
                                    json.loads(str(z["skipped"])))
    n = len(source)
    images = np.empty((n, size, size, 3), np.uint8)
    keep = np.ones(n, bool)
    skipped = []
    for i in range(n):
        try:
            images[i] = load_face(source.pixels[i] if source.pixels is not None else source.paths[i],
                                  None if source.boxes is None else source.boxes[i], size, margin)
        except (FacemtlError, ValueError) as exc:
            keep[i] = False
            skipped.append(source.paths[i] if source.paths is not None else f"{source.name}[{i}]: {exc}")
        if progress:
            progress(1)
    warn_skipped(f"{source.name} {source.split}".strip(), skipped, "unreadable image(s)")
    out = Materialized(images[keep], source.identity[keep], source.expression[keep], list(source.identity_names),
                       skipped)
    if key:
        os.makedirs(cache_dir, exist_ok=True)
        with replaced_atomically(key) as tmp:  # ends in .npz, so savez keeps the name
            np.savez(tmp, images=out.images, identity=out.identity, expression=out.expression,
                     skipped=json.dumps(skipped))
    return out
