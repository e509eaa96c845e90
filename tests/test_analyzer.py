"""FaceAnalyzer and `facemtl analyze` on real photos (scikit-image's) and bad input."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from facemtl.inference import FaceAnalyzer
from tests.helpers import run_cli_here

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def analyzer(trained):
    return FaceAnalyzer(trained.export_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    astro = skimage_data.astronaut()
    Image.fromarray(astro).save(d / "astronaut.jpg", quality=95)
    Image.fromarray(astro).convert("L").save(d / "astronaut_gray.png")
    Image.fromarray(astro).convert("RGBA").save(d / "astronaut_rgba.png")
    Image.fromarray(skimage_data.coffee()).save(d / "coffee.jpg")  # no face
    (d / "readme.txt").write_text("not a photo")
    data = (d / "astronaut.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "empty.png").write_bytes(b"")
    return d


def test_workers_change_the_speed_not_the_answers_or_their_order(analyzer, photos):
    """`analyze_files` answers batches on several threads (interpreters sharing the cores): the same records, in input
    order, error records in their place, as one stream gives."""
    from facemtl.inference import analyze_files

    files = sorted(photos.iterdir()) * 3
    runs = {w: [r for r, _ in analyze_files(analyzer, files, batch_photos=2, progress=False, workers=w)]
            for w in (1, 3)}
    assert [r["path"] for r in runs[1]] == [str(f) for f in files]
    assert runs[3] == runs[1] and sum("error" in r for r in runs[1]) == 3 * 3  # readme, truncated, empty


def test_one_call_analyses_every_photo_and_face(analyzer, photos):
    astro = skimage_data.astronaut()
    results = analyzer.analyze([photos / "astronaut.jpg", photos / "astronaut_gray.png", photos / "astronaut_rgba.png",
                                (photos / "astronaut.jpg").read_bytes(), astro, photos / "coffee.jpg"])
    counts = [len(r["faces"]) for r in results]
    assert counts[:5] == [1, 1, 1, 1, 1] and counts[5] == 0
    face = results[0]["faces"][0]
    assert set(face) >= {"box", "score", "landmarks", "expression", "identity", "embedding"}
    assert face["score"] > 0.9 and len(face["embedding"]) == 16
    assert face["expression"]["label"] in face["expression"]["probabilities"]


def test_exif_orientation_is_honoured(analyzer, tmp_path):
    astro = skimage_data.astronaut()
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated; viewers rotate it back upright
    Image.fromarray(np.ascontiguousarray(np.rot90(astro, k=-1))).save(tmp_path / "exif.jpg", exif=exif)
    result = analyzer.analyze([tmp_path / "exif.jpg"])[0]
    assert result["size"] == [512, 512] and len(result["faces"]) == 1


def test_huge_photo_is_downscaled_for_detection(analyzer, tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("L", (20000, 20000), 128).save(path, quality=50)
    result = analyzer.analyze([path])[0]
    assert max(result["size"]) <= 2048 and result["faces"] == []


def test_cli_analyze_folder_with_bad_files(trained, photos, tmp_path):
    out = tmp_path / "results.jsonl"
    r = run_cli_here("analyze", photos, tmp_path / "missing.jpg", "--model", trained.export_dir, "--out", out,
                "--annotate", tmp_path / "annotated")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    records = {os.path.basename(rec["path"]): rec for rec in map(json.loads, out.read_text().splitlines())}
    for bad in ("truncated.jpg", "empty.png", "missing.jpg"):
        assert "error" in records[bad], bad
        assert bad in r.stderr
    # A file of a walked folder that is not an image by name is ignored and counted, not an error.
    assert "readme.txt" not in records and "1 file(s) in folders ignored" in r.stderr
    assert len(records["astronaut.jpg"]["faces"]) == 1
    assert records["coffee.jpg"]["faces"] == []
    assert "embedding" not in records["astronaut.jpg"]["faces"][0]
    annotated = sorted(os.listdir(tmp_path / "annotated"))
    assert "astronaut.jpg" in annotated and "coffee.jpg" in annotated


def test_cli_analyze_video(trained, tmp_path):
    import cv2

    astro = skimage_data.astronaut()
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for i in range(12):
        frame = np.roll(astro, 4 * i, axis=1) if i % 2 == 0 else np.full_like(astro, 90)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    r = run_cli_here("analyze", path, "--model", trained.export_dir, "--every", "2", "--detector", "haar")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["frame"] for rec in records] == [0, 2, 4, 6, 8, 10]
    assert all(len(rec["faces"]) >= 1 for rec in records)
    assert re.search(r"analysed 6 photo\(s\)/frame\(s\) in [0-9.]+ s \([0-9.]+ frames/s", r.stderr), r.stderr
    r = run_cli_here("analyze", path, "--model", trained.export_dir, "--every", "2", "--max-frames", "2",
                "--detector", "haar")
    assert [json.loads(line)["frame"] for line in r.stdout.splitlines()] == [0, 2]


def test_a_camera_is_read_like_a_video_until_max_frames(trained, tmp_path, monkeypatch):
    """`camera:0` opens OpenCV's device 0 (here a stand-in that plays a clip) and honours --every and --max-frames."""
    import cv2

    astro = skimage_data.astronaut()
    clip = str(tmp_path / "camera.avi")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for i in range(10):
        writer.write(cv2.cvtColor(np.roll(astro, 4 * i, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    opened = []
    real = cv2.VideoCapture

    def camera(source, *args):
        opened.append(source)
        return real(clip if source == 0 else source, *args)

    monkeypatch.setattr(cv2, "VideoCapture", camera)
    r = run_cli_here("analyze", "camera:0", "--model", trained.export_dir, "--every", "3", "--max-frames", "3",
                     "--detector", "haar")
    assert r.returncode == 0, r.stderr
    assert 0 in opened  # the device index, not a file named "camera:0"
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(rec["path"], rec["frame"]) for rec in records] == [("camera:0", 0), ("camera:0", 3), ("camera:0", 6)]
    assert "frames/s" in r.stderr
    r = run_cli_here("analyze", "camera:7", "--model", trained.export_dir, "--detector", "haar")
    assert r.returncode == 1 and "camera:7: not a readable camera" in r.stderr
    # Each camera frame is answered before the next one is read (a file's frames go in batches).
    from facemtl.inference import FaceAnalyzer, analyze_files

    reads = []

    class Counting:  # wraps (never subclasses) OpenCV's capture: a Python subclass of it crashed the collector
        def __init__(self, source, *args):
            self._capture = real(clip if source == 0 else source, *args)

        def read(self, *args):
            reads.append(1)
            return self._capture.read(*args)

        def __getattr__(self, name):
            return getattr(self._capture, name)

    monkeypatch.setattr(cv2, "VideoCapture", Counting)
    records = analyze_files(FaceAnalyzer(trained.export_dir, detector="haar"), ["camera:0"], every=1,
                            max_frames=5, progress=False)
    next(records)
    assert len(reads) == 1
    records.close()


class _FindsNothing:
    name = "blind"

    def detect(self, image):
        return []


def test_default_detector_is_blazeface_and_faces_say_who_found_them(analyzer):
    face = analyzer.analyze([skimage_data.astronaut()])[0]["faces"][0]
    assert face["detector"] == "blazeface"
    assert set(face["landmarks"]) == {"right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear"}


def test_fallback_detector_runs_only_where_the_first_finds_nothing(trained):
    analyzer = FaceAnalyzer(trained.export_dir, detector=_FindsNothing(), fallback="mtcnn")
    results = analyzer.analyze([skimage_data.astronaut(), skimage_data.coffee()])
    assert [len(r["faces"]) for r in results] == [1, 0]
    assert results[0]["faces"][0]["detector"] == "mtcnn"
    assert analyzer.fallback_photos == 2  # both photos were tried again; only one had a face
    without = FaceAnalyzer(trained.export_dir, detector=_FindsNothing())
    assert without.analyze([skimage_data.astronaut()])[0]["faces"] == [] and without.fallback_photos == 0


def test_cli_fallback_is_counted(trained, photos):
    r = run_cli_here("analyze", str(photos / "astronaut.jpg"), str(photos / "coffee.jpg"), "--model", trained.export_dir,
                "--detector", "haar", "--fallback", "mtcnn")
    assert r.returncode == 0, r.stderr
    assert "mtcnn fallback on 1 photo(s)/frame(s) where haar found no face" in r.stderr


def test_one_bad_photo_does_not_cost_the_good_ones(analyzer, photos):
    results = analyzer.analyze([photos / "astronaut.jpg", photos / "truncated.jpg", photos / "readme.txt",
                                photos / "missing.jpg", skimage_data.astronaut()])
    assert [len(r["faces"]) if "faces" in r else None for r in results] == [1, None, None, None, 1]
    for r, name in zip(results[1:4], ("truncated.jpg", "readme.txt", "missing.jpg")):
        assert set(r) == {"error"} and name in r["error"]


def test_cli_folder_with_a_fifo_does_not_hang_and_every_zero_is_refused(trained, photos, tmp_path):
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(photos / "astronaut.jpg", folder / "a.jpg")
    os.mkfifo(folder / "clip.mp4")  # opening it for reading would block forever
    r = subprocess.run([sys.executable, "-m", "facemtl", "analyze", str(folder), "--model", trained.export_dir],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    records = {os.path.basename(rec["path"]): rec for rec in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 1 and len(records["a.jpg"]["faces"]) == 1
    assert "named pipe" in records["clip.mp4"]["error"]
    r = run_cli_here("analyze", str(folder / "a.jpg"), "--model", trained.export_dir, "--every", "0")
    assert r.returncode == 2 and "--every must be a positive" in r.stderr
