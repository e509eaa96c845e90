"""tensorflow-datasets builders for the face datasets users download by hand.

tfds never had FER2013 and dropped VGGFace2; both need a manual download
(Kaggle, the VGGFace2 authors). These builders read the files where the user
put them (`manual_dir`), with facemtl's own readers (same formats, same
errors), and write a regular tfds dataset, after which plain
`tfds.load(..., download=False)` works:

    import facemtl.data.tfds_builders as fb
    fb.prepare("fer2013", manual_dir="~/downloads/fer2013", data_dir="~/tensorflow_datasets")
    ds = tfds.load("fer2013", split="public_test", data_dir="~/tensorflow_datasets", download=False)

Builders (registered with tfds on import):

- `fer2013`: `fer2013.csv` / `icml_face_data.csv` (splits `train`,
  `public_test`, `private_test`) or the image folders `train/`, `test/`
  (splits `train`, `test`); 48x48 gray image, `label` in FER2013's order.
- `vgg_face2`: `train/`, `test/` with the optional `identity_meta.csv`,
  `*_list.txt` and `bb_landmark/loose_bb_*.csv`; the full photo, its face box
  (normalised, tfds' `BBoxFeature`) and `identity` (the class id, e.g. n000002).
- `face_folders`: any one-folder-per-person dataset (LFW, CASIA-WebFace,
  ORL): `image`, `identity`; one `train` split, or one split per sub-folder
  (`train/`, `test/`) when present.

Unreadable images are skipped and counted (one warning per split), like
everywhere in facemtl.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

try:
    import tensorflow_datasets as tfds
except ImportError as exc:  # an optional extra
    raise ImportError("facemtl's tfds builders need tensorflow-datasets: pip install 'facemtl[tfds]'") from exc

from facemtl.data.fer2013 import read_fer2013_csv, read_fer2013_folders
from facemtl.data.folders import read_identity_folders
from facemtl.data.materialize import load_face
from facemtl.data.sources import warn_skipped
from facemtl.data.vggface2 import read_vggface2
from facemtl.errors import FacemtlError
from facemtl.images import load_image
from facemtl.labels import EXPRESSIONS

_CSV_SPLITS = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}


def _examples(source, encode):
    """`(key, example)` for each readable image of a `FaceSource`; the unreadable ones are counted."""
    skipped = []
    for i in range(len(source)):
        where = source.paths[i] if source.paths is not None else f"{source.name}[{i}]"
        try:
            image = load_image(source.pixels[i] if source.pixels is not None else source.paths[i])
        except (FacemtlError, ValueError):
            skipped.append(where)
            continue
        yield i, encode(i, image)
    warn_skipped(f"tfds {source.name} {source.split}".strip(), skipped, "unreadable image(s)")


_PHOTO = tfds.features.Image(shape=(None, None, 3))


def _dataset_info(builder, supervised_keys=None, homepage=None, **features):
    """The builder's `DatasetInfo`: its features (name -> tfds feature), in the order given."""
    return builder.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                             supervised_keys=supervised_keys, homepage=homepage)


def _manual_dir(dl_manager):
    path = os.path.expanduser(str(dl_manager.manual_dir))
    if not os.path.isdir(path):
        raise FacemtlError(f"{path}: no such manual directory (put the downloaded dataset there)")
    return path


def _split_folders(root):
    """The `train/` and `test/` folders present under `root`, in that order."""
    return [s for s in ("train", "test") if os.path.isdir(os.path.join(root, s))]


class Fer2013(tfds.core.GeneratorBasedBuilder):
    """FER2013 facial expressions (48x48 gray, 7 classes) from Kaggle's CSV or its image folders."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download FER2013 from Kaggle and put `fer2013.csv` (or `icml_face_data.csv`), or the image folders "
        "`train/<class>/*.jpg` and `test/<class>/*.jpg`, in the manual directory.")

    def _info(self):
        return _dataset_info(self, image=tfds.features.Image(shape=(48, 48, 1)),
                             label=tfds.features.ClassLabel(names=list(EXPRESSIONS)),
                             supervised_keys=("image", "label"), homepage="https://www.kaggle.com/c/challenges-in-"
                             "representation-learning-facial-expression-recognition-challenge")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager)
        for name in ("fer2013.csv", "icml_face_data.csv"):
            csv = os.path.join(root, name)
            if os.path.isfile(csv):
                return {split: self._generate_examples(read_fer2013_csv(csv, usage=usage))
                        for split, usage in _CSV_SPLITS.items()}
        splits = _split_folders(root)
        if not splits:
            raise FacemtlError(f"{root}: neither fer2013.csv, icml_face_data.csv nor train/ and test/ folders")
        return {split: self._generate_examples(read_fer2013_folders(root, split)) for split in splits}

    def _generate_examples(self, source):
        # The same 48x48 crop facemtl trains on (materialize.load_face), then gray.
        return _examples(source, lambda i, image: {
            "image": np.asarray(Image.fromarray(load_face(image, None, 48)).convert("L"))[..., None],
            "label": int(source.expression[i])})


class VggFace2(tfds.core.GeneratorBasedBuilder):
    """VGGFace2 identities: full photos with their loose face boxes."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download VGGFace2 and put `train/`, `test/` (and optionally `identity_meta.csv`, `train_list.txt`, "
        "`test_list.txt`, `bb_landmark/loose_bb_train.csv`, `bb_landmark/loose_bb_test.csv`) in the manual "
        "directory.")

    def _info(self):
        return _dataset_info(self, image=_PHOTO, bbox=tfds.features.BBoxFeature(), identity=tfds.features.Text(),
                             name=tfds.features.Text(), homepage="https://github.com/ox-vgg/vgg_face2")

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager)
        splits = _split_folders(root)
        if not splits:
            raise FacemtlError(f"{root}: no VGGFace2 train/ or test/ folder")
        return {split: self._generate_examples(read_vggface2(root, split)) for split in splits}

    def _generate_examples(self, source):
        def encode(i, image):
            h, w = image.shape[:2]
            box = source.boxes[i] if source.boxes is not None else np.full(4, np.nan)
            if np.isnan(box).any():
                box = np.array([0, 0, w, h], float)
            x0, y0 = np.clip(box[0], 0, w), np.clip(box[1], 0, h)
            x1, y1 = np.clip(box[0] + box[2], 0, w), np.clip(box[1] + box[3], 0, h)
            class_id = os.path.basename(os.path.dirname(source.paths[i]))
            return {"image": image, "bbox": tfds.features.BBox(y0 / h, x0 / w, y1 / h, x1 / w),
                    "identity": class_id, "name": source.identity_names[source.identity[i]]}

        return _examples(source, encode)


class FaceFolders(tfds.core.GeneratorBasedBuilder):
    """Any one-folder-per-person face dataset (LFW, CASIA-WebFace, ORL's `sN/*.pgm`)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put one folder per person (`<person>/<image>`), or `train/` and `test/` "
                                    "folders of that layout, in the manual directory.")

    def _info(self):
        return _dataset_info(self, image=_PHOTO, identity=tfds.features.Text())

    def _split_generators(self, dl_manager):
        root = _manual_dir(dl_manager)
        splits = _split_folders(root)
        if not splits:
            return {"train": self._generate_examples(read_identity_folders(root))}
        return {s: self._generate_examples(read_identity_folders(os.path.join(root, s))) for s in splits}

    def _generate_examples(self, source):
        return _examples(source, lambda i, image: {"image": image,
                                                   "identity": source.identity_names[source.identity[i]]})


def prepare(name, manual_dir, data_dir=None):
    """Builds dataset `name` (`fer2013`, `vgg_face2`, `face_folders`) from `manual_dir` into `data_dir`.

    Returns:
        The tfds builder (its `info` lists the splits and their sizes).

    Example:
        >>> prepare("fer2013", "~/downloads/fer2013", "~/tensorflow_datasets").info.splits["train"].num_examples
        28709
    """
    manual_dir = os.path.expanduser(str(manual_dir))
    if not os.path.isdir(manual_dir):
        raise FacemtlError(f"{manual_dir}: no such manual directory (put the downloaded dataset there)")
    builder = tfds.builder(name, data_dir=os.path.expanduser(str(data_dir)) if data_dir else None)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder
