"""`facemtl gallery enroll-folders`: a labelled folder tree into the gallery store, once, on either runner."""

import json

import numpy as np
import pytest
from PIL import Image

from facemtl.recognition.gallery import Gallery
from tests.helpers import run_cli_here

pytestmark = pytest.mark.slow
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    astro = skimage_data.astronaut()
    for name, photos in {"eileen": [astro, astro[:, ::-1]], "eileen_gray": [np.stack([astro.mean(2)] * 3, 2)]}.items():
        (root / name).mkdir()
        for i, photo in enumerate(photos):
            Image.fromarray(photo.astype(np.uint8)).save(root / name / f"{i}.jpg")
    Image.fromarray(skimage_data.coffee()).save(root / "eileen" / "coffee.jpg")  # no face
    Image.fromarray(astro).save(root / "loose.jpg")  # not in a person's folder
    return root


def enroll(people, store, *extra):
    r = run_cli_here("gallery", "enroll-folders", "team", people, "--store", store, *extra)
    assert r.returncode == 1, r.stderr  # some photos were not used: said, and listed
    return json.loads(r.stdout)


def test_enrolment_on_beam_equals_the_local_one_and_a_rerun_adds_nothing(people, tmp_path):
    local = enroll(people, tmp_path / "local")
    beam = enroll(people, tmp_path / "beam", "--runner", "beam", "--report", tmp_path / "report",
                  "--direct_num_workers", "2")
    for summary in (local, beam):
        assert {k: summary[k] for k in ("people", "enrolled", "already", "no_face", "unreadable")} == {
            "people": 2, "enrolled": 3, "already": 0, "no_face": 1, "unreadable": 1}
        assert sorted(s["status"] for s in summary["skipped"]) == ["no face", "unreadable"]
    a, b = Gallery.open("team", str(tmp_path / "local")), Gallery.open("team", str(tmp_path / "beam"))
    assert a.people() == b.people() == {"eileen": 2, "eileen_gray": 1}
    assert sorted(a.sources("eileen")) == sorted(b.sources("eileen"))
    np.testing.assert_allclose(a.templates()[1], b.templates()[1], atol=1e-5)
    again = enroll(people, tmp_path / "beam", "--runner", "beam", "--report", tmp_path / "report")
    assert (again["enrolled"], again["already"]) == (0, 3)
    assert Gallery.open("team", str(tmp_path / "beam")).people() == {"eileen": 2, "eileen_gray": 1}
