"""The expression branch on cached trunk maps: views, the cache, training with resume, assembly and export."""

import os

import numpy as np
import pytest

from facemtl.config import FeatureCacheConfig
from facemtl.data import feature_cache as cached
from facemtl.models import dlib_resnet, presets
from facemtl.training import feature_cache as fc
from tests.helpers import once_per_run


def _faces(n, seed=0):
    """`n` 48x48 gray-as-RGB faces of two classes that differ in where a bright blob sits."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 48, 48, 3)).astype(np.uint8)
    labels = np.arange(n) % 2
    for i, y in enumerate(labels):
        images[i, 8:20, (4 if y else 28):(4 if y else 28) + 16] = 230
    return images, labels


def test_views_are_the_served_resize_mirrors_and_jitter():
    from facemtl.preprocessing import resize_face

    images, _ = _faces(3)
    framed = np.stack([resize_face(im, 64)[::-1] for im in images])  # any "framed" crops of the model's size
    plain = cached.view_images(images, framed, "plain")
    np.testing.assert_array_equal(plain[1], resize_face(images[1], 64))
    np.testing.assert_array_equal(cached.view_images(images, framed, "framed_mirror"), framed[:, :, ::-1])
    np.testing.assert_array_equal(cached.view_images(images, framed, "plain_mirror"), plain[:, :, ::-1])
    jitter = cached.view_images(images, framed, "framed_jitter", np.random.default_rng(0))
    assert jitter.shape == framed.shape and not np.array_equal(jitter, framed)


@pytest.fixture(scope="module")
def tiny_caches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    trunk = dlib_resnet.build_trunk((64, 64, 3), split_stage=2, weights=None)
    images, labels = _faces(48)
    from facemtl.preprocessing import resize_face

    framed = np.stack([resize_face(im, 64) for im in images])
    train = cached.build_trunk_cache(images[:40], framed[:40], labels[:40], trunk, str(tmp), "train",
                                 log=lambda *_: None)
    val = cached.build_trunk_cache(images[40:], framed[40:], labels[40:], trunk, str(tmp), "val", views=cached.EVAL_VIEWS,
                               log=lambda *_: None)
    return tmp, trunk, (images, framed, labels), train, val


def test_cache_holds_the_trunks_maps_per_view_and_is_reused(tiny_caches, monkeypatch):
    tmp, trunk, (images, framed, labels), train, _ = tiny_caches
    assert train.features.shape[:2] == (len(cached.TRAIN_VIEWS), 40) and train.features.dtype == np.float16
    expected = trunk(cached.view_images(images[:4], framed[:4], "plain_mirror").astype("float32")).numpy()
    np.testing.assert_allclose(train.features[1, :4], expected, rtol=1e-2, atol=1e-2)
    monkeypatch.setattr(cached, "view_images", lambda *a, **k: pytest.fail("the cache should have been reused"))
    again = cached.build_trunk_cache(images[:40], framed[:40], labels[:40], trunk, str(tmp), "train",
                                 log=lambda *_: None)
    np.testing.assert_array_equal(again.features, train.features)
    with pytest.raises(pytest.fail.Exception):  # other labels: another cache
        cached.build_trunk_cache(images[:40], framed[:40], 1 - labels[:40], trunk, str(tmp), "train",
                             log=lambda *_: None)


def test_batches_draw_one_view_per_face_and_augment_the_maps(tiny_caches):
    _, _, _, train, _ = tiny_caches
    cfg = FeatureCacheConfig(views=["plain"], map_shift=0)
    (x, y), = list(cached.batches(train, np.arange(8), 8, cfg, 2, np.random.default_rng(0)))
    assert x.shape == (8, *train.features.shape[2:]) and y.shape == (8, 2)
    # One batch of the 8 faces, in index order, each its one allowed view, unshifted, with its label.
    np.testing.assert_array_equal(x, train.features[0, :8].astype(np.float32))
    np.testing.assert_array_equal(y.argmax(1), train.labels[:8])
    cfg = FeatureCacheConfig(views=["plain"], map_shift=2, mixup=0.4)
    (x, y), = list(cached.batches(train, np.arange(8), 8, cfg, 2, np.random.default_rng(0)))
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    assert ((y > 0) & (y < 1)).any()  # mixed labels


def test_class_weights_balance_the_classes():
    w = cached.class_weight_vector(np.array([0, 0, 0, 1]), 1.0, 3)
    assert w[1] == pytest.approx(3 * w[0]) and np.mean(w[[0, 0, 0, 1]]) == pytest.approx(1.0)


@pytest.mark.slow
def test_fit_keeps_the_best_checkpoint_and_resumes(tiny_caches, tmp_path):
    import keras

    _, _, _, train, val = tiny_caches
    cfg = FeatureCacheConfig(map_shift=1)
    branch = dlib_resnet.build_expression_branch(train.features.shape[2:], units=(8,), num_classes=2, weights=None)
    logs = []
    history = fc.fit_branch(branch, train, val, cfg, epochs=2, batch_size=16,
                            optimizer=keras.optimizers.Adam(1e-3), run_dir=str(tmp_path), log=logs.append, verbose=0)
    assert len(history["val_expression_accuracy"]) == 2 and len(logs) == 2
    best = tmp_path / "checkpoints" / "best.weights.h5"
    assert best.is_file() and (tmp_path / "history.csv").is_file()
    before = best.stat().st_mtime_ns
    # The same call again has nothing left to do: the backup says both epochs are done.
    history = fc.fit_branch(branch, train, val, cfg, epochs=2, batch_size=16,
                            optimizer=keras.optimizers.Adam(1e-3), run_dir=str(tmp_path), log=logs.append, verbose=0)
    epochs_logged = [line for line in logs if line.startswith("epoch ")]
    assert len(history["loss"]) == 2 and len(epochs_logged) == 2 and best.stat().st_mtime_ns == before
    assert logs[-1] == "facemtl: 2 epoch(s) already done; continuing from the last backup"
    history = fc.fit_branch(branch, train, val, cfg, epochs=3, batch_size=16,
                            optimizer=keras.optimizers.Adam(1e-3), run_dir=str(tmp_path), log=logs.append, verbose=0)
    assert len([line for line in logs if line.startswith("epoch ")]) == 3  # only epoch 3 ran
    assert len(history["loss"]) == 3  # and the history kept epochs 1-2
    assert len(history["val_expression_accuracy"]) == 3


@pytest.mark.slow
def test_weight_average_of_the_last_epochs_is_scored_and_kept_only_if_better(tiny_caches, tmp_path):
    import keras

    _, _, _, train, val = tiny_caches
    cfg = FeatureCacheConfig(map_shift=0, average_last=2)
    branch = dlib_resnet.build_expression_branch(train.features.shape[2:], units=(8,), num_classes=2, weights=None)
    logs = []
    history = fc.fit_branch(branch, train, val, cfg, epochs=3, batch_size=16,
                            optimizer=keras.optimizers.Adam(1e-3), run_dir=str(tmp_path), log=logs.append, verbose=0)
    kept = sorted(p.name for p in (tmp_path / "average").iterdir())
    assert kept == ["epoch2.weights.h5", "epoch3.weights.h5"]
    assert history["average"]["epochs"] == ["2", "3"]
    # The average is the mean of the two kept epochs' weights, and it is what was scored.
    means = []
    for name in kept:
        branch.load_weights(str(tmp_path / "average" / name))
        means.append(branch.get_weights())
    record = __import__("json").loads((tmp_path / "checkpoints" / "best.json").read_text())
    single = max(history["val_expression_accuracy"])
    assert record["value"] == max(single, history["average"]["val_expression_accuracy"])
    if str(record["epoch"]).startswith("average"):
        branch.load_weights(str(tmp_path / "checkpoints" / "best.weights.h5"))
        for w, a, b in zip(branch.get_weights(), *means):
            np.testing.assert_allclose(w, (a + b) / 2, rtol=1e-5, atol=1e-6)


def test_spatial_pool_and_learnable_affine_change_what_the_branch_trains():
    shape = (17, 17, 64)
    plain = dlib_resnet.build_expression_branch(shape, units=(8,), weights=None)
    spatial = dlib_resnet.build_expression_branch(shape, units=(8,), weights=None, pool="spatial", learnable_affine=True)
    names = {w.path.split("/")[0] for w in spatial.trainable_weights}
    assert "expression_reduce" in names and "expression_pool" not in [l.name for l in spatial.layers]
    affine = [w for w in spatial.trainable_weights if "affine" in w.path]
    assert affine and not [w for w in plain.trainable_weights if "affine" in w.path]
    assert spatial.output_shape == plain.output_shape == (None, 7)
    with pytest.raises(ValueError, match="pool"):
        dlib_resnet.build_expression_branch(shape, units=(8,), weights=None, pool="max")


@pytest.fixture(scope="module")
def random_export(tmp_path_factory, worker_id):
    """A 112-px dlib multi-task model with random weights, exported once per test run for the tests that start
    from it.

    Not dlib's weights: what the assembled model takes from the export must come from the export.
    112 px is the smallest common size at which all five of dlib's stages keep a positive size.

    Returns:
        `(keras model, export path)`.
    """
    from facemtl.export.saved_model import export_saved_model
    from facemtl.labels import EXPRESSIONS
    from tests.helpers import dlib_multitask

    base = dlib_multitask(2, input_shape=(112, 112, 3), weights=None, expression_units=(8,))
    rng = np.random.default_rng(0)
    for v in base.variables:  # the same weights in every worker: the one export is of this model
        if "seed_generator" not in v.path:
            v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))

    def build(folder):
        return base, export_saved_model(base, ["ann", "bob"], EXPRESSIONS, base_dir=str(folder), name="base",
                                        extra_metadata={"crop": {"layout": "dlib"}})

    return once_per_run(tmp_path_factory, worker_id, "random_export", build,
                        lambda folder: (base, str(folder / "base" / "1")))


def _random_export_and_recipe(random_export, seed, *overrides):
    """The shared random export, the release recipe starting from it, and a random generator.

    Returns:
        `(keras model, export path, recipe, rng)`.
    """
    from facemtl.config import load_recipe

    base, path = random_export
    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "release_cpu.yaml"),
                         overrides=["model.height=112", "model.width=112", "model.expression_units=[8]",
                                    f"model.init_from={path}", *overrides])
    return base, path, recipe, np.random.default_rng(seed)


@pytest.mark.slow
def test_assembled_model_keeps_the_exports_identity_and_takes_the_trained_branch(random_export):
    import tensorflow as tf

    base, path, recipe, rng = _random_export_and_recipe(random_export, 0, "model.expression_branches=1",
                                                        "feature_cache.branches=[]")
    branch = dlib_resnet.build_expression_branch(dlib_resnet.build_trunk((112, 112, 3), weights=None).output_shape[1:], units=(8,),
                                        weights=None)
    model, meta = fc.assemble_model(recipe, branch, log=lambda *_: None)
    assert meta["identities"] == ["ann", "bob"]
    faces = rng.integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(faces))
    out = model(faces.astype("float32"), training=False)
    np.testing.assert_allclose(out["embedding"], served["embedding"], atol=1e-5)
    np.testing.assert_allclose(out["identity"], served["identity_probs"], atol=1e-5)
    trunk = model.get_layer("backbone")
    maps = trunk(np.concatenate([faces, faces[:, :, ::-1]]).astype("float32"))
    probs = branch(maps, training=False).numpy()
    np.testing.assert_allclose(out["expression"], (probs[:3] + probs[3:]) / 2, atol=1e-5)
    assert not np.allclose(out["expression"], served["expression_probs"], atol=1e-3)


@pytest.mark.slow
def test_assembled_ensemble_keeps_the_exports_branch_and_adds_the_trained_one(random_export):
    import tensorflow as tf

    base, path, recipe, rng = _random_export_and_recipe(random_export, 3)
    assert recipe.model.expression_branches == 2 and recipe.feature_cache.branches[0] == {"keep": True}
    maps_shape = dlib_resnet.build_trunk((112, 112, 3), weights=None).output_shape[1:]
    trained = dlib_resnet.build_expression_branch(maps_shape, units=(8,), weights=None)
    kept = dlib_resnet.build_expression_branch(maps_shape, units=(8,), weights=None)
    presets.copy_weights_by_name(base, kept)  # what the export's own branch computes
    model, _ = fc.assemble_model(recipe, [None, trained], log=lambda *_: None)
    faces = rng.integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(faces))
    out = model(faces.astype("float32"), training=False)
    np.testing.assert_allclose(out["embedding"], served["embedding"], atol=1e-5)
    maps = model.get_layer("backbone")(np.concatenate([faces, faces[:, :, ::-1]]).astype("float32"))
    probs = (kept(maps, training=False).numpy() + trained(maps, training=False).numpy()) / 2
    np.testing.assert_allclose(out["expression"], (probs[:3] + probs[3:]) / 2, atol=1e-5)
    # A branch the export lacks must be trained: keeping it is an error that names the weight.
    with pytest.raises(ValueError, match="expression2"):
        fc.assemble_model(recipe, [None, None], log=lambda *_: None)


@pytest.mark.slow
def test_facemtl_train_runs_a_feature_cache_recipe_end_to_end(tmp_path, random_export):
    """`facemtl train` on tiny FER2013 and UTKFace folders: frame, cache, train a branch and the age and gender
    heads, assemble, test, export."""
    import json

    from PIL import Image

    from facemtl.config import load_recipe
    from facemtl.export import read_metadata
    from facemtl.training.trainer import train

    images, labels = _faces(48, seed=1)
    for i, (im, y) in enumerate(zip(images, labels)):
        split, name = ("test", "PublicTest") if i >= 40 else ("train", "Training")
        folder = tmp_path / "fer" / split / ("happy" if y else "sad")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[:, :, 0]).save(folder / f"{name}_{i}.jpg", quality=95)
    utk = tmp_path / "utk"
    utk.mkdir()
    for i, im in enumerate(_faces(40, seed=3)[0]):  # UTKFace's names: age_gender_race_date.jpg.chip.jpg
        Image.fromarray(im).save(utk / f"{10 + i}_{i % 2}_{i % 5}_2017010{i:04d}.jpg.chip.jpg")
    Image.fromarray(images[0]).save(utk / "39_1_20170116174525125.jpg.chip.jpg")  # a field short
    _, init = random_export
    sources = (f"[{{format: fer2013_folders, path: '{tmp_path / 'fer'}', split: train, test_split: test, "
               f"val_fraction: 0.25}}, {{format: utkface, path: '{utk}', test_fraction: 0.3, val_fraction: 0.25}}]")
    overrides = ["model.height=112", "model.width=112", "model.expression_units=[8]", f"model.init_from={init}",
                 f"data.sources={sources}", f"data.cache_dir={tmp_path / 'cache'}", "train.batch_size=8",
                 f"output_dir={tmp_path / 'runs'}", f"export.base_dir={tmp_path / 'models'}", "train.epochs=2",
                 # branch 1 kept, branch 2 trained here (the recipe keeps both for release 4)
                 "feature_cache.branches=[{keep: true}, {label_smoothing: 0.0, map_shift: 0}]",
                 "feature_cache.attribute_epochs=2", "tasks.0.units=8", "tasks.1.units=8"]
    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "release_cpu.yaml"),
                         overrides=overrides)
    logs = []
    result = train(recipe, log=logs.append)
    assert any("framed by the fixed mapping" in line for line in logs)
    summary = json.loads((tmp_path / "runs" / "release_cpu" / os.path.basename(result.run_dir) /
                          "summary.json").read_text())
    assert set(summary["test"]["expression"]) == {"crop", "photo", "photo_found"}
    assert summary["framing"]["train"]["faces"] == 30 and summary["framing"]["val"]["faces"] == 10
    # The release recipe keeps the init export's branch 1 and trains branch 2 in its own folder.
    assert set(summary["validation"]) == {"branch1", "branch2", "ensemble", "attributes"}
    assert list(summary["best_epoch"]) == ["2"]
    assert (tmp_path / "runs" / "release_cpu" / os.path.basename(result.run_dir) / "branch2" / "history.csv").is_file()
    assert any("branch 1: kept from" in line for line in logs)
    meta = read_metadata(result.export_dir)
    assert meta["identities"] == ["ann", "bob"] and meta["mirror_expression"] is True
    assert meta["model_config"]["height"] == 112 and meta["init_from"]["name"] == "base"
    assert meta["model_config"]["expression_branches"] == 2
    # The age and gender heads: reported on UTKFace's test faces, in the export's contract.
    assert any("skipped 39_1_20170116174525125.jpg.chip.jpg" in line for line in logs)
    assert set(summary["attributes"]) == {"age", "gender"} and summary["attributes"]["age"]["count"] > 0
    assert meta["tasks"] == ["identity", "expression", "age", "gender"]
    assert [a["name"] for a in meta["attributes"]] == ["age", "gender"] and "non-commercial" in str(meta)
    # The export rebuilds into the same Keras model (no run folder needed).
    rebuilt, _ = presets.from_export(result.export_dir)
    faces = np.random.default_rng(2).integers(0, 256, (2, 112, 112, 3)).astype("float32")
    for key in ("expression", "embedding", "age", "gender"):
        np.testing.assert_allclose(rebuilt(faces)[key], result.model(faces)[key], atol=1e-5)


@pytest.mark.slow
def test_finetune_recipe_trains_your_own_classes_and_keeps_the_identity_half(tmp_path):
    """recipes/finetune_release.yaml on three made-up classes: the export answers in them, the embedding is kept."""
    import tensorflow as tf
    from PIL import Image

    from facemtl.config import load_recipe
    from facemtl.export import export_saved_model, read_metadata
    from facemtl.labels import EXPRESSIONS
    from facemtl.recognition.open_set import DIRECTIONS_FILE
    from facemtl.training.trainer import train
    from tests.helpers import dlib_multitask

    images, labels = _faces(45, seed=4)
    labels = np.arange(45) % 3
    names = ["calm", "confused", "pain"]
    for i, (im, y) in enumerate(zip(images, labels)):
        folder = tmp_path / "mine" / names[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(im, 10 * y, axis=0)).save(folder / f"{i}.png")
    rng = np.random.default_rng(5)
    # The init export (random weights: what the fine-tuned model keeps must come from it), with an open-set rule:
    # the fine-tuned export keeps the rule too (its identity half is the same).
    directions = rng.normal(size=(2, 128)).astype("float32")
    init = export_saved_model(dlib_multitask(2, input_shape=(112, 112, 3), weights=None, expression_units=(8,),
                                                   mirror_expression=True, expression_branches=2),
                              ["ann", "bob"], EXPRESSIONS, base_dir=str(tmp_path / "init2"), name="base",
                              extra_metadata={"crop": {"layout": "dlib"}},
                              open_set={"directions": directions / np.linalg.norm(directions, axis=1, keepdims=True),
                                        "threshold": 0.5})
    overrides = ["model.height=112", "model.width=112", "model.expression_units=[8]", f"model.init_from={init}",
                 f"data.sources.0.path={tmp_path / 'mine'}", "data.sources.0.val_fraction=0.2",
                 f"data.cache_dir={tmp_path / 'cache'}", "train.batch_size=8", f"output_dir={tmp_path / 'runs'}",
                 f"export.base_dir={tmp_path / 'models'}", "train.epochs=2", "export.tflite=null"]
    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "finetune_release.yaml"),
                         overrides=overrides)
    assert recipe.data.sources[0].path == str(tmp_path / "mine")
    logs = []
    result = train(recipe, log=logs.append)
    assert any("starts from" in line and "new: ['expression']" in line for line in logs)
    meta = read_metadata(result.export_dir)
    assert meta["expressions"] == names and meta["identities"] == ["ann", "bob"]
    assert meta["open_set"]["threshold"] == 0.5 and os.path.isfile(os.path.join(result.export_dir, DIRECTIONS_FILE))
    faces = rng.integers(0, 256, (3, 112, 112, 3)).astype(np.uint8)
    mine = tf.saved_model.load(result.export_dir).signatures["serving_default"](images=tf.constant(faces))
    theirs = tf.saved_model.load(init).signatures["serving_default"](images=tf.constant(faces))
    assert mine["expression_probs"].shape == (3, 3)
    cosine = (mine["embedding"].numpy() * theirs["embedding"].numpy()).sum(1)
    assert cosine.min() >= 0.999
    # The stages were started from the init export's branch 1, not from dlib's weights.
    rebuilt, _ = presets.from_export(result.export_dir)
    assert rebuilt.get_layer("expression_branch") is not None


@pytest.mark.slow
def test_a_fine_tuned_branch_keeps_the_class_layer_only_for_the_same_classes(random_export):
    import tensorflow as tf

    from facemtl.labels import EXPRESSIONS

    _, path, recipe, _ = _random_export_and_recipe(random_export, 6)
    exported = {v.name.split(":")[0]: v.numpy() for v in tf.saved_model.load(path)._all_variables}
    maps = dlib_resnet.build_trunk((112, 112, 3), weights=None).output_shape[1:]

    def started(names):
        branch = dlib_resnet.build_expression_branch(maps, units=(8,), weights=None, num_classes=len(names))
        copied = fc.start_from_init(branch, recipe, names, log=lambda *_: None)
        return branch.get_layer("expression").kernel.numpy(), copied

    kernel, copied = started(list(EXPRESSIONS))
    np.testing.assert_array_equal(kernel, exported["expression/kernel"])
    kernel, copied = started(list(reversed(EXPRESSIONS)))  # the same classes, another label order
    np.testing.assert_array_equal(kernel, exported["expression/kernel"][:, ::-1])
    kernel, copied = started(["a", "b", "c", "d", "e", "f", "g"])  # as many classes, other ones: a new layer
    assert "expression" not in copied and not np.allclose(kernel, exported["expression/kernel"])
    assert "expression_dense1" in copied
