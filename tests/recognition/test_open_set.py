"""The open-set identity rule: NumPy and TensorFlow agree, thresholds mean what they say, exports carry it."""

import os

import numpy as np
import pytest

from facemtl.recognition.metrics import normalize
from facemtl.recognition.open_set import (
    UNKNOWN,
    OpenSetRule,
    class_directions,
    gallery_threshold,
    stranger_fpir,
    threshold_for_fpir,
)


def _rule(threshold=0.8, seed=0):
    rng = np.random.default_rng(seed)
    return OpenSetRule(rng.normal(size=(3, 8)), ["ann", "bob", "cy"], threshold), rng


def test_a_face_is_named_only_when_close_enough():
    rule, _ = _rule(0.8)
    near = rule.directions[1] + 0.05 * rule.directions[2]  # cosine to bob well above 0.8
    far = rule.directions[1] + 1.5 * rule.directions[2] - rule.directions[0]
    near_answer, far_answer = rule.decide(np.stack([near, far]))
    assert near_answer["label"] == near_answer["closest"] == "bob" and near_answer["similarity"] >= 0.8
    assert far_answer["label"] == UNKNOWN and far_answer["similarity"] < 0.8
    assert far_answer["closest"] == ["ann", "bob", "cy"][int(np.argmax(rule.similarities(far)[0]))]
    # Never calibrated: everyone is named after the closest person.
    assert OpenSetRule(rule.directions, rule.names, None).decide(far[None])[0]["label"] == far_answer["closest"]


def test_numpy_and_tensorflow_give_the_same_answers():
    import tensorflow as tf

    rule, rng = _rule(0.3, seed=1)
    embeddings = normalize(rng.normal(size=(200, 8)))
    graph = {k: v.numpy() for k, v in rule.tf_outputs(tf.constant(embeddings)).items()}
    host = rule.decide(embeddings)
    assert [d["label"] for d in host] == [s.decode() for s in graph["identity"]]
    assert [d["closest"] for d in host] == [s.decode() for s in graph["identity_closest"]]
    np.testing.assert_allclose([d["similarity"] for d in host], graph["identity_similarity"], atol=1e-5)
    assert 0 < sum(d["label"] == UNKNOWN for d in host) < len(host)  # both kinds of answer occur


def test_threshold_for_fpir_names_at_most_that_share_of_strangers():
    scores = np.random.default_rng(2).uniform(0, 1, 1000)
    for fpir in (0.0, 0.005, 0.1):
        t = threshold_for_fpir(scores, fpir)
        assert stranger_fpir(scores, t) <= fpir
        assert stranger_fpir(scores, np.nextafter(t, -np.inf) - 1e-9) > fpir - 1e-3  # the lowest such threshold
    with pytest.raises(ValueError, match="fpir"):
        threshold_for_fpir(scores, 1.5)


def test_gallery_thresholds_grow_with_the_gallery_and_interpolate_in_log_size():
    table = {"1": 0.90, "10": 0.94, "100": 0.96}
    assert gallery_threshold(table, 1) == 0.90 and gallery_threshold(table, 100) == 0.96
    assert gallery_threshold(table, 5000) == 0.96 and gallery_threshold(table, 0) == 0.90
    assert gallery_threshold(table, 3) == pytest.approx(0.90 + 0.04 * np.log10(3))


def test_class_directions_are_the_normalised_class_means():
    emb = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    directions = class_directions(emb, [0, 0, 1], 2)
    np.testing.assert_allclose(directions[0], normalize(emb[0] + emb[1]), atol=1e-6)
    with pytest.raises(ValueError, match=r"classes \[2\]"):
        class_directions(emb, [0, 0, 1], 3)


@pytest.mark.slow
def test_an_export_with_the_rule_answers_unknown_in_the_graph_and_through_the_predictor(trained, tmp_path):
    import tensorflow as tf

    from facemtl.export import export_saved_model, read_metadata
    from facemtl.inference import Predictor
    from facemtl.recognition.open_set import DIRECTIONS_FILE

    meta = read_metadata(trained.export_dir)
    rng = np.random.default_rng(3)
    faces = rng.integers(0, 256, (6, 64, 64, 3)).astype(np.uint8)
    emb = trained.model(faces.astype("float32"), training=False)["embedding"].numpy()
    directions = np.stack([emb[0], emb[1], emb[2], -emb[0]])  # faces 0-2 are "their" people
    sims = normalize(emb) @ normalize(directions).T
    best = np.sort(sims.max(1))
    assert best[3] - best[2] > 1e-4
    threshold = float(best[2] + best[3]) / 2  # the three closest faces pass, the others do not
    path = export_saved_model(trained.model, meta["identities"], meta["expressions"], base_dir=str(tmp_path),
                              name="open", open_set={"directions": directions, "threshold": threshold, "note": "t"})
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(faces))
    expected = OpenSetRule(directions, meta["identities"], threshold).decide(emb)
    assert [s.decode() for s in out["identity"].numpy()] == [d["label"] for d in expected]
    assert sum(d["label"] == UNKNOWN for d in expected) == 3
    saved = read_metadata(path)["open_set"]
    assert saved == {"threshold": threshold, "note": "t"} and os.path.isfile(os.path.join(path, DIRECTIONS_FILE))
    answers = Predictor(path).predict(list(faces))
    assert [a["identity"]["label"] for a in answers] == [d["label"] for d in expected]
    assert [a["identity"]["closest"] for a in answers] == [d["closest"] for d in expected]
