"""Detection and alignment inside the TF graph agree with the Python path (TFLite interpreter, numpy, OpenCV)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from facemtl.faces.align import align_face, similarity_transform, template
from facemtl.faces.blazeface import MODEL_DIR, MODELS, BlazeFaceDetector, DetectorModelError, weighted_nms
from facemtl.faces.graph import BlazeFaceGraph, TFLiteNet, align_crops, similarity_matrices
from facemtl.faces.graph import weighted_nms as graph_nms

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def graph_detect():
    return tf.function(BlazeFaceGraph(max_faces=4).detect, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])


def _xyxy(detections):
    return np.array([[d.box[0], d.box[1], d.box[0] + d.box[2], d.box[1] + d.box[3]] for d in detections]).reshape(-1, 4)


@pytest.mark.parametrize("model", ["full", "short"])
def test_rebuilt_network_computes_what_the_interpreter_computes(model):
    spec = MODELS[model]
    net = TFLiteNet(os.path.join(MODEL_DIR, spec.file))
    detector = BlazeFaceDetector(model)
    x = np.random.default_rng(0).uniform(-1, 1, (1, spec.size, spec.size, 3)).astype(np.float32)
    ours = dict(zip(net.output_names, (o.numpy() for o in net(tf.constant(x)))))
    detector._interpreter.set_tensor(detector._input, x)
    detector._interpreter.invoke()
    for out in detector._interpreter.get_output_details():
        theirs = detector._interpreter.get_tensor(out["index"])
        np.testing.assert_allclose(ours[out["name"]], theirs, atol=1e-3 * np.abs(theirs).max())


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(DetectorModelError, match="broken.tflite"):
        TFLiteNet(str(bad))


def test_weighted_nms_in_the_graph_matches_numpy():
    rng = np.random.default_rng(1)
    centres = rng.uniform(0.2, 0.8, (40, 2))
    sides = rng.uniform(0.05, 0.3, (40, 1))
    boxes = np.concatenate([centres - sides, centres + sides], 1).astype(np.float32)
    keypoints = rng.uniform(0, 1, (40, 6, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, 40).astype(np.float32)
    expected = weighted_nms(boxes, keypoints, scores, min_score=0.5)
    b, k, s, count = graph_nms(tf.constant(boxes), tf.constant(keypoints), tf.constant(scores), 0.5, 0.3, 64)
    assert int(count) == len(expected) > 3
    for i, (eb, ek, es) in enumerate(expected):
        np.testing.assert_allclose(b[i], eb, atol=1e-5)
        np.testing.assert_allclose(k[i], ek, atol=1e-5)
        assert float(s[i]) == pytest.approx(es)
    assert not b[int(count):].numpy().any()  # padding is zeros
    _, _, _, capped = graph_nms(tf.constant(boxes), tf.constant(keypoints), tf.constant(scores), 0.5, 0.3, 2)
    assert int(capped) == 2


def test_similarity_fit_matches_umeyama():
    rng = np.random.default_rng(2)
    dst = template(150, layout="dlib", points="blazeface")
    src = rng.uniform(0, 300, (3, 4, 2))
    ours = similarity_matrices(tf.constant(src, tf.float32), dst).numpy()
    for i in range(3):
        np.testing.assert_allclose(ours[i], similarity_transform(src[i], dst), rtol=1e-4, atol=1e-3)


def test_graph_finds_the_same_faces_as_the_python_detector(astronaut, graph_detect):
    """The astronaut; a close-up (found only by the padded second pass); three faces; no face; a 1-pixel photo."""
    close_up = np.ascontiguousarray(astronaut[60:190, 175:265])
    group = np.zeros((400, 900, 3), np.uint8)
    small = np.asarray(tf.image.resize(astronaut[:256, 100:356], (200, 200), antialias=True), np.uint8)
    for x in (20, 350, 680):
        group[100:300, x:x + 200] = small
    python = BlazeFaceDetector()
    counts = []
    for photo in (astronaut, close_up, group, skimage_data.coffee(), np.zeros((1, 1, 3), np.uint8)):
        expected = python.detect(photo)
        boxes, keypoints, scores, count = (t.numpy() for t in graph_detect(tf.constant(photo)))
        counts.append(int(count))
        assert count == len(expected)
        if expected:
            np.testing.assert_allclose(boxes, _xyxy(expected), atol=2.0)
            np.testing.assert_allclose(keypoints, [list(d.keypoints.values()) for d in expected], atol=2.0)
            np.testing.assert_allclose(scores, [d.score for d in expected], atol=0.02)
    assert counts == [1, 1, 3, 0, 0]
    assert not BlazeFaceDetector("full").detect(close_up)  # so the close-up did take the padded pass


def test_in_graph_crop_matches_align_face(astronaut, graph_detect):
    face = BlazeFaceDetector().detect(astronaut)[0]
    expected, _ = align_face(astronaut, face.landmarks, (150, 150), layout="dlib", points="blazeface")
    crops = align_crops(tf.constant(astronaut), tf.constant(face.landmarks[None], tf.float32), (150, 150),
                        layout="dlib").numpy()
    diff = np.abs(crops[0].astype(int) - expected)
    assert crops.shape == (1, 150, 150, 3) and crops.dtype == np.uint8
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4  # OpenCV interpolates in 1/32 px steps
