import numpy as np
import pytest

from facemtl.config import ModelConfig
from facemtl.data.materialize import Materialized
from facemtl.data.mixing import expression_class_weights, merge_identity_spaces, mix
from facemtl.preprocessing import random_grayscale


def _parts():
    rng = np.random.default_rng(0)
    fer = Materialized(rng.integers(0, 255, (70, 32, 32, 3), dtype=np.uint8), np.full(70, -1),
                       np.repeat(np.arange(7), 10), [], [])
    lfw = Materialized(rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(4), 5),
                       np.full(20, -1), ["ann", "bob", "cy", "di"], [])
    orl = Materialized(rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(3), 3),
                       np.full(9, -1), ["s1", "s2", "s3"], [])
    return [("fer2013", fer), ("lfw", lfw), ("orl", orl)]


def test_identity_spaces_never_collide():
    parts = _parts()
    ids, names, offsets = merge_identity_spaces(parts)
    assert offsets == [0, 0, 4]
    assert names == ["lfw/ann", "lfw/bob", "lfw/cy", "lfw/di", "orl/s1", "orl/s2", "orl/s3"]
    assert (ids[0] == -1).all()
    assert sorted(set(ids[1].tolist())) == [0, 1, 2, 3] and sorted(set(ids[2].tolist())) == [4, 5, 6]


def test_every_batch_carries_both_tasks_in_the_set_ratio():
    parts = _parts()
    ids, _, _ = merge_identity_spaces(parts)
    arrays = [(m.images, i, m.expression) for (_, m), i in zip(parts, ids)]
    config = ModelConfig(height=32, width=32, channels=3)
    ds = mix(arrays, [0.5, 0.3, 0.2], 32, config, grayscale_probability=0.5, seed=1)
    n_expr = 0
    for x, y in ds.take(20):
        assert x.shape == (32, 32, 32, 3)
        has_expr = np.asarray(y["expression"]) != -1
        has_id = np.asarray(y["identity"]) != -1
        assert has_expr.any() and has_id.any()
        assert not (has_expr & has_id).any()
        n_expr += has_expr.sum()
    assert 0.4 < n_expr / (20 * 32) < 0.6


def test_balanced_expression_sampling():
    parts = _parts()
    images = parts[0][1].images
    skewed = np.r_[np.zeros(64, int), np.arange(1, 7)]  # class 0 dominates
    ds = mix([(images, np.full(70, -1), skewed)], [1.0], 64, ModelConfig(height=32, width=32),
             balance_expressions=True, seed=0)
    labels = np.concatenate([np.asarray(y["expression"]) for _, y in ds.take(20)])
    freq = np.bincount(labels, minlength=7) / len(labels)
    assert freq.max() < 0.25  # about 1/7 each instead of 64/70 for class 0


def test_class_weights_and_grayscale():
    w = expression_class_weights(np.r_[np.zeros(90, int), np.ones(10, int), [-1, -1]])
    assert w[0] == pytest.approx(100 / (7 * 90)) and w[1] == pytest.approx(100 / (7 * 10)) and w[2] == 1.0
    x = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3)).astype("float32")
    out = np.asarray(random_grayscale(x, 1.0))
    assert np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 1], out[..., 2])
    assert np.array_equal(np.asarray(random_grayscale(x, 0.0)), x)


def test_bad_weights():
    parts = _parts()
    arrays = [(m.images, m.identity, m.expression) for _, m in parts]
    with pytest.raises(ValueError, match="one weight per part"):
        mix(arrays, [1.0], 8, ModelConfig(height=32, width=32))
    with pytest.raises(ValueError, match=">= 0"):
        mix(arrays, [1.0, -1.0, 0.0], 8, ModelConfig(height=32, width=32))
