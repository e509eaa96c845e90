"""What several test modules share (fixtures live in the conftest files): running the CLI, writing images and
data in real formats, reading pipeline shards, starting the server, and a corpus of awkward inputs.

`corpus(folder)` (also used by a benchmark) writes files into `folder` and returns `[(name, source)]`: paths,
bytes and arrays that a user might hand to `FaceAnalyzer.analyze`,
`Predictor.predict` or `facemtl analyze`. Nothing here is random at run time
(a fixed seed), so a failure names the same input every time.
"""

from __future__ import annotations

import base64
import glob
import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
from PIL import Image

from facemtl.files import file_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.abspath(os.path.join(REPO, "..", "shared", "data"))
QUICKSTART = os.path.join(REPO, "recipes", "quickstart.yaml")
# Tiny networks everywhere: 64x64 input, two stages of one block, 16 filters.
TINY_MODEL = dict(stage_blocks=[1, 1], base_filters=16, identity_units=(32,), expression_units=(32,), embedding_dim=16)


def tiny_overrides(tmp_path):
    return [f"output_dir={tmp_path / 'runs'}", f"export.base_dir={tmp_path / 'saved_models'}"]


def once_per_run(tmp_path_factory, worker_id, name, build, load):
    """A session-scoped fixture's work done by one pytest-xdist worker for the whole run; the others reuse it.

    The first worker to ask runs `build(folder)` under a file lock in the run's shared temporary folder; a
    worker that asks later waits for it, then returns `load(folder)`, which reads what `build` wrote there.
    Without xdist (`-n 0`) it is `build` in a fresh folder.
    """
    if worker_id == "master":
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # the run's folder, above each worker's own (popen-gwN)
    folder = shared / name
    with file_lock(str(shared / f"{name}.lock")):  # released also if `build` raises
        if (folder / "done").exists():
            return load(folder)
        folder.mkdir(exist_ok=True)
        result = build(folder)
        (folder / "done").touch()
        return result


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


def run_cli(*args, cwd=None):
    """`python -m facemtl ARGS` in a new process, as users run it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "facemtl", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env)


def run_cli_here(*args):
    """`facemtl ARGS` through `facemtl.cli.main` in this process (no TensorFlow start-up per call).

    For tests that make many calls; `run_cli` keeps the real entry point covered.
    Returns an object like `subprocess.run`'s: `returncode`, `stdout`, `stderr`.
    """
    import contextlib
    import io
    import types

    from facemtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return types.SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=err.getvalue())


def b64(data):
    return {"b64": base64.b64encode(data).decode()}


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def catalog_overrides(tmp_path, datasets):
    sources = (
        f"[{{format: fer2013_csv, path: '{datasets / 'fer.csv'}', split: Training, test_split: PublicTest, weight: 0.5, val_fraction: 0.25}},"
        f" {{format: identity_folders, path: '{datasets / 'lfw'}', test_split: test, weight: 0.3, val_fraction: 0.4}},"
        f" {{format: identity_folders, path: '{datasets / 'orl'}', test_split: test, weight: 0.2, val_fraction: 0.4}}]")
    return tiny_overrides(tmp_path) + [
        "data.source=mixed", f"data.sources={sources}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.expression_balance=class_weights", "data.grayscale_probability=0.5", "data.steps_per_epoch=3",
        "export.enabled=false"]


def fer_pixels(seed):
    return " ".join(str(v) for v in np.random.default_rng(seed).integers(0, 256, 48 * 48))


def write_image(path, size=(60, 50), value=None, mode="RGB"):
    arr = np.random.default_rng(abs(hash(str(path))) % 2**32).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if value is not None:
        arr[:] = value
    Image.fromarray(arr).convert(mode).save(path)


def orl_photos():
    return sorted(glob.glob(os.path.join(SHARED_DATA, "orl", "att_faces", "s*", "*.pgm")))


def identity_labels(results):
    return [face["identity"]["label"] for r in results for face in r.get("faces", [])]


def read_shards(prefix):
    """Every record of `PREFIX-*-of-*.jsonl`, and the files' names."""
    import glob

    files = sorted(glob.glob(f"{prefix}-[0-9]*-of-*.jsonl"))
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8")], files


def assert_same_answers(got, want, age=0.1, prob=1e-4):
    """Two records of one photo agree: boxes and labels equal, ages within `age`, other numbers within `prob`."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        assert set(got) == set(want), (sorted(got), sorted(want))
        for key in want:
            if key == "age":
                np.testing.assert_allclose(got[key], want[key], atol=age)
            else:
                assert_same_answers(got[key], want[key], age, prob)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_answers(g, w, age, prob)
    elif isinstance(want, float):
        np.testing.assert_allclose(got, want, atol=prob)
    else:
        assert got == want


def analyze_here(paths, model=None, every=10):
    """What `facemtl analyze` writes for `paths` (its records, errors included), by path and frame."""
    from facemtl.inference import FaceAnalyzer, analyze_files

    records = analyze_files(FaceAnalyzer(model), paths, every=every, progress=False, ignored=[])
    return {(r["path"], r.get("frame")): photo_record_without_embeddings(r) for r, _ in records}


def photo_record_without_embeddings(record):
    for face in record.get("faces", []):
        face.pop("embedding", None)
    return record


API_KEY = "test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, *extra):
    port = free_port()
    store = tmp_path / "galleries"
    log = open(tmp_path / f"server-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "facemtl", "serve", "--port", str(port), "--store", str(store),
         "--api-key", API_KEY, "--max-body-mb", "2", "--log-level", "warning", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    server = Server(port, process, store)
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"facemtl serve exited: {(tmp_path / f'server-{port}.log').read_text()}")
        try:
            if server.request("GET", "/readyz", timeout=5)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("facemtl serve did not become ready in 180 s")


def stop_server(server):
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=60)


class Server:
    def __init__(self, port, process, store):
        self.port = port
        self.process = process
        self.store = store
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method, path, body=None, headers=None, timeout=120):
        """`(status, parsed JSON or raw bytes, headers)`; `body` may be bytes or a JSON-able object."""
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("content-type", "").startswith("application/json"):
            data = json.loads(data)
        return response.status, data, dict(response.getheaders())


    def raw_request(self, method, path, headers, chunks=()):
        """Sends the headers, then `chunks` in chunked encoding (none: only the headers); `(status, JSON)`.

        With a big Content-Length and no body this is a client waiting for the
        server's verdict before sending, so an early 413 cannot race the upload.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            for chunk in chunks:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if chunks:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


def dlib_multitask(num_identities, *, input_shape=(150, 150, 3), weights=None, **model):
    """The multi-task network on dlib's ResNet (`build_multitask`, `model.backbone: dlib_resnet`), as tests build it.

    `model`: `ModelConfig` keys (tuples are taken as lists); the expression head defaults to 512 units, dropout 0.5;
    the shared stages are frozen.
    """
    from facemtl.config import ModelConfig
    from facemtl.models.multitask import build_multitask

    defaults = {"expression_units": [512], "dropout": 0.5, "freeze_backbone": True}
    model = {**defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in model.items()}}
    config = ModelConfig(backbone="dlib_resnet", height=input_shape[0], width=input_shape[1], channels=input_shape[2],
                         crop_layout="dlib", **model)
    return build_multitask(config, num_identities, weights=weights)
