"""Pipeline tests run Apache Beam's local runner in this process; they skip where `facemtl[beam]` is absent."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("apache_beam")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A small photo collection as users have them: faces, no face, a video, bad and odd files, sub-folders."""
    import cv2

    d = tmp_path_factory.mktemp("collection")
    astro = skimage_data.astronaut()
    (d / "trip" / "day1").mkdir(parents=True)
    (d / ".thumbs").mkdir()
    Image.fromarray(astro).save(d / "astronaut.jpg", quality=95)
    Image.fromarray(astro[:, ::-1]).save(d / "trip" / "mirror.png")
    Image.fromarray(np.concatenate([astro, astro[:, ::-1]], axis=1)).save(d / "trip" / "day1" / "two.jpg")
    Image.fromarray(skimage_data.coffee()).save(d / "trip" / "coffee.jpg")  # no face
    Image.fromarray(astro).save(d / ".thumbs" / "hidden.jpg")  # hidden: left out, as by `facemtl analyze`
    (d / "readme.txt").write_text("not a photo")  # ignored by name
    data = (d / "astronaut.jpg").read_bytes()
    (d / "trip" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "trip" / "empty.png").write_bytes(b"")
    writer = cv2.VideoWriter(str(d / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for i in range(6):
        writer.write(cv2.cvtColor(np.roll(astro, 4 * i, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    return d


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
