"""Any one-folder-per-identity dataset: LFW, CASIA-WebFace, ORL's `sN/*.pgm`, VGGFace2-style trees."""

from __future__ import annotations

import os

import numpy as np

from facemtl.data.fer2013 import IMAGE_EXTENSIONS
from facemtl.data.sources import FaceSource, no_labels
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
