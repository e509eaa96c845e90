"""Any one-folder-per-identity dataset: LFW, CASIA-WebFace, ORL's `sN/*.pgm`, VGGFace2-style trees."""

from __future__ import annotations

import os

import numpy as np

from facemtl.data.sources import IMAGE_EXTENSIONS, FaceSource, no_labels
from facemtl.errors import FacemtlError


def read_identity_folders(root, name=None, min_images=1):
    """Reads `root/<identity>/<image>` into identity-labelled images.

    Args:
        root: folder with one sub-folder per person.
        name: the source's name (defaults to the folder's name).
        min_images: identities with fewer images are left out (and named in the error
            if none remain).

    Returns:
        A `FaceSource` of paths; identities in sorted folder order.

    Raises:
        FacemtlError: for a missing root, an identity folder with no image, or no identity at all.

    Example:
        >>> lfw = read_identity_folders("../shared/data/lfw_subset/train")
        >>> len(lfw.identity_names)
        12
    """
    if not os.path.isdir(root):
        raise FacemtlError(f"{root}: no such folder")
    paths, labels, names = [], [], []
    for person in sorted(os.listdir(root)):
        folder = os.path.join(root, person)
        if not os.path.isdir(folder) or person.startswith("."):
            continue
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FacemtlError(f"{folder}: identity folder without images")
        if len(files) < min_images:
            continue
        paths += [os.path.join(folder, f) for f in files]
        labels += [len(names)] * len(files)
        names.append(person)
    if not names:
        raise FacemtlError(f"{root}: no identity folders with at least {min_images} image(s)")
    return FaceSource(name=name or os.path.basename(os.path.normpath(root)), paths=paths,
                      identity=np.array(labels, np.int32), expression=no_labels(len(paths)), identity_names=names)


def read_expression_folders(root, split="train", classes=None, name=None):
    """Reads `root/<split>/<class>/<image>` (or `root/<class>/<image>`): any expression classes, any number.

    For fine-tuning on your own classes ("pain", "confused", ...): each folder is
    a class, named as the model will answer. The images are face crops (run
    `facemtl align` on photos first).

    Args:
        root: the dataset folder.
        split: its sub-folder (`train`, `test`); a `root` without split folders is read whole for `train`.
        classes: the class names in label order (a test split must use the training split's;
            FER2013's folders, `facemtl.labels.EXPRESSIONS`); default: the class folders in sorted order.
            Folder names match them whatever their case.
        name: the source's name (default: the folder's).

    Returns:
        A `FaceSource` of paths with `expression_names` set.

    Raises:
        FacemtlError: a missing folder, fewer than two classes, an empty class folder, or
            (with `classes`) a class folder that is not one of them.

    Example:
        >>> src = read_expression_folders("my_faces", "train")
        >>> src.expression_names
        ['calm', 'confused', 'pain']
    """
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        splits = [s for s in ("train", "test", "val", "validation") if os.path.isdir(os.path.join(root, s))]
        if split != "train" or splits or not os.path.isdir(root):
            raise FacemtlError(f"{folder}: no such split folder")
        folder = root
    found = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)) and not n.startswith("."))
    names = list(classes) if classes is not None else found
    if len(names) < 2:
        raise FacemtlError(f"{folder}: expression classes need at least two class folders. Received: {found}")
    index = {n.lower(): i for i, n in enumerate(names)}
    paths, labels = [], []
    for found_name in found:
        class_dir = os.path.join(folder, found_name)
        if found_name.lower() not in index:
            raise FacemtlError(f"{class_dir}: unknown expression class {found_name!r}: not one of the training "
                               f"classes {names}")
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FacemtlError(f"{class_dir}: empty class folder")
        paths += [os.path.join(class_dir, f) for f in files]
        labels += [index[found_name.lower()]] * len(files)
    if not paths:
        raise FacemtlError(f"{folder}: no class folders with images")
    return FaceSource(name=name or os.path.basename(os.path.normpath(root)), paths=paths,
                      identity=no_labels(len(paths)), expression=np.array(labels, np.int32), split=split,
                      expression_names=names)
