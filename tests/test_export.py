"""The SavedModel contract, checked on a real export loaded in a fresh process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from facemtl.errors import ModelFormatError
from facemtl.export import export_saved_model, make_serving_fns, read_metadata
from facemtl.labels import EXPRESSIONS

pytestmark = pytest.mark.slow

# One fresh process loads the export and answers every signature's inputs (loading TensorFlow and the SavedModel
# once for the three tests that read its answers): argv is the export, then `signature=inputs=output` triples,
# inputs an .npy file of images or a comma-separated list of encoded files.
_FRESH_PROCESS = r"""
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
for job in sys.argv[2:]:
    signature, inputs, output = job.split("=")
    if inputs.endswith(".npy"):
        images = tf.constant(np.load(inputs))
    else:
        images = tf.constant([open(p, "rb").read() for p in inputs.split(",")])
    out = loaded.signatures[signature](images=images)
    np.savez(output, **{k: v.numpy() for k, v in out.items()})
"""


@pytest.fixture(scope="module")
def fresh_answers(trained, tmp_path_factory):
    """The export's answers from a fresh process: `{signature: (inputs, answers)}` for the three signatures."""
    from PIL import Image
    from skimage import data

    tmp = tmp_path_factory.mktemp("fresh")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 90, 70, 3), dtype=np.uint8)  # not the model's size: resized inside
    np.save(tmp / "images.npy", images)
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)]
    crop_paths = []
    for i, crop in enumerate(crops):  # PNG is lossless, so the decoded pixels are the crops themselves
        crop_paths.append(str(tmp / f"crop{i}.png"))
        Image.fromarray(crop).save(crop_paths[-1])
    crop_paths.append(str(tmp / "gray.png"))
    Image.fromarray(crops[0][..., 0]).save(crop_paths[-1])
    astronaut = data.astronaut()
    group = np.zeros((300, 700, 3), np.uint8)
    face = np.asarray(Image.fromarray(astronaut[:256, 100:356]).resize((200, 200)))
    group[50:250, 20:220], group[50:250, 480:680] = face, face
    photo_paths = []
    for name, photo in (("astronaut.png", astronaut), ("group.png", group), ("coffee.png", data.coffee())):
        photo_paths.append(str(tmp / name))
        Image.fromarray(photo).save(photo_paths[-1])
    inputs = {"serving_default": (images, str(tmp / "images.npy")), "serving_bytes": (crops, ",".join(crop_paths)),
              "analyze_photo": (photo_paths, ",".join(photo_paths))}
    jobs = [f"{signature}={arg}={tmp / signature}.npz" for signature, (_, arg) in inputs.items()]
    subprocess.run([sys.executable, "-c", _FRESH_PROCESS, trained.export_dir, *jobs], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    # String outputs are object arrays (allow_pickle): our own files.
    return {signature: (given, np.load(tmp / f"{signature}.npz", allow_pickle=True))
            for signature, (given, _) in inputs.items()}


def test_layout_and_metadata(trained):
    path = trained.export_dir
    assert os.path.basename(path) == "1" and os.path.basename(os.path.dirname(path)) == "quickstart"
    meta = read_metadata(path)
    assert meta["expressions"] == list(EXPRESSIONS)
    assert meta["identities"] == [f"person_{i:03d}" for i in range(4)]
    assert meta["input"] == {"height": 64, "width": 64, "channels": 3}
    assert meta["embedding_dim"] == 16
    assert meta["signatures"] == ["analyze_photo", "serving_bytes", "serving_default"]
    assert meta["analyze_photo"] == {"detector": "blazeface", "max_faces": 16, "max_side": 2048,
                                     "crop": {"layout": "arcface"}}


def test_each_weight_is_stored_once(trained):
    folder = os.path.join(trained.export_dir, "variables")
    stored = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    weights = sum(int(np.prod(w.shape)) * 4 for w in trained.model.weights)
    assert weights <= stored < 1.3 * weights


def test_a_function_using_an_untracked_lookup_table_is_refused_not_exported_without_it(tmp_path):
    # write_archive never tracks the model (each weight once, no walk of its layers): a network that
    # held a lookup table would then fail loudly here rather than export without its table.
    from facemtl.export.saved_model import write_archive

    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(["happy", "sad"], [3, 4]), -1)
    with pytest.raises(AssertionError, match="untracked"):
        write_archive(str(tmp_path / "export"),
                      [("serving_default", table.lookup, [tf.TensorSpec([None], tf.string)])])


def test_fresh_process_matches_in_memory_model(trained, fresh_answers):
    images, served = fresh_answers["serving_default"]
    meta = read_metadata(trained.export_dir)
    expected = make_serving_fns(trained.model, meta["identities"], meta["expressions"])["serving_default"](
        tf.constant(images))
    for key in ("expression_probs", "identity_probs", "embedding"):
        np.testing.assert_allclose(served[key], expected[key].numpy(), atol=1e-5)
    assert served["expression_probs"].shape == (5, 7) and served["expression_probs"].dtype == np.float32
    assert served["identity_probs"].shape == (5, 4)
    assert served["embedding"].shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1, atol=1e-5)
    assert [s.decode() for s in served["expression"]] == [EXPRESSIONS[i] for i in served["expression_probs"].argmax(1)]
    assert [s.decode() for s in served["identity"]] == [meta["identities"][i] for i in served["identity_probs"].argmax(1)]


def test_an_empty_batch_answers_with_no_rows(trained):
    # oneDNN's convolution (on by default on AVX-512 VNNI/BF16/AMX CPUs) fails on an empty batch: the export guards it.
    served = tf.saved_model.load(trained.export_dir).signatures["serving_default"](images=tf.zeros((0, 64, 64, 3),
                                                                                                   tf.uint8))
    assert served["expression_probs"].shape == (0, 7) and served["embedding"].shape == (0, 16)
    assert served["identity"].shape == (0,) and served["identity"].dtype == tf.string


def test_bytes_signature_decodes_in_the_graph(trained, fresh_answers):
    """serving_bytes on encoded crops answers as serving_default on the decoded pixels."""
    crops, served = fresh_answers["serving_bytes"]
    meta = read_metadata(trained.export_dir)
    serve = make_serving_fns(trained.model, meta["identities"], meta["expressions"])["serving_default"]
    expected = [serve(tf.constant(c[None])) for c in (*crops, np.repeat(crops[0][..., :1], 3, axis=-1))]
    assert served["expression_probs"].shape == (3, 7) and served["embedding"].shape == (3, 16)
    for i, exp in enumerate(expected):
        for key in ("expression_probs", "identity_probs", "embedding"):
            np.testing.assert_allclose(served[key][i], exp[key].numpy()[0], atol=1e-5)
        assert served["expression"][i] == exp["expression"].numpy()[0]


def test_saved_model_cli_lists_the_signature(trained):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", trained.export_dir, "--all"], capture_output=True, text=True,
                         check=True).stdout
    for signature in ("serving_default", "serving_bytes", "analyze_photo"):
        assert f"signature_def['{signature}']" in out
    for name in ("images", "expression_probs", "expression", "identity_probs", "identity", "embedding"):
        assert f"['{name}']" in out
    assert "dtype: DT_UINT8" in out and "dtype: DT_STRING" in out


def test_analyze_photo_finds_and_answers_faces_in_the_graph(trained, fresh_answers):
    """Whole photos in, in a fresh process: the faces, boxes and answers FaceAnalyzer gives with BlazeFace."""
    from skimage import data

    from facemtl.inference import FaceAnalyzer

    paths, served = fresh_answers["analyze_photo"]
    assert served["count"].tolist() == [1, 2, 0]
    assert served["boxes"].shape == (3, 16, 4) and served["embedding"].shape == (3, 16, 16)
    assert served["image_size"].tolist() == [[512, 512], [300, 700], list(data.coffee().shape[:2])]
    expected = FaceAnalyzer(trained.export_dir).analyze(paths)
    for i, photo in enumerate(expected):
        assert len(photo["faces"]) == served["count"][i]
        for j, face in enumerate(photo["faces"]):
            np.testing.assert_allclose(served["boxes"][i, j], face["box"], atol=2.0)
            probs = [face["expression"]["probabilities"][name] for name in EXPRESSIONS]
            np.testing.assert_allclose(served["expression_probs"][i, j], probs, atol=0.02)
            assert float(np.dot(served["embedding"][i, j], face["embedding"])) > 0.99
    assert not served["embedding"][0, 1:].any() and served["identity"][2, 0] == b""


def test_versions_increment_and_never_overwrite(trained, tmp_path):
    names = [f"p{i}" for i in range(4)]
    first = export_saved_model(trained.model, names, EXPRESSIONS, base_dir=str(tmp_path), name="m")
    second = export_saved_model(trained.model, names, EXPRESSIONS, base_dir=str(tmp_path), name="m")
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    with pytest.raises(FileExistsError):
        export_saved_model(trained.model, names, EXPRESSIONS, base_dir=str(tmp_path), name="m", version=1)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="identity_names"):
        export_saved_model(trained.model, names[:2], EXPRESSIONS, base_dir=str(tmp_path), name="m")


def test_read_metadata_errors(tmp_path, trained):
    with pytest.raises(ModelFormatError, match="no such model"):
        read_metadata(str(tmp_path / "missing"))
    with pytest.raises(ModelFormatError, match="did you mean"):
        read_metadata(os.path.dirname(trained.export_dir))


def test_predict_answers_from_a_single_task_export(tmp_path):
    """An expression-only export (as the benchmarks' baselines make): Predictor and the CLI answer its one task."""
    from facemtl.inference import Predictor
    from facemtl.models.multitask import build_multitask_model
    from tests.helpers import TINY_MODEL, run_cli_here

    model = build_multitask_model(3, input_shape=(64, 64, 3), tasks=("expression",), **TINY_MODEL)
    path = export_saved_model(model, [], EXPRESSIONS, base_dir=str(tmp_path), name="expr")
    face = np.random.default_rng(0).integers(0, 256, (80, 70, 3), dtype=np.uint8)
    answer = Predictor(path).predict([face])[0]
    assert set(answer) == {"expression"} and answer["expression"]["label"] in EXPRESSIONS
    from PIL import Image

    Image.fromarray(face).save(tmp_path / "face.png")
    r = run_cli_here("predict", "--model", path, tmp_path / "face.png")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"path", "expression"}


def test_predictors_of_one_export_share_its_load_and_an_export_written_again_is_loaded_again(tmp_path):
    import shutil

    from facemtl.inference import Predictor
    from facemtl.models.multitask import build_multitask_model
    from tests.helpers import TINY_MODEL

    def export(name, seed):
        tf.keras.utils.set_random_seed(seed)
        model = build_multitask_model(3, input_shape=(64, 64, 3), tasks=("expression",), **TINY_MODEL)
        return export_saved_model(model, [], EXPRESSIONS, base_dir=str(tmp_path), name=name)

    path, other = export("expr", 0), export("other", 1)
    faces = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    first, second = Predictor(path, backend="savedmodel"), Predictor(path, backend="savedmodel")
    assert first.saved_model is second.saved_model
    before = first.forward(faces)["expression_probs"]
    shutil.rmtree(path)
    shutil.copytree(other, path)  # another network's export in the same folder (the same graph's size)
    again = Predictor(path, backend="savedmodel")
    assert again.saved_model is not first.saved_model
    after = again.forward(faces)["expression_probs"]
    np.testing.assert_array_equal(after, Predictor(other, backend="savedmodel").forward(faces)["expression_probs"])
    assert np.abs(after - before).max() > 1e-4


def test_analyze_photo_is_built_from_the_preprocessor(trained):
    from facemtl.preprocessing import Preprocessor

    meta = read_metadata(trained.export_dir)
    assert Preprocessor.from_metadata(meta) == Preprocessor(64, 64, "arcface")  # what the export graph ran with
    assert meta["crop"]["layout"] == meta["preprocessor"]["layout"]
    with pytest.raises(ValueError, match="BlazeFace inside the graph"):
        make_serving_fns(trained.model, meta["identities"], meta["expressions"],
                         preprocessor=Preprocessor(64, 64, detector="mtcnn"))
    with pytest.raises(ValueError, match="size differs"):
        make_serving_fns(trained.model, meta["identities"], meta["expressions"], preprocessor=Preprocessor(96, 96))


def test_attribute_heads_are_outputs_of_every_signature(tmp_path):
    """Age and gender (release 4's contract): numbers and labelled probabilities, also per face of a photo."""
    import keras

    from facemtl.config import ModelConfig, TaskConfig
    from facemtl.inference import Predictor
    from facemtl.models.multitask import build_multitask
    from facemtl.models.presets import build_from_metadata
    from facemtl.preprocessing import Preprocessor

    config = ModelConfig(stage_blocks=[1, 1], base_filters=16, identity_units=[32], expression_units=[32],
                         embedding_dim=16)
    tasks = [TaskConfig("age", "distribution", max_value=9, units=8),
             TaskConfig("gender", "classification", classes=["female", "male"], units=8)]
    keras.utils.set_random_seed(0)
    model = build_multitask(config, 2, attributes=tasks)
    import dataclasses

    path = export_saved_model(model, ["ann", "bob"], EXPRESSIONS, base_dir=str(tmp_path), name="attrs",
                              preprocessor=Preprocessor(64, 64), attributes=tasks,
                              extra_metadata={"model_config": dataclasses.asdict(config)})
    meta = read_metadata(path)
    assert meta["tasks"] == ["identity", "expression", "age", "gender"]
    assert [a["name"] for a in meta["attributes"]] == ["age", "gender"]
    assert sorted(build_from_metadata(meta, path).output_names) == ["age", "embedding", "expression", "gender",
                                                                     "identity"]
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    expected = model(images.astype("float32"))
    np.testing.assert_allclose(out["age"].numpy(), np.asarray(expected["age"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["gender_probs"].numpy(), np.asarray(expected["gender"]), rtol=1e-4, atol=1e-5)
    assert set(out["gender"].numpy()) <= {b"female", b"male"}
    loaded = tf.saved_model.load(path)
    png = tf.io.encode_png(images[0]).numpy()
    assert {"age", "gender", "gender_probs"} <= set(loaded.signatures["serving_bytes"](images=tf.constant([png])))
    per_face = loaded.signatures["analyze_photo"](images=tf.constant([png]))  # [photos, max_faces] like the others
    assert per_face["age"].shape == (1, 16) and per_face["gender_probs"].shape == (1, 16, 2)
    answer = Predictor(path, align_crops=False).predict([images[0]])[0]
    assert 0 <= answer["age"] <= 9 and answer["gender"]["label"] in ("female", "male")
    assert sum(answer["gender"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="no output for the attribute tasks"):
        export_saved_model(build_multitask(config, 2), ["ann", "bob"], EXPRESSIONS, base_dir=str(tmp_path),
                           name="plain", attributes=tasks)
