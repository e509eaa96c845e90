"""A labelled set of face images from one dataset, in one common form.

Every reader (`fer2013`, `vggface2`, `celeba`, `folders`) returns a
`FaceSource`: image files (or, for FER2013's CSV, pixel arrays) with an
identity and/or expression label per image, `IGNORE_LABEL` (-1) where the
dataset has no such label, and optional face boxes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from facemtl.labels import IGNORE_LABEL

logger = logging.getLogger("facemtl.data")
# The image files the folder readers take, by ending.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class FaceSource:
    """Images and labels of one dataset split.

    Attributes:
        name: the dataset's name, e.g. `"fer2013"`; namespaces its identities.
        paths: image files, or None when `pixels` holds the images.
        pixels: `uint8 [n, h, w]` or `[n, h, w, 3]` images (FER2013 CSV).
        identity: `int32 [n]` indices into `identity_names`, or -1.
        expression: `int32 [n]` expression indices (into `expression_names`), or -1.
        identity_names: this source's identities, in label order.
        boxes: `float32 [n, 4]` face boxes `(x, y, w, h)` in image pixels, NaN where unknown.
        split: which split these are (`train`, `test`, `PublicTest`...).
        expression_names: the expression classes, in label order; `None`: FER2013's
            (`facemtl.labels.EXPRESSIONS`).
    """

    name: str
    identity: np.ndarray
    expression: np.ndarray
    paths: Optional[list] = None
    pixels: Optional[np.ndarray] = None
    identity_names: list = dataclasses.field(default_factory=list)
    boxes: Optional[np.ndarray] = None
    split: str = ""
    expression_names: Optional[list] = None

    def __post_init__(self):
        n = len(self.paths) if self.paths is not None else len(self.pixels)
        self.identity = np.asarray(self.identity, np.int32).reshape(-1)
        self.expression = np.asarray(self.expression, np.int32).reshape(-1)
        if len(self.identity) != n or len(self.expression) != n:
            raise ValueError(f"{self.name}: {n} images but {len(self.identity)} identity and "
                             f"{len(self.expression)} expression labels")
        if self.boxes is not None and len(self.boxes) != n:
            raise ValueError(f"{self.name}: {n} images but {len(self.boxes)} boxes")

    def __len__(self):
        return len(self.identity)

    @property
    def tasks(self):
        """The tasks this source has labels for."""
        out = []
        if (self.identity != IGNORE_LABEL).any():
            out.append("identity")
        if (self.expression != IGNORE_LABEL).any():
            out.append("expression")
        return out

    def subset(self, index):
        """The samples at `index` (an int array or boolean mask), same label spaces."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return dataclasses.replace(
            self,
            identity=self.identity[index],
            expression=self.expression[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            pixels=None if self.pixels is None else self.pixels[index],
            boxes=None if self.boxes is None else self.boxes[index],
        )


def no_labels(n):
    return np.full(n, IGNORE_LABEL, np.int32)


def warn_skipped(what, paths, reason):
    """One warning with the count and the first few paths, never a silent loss."""
    if paths:
        shown = ", ".join(str(p) for p in paths[:5])
        more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
        logger.warning("%s: skipped %d %s: %s%s", what, len(paths), reason, shown, more)
