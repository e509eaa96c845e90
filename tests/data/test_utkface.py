"""UTKFace: labels from file names, malformed names reported and skipped, a split fixed by name."""

import os

import numpy as np
import pytest
from PIL import Image

from facemtl.data.utkface import in_test_split, parse_name, read_utkface
from facemtl.errors import FacemtlError
from tests.helpers import SHARED_DATA


def test_names_give_age_gender_race_and_bad_ones_say_why(tmp_path):
    assert parse_name("26_1_2_20170116174525125.jpg.chip.jpg") == (26, 1, 2)
    for name, why in (("39_1_20170116174525125.jpg.chip.jpg", "3 fields"), ("x_1_2_3.jpg", "integers"),
                      ("200_0_0_1.jpg", "age 200"), ("20_2_0_1.jpg", "gender 2"), ("20_0_7_1.jpg", "race 7")):
        with pytest.raises(ValueError, match=why):
            parse_name(name)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("26_1_2_1.jpg.chip.jpg", "3_0_0_2.jpg.chip.jpg", "39_1_3.jpg.chip.jpg", "notes.txt"):
        Image.new("RGB", (8, 8)).save(images / name, format="JPEG")
    faces = read_utkface(str(tmp_path))
    assert [os.path.basename(p) for p in faces.paths] == ["26_1_2_1.jpg.chip.jpg", "3_0_0_2.jpg.chip.jpg"]
    assert list(faces.age) == [26.0, 3.0] and list(faces.gender) == [1, 0] and list(faces.race) == [2, 0]
    assert faces.skipped == [("39_1_3.jpg.chip.jpg", "expected age_gender_race_date, found 3 fields")]
    with pytest.raises(FacemtlError, match="no such UTKFace folder"):
        read_utkface(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacemtlError, match="no UTKFace images"):
        read_utkface(str(tmp_path / "empty"))


def test_an_unreadable_face_is_reported_and_counted_and_the_others_kept(tmp_path):
    from facemtl.data.utkface import load_faces

    Image.new("RGB", (200, 200), (90, 10, 10)).save(tmp_path / "20_0_0_1.jpg.chip.jpg")
    (tmp_path / "30_1_1_2.jpg.chip.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (128, 128), (10, 90, 10)).save(tmp_path / "40_1_2_3.jpg.chip.jpg")
    lines = []
    images, kept = load_faces(read_utkface(str(tmp_path)), log=lines.append)
    assert images.shape == (2, 128, 128, 3) and list(kept) == [True, False, True]
    assert any("30_1_1_2.jpg.chip.jpg" in line for line in lines) and "1 unreadable file(s) skipped" in lines[-1]


def test_the_test_split_is_fixed_by_name_not_by_order():
    names = [f"{i}_0_0_{i}.jpg.chip.jpg" for i in range(2000)]
    picked = {n for n in names if in_test_split(n)}
    assert 150 < len(picked) < 250  # about 10%
    assert picked == {n for n in reversed(names) if in_test_split(n)}
    assert picked != {n for n in names if in_test_split(n, seed=1)}


@pytest.mark.shared_data
def test_the_shared_utkface_copy_reports_its_two_malformed_names():
    faces = read_utkface(os.path.join(SHARED_DATA, "utkface"))
    assert len(faces.paths) == 20316 and len(faces.skipped) == 2
    assert 0.08 < faces.test.mean() < 0.12 and set(np.unique(faces.gender)) == {0, 1}
