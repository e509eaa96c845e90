"""People in a collection: grouping embeddings by neighbour search, scores, names, contact sheets."""

import io

import numpy as np
import pytest
from PIL import Image

from facemtl.recognition import clustering
from facemtl.recognition.clustering import (
    UNCLUSTERED,
    cluster_embeddings,
    contact_sheet,
    next_group_names,
    pairwise_scores,
)


def _people(n_people, per_person, dim=32, noise=0.08, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    truth = np.repeat(np.arange(n_people), per_person)
    e = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True)
    e = e + noise * rng.normal(size=e.shape)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32), truth


def test_groups_people_and_leaves_strangers_unclustered():
    e, truth = _people(20, 5)
    strangers = _people(8, 1, seed=1)[0]
    labels = cluster_embeddings(np.vstack([e, strangers]), threshold=0.6)
    assert (labels[-8:] == UNCLUSTERED).all()  # one photo each: nobody to group with
    scores = pairwise_scores(labels[:-8], truth)
    assert scores["f1"] == 1.0 and scores["groups"] == 20 and scores["unclustered"] == 0
    assert sorted(np.bincount(labels[labels >= 0])) == [5] * 20


def test_the_indexed_path_matches_on_a_larger_collection(monkeypatch):
    monkeypatch.setattr(clustering, "_EXACT_BELOW", 100)  # HNSW instead of the exhaustive search
    e, truth = _people(150, 4, seed=2)
    labels = cluster_embeddings(e, threshold=0.6)
    # A multi-threaded HNSW build is not deterministic: 30 runs gave F1 0.982-1.0 (exhaustive: 1.0).
    assert pairwise_scores(labels, truth)["f1"] >= 0.97


def test_one_stray_link_does_not_join_two_people():
    e, truth = _people(2, 12, seed=3)
    bridge = (e[0] + e[12]) / np.linalg.norm(e[0] + e[12])  # a face halfway between the two
    labels = cluster_embeddings(np.vstack([e, bridge]), threshold=0.6, k=24)
    assert len(set(labels[:24].tolist())) == 2
    assert pairwise_scores(labels[:24], truth)["f1"] == 1.0


def test_pairwise_scores_count_pairs():
    scores = pairwise_scores([0, 0, 1, 1, UNCLUSTERED], ["a", "a", "a", "b", "b"])
    # Predicted pairs: (0,1), (2,3); true pairs: (0,1), (0,2), (1,2), (3,4); shared: (0,1).
    assert scores["precision"] == 0.5 and scores["recall"] == 0.25
    assert scores["f1"] == pytest.approx(1 / 3) and scores["unclustered"] == 0.2


def test_bad_arguments_and_empty_input():
    assert cluster_embeddings(np.zeros((0, 8), np.float32), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="Expected \\[n, D\\]"):
        cluster_embeddings(np.zeros(8), 0.5)
    with pytest.raises(ValueError, match="min_size"):
        cluster_embeddings(np.ones((2, 8)), 0.5, min_size=0)


def test_group_names_continue_after_the_gallery_s_own():
    assert next_group_names({"Ann": 1}, 2) == ["person-0001", "person-0002"]
    assert next_group_names({"person-0007": 2, "person-0002": 1, "Ann Lee": 3}, 1) == ["person-0008"]


def test_contact_sheet_is_a_png_grid(tmp_path):
    thumbs = []
    for colour in ("red", "green", "blue"):
        buf = io.BytesIO()
        Image.new("RGB", (50, 50), colour).save(buf, format="JPEG")
        thumbs.append(buf.getvalue())
    path = tmp_path / "person-0001.png"
    contact_sheet(thumbs, "person-0001: 3 face(s)", str(path), columns=2, size=40)
    sheet = Image.open(path)
    assert sheet.format == "PNG" and sheet.size == (80, 2 * 40 + 22)
    assert sheet.getpixel((60, 22 + 20))[1] > 100  # the green face, second column
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


@pytest.mark.slow
@pytest.mark.shared_data
def test_cluster_command_finds_the_people_of_real_photos(tmp_path):
    """`facemtl gallery cluster` with the release model on LFW photos of 3 people, then rename and a second pass."""
    import json
    import os

    from tests.helpers import SHARED_DATA
    from tests.helpers import run_cli_here as run_cli

    root = os.path.join(SHARED_DATA, "lfw_subset", "train")
    people = ["Colin_Powell", "Gerhard_Schroeder", "Tony_Blair"]
    photos = {p: sorted(os.path.join(root, p, f) for f in os.listdir(os.path.join(root, p)))[:10] for p in people}
    everything = [f for p in people for f in photos[p]]
    store, sheets = tmp_path / "store", tmp_path / "sheets"
    r = run_cli("gallery", "cluster", "album", *everything, "--store", store, "--sheets", sheets)
    assert r.returncode == 0, r.stderr
    faces = [json.loads(line) for line in r.stdout.splitlines()]
    assert {f["path"] for f in faces} == set(everything) and all(len(f["box"]) == 4 for f in faces)
    largest = {}
    for f in faces:
        if f["path"] not in largest or f["box"][2] * f["box"][3] > largest[f["path"]]["box"][2] * largest[f["path"]]["box"][3]:
            largest[f["path"]] = f
    labels = [largest[p]["group"] or -1 for p in everything]
    truth = [p for p in people for _ in photos[p]]
    groups = {g: i for i, g in enumerate(sorted({g for g in labels if g != -1}))}
    scores = pairwise_scores(np.asarray([groups.get(g, -1) for g in labels]), np.asarray(truth))
    assert scores["precision"] >= 0.95 and scores["f1"] >= 0.8, scores  # whole set: docs/identity.md
    listed = json.loads(run_cli("gallery", "list", "album", "--store", store).stdout)["people"]
    assert sorted(listed) == sorted(groups) and all(n.startswith("person-") for n in listed)
    assert sorted(os.listdir(sheets)) == sorted(f"{g}.png" for g in groups)
    assert "contact sheets in" in r.stderr

    first = largest[photos["Tony_Blair"][0]]["group"]
    assert run_cli("gallery", "rename", "album", first, "Tony Blair", "--store", store).returncode == 0
    # A second pass over the same photos joins the people already in the gallery instead of adding new ones.
    r = run_cli("gallery", "cluster", "album", *everything, "--store", store, "--sheets", tmp_path / "again")
    assert r.returncode == 0, r.stderr
    again = {json.loads(line)["path"]: json.loads(line)["group"] for line in r.stdout.splitlines()}
    assert again[photos["Tony_Blair"][0]] == "Tony Blair"
    after = json.loads(run_cli("gallery", "list", "album", "--store", store).stdout)["people"]
    assert len(after) == len(listed)
