"""UTKFace in its own layout: `<age>_<gender>_<race>_<date&time>.jpg.chip.jpg`, the labels in the file name.

UTKFace (Zhang, Song and Qi, CVPR 2017): aligned and cropped faces with apparent
age in years (0-116), gender as annotated (0 = male, 1 = female) and race (0-4:
White, Black, Asian, Indian, Others). Its terms allow non-commercial research
only. A file name that lacks a field or holds one out of range is reported
(named, with the reason) and skipped, never guessed.

The test split is fixed by each file's name (a hash, not the listing order), so
it stays the same when files are added, removed or listed differently.

Example:
    >>> faces = read_utkface("../shared/data/utkface")
    >>> len(faces.paths), faces.skipped[:1]
    (20316, [('39_1_20170116174525125.jpg.chip.jpg', 'expected age_gender_race_date, found 3 fields')])
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from facemtl.errors import FacemtlError, RecipeError
from facemtl.images import decode_each, load_image
from facemtl.preprocessing import resize_face

GENDERS = ("male", "female")  # UTKFace's 0 and 1, as annotated
RACES = ("white", "black", "asian", "indian", "others")
MAX_AGE = 116


@dataclasses.dataclass
class UTKFaces:
    """UTKFace's faces and labels.

    Attributes:
        paths: image files.
        age: `float32 [n]` years.
        gender: `int32 [n]` indices into `GENDERS`.
        race: `int32 [n]` indices into `RACES` (for the bias table; not a trained task).
        test: `bool [n]`: in the fixed test split.
        skipped: `(file name, why)` for each file whose name could not be read.
    """

    paths: list
    age: np.ndarray
    gender: np.ndarray
    race: np.ndarray
    test: np.ndarray
    skipped: list

    def subset(self, index):
        """The faces at `index` (an int array), same split; `skipped` kept."""
        index = np.asarray(index, int)
        return UTKFaces([self.paths[i] for i in index], self.age[index], self.gender[index], self.race[index],
                        self.test[index], self.skipped)


def parse_name(name):
    """`(age, gender, race)` from a UTKFace file name.

    Raises:
        ValueError: the name lacks a field or holds one out of range (the message says which).
    """
    fields = name.split("_")
    if len(fields) < 4:
        raise ValueError(f"expected age_gender_race_date, found {len(fields)} fields")
    try:
        age, gender, race = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        raise ValueError(f"age, gender and race must be integers, found {fields[:3]}") from None
    if not 0 <= age <= MAX_AGE:
        raise ValueError(f"age {age} is outside 0..{MAX_AGE}")
    if gender not in (0, 1):
        raise ValueError(f"gender {gender} is not 0 or 1")
    if not 0 <= race < len(RACES):
        raise ValueError(f"race {race} is outside 0..{len(RACES) - 1}")
    return age, gender, race


def in_test_split(name, fraction=0.1, seed=0):
    """Whether a file belongs to the fixed test split: a hash of its name and the seed, not its position."""
    digest = hashlib.sha1(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_utkface(root, test_fraction=0.1, seed=0):
    """Reads `root/images/*.jpg` (or `root/*.jpg`) with the labels of each file name.

    Args:
        root: the dataset folder.
        test_fraction: the share of faces in the fixed test split.
        seed: the split's seed.

    Returns:
        A `UTKFaces`; malformed names are in `skipped`, not in the data.

    Raises:
        FacemtlError: no such folder, or no readable face in it.
    """
    folder = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    if not os.path.isdir(folder):
        raise FacemtlError(f"{root}: no such UTKFace folder")
    paths, labels, skipped = [], [], []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith((".jpg", ".jpeg", ".png")) or name.startswith("."):
            continue
        try:
            labels.append(parse_name(name))
        except ValueError as exc:
            skipped.append((name, str(exc)))
            continue
        paths.append(os.path.join(folder, name))
    if not paths:
        raise FacemtlError(f"{folder}: no UTKFace images (<age>_<gender>_<race>_<date>.jpg.chip.jpg)")
    age, gender, race = (np.array(c) for c in zip(*labels))
    test = np.array([in_test_split(os.path.basename(p), test_fraction, seed) for p in paths])
    return UTKFaces(paths, age.astype(np.float32), gender.astype(np.int32), race.astype(np.int32), test, skipped)


def load_faces(faces, side=128, log=print):
    """Decodes UTKFace's face crops, `side` px square (the shared copy's own size is kept as is).

    An unreadable file is reported (named) and counted, never silently dropped.

    Args:
        faces: a `UTKFaces`.
        side: the crops' side.
        log: where the report of unreadable files goes.

    Returns:
        `(images uint8 [m, side, side, 3], kept bool [n])`: `kept[i]` says
        whether `faces.paths[i]` was decoded (the images are those, in order).
    """
    entries, images, _ = decode_each(faces.paths, load_image)
    kept = np.array([e is None for e in entries], bool)
    for error in (e for e in entries if e is not None):
        log(f"utkface: skipped {error}")
    if (~kept).any():
        log(f"utkface: {int((~kept).sum())} unreadable file(s) skipped")
    return np.stack([im if im.shape[:2] == (side, side) else resize_face(im, side) for im in images]), kept


def task_labels(faces, task):
    """The labels UTKFace gives an attribute task (`age` in years, `gender`), mapped onto the task's classes.

    Raises:
        RecipeError: the source does not label the task, or not with the task's classes or kind.
    """
    columns = {"age": (faces.age, None), "gender": (faces.gender, GENDERS)}
    if task.name not in columns:
        raise RecipeError(f"tasks: {task.name!r} is not labelled by utkface (it labels {sorted(columns)})")
    values, names = columns[task.name]
    if task.kind == "classification":
        if names is None or sorted(task.classes) != sorted(names):
            raise RecipeError(f"tasks: {task.name}'s classes {task.classes} are not utkface's {list(names or [])}")
        return np.array([task.classes.index(names[v]) for v in values], np.int32)
    if names is not None:
        raise RecipeError(f"tasks: {task.name} is a class label in utkface; its kind must be classification")
    return values.astype(np.float32)


def split_faces(faces, val_fraction, seed):
    """`int8 [n]`: 0 train, 1 validation, 2 test. Test is UTKFace's fixed split by file-name hash
    (`read_utkface`'s `test_fraction`); validation is `val_fraction` of the rest, drawn with `seed`."""
    split = np.where(faces.test, 2, 0).astype(np.int8)
    rest = np.flatnonzero(split == 0)
    split[np.random.default_rng(seed).choice(rest, int(round(val_fraction * len(rest))), replace=False)] = 1
    return split


# What an export trained with UTKFace's labels records about them (its `attribute_data`).
DATA_TERMS = {"dataset": "UTKFace", "terms": "non-commercial research only",
              "labels": "apparent age in years and binary gender, as UTKFace's annotators gave them; "
              "race labels were used only to measure accuracy per group, not trained"}
