"""Verification and identification metrics on hand-made scores and embeddings."""

import numpy as np
import pytest

from facemtl.errors import FacemtlError
from facemtl.recognition.metrics import (
    all_pairs,
    model_threshold,
    rank1_identification,
    roc_curve,
    threshold_at_far,
    verification_report,
)


def test_roc_steps_through_tied_scores_once():
    far, tar, thr = roc_curve([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    np.testing.assert_allclose(far, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 0.5, 1, 1])
    assert thr[0] == np.inf and list(thr[1:]) == [0.9, 0.5, 0.1]


def test_threshold_at_far_keeps_far_at_or_below_target():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.6, 0.1, 500), rng.normal(0.1, 0.1, 5000)]
    same = np.r_[np.ones(500, bool), np.zeros(5000, bool)]
    for target in (1e-1, 1e-2, 1e-3):
        threshold, far, tar = threshold_at_far(scores, same, target)
        assert far <= target
        assert np.mean(scores[~same] >= threshold) == pytest.approx(far)
        assert np.mean(scores[same] >= threshold) == pytest.approx(tar)
        # The next lower threshold would exceed the target: the threshold is the lowest allowed.
        lower = np.max(scores[scores < threshold])
        assert np.mean(scores[~same] >= lower) > target or np.mean(scores[same] >= lower) == tar


def test_threshold_needs_both_kinds_of_pairs():
    with pytest.raises(ValueError, match="genuine and impostor"):
        threshold_at_far([0.1, 0.2], [True, True], 0.01)


def _clusters(people=6, per=5, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    labels = np.repeat(np.arange(people), per)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_separable_embeddings_score_perfectly():
    emb, labels = _clusters()
    report = verification_report(emb, labels)
    n = len(labels)
    assert report["pairs"] == n * (n - 1) // 2 and report["genuine_pairs"] == 6 * 10
    assert report["auc"] == pytest.approx(1.0)
    assert report["at_far"]["0.001"]["tar"] == pytest.approx(1.0)
    assert rank1_identification(emb, labels)[0] == pytest.approx(1.0)


def test_random_embeddings_score_at_chance():
    rng = np.random.default_rng(1)
    emb, labels = rng.normal(size=(300, 32)), np.repeat(np.arange(30), 10)
    assert verification_report(emb, labels)["auc"] == pytest.approx(0.5, abs=0.05)
    mean, _, probes = rank1_identification(emb, labels)
    assert probes == 270 and mean < 0.15


def test_all_pairs_flags_same_person():
    scores, same = all_pairs(np.eye(3), [0, 0, 1])
    assert list(same) == [True, False, False] and list(scores) == [0, 0, 0]


def test_threshold_comes_from_calibration_or_is_asked_for():
    meta = {"name": "m", "version": 1}
    with pytest.raises(FacemtlError, match="facemtl calibrate"):
        model_threshold(meta)
    assert model_threshold(meta, 0.3) == (0.3, "--threshold")
    meta["verification"] = {"threshold": 0.42, "target_far": 1e-3, "pairs": 100, "data": "faces/"}
    threshold, origin = model_threshold(meta)
    assert threshold == 0.42 and "FAR 0.001" in origin


def test_many_faces_are_scored_on_a_bounded_sample_of_pairs():
    from facemtl.recognition.metrics import all_pairs, threshold_at_far

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 60, 900)
    emb = rng.normal(size=(60, 32))[labels] + rng.normal(size=(900, 32)) * 0.9
    exact_scores, exact_same = all_pairs(emb, labels)
    assert len(exact_scores) == 900 * 899 // 2
    scores, same = all_pairs(emb, labels, max_pairs=60_000)
    assert len(scores) == 60_000
    assert same.sum() == exact_same.sum()  # every genuine pair fits in half the budget: all are kept
    for far in (1e-1, 1e-2):
        exact, _, exact_tar = threshold_at_far(exact_scores, exact_same, far)
        sampled, _, sampled_tar = threshold_at_far(scores, same, far)
        assert abs(sampled - exact) < 0.02 and abs(sampled_tar - exact_tar) < 0.02
    scores, same = all_pairs(emb, labels, max_pairs=4_000)  # genuine pairs over half the budget: sampled too
    assert len(scores) == 4_000 and same.sum() == 2_000
