"""Streaming sources from disk (`data.streaming`): same faces as the in-memory path, bad files counted."""

import logging

import numpy as np
import pytest

from facemtl.config import load_recipe
from facemtl.data.catalog import load_mixed
from facemtl.data.pipeline import load_splits, make_dataset, split_size
from facemtl.data.streaming import StreamedSource, StreamedSplit
from tests.helpers import QUICKSTART, catalog_overrides


@pytest.fixture
def corrupt(datasets):
    """The LFW fixture gains one truncated JPEG."""
    bad = datasets / "lfw" / "train" / "person0" / "zz_truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return bad


def _recipe(tmp_path, datasets, streaming):
    return load_recipe(QUICKSTART, smoke=True,
                       overrides=catalog_overrides(tmp_path, datasets) + [f"data.streaming={str(streaming).lower()}"])


def _collect(ds):
    xs, ids, exprs = [], [], []
    for x, y in ds:
        xs.append(x.numpy())
        ids.append(y["identity"].numpy())
        exprs.append(y["expression"].numpy())
    return np.stack(xs), np.array(ids), np.array(exprs)


def test_streamed_faces_equal_the_in_memory_ones(tmp_path, datasets):
    memory = load_mixed(_recipe(tmp_path, datasets, False), log=lambda *_: None)
    streamed = load_mixed(_recipe(tmp_path, datasets, True), log=lambda *_: None)
    assert streamed.identity_names == memory.identity_names
    # FER2013's CSV holds pixels (always in memory); the folder sources stream.
    assert not isinstance(streamed.parts[0], StreamedSource)
    assert all(isinstance(p, StreamedSource) for p in streamed.parts[1:])
    for mem, stream in zip(memory.parts[1:], streamed.parts[1:]):
        images, ids, exprs = _collect(stream.dataset())
        np.testing.assert_array_equal(images, mem[0])
        np.testing.assert_array_equal(ids, mem[1])
        np.testing.assert_array_equal(exprs, mem[2])
    assert isinstance(streamed.test, StreamedSplit) and len(streamed.test) == len(memory.test[0])
    images, ids, exprs = _collect(streamed.test.dataset())
    assert len(images) == len(memory.test[0])
    # Same samples (the order interleaves sources).
    key = lambda imgs, i, e: sorted(zip(i.tolist(), e.tolist(), [im.tobytes() for im in imgs]))  # noqa: E731
    assert key(images, ids, exprs) == key(memory.test[0], memory.test[1]["identity"], memory.test[1]["expression"])


def test_unreadable_files_are_skipped_and_counted(tmp_path, datasets, corrupt, caplog):
    recipe = _recipe(tmp_path, datasets, True)
    splits = load_splits(recipe, log=lambda *_: None)
    it = iter(splits.train_stream(8, 0, recipe.data.augment))
    for _ in range(12):  # enough draws to meet every LFW training file
        x, y = next(it)
        assert x.shape[0] == 8 and y["identity"].shape == (8,)
    assert splits.skips.paths == [str(corrupt)]
    with caplog.at_level(logging.WARNING, logger="facemtl.data"):
        assert splits.skips.report() == [str(corrupt)]
        assert splits.skips.report() == []  # each file reported once
    assert "skipped 1 unreadable image(s)" in caplog.text and "zz_truncated.jpg" in caplog.text
    # The file stays listed (labels, counts); only the stream leaves it out.
    assert str(corrupt) in [p for part in splits.train.parts if isinstance(part, StreamedSource)
                            for p in part.source.paths]
    assert split_size(splits.train) == len(splits.train.labels["identity"])


def test_streamed_evaluation_batches(tmp_path, datasets):
    recipe = _recipe(tmp_path, datasets, True)
    splits = load_splits(recipe, log=lambda *_: None)
    x, y = next(iter(make_dataset(splits.val, recipe.model, 4, training=False)))
    assert x.shape == (4, recipe.model.height, recipe.model.width, 3) and x.dtype.name == "float32"
    with pytest.raises(ValueError, match="evaluation"):
        make_dataset(splits.val, recipe.model, 4, training=True)


@pytest.mark.slow
def test_training_streams_from_disk(tmp_path, datasets, corrupt):
    from facemtl.training.trainer import train

    logs = []
    recipe = _recipe(tmp_path, datasets, True)
    result = train(recipe, log=logs.append)
    assert set(result.test_report) == {"identity", "expression"}
    assert any("streamed from disk" in line for line in logs)
    assert any("1 unreadable file(s) skipped while streaming" in line for line in logs)
