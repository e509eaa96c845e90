"""`analyze_files`: the CLI's folder/video walk as a library call (order, batching, errors), and annotation names."""

import numpy as np
from PIL import Image

from facemtl.annotate import AnnotationNames
from facemtl.images import load_image
from facemtl.inference import analyze_files


class CountingAnalyzer:
    """Stands in for FaceAnalyzer: one 'face' per photo, recording how photos were batched."""

    max_side = 2048

    def __init__(self):
        self.batches = []

    def load(self, path):
        return load_image(path)

    def analyze_images(self, images):
        self.batches.append(len(images))
        return [[{"box": [0, 0, image.shape[1], image.shape[0]]}] for image in images]


def test_records_keep_input_order_errors_in_place_and_batches(tmp_path):
    for name in ("a.png", "c.png", "d.png", "e.png"):
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"broken")
    analyzer = CountingAnalyzer()
    records = [r for r, _ in analyze_files(analyzer, [tmp_path], batch_photos=2, progress=False)]
    assert [r["path"].rsplit("/", 1)[-1] for r in records] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert "error" in records[1] and "b.png" in records[1]["error"]
    assert [r["size"] for r in records if "error" not in r] == [[8, 10]] * 4
    assert analyzer.batches == [1, 2, 1]  # a flushed before b's error record, then c+d, then e
    missing = list(analyze_files(analyzer, [tmp_path / "nope.jpg"], progress=False))
    assert missing[0][1] is None and "nope.jpg" in missing[0][0]["error"]


def test_annotation_names_never_collide():
    names = AnnotationNames()
    assert [names("a/face.png"), names("b/face.jpg"), names("c/face.gif")] == ["face.jpg", "face_2.jpg", "face_3.jpg"]
    assert [names("clip.mp4", 10), names("other/clip.avi", 10)] == ["clip_frame000010.jpg", "clip_frame000010_2.jpg"]
