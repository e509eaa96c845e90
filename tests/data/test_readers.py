"""Dataset readers on small fixtures written in each real format, and on ../shared/data when present."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from facemtl.data.celeba import read_celeba
from facemtl.data.fer2013 import read_fer2013_csv, read_fer2013_folders
from facemtl.data.folders import read_expression_folders, read_identity_folders
from facemtl.data.materialize import crop_box, materialize
from facemtl.data.vggface2 import read_vggface2
from facemtl.errors import FacemtlError
from facemtl.labels import EXPRESSIONS
from tests.helpers import SHARED_DATA, fer_pixels, write_image


def test_fer2013_csv(fer_csv):
    train = read_fer2013_csv(fer_csv)
    assert len(train) == 14 and train.pixels.shape == (14, 48, 48)
    assert train.expression.tolist() == [i % 7 for i in range(14)]
    assert (train.identity == -1).all() and train.tasks == ["expression"]
    both = read_fer2013_csv(fer_csv, usage=("PublicTest", "PrivateTest"))
    assert len(both) == 6


def test_icml_variant_with_spaced_headers(tmp_path):
    path = tmp_path / "icml_face_data.csv"
    path.write_text("emotion, Usage, pixels\n" + f"3,Training,{fer_pixels(1)}\n" + f"6,PublicTest,{fer_pixels(2)}\n")
    assert read_fer2013_csv(path).expression.tolist() == [3]


@pytest.mark.parametrize("row, message", [
    ('9,"{p}",Training', "emotion 9"),
    ('x,"{p}",Training', "not an integer"),
    ('1,"1 2 3",Training', "2304 pixel values"),
    ('1,"{p}",Validation', "unknown Usage"),
    ('1,"{p}"', "expected 3 fields"),
])
def test_malformed_csv_row_names_file_and_line(tmp_path, fer_csv, row, message):
    lines = fer_csv.read_text().splitlines()
    lines.insert(5, row.format(p=fer_pixels(0)))
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(FacemtlError, match=f"bad.csv:6: .*{message}"):
        read_fer2013_csv(bad, usage=USAGES_ALL)


USAGES_ALL = ("Training", "PublicTest", "PrivateTest")


def test_fer2013_folders(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for name in EXPRESSIONS:
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for k in range(n):
                write_image(d / f"{split}_{k}.jpg", (48, 48), mode="L")
    train = read_fer2013_folders(tmp_path, "train")
    assert len(train) == 14
    assert sorted(set(train.expression.tolist())) == list(range(7))
    for p, e in zip(train.paths, train.expression):
        assert os.path.basename(os.path.dirname(p)) == EXPRESSIONS[e]
    (tmp_path / "test" / "contempt").mkdir()
    write_image(tmp_path / "test" / "contempt" / "x.jpg")
    with pytest.raises(FacemtlError, match="unknown expression class 'contempt'"):
        read_fer2013_folders(tmp_path, "test")
    (tmp_path / "train" / "happy" / "train_0.jpg").unlink()
    (tmp_path / "train" / "happy" / "train_1.jpg").unlink()
    with pytest.raises(FacemtlError, match="happy: empty class folder"):
        read_fer2013_folders(tmp_path, "train")


def test_expression_folders_take_any_class_names_and_the_test_split_keeps_trains_order(tmp_path):
    from facemtl.config import SourceConfig
    from facemtl.data.catalog import read_source

    for split, classes in (("train", ["pain", "calm", "confused"]), ("test", ["pain", "calm"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 20)).save(tmp_path / split / name / "a.png")
    train = read_expression_folders(str(tmp_path), "train")
    assert train.expression_names == ["calm", "confused", "pain"] and list(train.expression) == [0, 1, 2]
    cfg = SourceConfig(format="expression_folders", path=str(tmp_path), test_split="test")
    test = read_source(cfg, "test")
    assert test.expression_names == train.expression_names and list(test.expression) == [0, 2]
    (tmp_path / "test" / "bored").mkdir()
    with pytest.raises(FacemtlError, match="bored.*not one of the training classes"):
        read_source(cfg, "test")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(FacemtlError, match="empty class folder"):
        read_expression_folders(str(tmp_path), "train")
    flat = tmp_path / "flat"
    (flat / "only").mkdir(parents=True)
    with pytest.raises(FacemtlError, match="at least two class folders"):
        read_expression_folders(str(flat))


def test_vggface2_tree_with_its_csvs(vggface2):
    src = read_vggface2(vggface2, "train")
    assert len(src) == 6 and src.identity_names == ["Ann_A", "Bob_B", "Cy_C"]
    assert src.identity.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(src.boxes[0], [10, 20, 50, 60])
    m = materialize(src, 32)
    assert m.images.shape == (6, 32, 32, 3)


def test_vggface2_bad_box_row(vggface2):
    path = vggface2 / "bb_landmark" / "loose_bb_train.csv"
    path.write_text(path.read_text() + "n000002/0009_01,1,2,three,4\n")
    with pytest.raises(FacemtlError, match="loose_bb_train.csv:8: box values"):
        read_vggface2(vggface2, "train")


def test_crop_box_clamps_and_rejects_outside():
    image = np.zeros((100, 80, 3), np.uint8)
    assert crop_box(image, (60, 70, 40, 50), margin=0.0).shape == (30, 20, 3)  # clamped at the edges
    with pytest.raises(ValueError, match="outside"):
        crop_box(image, (200, 200, 10, 10))


def test_celeba_layout_and_missing_photos(tmp_path, caplog):
    root = tmp_path / "celeba"
    (root / "img_celeba").mkdir(parents=True)
    for k in range(1, 6):
        write_image(root / "img_celeba" / f"{k:06d}.jpg")
    (root / "identity_CelebA.txt").write_text("\n".join(f"{k:06d}.jpg {100 + k % 2}" for k in range(1, 8)) + "\n")
    with caplog.at_level(logging.WARNING, logger="facemtl.data"):
        src = read_celeba(root)
    assert len(src) == 5 and src.identity_names == ["100", "101"]
    assert "skipped 2 listed photos missing" in caplog.text and "000006.jpg" in caplog.text
    (root / "identity_CelebA.txt").write_text("000001.jpg\n")
    with pytest.raises(FacemtlError, match="identity_CelebA.txt:1"):
        read_celeba(root)


def test_identity_folders_with_pgm_and_a_corrupt_image(tmp_path, caplog):
    for s in ("s1", "s2"):
        (tmp_path / s).mkdir()
        for k in (1, 2, 3):
            write_image(tmp_path / s / f"{k}.pgm", (92, 112), mode="L")
    (tmp_path / "s2" / "3.pgm").write_bytes(b"P5 broken")
    src = read_identity_folders(tmp_path, name="orl")
    assert src.identity_names == ["s1", "s2"] and len(src) == 6
    with caplog.at_level(logging.WARNING, logger="facemtl.data"):
        m = materialize(src, 40)
    assert len(m.images) == 5 and len(m.skipped) == 1 and m.skipped[0].endswith("3.pgm")
    assert "skipped 1 unreadable" in caplog.text
    (tmp_path / "s3").mkdir()
    with pytest.raises(FacemtlError, match="s3: identity folder without images"):
        read_identity_folders(tmp_path)


def test_materialize_cache_is_reused(tmp_path, fer_csv, monkeypatch):
    import facemtl.data.materialize as materialize_module

    src = read_fer2013_csv(fer_csv)
    a = materialize(src, 48, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache was recomputed instead of read")

    monkeypatch.setattr(materialize_module, "load_face", no_decoding)
    b = materialize(src, 48, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.expression, b.expression)
    assert a.images.shape == (14, 48, 48, 3)
    with pytest.raises(AssertionError, match="recomputed"):  # another size is another cache entry
        materialize(src, 40, cache_dir=tmp_path / "cache")


def test_cache_key_follows_the_content_not_the_row_count(tmp_path, fer_csv):
    from facemtl.data.materialize import cache_key

    src = read_fer2013_csv(fer_csv)
    base = cache_key(src, 48, 0.2)
    assert cache_key(read_fer2013_csv(fer_csv), 48, 0.2) == base  # the same file, the same key
    text = fer_csv.read_text()
    first = fer_pixels(0).split()
    first[0] = str((int(first[0]) + 1) % 256)  # one pixel of one row: the same row count
    fer_csv.write_text(text.replace(fer_pixels(0), " ".join(first), 1))
    changed = read_fer2013_csv(fer_csv)
    assert len(changed) == len(src) and cache_key(changed, 48, 0.2) != base
    relabelled = read_fer2013_csv(fer_csv)
    relabelled.expression[0] = (relabelled.expression[0] + 1) % 7
    assert cache_key(relabelled, 48, 0.2) != cache_key(changed, 48, 0.2)
    assert len({cache_key(changed, 48, 0.2), cache_key(changed, 64, 0.2), cache_key(changed, 48, 0.1)}) == 3
    people = tmp_path / "people"
    (people / "ann").mkdir(parents=True)
    write_image(people / "ann" / "a.png", value=10)
    folder = read_identity_folders(people)
    before = cache_key(folder, 48, 0.2)
    write_image(people / "ann" / "a.png", size=(61, 50), value=200)  # the same name, a new photo
    assert cache_key(read_identity_folders(people), 48, 0.2) != before


@pytest.mark.shared_data
def test_real_datasets_in_shared_data():
    fer_train = read_fer2013_folders(os.path.join(SHARED_DATA, "fer2013"), "train")
    fer_test = read_fer2013_folders(os.path.join(SHARED_DATA, "fer2013"), "test")
    assert (len(fer_train), len(fer_test)) == (28709, 3589)
    counts = np.bincount(fer_train.expression, minlength=7)
    assert counts[EXPRESSIONS.index("disgust")] == 436 and counts[EXPRESSIONS.index("happy")] == 7215
    lfw = read_identity_folders(os.path.join(SHARED_DATA, "lfw_subset", "train"))
    assert len(lfw.identity_names) == 12
    orl = read_identity_folders(os.path.join(SHARED_DATA, "orl", "att_faces"))
    assert len(orl.identity_names) == 40 and len(orl) == 400
    celeba = read_celeba(os.path.join(SHARED_DATA, "celeba_subset"))
    assert len(celeba) == 6300 and len(celeba.identity_names) == 299
    m = materialize(orl.subset(np.arange(10)), 48)
    assert m.images.shape == (10, 48, 48, 3) and not m.skipped
