"""A generated corpus of awkward inputs for the photo and crop front ends (used by tests and a benchmark).

`corpus(folder)` writes files into `folder` and returns `[(name, source)]`: paths,
bytes and arrays that a user might hand to `FaceAnalyzer.analyze`,
`Predictor.predict` or `facemtl analyze`. Nothing here is random at run time
(a fixed seed), so a failure names the same input every time.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width, height, rows_of_data=0, mode=2):
    """A PNG with a valid header for `width x height` but pixel data for only `rows_of_data` rows."""
    channels = {0: 1, 2: 3}[mode]
    raw = b"".join(b"\0" + bytes(width * channels) for _ in range(rows_of_data)) or b"\0" * 100
    header = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _encode(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def corpus(folder, face=None):
    """Writes the corpus into `folder`; returns `[(name, source)]` (at least 120 entries).

    Args:
        folder: an empty folder to write files into.
        face: an RGB uint8 photo with a face (default: scikit-image's astronaut).
    """
    if face is None:
        from skimage import data

        face = data.astronaut()
    rng = np.random.default_rng(0)
    folder = os.fspath(folder)
    photo = Image.fromarray(face)
    jpeg, png = _encode(photo, "JPEG", quality=90), _encode(photo, "PNG")
    items = []

    def file(name, data):
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        items.append((name, path))

    # Truncated files, cut at many points (headers, mid-scan, one byte short).
    for frac in (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.999):
        file(f"truncated_{frac}.jpg", jpeg[: max(1, int(len(jpeg) * frac))])
        file(f"truncated_{frac}.png", png[: max(1, int(len(png) * frac))])
    file("one_byte_short.jpg", jpeg[:-1])
    file("one_byte_short.png", png[:-1])
    # Empty files and random bytes under image names.
    for ext in ("jpg", "png", "gif", "bmp", "tiff", "webp"):
        file(f"empty.{ext}", b"")
        file(f"random.{ext}", rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    # Real images with the wrong extension, and non-images with image extensions.
    file("png_named.jpg", png)
    file("jpeg_named.png", jpeg)
    file("jpeg_named.txt", jpeg)
    file("text.jpg", b"hello, I am not a photo\n" * 20)
    file("html.png", b"<!doctype html><html><body><img src=x></body></html>")
    file("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    file("pdf.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    file("zip.png", b"PK\x03\x04" + bytes(100))
    file("jpeg_header_only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    file("png_signature_only.png", b"\x89PNG\r\n\x1a\n")
    # Unusual modes and bit depths.
    gray_values = np.asarray(photo.convert("L"), np.float64)
    deep = {"I;16": (gray_values * 257).astype(np.uint16), "I": (gray_values * 65537).astype(np.int32),
            "F": (gray_values / 255).astype(np.float32)}
    for mode in ("1", "L", "LA", "P", "RGBA", "CMYK", "I", "F", "I;16", "YCbCr", "HSV", "RGBX"):
        image = Image.fromarray(deep[mode]) if mode in deep else photo.convert(mode)
        fmt = "TIFF" if mode in ("CMYK", "I", "F", "YCbCr", "HSV", "RGBX") else "PNG"
        try:
            file(f"mode_{mode.replace(';', '_')}.{fmt.lower()}", _encode(image, fmt))
        except (OSError, ValueError, KeyError):  # a mode that format cannot hold: as JPEG/TIFF raw instead
            file(f"mode_{mode.replace(';', '_')}.tiff", _encode(image.convert("RGB"), "TIFF"))
    file("palette_transparent.png", _encode(photo.convert("P"), "PNG", transparency=0))
    file("gray16.png", _encode(Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)), "PNG"))
    file("progressive.jpg", _encode(photo, "JPEG", progressive=True, quality=80))
    file("cmyk.jpg", _encode(photo.convert("CMYK"), "JPEG"))
    file("gray.jpg", _encode(photo.convert("L"), "JPEG"))
    file("tiny_q1.jpg", _encode(photo, "JPEG", quality=1))
    for fmt in ("BMP", "GIF", "WEBP", "TIFF", "PPM", "ICO", "TGA"):
        try:
            file(f"photo.{fmt.lower()}", _encode(photo if fmt != "ICO" else photo.resize((256, 256)), fmt))
        except (OSError, KeyError):
            pass
    # Tiny and extreme shapes.
    for w, h in ((1, 1), (2, 2), (3, 1), (1, 3), (1, 1000), (1000, 1), (5, 5000), (16, 16)):
        file(f"tiny_{w}x{h}.png", _encode(photo.resize((w, h)), "PNG"))
    # Decompression bombs and lying headers.
    file("bomb_25000.png", png_claiming(25000, 25000))
    file("bomb_20000_gray.png", png_claiming(20000, 20000, mode=0))
    file("rows_20_of_200.png", png_claiming(200, 200, rows_of_data=20))
    file("bomb_gif.gif", b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00;")
    # Animations and multi-page files: the first frame is the photo.
    frames = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT)]
    file("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    file("multipage.tiff", _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    file("animated.webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    # Every EXIF orientation.
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        file(f"exif_{orientation}.jpg", _encode(photo, "JPEG", exif=exif))
    file("exif_bogus.jpg", _encode(photo, "JPEG", exif=b"Exif\x00\x00" + bytes(40)))
    # Paths that are not regular files.
    os.mkfifo(os.path.join(folder, "pipe.jpg"))
    items.append(("pipe.jpg", os.path.join(folder, "pipe.jpg")))
    os.mkdir(os.path.join(folder, "folder.jpg"))
    items.append(("folder.jpg", os.path.join(folder, "folder.jpg")))
    os.symlink(os.path.join(folder, "loop2.jpg"), os.path.join(folder, "loop1.jpg"))
    os.symlink(os.path.join(folder, "loop1.jpg"), os.path.join(folder, "loop2.jpg"))
    items.append(("loop1.jpg", os.path.join(folder, "loop1.jpg")))
    os.symlink(os.path.join(folder, "nowhere.jpg"), os.path.join(folder, "dangling.jpg"))
    items.append(("dangling.jpg", os.path.join(folder, "dangling.jpg")))
    items.append(("missing.jpg", os.path.join(folder, "missing.jpg")))
    items.append(("device", "/dev/zero"))
    # In-memory inputs: bytes and arrays of every awkward kind.
    items += [("bytes_empty", b""), ("bytes_random", rng.integers(0, 256, 500, dtype=np.uint8).tobytes()),
              ("bytes_jpeg", jpeg), ("bytes_truncated", jpeg[:300]), ("bytes_text", b"not an image")]
    gray = np.asarray(photo.convert("L"))
    arrays = {
        "array_uint8": face, "array_gray": gray, "array_gray_1ch": gray[..., None], "array_rgba": np.asarray(
            photo.convert("RGBA")), "array_float01": face / 255.0, "array_float255": face.astype(np.float32),
        "array_negative": face.astype(np.int16) - 128, "array_uint16": gray.astype(np.uint16) * 257,
        "array_int32": gray.astype(np.int32) * 65537, "array_bool": gray > 128, "array_nan": np.full(
            (64, 64, 3), np.nan), "array_inf": np.full((64, 64, 3), np.inf), "array_2ch": np.zeros((64, 64, 2)),
        "array_5ch": np.zeros((64, 64, 5)), "array_empty": np.zeros((0, 0, 3), np.uint8), "array_1d": np.zeros(
            100, np.uint8), "array_4d": np.zeros((1, 64, 64, 3), np.uint8), "array_object": np.array(
            [[object()]]), "array_tiny": np.zeros((1, 1, 3), np.uint8), "array_strided": face[::-1, ::2],
    }
    items += list(arrays.items())
    items += [("none", None), ("int", 42), ("list", [[1, 2, 3]]), ("dict", {"b64": "abc"}), ("str_empty", "")]
    return items
