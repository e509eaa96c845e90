"""Decoding user images (paths, bytes, arrays) into uint8 RGB arrays."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facemtl.errors import ImageError, ImageTooLarge
from facemtl.files import unreadable_reason

# What one photo may hold once decoded (after JPEG's reduced-size decoding): 100 megapixels,
# 300 MB as RGB. Formats that cannot decode at reduced size (PNG, TIFF, 16-bit) are refused
# above it from their header, before anything is decoded.
MAX_DECODE_PIXELS = 100_000_000


def _describe(source):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source) or "<empty path>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _to_rgb_array(array, name):
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
        raise ImageError(f"{name}: expected an image array [h, w] or [h, w, 1|3|4]. Received shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ImageError(f"{name}: expected numbers for pixels. Received dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageError(f"{name}: the image array holds NaN or infinite values")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        elif arr.dtype in (np.uint16, np.int32, np.uint32, np.int64, np.uint64) and arr.max(initial=0) > 255:
            arr = arr.astype(np.float64) / arr.max() * 255  # 16-bit (or wider) pixels: rescaled like 16-bit files
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def _png_rows_missing(source):
    """True when a (non-interlaced) PNG's compressed data holds fewer rows than its header says.

    Pillow decodes such a file without complaint, filling the missing rows; the
    stream is inflated here, bounded by the expected size, to count what is there.
    """
    import struct
    import zlib

    if isinstance(source, (bytes, bytearray)):
        data = source
    else:
        with open(source, "rb") as f:
            data = f.read()
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or header[6] != 0:  # unknown or interlaced: Pillow's own checks apply
        return False
    width, height, depth, colour = header[:4]
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    expected = height * (1 + (width * channels * depth + 7) // 8)
    inflater = zlib.decompressobj()
    got = 0
    try:
        for chunk in idat:
            got += len(inflater.decompress(chunk, max(1, expected - got + 1)))
            if got >= expected:
                return False
    except zlib.error:
        return True
    return got < expected


def open_image(fp):
    """`PIL.Image.open`, except that PIL's own decompression-bomb guard does not stop a large header.

    PIL refuses images claiming over twice `Image.MAX_IMAGE_PIXELS` when it
    opens them, before a JPEG could be set to decode at reduced size. facemtl
    leaves that module-wide setting alone (importing facemtl changes no other
    library's state) and decides itself, from the size (`check_pixels`, after
    `draft`): such a file is opened again the way `Image.open` opens it, by its
    format's plugin, without the guard.

    Args:
        fp: a path or a binary file object.

    Returns:
        An open `PIL.Image.Image` (use it as a context manager).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with contextlib.suppress(Image.DecompressionBombError):
            return Image.open(fp)
    if isinstance(fp, (str, os.PathLike)):
        with open(fp, "rb") as f:
            fp = io.BytesIO(f.read())
    fp.seek(0)
    prefix = fp.read(16)
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(prefix):
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, ValueError, OSError):
            continue
    raise UnidentifiedImageError("cannot identify image file")


def check_pixels(width, height, name, max_pixels=MAX_DECODE_PIXELS):
    """Refuses an empty image (`ImageError`) or one over `max_pixels` (`ImageTooLarge`), from its size alone."""
    if width * height == 0:
        raise ImageError(f"{name}: zero-size image")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} pixels is over facemtl's limit of {max_pixels} pixels for one "
                            "photo (a decompression bomb?)")


def image_size(data, name=None, max_pixels=MAX_DECODE_PIXELS):
    """`(width, height)` of encoded image bytes from their header alone, checked by `check_pixels`.

    Nothing is decoded, so a decompression bomb (a small file claiming a huge
    size) stops here.

    Raises:
        ImageError: not an image, or empty; `ImageTooLarge` over `max_pixels`.
    """
    name = name or _describe(data)
    if not data:
        raise ImageError(f"{name}: empty image")
    try:
        with open_image(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: over facemtl's limit of {max_pixels} pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: not a readable image ({exc})") from None
    check_pixels(width, height, name, max_pixels)
    return width, height


def load_image(source, max_side=None, max_pixels=MAX_DECODE_PIXELS):
    """Loads a photo as a uint8 RGB array.

    Gray, palette, 16-bit and RGBA images become RGB (alpha is dropped); EXIF
    orientation is applied.

    Args:
        source: a path, encoded image bytes, a PIL image or a numpy array.
        max_side: if given, the image is downscaled (keeping its aspect ratio)
            so that its longer side is at most this many pixels.
        max_pixels: files claiming more pixels (once a JPEG is set to decode at
            `max_side`) are refused from their header, before decoding.

    Returns:
        `uint8` array `[h, w, 3]`.

    Raises:
        ImageError: naming the file when it is missing, empty, truncated or
            not an image; `ImageTooLarge` when it claims over `max_pixels`.

    Example:
        >>> load_image(np.zeros((10, 20), np.uint8)).shape
        (10, 20, 3)
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        image = None
        arr = _to_rgb_array(source, name)
        if max_side is None or max(arr.shape[:2]) <= max_side:
            return arr
        image = Image.fromarray(arr)
    elif isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (str, os.PathLike)):
            reason = unreadable_reason(source)
            if reason:
                raise ImageError(f"{name}: {reason}")
            if os.path.getsize(source) == 0:
                raise ImageError(f"{name}: empty file (0 bytes)")
            opener = source
        elif isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError("<0 bytes>: empty image buffer")
            opener = io.BytesIO(source)
        else:
            raise ImageError(f"{name}: expected a path, bytes, PIL image or numpy array")
        try:
            with open_image(opener) as opened:  # closed here: no file left open for the garbage collector
                if max_side is not None:
                    opened.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size
                check_pixels(opened.width, opened.height, name, max_pixels)
                opened.load()  # the pixels stay usable after the file is closed
                image = opened
                if image.format == "PNG" and _png_rows_missing(source):
                    raise ImageError(f"{name}: truncated PNG: its pixel data stops before the last row")
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{name}: not a readable image ({exc})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block should not lose the picture itself
        image = ImageOps.exif_transpose(image)
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name}: zero-size image")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        arr = arr / max(arr.max(), 1) * 255
        image = Image.fromarray(arr.astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


def decode_each(sources, load, errors=(ImageError,)):
    """Decodes every source with `load`, keeping going past the ones that fail.

    One bad input never costs the others: the callers answer the decoded ones
    and put an error entry in each failed one's place.

    Args:
        sources: the inputs, in order.
        load: `load(source) -> uint8 [h, w, 3]`.
        errors: the exception types that mean "this input is bad".

    Returns:
        `(entries, images, owners)`: `entries[i]` is `None` for a decoded source,
        else the exception it raised; `images[k]` is the decoded image of
        `sources[owners[k]]`.

    Example:
        >>> entries, images, owners = decode_each([b"", np.zeros((2, 2))], load_image)
        >>> [type(e).__name__ for e in entries], owners
        (['ImageError', 'NoneType'], [1])
    """
    entries, images, owners = [], [], []
    for source in sources:
        try:
            images.append(load(source))
            owners.append(len(entries))
            entries.append(None)
        except errors as exc:
            entries.append(exc)
    return entries, images, owners
