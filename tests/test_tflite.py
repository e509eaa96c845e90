"""TFLite export: the same answers as the SavedModel, class names inside the file, int8 and bad files."""

import json
import os

import numpy as np
import pytest

from facemtl.errors import FacemtlError, ModelFormatError
from facemtl.export import read_metadata as read_export_metadata
from facemtl.export.tflite import export_tflite
from facemtl.inference import Predictor
from facemtl.litert import TFLitePredictor
from facemtl.litert import read_tflite_metadata as read_metadata
from tests.helpers import run_cli_here

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)] + [
        rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)]  # any size: resized on the host like the graph does


def test_float32_answers_equal_the_saved_model(trained, crops, tmp_path):
    path = export_tflite(trained.run_dir, str(tmp_path / "m.tflite"))
    meta = read_metadata(path)
    export_meta = read_export_metadata(trained.export_dir)
    assert meta["identities"] == export_meta["identities"] and meta["expressions"] == export_meta["expressions"]
    assert meta["model_id"] == export_meta["model_id"] and meta["quantize"] == "float32"
    got = TFLitePredictor(path).run(crops)
    want = Predictor(trained.export_dir).run(crops)
    for g, w, c in zip(got, want, crops):
        exact = c.shape[:2] == (64, 64)  # else resized on the host and rounded to uint8: a little looser
        for key in ("expression_probs", "identity_probs", "embedding"):
            np.testing.assert_allclose(g[key], w[key], atol=1e-5 if exact else 2e-3)
    assert not list(tmp_path.glob(".tmp*")) and not list(tmp_path.glob("*.tmp"))


def test_cli_int8_needs_and_uses_real_calibration_faces(trained, crops, tmp_path, monkeypatch):
    from PIL import Image

    r = run_cli_here("export", trained.run_dir, "--format", "tflite", "--quantize", "int8", "--out",
                     tmp_path / "q.tflite")
    assert r.returncode == 2 and "--calibration" in r.stderr
    faces = tmp_path / "faces"
    faces.mkdir()
    for i, c in enumerate(crops):
        Image.fromarray(c).save(faces / f"{i}.png")
    # From another working directory: the run's recorded paths resolve relative to the run.
    monkeypatch.chdir(tmp_path)
    r = run_cli_here("export", os.path.abspath(trained.run_dir), "--format", "tflite", "--quantize", "int8",
                     "--calibration", faces, "--out", tmp_path / "q.tflite")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["quantize"] == "int8"
    int8 = TFLitePredictor(tmp_path / "q.tflite")
    assert int8.metadata["quantize"] == "int8"
    out = int8.run(crops[:1])[0]
    assert out["expression_probs"].shape == (7,) and abs(float(out["expression_probs"].sum()) - 1) < 0.05


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFormatError, match="junk.tflite"):
        TFLitePredictor(tmp_path / "junk.tflite")
    with pytest.raises(ModelFormatError, match="no such file"):
        read_metadata(tmp_path / "missing.tflite")
    from facemtl.faces.blazeface import MODEL_DIR

    with pytest.raises(ModelFormatError, match="not exported by facemtl"):
        read_metadata(f"{MODEL_DIR}/face_detection_short_range.tflite")
    with pytest.raises(FacemtlError, match="no checkpoints"):
        export_tflite(str(tmp_path), str(tmp_path / "x.tflite"))


def test_predictor_uses_the_exports_lite_copy_for_every_call(trained, crops, tmp_path):
    import shutil

    from facemtl.export.tflite import EXPORT_FILE, write_into_export

    export = tmp_path / "model" / "1"
    shutil.copytree(trained.export_dir, export)
    with pytest.raises(ModelFormatError, match="no LiteRT copy"):
        Predictor(str(export), backend="tflite")
    write_into_export(str(export), open(export_tflite(trained.run_dir, str(tmp_path / "m.tflite")), "rb").read())
    assert (export / EXPORT_FILE).is_file()
    auto, saved = Predictor(str(export)), Predictor(str(export), backend="savedmodel")
    assert auto._lite is not None and saved._lite is None
    calls = []
    run = auto._lite.run
    auto._lite.run = lambda images: calls.append(len(images)) or run(images)
    one, batch = auto.run(crops[:1]), auto.run(crops[:3])  # one engine for every call shape
    assert calls == [1, 3]
    want = saved.run(crops[:3])
    for got in (one[0], batch[0]):
        for key in ("expression_probs", "identity_probs", "embedding"):
            np.testing.assert_allclose(got[key], want[0][key], atol=1e-5)
        assert got["expression"] == want[0]["expression"] and got["identity"] == want[0]["identity"]
    described = auto.describe(one[0])
    assert described["expression"]["label"] == saved.describe(want[0])["expression"]["label"]


def test_the_release_copy_gates_its_mirror_pass_face_by_face():
    """Release 5's LiteRT copy: the face's pass for every face, the mirror pass (a second signature) only below the
    threshold, averaged on the host; a face's answer does not depend on its batch, and the real face's agrees with the
    Keras model's."""
    from skimage import data

    from facemtl.inference import FaceAnalyzer
    from facemtl.models.presets import from_preset

    analyzer = FaceAnalyzer()
    lite = analyzer.predictor._lite
    assert lite.mirror_threshold is not None
    chip = analyzer.detect_and_align(analyzer.load(data.astronaut()))[1][0]
    runner, mirror = lite._runners.get()
    # An unsure answer: the face upside down, darkened or washed out (the first the gate sends to the mirror pass).
    candidates = [chip[::-1, ::-1], chip // 3, (chip // 4 + 160).astype(np.uint8), np.full_like(chip, 128)]
    noise = next(c for c in candidates if runner(images=c[None])["expression_probs"][0].max() < lite.mirror_threshold)
    face = {name: runner(images=img[None])["expression_probs"][0] for name, img in (("chip", chip), ("noise", noise))}
    assert face["chip"].max() >= lite.mirror_threshold > face["noise"].max()  # one face on each side of the gate
    meta = {**lite.metadata, "model_config": {**lite.metadata["model_config"], "mirror_threshold": None}}
    with pytest.raises(ModelFormatError, match="its mirror pass and its metadata's mirror_threshold .None."):
        TFLitePredictor(os.path.join(analyzer.predictor.path, "assets.extra", "model.tflite"), metadata=meta)
    alone = [lite.run([img])[0] for img in (chip, noise)]
    together = lite.run([chip, noise])
    # A batch is shared out among one-thread interpreters (the pool's threads: 1 or 2 of them took these two faces,
    # as they came free), with the same answers.
    assert len(lite._runners._objects) >= 2
    for a, b in zip(alone, together):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(together[0]["expression_probs"], face["chip"])
    np.testing.assert_allclose(together[1]["expression_probs"],
                               (face["noise"] + mirror(images=noise[None])["expression_probs"][0]) / 2, rtol=1e-6)
    # The real face against the Keras model (int8 weights: quantisation noise; an odd image like the unsure one
    # above can move further).
    model = from_preset("release")
    keras_answer = np.asarray(model(np.stack([chip, noise]).astype("float32"))["expression"])
    np.testing.assert_allclose(together[0]["expression_probs"], keras_answer[0], atol=0.01)
    # The SavedModel (TF Serving's) gates inside its graph: a batch with no, one and some faces to mirror.
    import tensorflow as tf

    from facemtl.inference import load_saved_model
    from facemtl.installed import resolve_model

    serve = load_saved_model(resolve_model(None)).signatures["serving_default"]
    for rows in ([0], [1], [0, 1, 0]):
        batch = np.stack([(chip, noise)[i] for i in rows])
        served = serve(images=tf.constant(batch))["expression_probs"].numpy()
        np.testing.assert_allclose(served, keras_answer[rows], atol=1e-4)
