"""Galleries: enrol, combine, identify, persist atomically and privately, refuse what does not belong."""

import os
import stat

import numpy as np
import pytest

from facemtl.recognition.gallery import Gallery, GalleryError, gallery_path

MODEL = {"model_id": "abc123", "name": "m", "version": 1, "embedding_dim": 8}


def _unit(rng, n, dim=8):
    e = rng.normal(size=(n, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "galleries")


def test_enrol_save_load_identify(store):
    rng = np.random.default_rng(0)
    people = _unit(rng, 3)
    g = Gallery.open("family", store, model=MODEL, create=True)
    for name, centre in zip(["ann", "bob", "cy"], people):
        g.enroll(name, centre + 0.05 * rng.normal(size=(2, 8)), sources=[f"{name}1.jpg", f"{name}2.jpg"])
    g.save()
    path = gallery_path("family", store)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    g2 = Gallery.open("family", store, model=MODEL)
    assert g2.people() == {"ann": 2, "bob": 2, "cy": 2}
    answers = g2.identify(people[[1, 0]], threshold=0.5, k=2)
    assert [a["name"] for a in answers] == ["bob", "ann"]
    assert len(answers[0]["candidates"]) == 2 and answers[0]["candidates"][0]["score"] >= answers[0]["candidates"][1]["score"]
    far_away = -people.sum(axis=0)
    assert g2.identify(far_away, threshold=0.5)[0]["name"] == "unknown"


def test_several_photos_are_combined_into_one_template(store):
    g = Gallery.open("g", store, model=MODEL, create=True)
    g.enroll("ann", [[1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]])
    names, templates = g.templates()
    assert list(names) == ["ann"]
    np.testing.assert_allclose(templates[0], np.r_[[2 ** -0.5] * 2, [0] * 6], atol=1e-6)


def test_search_matches_brute_force_on_a_large_gallery(store):
    rng = np.random.default_rng(1)
    g = Gallery.open("big", store, model=MODEL, create=True)
    emb = _unit(rng, 2000)
    g.enroll("x", emb[:1])  # names must differ per template: enrol each as its own person
    g.names = np.array([f"p{i:04d}" for i in range(2000)])
    g.embeddings = emb
    g.sources = np.array([""] * 2000)
    g._templates = None
    q = _unit(rng, 5)
    idx, scores = g.search(q, k=4)
    brute = np.argsort(-(q @ emb.T), axis=1)[:, :4]
    np.testing.assert_array_equal(idx, brute)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, brute, axis=1), rtol=1e-5)


def test_a_crash_mid_write_leaves_the_old_gallery(store, monkeypatch):
    g = Gallery.open("g", store, model=MODEL, create=True)
    g.enroll("ann", _unit(np.random.default_rng(2), 1))
    g.save()
    path = gallery_path("g", store)
    before = open(path, "rb").read()
    g.enroll("bob", _unit(np.random.default_rng(3), 1))

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        g.save()
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(store) == ["g.npz"]  # no temporary file left behind
    assert Gallery.open("g", store).people() == {"ann": 1}


def test_corrupt_gallery_is_a_clear_error_and_stays(store):
    os.makedirs(store)
    path = gallery_path("bad", store)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with pytest.raises(GalleryError, match="not a readable facemtl gallery.*left as it is"):
        Gallery.open("bad", store, model=MODEL, create=True)
    assert open(path, "rb").read() == b"PK\x03\x04 truncated"


def test_gallery_of_another_model_is_refused(store):
    g = Gallery.open("g", store, model=MODEL, create=True)
    g.enroll("ann", _unit(np.random.default_rng(4), 1))
    g.save()
    with pytest.raises(GalleryError, match="another model"):
        Gallery.open("g", store, model={**MODEL, "model_id": "other"})
    with pytest.raises(GalleryError, match="8-d embeddings but the model makes 16-d"):
        Gallery.open("g", store, model={**MODEL, "embedding_dim": 16})


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "x" * 65, "a\\b", "/abs"])
def test_gallery_names_cannot_escape_the_store(store, name):
    with pytest.raises(GalleryError, match="Bad gallery name"):
        gallery_path(name, store)


@pytest.mark.parametrize("name", ["a/b", " ann", "", "unknown", "line\nbreak", "x" * 129])
def test_bad_person_names_are_refused(store, name):
    g = Gallery.open("g", store, model=MODEL, create=True)
    with pytest.raises(GalleryError):
        g.enroll(name, _unit(np.random.default_rng(5), 1))


def test_empty_missing_and_unknown_person(store):
    g = Gallery.open("g", store, model=MODEL, create=True)
    with pytest.raises(GalleryError, match="empty"):
        g.identify(np.ones(8), threshold=0.5)
    with pytest.raises(GalleryError, match="No gallery 'nobody'"):
        Gallery.open("nobody", store)
    with pytest.raises(GalleryError, match="not enrolled"):
        g.remove("ann")
    with pytest.raises(GalleryError, match="Expected"):
        g.enroll("ann", np.ones((1, 4)))


_HOLD_LOCK = r"""
import sys, time
from facemtl.recognition.gallery import gallery_lock
with gallery_lock("team", sys.argv[1]):
    start = time.time()
    time.sleep(0.4)
    print(start, time.time())
"""


def test_gallery_lock_excludes_other_processes(tmp_path):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    spans = sorted(tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs)
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # one holder at a time: read-modify-write cycles never interleave
