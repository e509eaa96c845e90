"""Real strangers get "unknown"; the 12 trained people keep their names (the shipped release model).

ORL's 40 people and the CelebA subset's 299 are none of the 12 LFW people the
release model's identity head was trained on. Every surface answers with the
same open-set rule (`facemtl.recognition.open_set`): `FaceAnalyzer`, the CLI
and `/v1/analyze`.
"""

import glob
import json
import os

import numpy as np
import pytest

from tests.helpers import SHARED_DATA, identity_labels, orl_photos

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


def celeba_one_per_person():
    """The first listed photo of each CelebA-subset person (299 photos of 299 people)."""
    root = os.path.join(SHARED_DATA, "celeba_subset")
    first = {}
    with open(os.path.join(root, "identity_CelebA.txt"), encoding="utf-8") as f:
        for line in f:
            name, person = line.split()
            path = os.path.join(root, "img_celeba", name)
            if person not in first and os.path.isfile(path):
                first[person] = path
    return sorted(first.values())


@pytest.fixture(scope="module")
def analyzer():
    from facemtl.inference import FaceAnalyzer

    return FaceAnalyzer()


def test_strangers_are_unknown_through_the_analyzer(analyzer):
    photos = orl_photos() + celeba_one_per_person()
    assert len(photos) == 400 + 299
    labels = []
    for s in range(0, len(photos), 32):
        labels += identity_labels(analyzer.analyze(photos[s:s + 32]))
    assert len(labels) >= 0.95 * len(photos)
    unknown = np.mean([label == "unknown" for label in labels])
    assert unknown >= 0.99, f"{unknown:.4f} of {len(labels)} stranger faces answered unknown"


def test_the_trained_people_keep_their_names(analyzer):
    photos = sorted(glob.glob(os.path.join(SHARED_DATA, "lfw_subset", "test", "*", "*.jpg")))
    results = analyzer.analyze(photos)
    right = [r["faces"][0]["identity"]["label"] == "lfw/" + os.path.basename(os.path.dirname(p))
             for p, r in zip(photos, results) if r.get("faces")]
    assert len(right) >= 0.95 * len(photos) and np.mean(right) >= 0.90, np.mean(right)


def test_strangers_are_unknown_through_the_cli(tmp_path):
    from tests.helpers import run_cli

    folder = tmp_path / "orl"
    folder.mkdir()
    for path in orl_photos()[::50]:  # 8 people, one photo each, with a non-image file beside each
        name = os.path.basename(os.path.dirname(path)) + ".pgm"
        (folder / name).write_bytes(open(path, "rb").read())
        (folder / (name + ".tem")).write_text("landmark template\n")
    r = run_cli("analyze", folder)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 8 and set(identity_labels(records)) == {"unknown"}
