"""The tfds builders read manual directories in each real format; then plain `tfds.load` works."""

import logging

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from facemtl.data import tfds_builders  # noqa: E402  (registers the builders)
from tests.helpers import write_image  # noqa: E402


def test_fer2013_csv_splits(tmp_path, fer_csv):  # noqa: F811
    manual = fer_csv.parent
    builder = tfds_builders.prepare("fer2013", manual, tmp_path / "tfds")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 14, "public_test": 3, "private_test": 3}
    ds = tfds.load("fer2013", split="train", data_dir=str(tmp_path / "tfds"), download=False)
    examples = list(tfds.as_numpy(ds))
    assert examples[0]["image"].shape == (48, 48, 1)
    assert sorted(int(e["label"]) for e in examples) == sorted(i % 7 for i in range(14))
    # The pixels are the CSV's own.
    row = fer_csv.read_text().splitlines()[1]
    first = np.array(row.split('"')[1].split(), np.uint8).reshape(48, 48, 1)
    assert any(np.array_equal(e["image"], first) for e in examples)


def test_vggface2_with_boxes_and_names(tmp_path, vggface2):  # noqa: F811
    tfds_builders.prepare("vgg_face2", vggface2, tmp_path / "tfds")
    ds = tfds.load("vgg_face2", split="train", data_dir=str(tmp_path / "tfds"), download=False)
    examples = list(tfds.as_numpy(ds))
    assert len(examples) == 6
    by_id = {e["identity"].decode(): e["name"].decode() for e in examples}
    assert by_id == {"n000002": "Ann_A", "n000003": "Bob_B", "n000005": "Cy_C"}
    e = examples[0]
    assert e["image"].shape == (120, 100, 3)
    # Box x=10, y=20, w=50, h=60 in a 100x120 photo, as (ymin, xmin, ymax, xmax) fractions.
    np.testing.assert_allclose(e["bbox"], [20 / 120, 10 / 100, 80 / 120, 60 / 100], rtol=1e-6)


def test_face_folders_skip_and_count_a_corrupt_image(tmp_path, caplog):
    root = tmp_path / "orl"
    for person in ("s1", "s2"):
        (root / person).mkdir(parents=True)
        for k in range(3):
            write_image(root / person / f"{k}.pgm", (46, 56), mode="L")
    (root / "s2" / "9.pgm").write_bytes(b"P5 broken")
    with caplog.at_level(logging.WARNING, logger="facemtl.data"):
        builder = tfds_builders.prepare("face_folders", root, tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 6
    assert "skipped 1 unreadable image(s)" in caplog.text and "9.pgm" in caplog.text
    ds = tfds.load("face_folders", split="train", data_dir=str(tmp_path / "tfds"), download=False)
    assert sorted(e["identity"].decode() for e in tfds.as_numpy(ds)) == ["s1"] * 3 + ["s2"] * 3


def test_missing_manual_dir_is_a_clear_error(tmp_path):
    from facemtl.errors import FacemtlError

    with pytest.raises(FacemtlError, match="no such manual directory"):
        tfds_builders.prepare("fer2013", tmp_path / "nowhere", tmp_path / "tfds")
