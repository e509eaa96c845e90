"""Galleries on the real stores (the embedded SQLite + HNSW store, and Milvus Lite): enrol, identify,
keep templates, search approximately and exactly, survive kills and concurrent writers, convert old files."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from facemtl.errors import GalleryError
from facemtl.recognition.gallery import Gallery, check_gallery_name, list_galleries
from facemtl.recognition.stores import close_stores, local, open_store

MODEL = {"model_id": "abc123", "name": "m", "version": 1, "embedding_dim": 8}
STORES = ["local", pytest.param("milvus-lite", marks=pytest.mark.slow)]


def _unit(rng, n, dim=8):
    e = rng.normal(size=(n, dim)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture
def folder(tmp_path):
    yield str(tmp_path / "galleries")
    close_stores()


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    if request.param == "milvus-lite":
        pytest.importorskip("milvus_lite")
        uri = f"milvus-lite:{tmp_path}/milvus/galleries.db"
    else:
        uri = str(tmp_path / "galleries")
    yield uri
    close_stores()


def test_enrol_identify_and_reopen(store):
    rng = np.random.default_rng(0)
    people = _unit(rng, 3)
    g = Gallery.open("family", store, model=MODEL, create=True)
    for name, centre in zip(["ann", "bob", "cy"], people):
        assert g.enroll(name, centre + 0.05 * rng.normal(size=(2, 8)), sources=[f"{name}1.jpg", f"{name}2.jpg"]) == 2
    assert g.enroll("ann", people[:1]) == 3
    close_stores()  # a new process's view: nothing to save, every enrolment was committed

    g2 = Gallery.open("family", store, model=MODEL)
    assert g2.people() == {"ann": 3, "bob": 2, "cy": 2} and len(g2) == 3
    assert g2.sources("ann") == ["ann1.jpg", "ann2.jpg", ""]
    answers = g2.identify(people[[1, 0]], threshold=0.5, k=2)
    assert [a["name"] for a in answers] == ["bob", "ann"]
    assert len(answers[0]["candidates"]) == 2
    assert answers[0]["candidates"][0]["score"] >= answers[0]["candidates"][1]["score"]
    assert g2.identify(-people.sum(axis=0), threshold=0.5)[0]["name"] == "unknown"
    assert list_galleries(store) == ["family"]


def test_the_store_keeps_each_template_as_the_mean(store):
    g = Gallery.open("g", store, model=MODEL, create=True)
    g.enroll("ann", [[1, 0, 0, 0, 0, 0, 0, 0]])
    g.enroll("ann", [[0, 3, 0, 0, 0, 0, 0, 0]])  # normalised before it is added
    names, templates = g.templates()
    assert list(names) == ["ann"]
    np.testing.assert_allclose(templates[0], np.r_[[2 ** -0.5] * 2, [0] * 6], atol=1e-6)
    (best,) = g.search([1, 1, 0, 0, 0, 0, 0, 0], k=1)[0]
    assert best[0] == "ann" and best[1] == pytest.approx(1.0, abs=1e-5)


def test_rename_merge_remove(store):
    rng = np.random.default_rng(1)
    g = Gallery.open("g", store, model=MODEL, create=True)
    a, b, c = _unit(rng, 3)
    g.enroll("person-0001", [a, a], ["x.jpg", "y.jpg"])
    g.enroll("person-0002", [b], ["z.jpg"])
    g.enroll("cy", [c])
    g.rename("person-0001", "Ann Lee")
    assert g.merge("person-0002", "Ann Lee") == 3
    assert g.people() == {"Ann Lee": 3, "cy": 1}
    assert sorted(g.sources("Ann Lee")) == ["x.jpg", "y.jpg", "z.jpg"]
    expected = (2 * a + b) / np.linalg.norm(2 * a + b)
    assert g.search(expected, k=1)[0][0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(GalleryError, match="already enrolled"):
        g.rename("cy", "Ann Lee")
    with pytest.raises(GalleryError, match="not enrolled"):
        g.merge("nobody", "cy")
    assert g.remove("cy") == 1
    with pytest.raises(GalleryError, match="not enrolled"):
        g.remove("cy")
    assert g.people() == {"Ann Lee": 3}


def test_gallery_of_another_model_is_refused(store):
    g = Gallery.open("g", store, model=MODEL, create=True)
    g.enroll("ann", _unit(np.random.default_rng(4), 1))
    with pytest.raises(GalleryError, match="another model"):
        Gallery.open("g", store, model={**MODEL, "model_id": "other"})
    with pytest.raises(GalleryError, match="8-d embeddings but the model makes 16-d"):
        Gallery.open("g", store, model={**MODEL, "embedding_dim": 16})


def test_empty_missing_and_bad_input(folder):
    g = Gallery.open("g", folder, model=MODEL, create=True)
    with pytest.raises(GalleryError, match="empty"):
        g.identify(np.ones(8), threshold=0.5)
    with pytest.raises(GalleryError, match="No gallery 'nobody'"):
        Gallery.open("nobody", folder)
    with pytest.raises(GalleryError, match="Expected"):
        g.enroll("ann", np.ones((1, 4)))
    with pytest.raises(GalleryError, match="One source per embedding"):
        g.enroll("ann", np.ones((2, 8)), ["one.jpg"])
    assert g.people() == {}


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "x" * 65, "a\\b", "/abs"])
def test_gallery_names_cannot_escape_the_store(name):
    with pytest.raises(GalleryError, match="Bad gallery name"):
        check_gallery_name(name)


@pytest.mark.parametrize("name", ["a/b", " ann", "", "unknown", "line\nbreak", "x" * 129])
def test_bad_person_names_are_refused(folder, name):
    g = Gallery.open("g", folder, model=MODEL, create=True)
    with pytest.raises(GalleryError):
        g.enroll(name, _unit(np.random.default_rng(5), 1))


def test_unknown_store_uris_are_clear_errors():
    with pytest.raises(GalleryError, match="Unknown gallery store 'redis://x'"):
        open_store("redis://x")
    with pytest.raises(GalleryError, match="names a host"):
        open_store("milvus://:19530")
    with pytest.raises(GalleryError, match="ending in .db"):
        open_store("milvus-lite:/tmp/folder")


def test_the_store_is_readable_by_its_owner_only(folder):
    g = Gallery.open("g", folder, model=MODEL, create=True)
    g.enroll("ann", _unit(np.random.default_rng(6), 3))
    g.compact()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    gallery_folder = os.path.join(folder, "g.gallery")
    assert stat.S_IMODE(os.stat(gallery_folder).st_mode) == 0o700
    files = os.listdir(gallery_folder)
    assert "gallery.sqlite" in files and any(f.startswith("index-") for f in files)
    for f in files:
        assert stat.S_IMODE(os.stat(os.path.join(gallery_folder, f)).st_mode) == 0o600, f


def test_corrupt_gallery_is_a_clear_error_and_stays(folder):
    os.makedirs(os.path.join(folder, "bad.gallery"))
    path = os.path.join(folder, "bad.gallery", "gallery.sqlite")
    with open(path, "wb") as f:
        f.write(b"SQLite format 3\x00 truncated")
    with pytest.raises(GalleryError, match="not a readable facemtl gallery.*left as it is"):
        Gallery.open("bad", folder, model=MODEL, create=True)
    assert open(path, "rb").read() == b"SQLite format 3\x00 truncated"


def test_approximate_search_agrees_with_exact_and_follows_changes(folder, monkeypatch):
    """Past INDEX_MIN_PEOPLE the HNSW index answers; people changed since it was written are searched exactly."""
    monkeypatch.setattr(local, "INDEX_MIN_PEOPLE", 200)
    rng = np.random.default_rng(7)
    dim, n = 16, 1500
    people = _unit(rng, n, dim)
    model = {**MODEL, "embedding_dim": dim}
    g = Gallery.open("big", folder, model=model, create=True)
    g.enroll_many([(f"p{i:04d}", people[i:i + 1], None) for i in range(n)])
    assert any(f.startswith("index-") for f in os.listdir(os.path.join(folder, "big.gallery")))  # compacted
    assert g.backend.pending() == 0
    queries = people[:300] + 0.05 * rng.normal(size=(300, dim)).astype(np.float32)
    approx = [row[0][0] for row in g.search(queries, k=3)]
    exact = [row[0][0] for row in g.search(queries, k=3, exact=True)]
    brute = [f"p{i:04d}" for i in np.argmax(queries @ people.T, axis=1)]
    assert exact == brute
    assert np.mean(np.asarray(approx) == np.asarray(exact)) >= 0.99

    # Changes after the index file: a new person is found, a removed one never returned, a moved one follows.
    newcomer = _unit(rng, 1, dim)
    g.enroll("newcomer", newcomer)
    g.remove("p0001")
    g.enroll("p0002", -people[2:3])  # the template of p0002 becomes zero-ish: its old index entry is stale
    assert g.backend.pending() == 3
    assert g.search(newcomer, k=1)[0][0][0] == "newcomer"
    assert all(name != "p0001" for name, _ in g.search(people[1], k=10)[0])
    assert g.search(people[2], k=1)[0][0][0] != "p0002"
    close_stores()
    again = Gallery.open("big", folder)  # another process sees the same, from the index file plus the log
    assert again.search(newcomer, k=1)[0][0][0] == "newcomer"
    assert again.compact() and again.backend.pending() == 0
    assert again.search(newcomer, k=1)[0][0][0] == "newcomer"
    assert all(name != "p0001" for name, _ in again.search(people[1], k=10)[0])


def test_an_old_npz_gallery_is_converted_on_first_use_and_left_as_it_was(folder):
    rng = np.random.default_rng(8)
    os.makedirs(folder)
    old = os.path.join(folder, "team.npz")
    emb = _unit(rng, 3)
    np.savez(old, meta=json.dumps({"format_version": 1, "model": MODEL, "created": "2026-11-01T00:00:00+00:00"}),
             names=np.asarray(["ann", "bob", "ann"]), embeddings=emb, sources=np.asarray(["a.jpg", "b.jpg", "c.jpg"]))
    before = open(old, "rb").read()
    assert list_galleries(folder) == ["team"]
    with pytest.warns(UserWarning, match="readable by other users; its converted copy is not"):
        g = Gallery.open("team", folder, model=MODEL)
    assert g.people() == {"ann": 2, "bob": 1} and g.sources("ann") == ["a.jpg", "c.jpg"]
    assert g.search(emb[1], k=1)[0][0][0] == "bob"
    assert open(old, "rb").read() == before
    assert list_galleries(folder) == ["team"]
    g.enroll("cy", emb[:1])
    close_stores()
    assert Gallery.open("team", folder).people() == {"ann": 2, "bob": 1, "cy": 1}  # not converted twice


_ENROL_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np
    from facemtl.recognition.gallery import Gallery
    from facemtl.recognition.stores import local
    local.INDEX_MIN_PEOPLE = 50  # compactions happen too, and may be killed
    g = Gallery.open("g", sys.argv[1], model={"model_id": "abc123", "embedding_dim": 8}, create=True)
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(100000):
        name = f"{sys.argv[3]}{i:05d}"
        g.enroll(name, rng.normal(size=(2, 8)), [f"{name}.jpg"] * 2)
        print(name, flush=True)  # printed only once committed
""")


def test_a_killed_enrolment_loses_nothing_committed_and_leaves_the_store_usable(folder):
    proc = subprocess.Popen([sys.executable, "-c", _ENROL_FOREVER, folder, "1", "k"], stdout=subprocess.PIPE,
                            text=True)
    committed = []
    deadline = time.time() + 120
    while len(committed) < 300 and time.time() < deadline:
        committed.append(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    assert len(committed) >= 300
    g = Gallery.open("g", folder, model=MODEL)
    people = g.people()
    assert set(committed) <= set(people) and all(people[n] == 2 for n in committed)
    g.enroll("after", _unit(np.random.default_rng(9), 1))
    assert g.search(_unit(np.random.default_rng(9), 1), k=1)[0][0][0] == "after"
    assert g.compact()


_ENROL_SOME = textwrap.dedent("""
    import sys
    import numpy as np
    from facemtl.recognition.gallery import Gallery
    from facemtl.recognition.stores import local
    local.INDEX_MIN_PEOPLE = 50
    g = Gallery.open("g", sys.argv[1], model={"model_id": "abc123", "embedding_dim": 8}, create=True)
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(150):
        g.enroll(f"{sys.argv[3]}{i:03d}", rng.normal(size=(1, 8)))
        g.enroll("shared", rng.normal(size=(1, 8)))
""")


def test_two_processes_enrolling_at_once_lose_neither_s_people(folder):
    procs = [subprocess.Popen([sys.executable, "-c", _ENROL_SOME, folder, str(seed), prefix])
             for seed, prefix in ((1, "a"), (2, "b"))]
    for p in procs:
        assert p.wait(timeout=300) == 0
    people = Gallery.open("g", folder, model=MODEL).people()
    assert len(people) == 301 and people["shared"] == 300
    assert all(people[f"{p}{i:03d}"] == 1 for p in "ab" for i in range(150))


def test_a_gallery_object_follows_another_process_s_compaction(folder, monkeypatch):
    """A long-lived reader (the server) sees the new index file and drops the changes it folded in."""
    monkeypatch.setattr(local, "INDEX_MIN_PEOPLE", 10)
    rng = np.random.default_rng(10)
    people = _unit(rng, 40)
    reader = Gallery.open("g", folder, model=MODEL, create=True)
    writer = Gallery(local.LocalStore(folder).open("g"), "g")  # a second connection, as another process has
    writer.enroll_many([(f"p{i:02d}", people[i:i + 1], None) for i in range(20)])
    assert [row[0][0] for row in reader.search(people[:20], k=1)] == [f"p{i:02d}" for i in range(20)]
    writer.enroll_many([(f"p{i:02d}", people[i:i + 1], None) for i in range(20, 40)])
    assert writer.compact() and writer.backend.pending() == 0
    rows = reader.search(people, k=3)
    assert [row[0][0] for row in rows] == [f"p{i:02d}" for i in range(40)]
    assert all(len({name for name, _ in row}) == len(row) for row in rows)  # nobody twice (index + stale tail)
    assert reader.backend.pending() == 0
