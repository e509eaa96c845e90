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


def test_unreadable_paths_say_what_they_are(tmp_path):
    import os

    from facemtl.errors import ImageError
    from facemtl.images import load_image
    from facemtl.media import expand_paths

    os.mkfifo(tmp_path / "clip.mp4")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    expected = {"clip.mp4": "named pipe", "loop_a": "symbolic link loop", "dangling.jpg": "dangling symbolic link"}
    for name, words in expected.items():
        with pytest.raises(ImageError, match=words):
            load_image(tmp_path / name)
    with pytest.raises(ImageError, match="character device"):
        load_image("/dev/zero")
    # A folder holding a FIFO named like a video: reported at once, never opened (opening one blocks).
    listed = dict(expand_paths([tmp_path]))
    assert "named pipe" in listed[str(tmp_path / "clip.mp4")]
    assert "symbolic link loop" in listed[str(tmp_path / "loop_b")]


def test_uint16_arrays_are_rescaled_like_16_bit_files():
    from facemtl.images import load_image

    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    out = load_image(deep)
    assert out.dtype == np.uint8 and out.max() == 255 and out[0, 1, 0] == round(4000 / 60000 * 255)
    assert len(np.unique(out)) == 16  # not clipped flat at 255


def test_huge_png_header_is_refused_before_decoding(tmp_path):
    from facemtl.errors import ImageError
    from facemtl.images import load_image
    from tests.helpers import png_claiming

    (tmp_path / "bomb.png").write_bytes(png_claiming(25000, 25000))
    with pytest.raises(ImageError, match="bomb.png: 25000x25000 pixels is over"):
        load_image(tmp_path / "bomb.png", max_side=2048)


def test_decoders_close_their_files(tmp_path):
    """No decoder leaves its file for the garbage collector (formats PIL keeps open for seeking included)."""
    import gc
    import warnings

    from PIL import Image

    from facemtl.images import load_image

    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 128)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])  # multi-frame: PIL keeps the fp
    frames[0].save(tmp_path / "a.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "a.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("a.gif", "a.tif", "a.png"):
            for max_side in (None, 4):
                load_image(tmp_path / name, max_side=max_side)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_one_header_check_for_files_and_request_bodies(tmp_path):
    """`image_size` (the server's check) and `load_image` refuse the same way, from the header alone."""
    import io

    from PIL import Image

    from facemtl.errors import ImageTooLarge
    from facemtl.images import image_size
    from tests.helpers import png_claiming

    buf = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buf, "PNG")
    assert image_size(buf.getvalue()) == (30, 20)
    with pytest.raises(ImageTooLarge, match="30x20 pixels is over facemtl's limit of 500"):
        image_size(buf.getvalue(), "crop.png", max_pixels=500)
    with pytest.raises(ImageTooLarge, match="30x20 pixels is over"):
        load_image(buf.getvalue(), max_pixels=500)
    bomb = png_claiming(25000, 25000)
    for check in (image_size, load_image):
        with pytest.raises(ImageTooLarge, match="25000x25000"):
            check(bomb)
    with pytest.raises(ImageError, match="not a readable image") as info:
        image_size(b"not an image", "upload")
    assert not isinstance(info.value, ImageTooLarge) and "upload" in str(info.value)
