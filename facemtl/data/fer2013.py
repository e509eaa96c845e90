"""FER2013 in the two formats users download: Kaggle's CSV and the image-folder layout.

CSV: `emotion,pixels,Usage` (`fer2013.csv`) or `emotion, Usage, pixels` with
leading spaces in the headers (`icml_face_data.csv`); `Usage` is `Training`,
`PublicTest` or `PrivateTest`. Folders: `<split>/<class>/*.jpg` with class
names `angry, disgust, fear, happy, sad, surprise, neutral`.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from facemtl.data.folders import read_expression_folders
from facemtl.data.sources import FaceSource, no_labels
from facemtl.errors import FacemtlError
from facemtl.labels import EXPRESSIONS

USAGES = ("Training", "PublicTest", "PrivateTest")


def read_fer2013_csv(path, usage=("Training",)):
    """Reads Kaggle's FER2013 CSV.

    Args:
        path: `fer2013.csv` or `icml_face_data.csv`.
        usage: which `Usage` values to keep (a string or a tuple of them).

    Returns:
        A `FaceSource` with 48x48 gray `pixels` and expression labels.

    Raises:
        FacemtlError: naming the file and line of a malformed row, or a missing column.

    Example:
        >>> train = read_fer2013_csv("data/fer2013/fer2013.csv", usage="Training")
    """
    usage = (usage,) if isinstance(usage, str) else tuple(usage)
    bad = [u for u in usage if u not in USAGES]
    if bad:
        raise ValueError(f"usage must be among {USAGES}. Received: usage={usage}")
    if not os.path.isfile(path):
        raise FacemtlError(f"{path}: no such FER2013 CSV file")
    pixels, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise FacemtlError(f"{path}: empty file") from None
        missing = {"emotion", "pixels", "usage"} - set(header)
        if missing:
            raise FacemtlError(f"{path}:1: missing column(s) {sorted(missing)}; found {header}")
        col = {name: header.index(name) for name in ("emotion", "pixels", "usage")}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise FacemtlError(f"{path}:{line}: expected {len(header)} fields, found {len(row)}")
            row_usage = row[col["usage"]].strip()
            if row_usage not in USAGES:
                raise FacemtlError(f"{path}:{line}: unknown Usage {row_usage!r} (expected one of {USAGES})")
            if row_usage not in usage:
                continue
            try:
                emotion = int(row[col["emotion"]])
            except ValueError:
                raise FacemtlError(f"{path}:{line}: emotion {row[col['emotion']]!r} is not an integer") from None
            if not 0 <= emotion < len(EXPRESSIONS):
                raise FacemtlError(f"{path}:{line}: emotion {emotion} is outside 0..{len(EXPRESSIONS) - 1}")
            values = row[col["pixels"]].split()
            if len(values) != 48 * 48:
                raise FacemtlError(f"{path}:{line}: expected 2304 pixel values (48x48), found {len(values)}")
            try:
                arr = np.array(values, dtype=np.int32)
            except ValueError:
                raise FacemtlError(f"{path}:{line}: pixel values must be integers") from None
            if arr.min() < 0 or arr.max() > 255:
                raise FacemtlError(f"{path}:{line}: pixel values must be in 0..255")
            pixels.append(arr.astype(np.uint8).reshape(48, 48))
            labels.append(emotion)
    n = len(labels)
    return FaceSource(name="fer2013", pixels=np.stack(pixels) if n else np.zeros((0, 48, 48), np.uint8),
                      identity=no_labels(n), expression=np.array(labels, np.int32), split="+".join(usage))


def read_fer2013_folders(root, split="train"):
    """Reads FER2013's image-folder layout, `root/<split>/<class>/*.jpg` (`read_expression_folders` with its classes).

    Args:
        root: the folder holding `train/` and `test/`.
        split: the sub-folder to read.

    Returns:
        A `FaceSource` of image paths with expression labels in FER2013's order.

    Raises:
        FacemtlError: for a missing split folder, a class folder whose name is not
            a FER2013 class, or an empty class folder (a broken download).
    """
    return read_expression_folders(root, split, classes=EXPRESSIONS, name="fer2013")
