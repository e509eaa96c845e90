"""VGGFace2 as distributed: `<split>/<n000002>/<0001_01>.jpg`, its lists, names and loose boxes.

Optional files, used when present:
`<split>_list.txt` (one `n000002/0001_01.jpg` per line: the images to use),
`identity_meta.csv` (`Class_ID, Name, Sample_Num, Flag, Gender`: readable names),
`bb_landmark/loose_bb_<split>.csv` (`NAME_ID,X,Y,W,H`: face boxes to crop).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from facemtl.data.folders import read_identity_folders
from facemtl.data.sources import FaceSource, no_labels
from facemtl.errors import FacemtlError


def read_identity_meta(path):
    """`Class_ID -> Name` from `identity_meta.csv` (headers and values may carry spaces and quotes)."""
    names = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [h.strip().lower() for h in next(reader, [])]
        if "class_id" not in header or "name" not in header:
            raise FacemtlError(f"{path}:1: expected columns Class_ID and Name; found {header}")
        ci, ni = header.index("class_id"), header.index("name")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) <= max(ci, ni):
                raise FacemtlError(f"{path}:{line}: expected at least {max(ci, ni) + 1} fields, found {len(row)}")
            names[row[ci].strip()] = row[ni].strip().strip('"')
    return names


def read_loose_boxes(path):
    """`NAME_ID -> (x, y, w, h)` from `loose_bb_<split>.csv`."""
    boxes = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip().upper() for h in next(reader, [])]
        if header[:5] != ["NAME_ID", "X", "Y", "W", "H"]:
            raise FacemtlError(f"{path}:1: expected NAME_ID,X,Y,W,H; found {header}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                x, y, w, h = (float(v) for v in row[1:5])
            except ValueError:
                raise FacemtlError(f"{path}:{line}: box values must be numbers; found {row[1:5]}") from None
            if w <= 0 or h <= 0:
                raise FacemtlError(f"{path}:{line}: box width and height must be positive; found {row[1:5]}")
            boxes[row[0].strip()] = (x, y, w, h)
    return boxes


def read_vggface2(root, split="train", use_boxes=True):
    """Reads one VGGFace2 split.

    Args:
        root: the folder holding `train/`, `test/` and the optional metadata files.
        split: `"train"` or `"test"`.
        use_boxes: attach `bb_landmark/loose_bb_<split>.csv` boxes when present.

    Returns:
        A `FaceSource` of paths with identity labels; `identity_names` are the
        readable names from `identity_meta.csv` when present, else the class ids.
    """
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise FacemtlError(f"{folder}: no such VGGFace2 split folder")
    list_file = os.path.join(root, f"{split}_list.txt")
    if os.path.isfile(list_file):
        with open(list_file, encoding="utf-8") as f:
            rel = [line.strip() for line in f if line.strip()]
        for line, r in enumerate(rel, start=1):
            if "/" not in r:
                raise FacemtlError(f"{list_file}:{line}: expected <class_id>/<file>, found {r!r}")
    else:  # one folder per identity
        rel = [os.path.relpath(p, folder).replace(os.sep, "/") for p in read_identity_folders(folder).paths]
    if not rel:
        raise FacemtlError(f"{folder}: no images")
    classes = sorted({r.split("/", 1)[0] for r in rel})
    index = {c: i for i, c in enumerate(classes)}
    meta_file = os.path.join(root, "identity_meta.csv")
    meta = read_identity_meta(meta_file) if os.path.isfile(meta_file) else {}
    boxes = None
    box_file = os.path.join(root, "bb_landmark", f"loose_bb_{split}.csv")
    if use_boxes and os.path.isfile(box_file):
        table = read_loose_boxes(box_file)
        boxes = np.array([table.get(os.path.splitext(r)[0], (np.nan,) * 4) for r in rel], np.float32)
    return FaceSource(
        name="vggface2", paths=[os.path.join(folder, r) for r in rel],
        identity=np.array([index[r.split("/", 1)[0]] for r in rel], np.int32), expression=no_labels(len(rel)),
        identity_names=[meta.get(c, c) for c in classes], boxes=boxes, split=split)
