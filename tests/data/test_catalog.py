"""Mixed real-format data from recipe to training, on small fixtures."""

import os

import numpy as np
import pytest

from facemtl.config import load_recipe
from facemtl.data.catalog import holdout, load_mixed
from facemtl.data.sources import FaceSource
from facemtl.errors import FacemtlError
from tests.helpers import QUICKSTART, catalog_overrides, tiny_overrides


def test_load_mixed_splits_and_label_spaces(tmp_path, datasets):
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=catalog_overrides(tmp_path, datasets))
    parts, weights, val, test, names, class_weights, _ = load_mixed(recipe, log=lambda *_: None)
    assert weights == [0.5, 0.3, 0.2]
    assert names == [f"lfw/person{i}" for i in range(3)] + [f"orl/person{i}" for i in range(3)]
    assert (parts[0][1] == -1).all() and (parts[0][2] >= 0).all()
    assert sorted(set(parts[2][1].tolist())) == [3, 4, 5]
    test_ids = test[1]["identity"]
    assert set(test_ids[test_ids >= 0].tolist()) <= set(range(6))
    assert (test[1]["expression"] >= 0).sum() == 28  # FER2013 PublicTest rows
    assert len(class_weights) == 7


@pytest.mark.slow
def test_training_on_mixed_sources(tmp_path, datasets):
    from facemtl.training.trainer import train

    recipe = load_recipe(QUICKSTART, smoke=True, overrides=catalog_overrides(tmp_path, datasets) + ["train.epochs=2"])
    result = train(recipe, log=lambda *_: None)
    assert len(result.history["loss"]) == 2 and np.isfinite(result.history["loss"]).all()
    assert set(result.test_report) == {"identity", "expression"}
    assert result.test_report["expression"]["count"] == 28


def test_holdout_is_stratified_and_disjoint():
    src = FaceSource(name="x", pixels=np.zeros((100, 4, 4), np.uint8), identity=np.repeat(np.arange(10), 10),
                     expression=np.full(100, -1))
    rest, val, test = holdout(src, [0.1, 0.2], seed=0)
    assert len(rest) + len(val) + len(test) == 100
    assert not set(rest) & set(val) and not set(val) & set(test)
    assert np.bincount(src.identity[val]).tolist() == [1] * 10


def test_mixed_without_sources_is_an_error(tmp_path):
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=["data.source=mixed"])
    with pytest.raises(FacemtlError, match="data.sources is empty"):
        load_mixed(recipe)


def test_a_missing_test_split_is_an_error_not_the_training_photos(tmp_path, datasets):
    import shutil

    from facemtl.config import SourceConfig
    from facemtl.data.catalog import read_source

    flat = tmp_path / "flat"  # one folder per person, no split folders
    shutil.copytree(datasets / "lfw" / "train", flat)
    cfg = SourceConfig(format="identity_folders", path=str(flat), test_split="test")
    assert len(read_source(cfg, cache_dir=None).paths) > 0  # the training split: the whole tree
    with pytest.raises(FacemtlError, match="no such split folder"):
        read_source(cfg, split="test", cache_dir=None)
    split_cfg = SourceConfig(format="identity_folders", path=str(datasets / "lfw"), split="val")
    with pytest.raises(FacemtlError, match="val: no such split folder"):
        read_source(split_cfg, cache_dir=None)  # has train/ and test/: never silently the whole tree


def test_celeba_test_split_reads_only_its_partition(tmp_path):
    from PIL import Image

    from facemtl.config import SourceConfig
    from facemtl.data.catalog import read_source

    root = tmp_path / "celeba"
    (root / "img_celeba").mkdir(parents=True)
    names = [f"{k:06d}.jpg" for k in range(1, 13)]
    for name in names:
        Image.new("RGB", (20, 20)).save(root / "img_celeba" / name)
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {k % 3}\n" for k, n in enumerate(names)))
    cfg = SourceConfig(format="celeba", path=str(root), test_split="test")
    with pytest.raises(FacemtlError, match="list_eval_partition.txt: not found"):
        read_source(cfg, split="test", cache_dir=None)
    assert len(read_source(cfg, cache_dir=None).paths) == 12  # no partition file: training reads every photo
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {0 if k < 8 else 2}\n" for k, n in enumerate(names)))
    test = read_source(cfg, split="test", cache_dir=None)
    train = read_source(cfg, cache_dir=None)
    assert sorted(map(str, test.paths)) == [str(root / "img_celeba" / n) for n in names[8:]]
    assert len(train.paths) == 8 and not set(map(str, train.paths)) & set(map(str, test.paths))


@pytest.mark.slow
def test_training_and_face_analyzer_give_the_model_byte_identical_crops(tmp_path, trained):
    """One crop path: a photo read by training's `align: true` reader equals FaceAnalyzer's crop of it."""
    from PIL import Image
    from skimage import data

    from facemtl.config import SourceConfig
    from facemtl.data.catalog import read_source
    from facemtl.data.materialize import materialize
    from facemtl.inference import FaceAnalyzer
    from facemtl.preprocessing import prepare_images

    astronaut = data.astronaut()
    photos = {"ann/a.jpg": astronaut, "ann/b.png": astronaut[:, ::-1], "bob/c.jpg": astronaut[30:470, 40:]}
    for rel, photo in photos.items():
        (tmp_path / "people" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photo)).save(tmp_path / "people" / rel, quality=90)
    cfg = SourceConfig(format="identity_folders", path=str(tmp_path / "people"), align=True)
    source = read_source(cfg, cache_dir=str(tmp_path / "cache"), log=lambda *_: None, size=64)
    training = materialize(source, 64, cache_dir=None)
    analyzer = FaceAnalyzer(trained.export_dir)  # 64x64 arcface crops, BlazeFace: the serving defaults
    assert analyzer.crop_size == (64, 64) and len(training.images) == 3
    for path, crop in zip(source.paths, training.images):  # the cached crop of people/<rel> is <cache>/.../<rel>.png
        original = next(p for p in photos if path.endswith(os.path.splitext(p)[0] + ".png"))
        _, served = analyzer.detect_and_align(analyzer.load(str(tmp_path / "people" / original)))
        assert len(served) == 1
        np.testing.assert_array_equal(crop, served[0])
        np.testing.assert_array_equal(prepare_images(crop, 64, 64, 3), prepare_images(served[0], 64, 64, 3))
    # The same source in a recipe (`data.sources` with `align: true`): its crops are these very ones.
    sources = f"[{{format: identity_folders, path: '{tmp_path / 'people'}', align: true, val_fraction: 0.34}}]"
    recipe = load_recipe(QUICKSTART, smoke=True, overrides=tiny_overrides(tmp_path) + [
        "data.source=mixed", f"data.sources={sources}", f"data.cache_dir={tmp_path / 'cache'}",
        "export.enabled=false"])
    parts, _, val, _, _, _, _ = load_mixed(recipe, log=lambda *_: None)
    from_recipe = np.concatenate([parts[0][0], val[0]])
    assert len(from_recipe) == 3
    assert sorted(c.tobytes() for c in from_recipe) == sorted(c.tobytes() for c in training.images)


def test_pre_cropped_faces_are_resized_as_the_serving_graph_resizes(tmp_path):
    """A FER-sized crop decoded for training equals, value for value, the SavedModel's resize of it."""
    import tensorflow as tf

    from facemtl.data.materialize import load_face
    from facemtl.preprocessing import prepare_images

    crop = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    graph = tf.function(lambda x: prepare_images(x, 64, 64, 3),
                        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    served = graph(crop[None]).numpy()[0]
    trained = load_face(crop, None, 64)
    assert trained.dtype == np.uint8
    np.testing.assert_array_equal(trained.astype(np.float32), served)
