import io

import numpy as np
import pytest
from PIL import Image

from facemtl.errors import ImageError
from facemtl.images import load_image


def test_modes_become_rgb(face_files):
    for key in ("rgb", "gray", "rgba"):
        img = load_image(face_files[key])
        assert img.shape == (80, 80, 3) and img.dtype == np.uint8
    gray = load_image(face_files["gray"])
    assert np.array_equal(gray[..., 0], gray[..., 2])


def test_bytes_and_arrays():
    buf = io.BytesIO()
    Image.new("L", (30, 20), 77).save(buf, format="PNG")
    assert load_image(buf.getvalue()).shape == (20, 30, 3)
    assert load_image(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    assert load_image(np.ones((5, 6), np.float32)).max() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape == (40, 20, 3)


def test_max_side_downscales(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(path)
    assert max(load_image(path, max_side=500).shape[:2]) <= 500


def test_bad_inputs_name_the_file(tmp_path, face_files):
    with pytest.raises(ImageError, match="notes.png: not a readable image"):
        load_image(face_files["text"])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        load_image(empty)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    truncated = tmp_path / "truncated.jpg"
    data = face_files["gray"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated.jpg"):
        load_image(truncated)
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((0, 4, 3), np.uint8))
