"""BlazeFace: facemtl's anchors, decoding and weighted NMS, and the detector on real photos."""

import numpy as np
import pytest

from facemtl.faces.blazeface import BlazeFaceDetector, DetectorModelError, decode, ssd_anchors, weighted_nms

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


def test_anchor_grids_match_the_models():
    short = ssd_anchors(128, (8, 16, 16, 16), 2)
    full = ssd_anchors(192, (4,), 1)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # MediaPipe's order: the 16x16 grid (2 anchors per cell) first, row by row, then the 8x8 grid (6 per cell).
    np.testing.assert_allclose(short[0], short[1])
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[512], [0.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(short[512:518], np.repeat(short[512:513], 6, axis=0))
    assert ((full > 0) & (full < 1)).all()


def test_decode_places_boxes_and_keypoints_around_anchors():
    anchors = np.array([[0.25, 0.5], [0.75, 0.5]], np.float32)
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = [12.8, -12.8, 32, 64]  # offsets and size in input pixels (input side 128)
    raw[0, 4:6] = [-6.4, 0]
    scores = np.array([[4.0], [-4.0]], np.float32)
    boxes, keypoints, probs = decode(raw, scores, anchors, 128)
    np.testing.assert_allclose(boxes[0], [0.35 - 0.125, 0.4 - 0.25, 0.35 + 0.125, 0.4 + 0.25], atol=1e-6)
    np.testing.assert_allclose(keypoints[0, 0], [0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(keypoints[1], np.repeat(anchors[1:], 6, axis=0), atol=1e-6)
    np.testing.assert_allclose(probs, [1 / (1 + np.exp(-4)), 1 / (1 + np.exp(4))], rtol=1e-6)
    _, _, extreme = decode(raw, np.array([[1e9], [-1e9]], np.float32), anchors, 128)  # no overflow, no NaN
    np.testing.assert_allclose(extreme, [1, 0], atol=1e-12)


def test_weighted_nms_merges_overlaps_with_score_weights():
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    keypoints = np.zeros((4, 6, 2))
    keypoints[1] += 1.0
    scores = np.array([0.9, 0.6, 0.8, 0.3])
    out = weighted_nms(boxes, keypoints, scores, min_score=0.5)
    assert [round(s, 2) for _, _, s in out] == [0.9, 0.8]
    np.testing.assert_allclose(out[0][0], (0.9 * boxes[0] + 0.6 * boxes[1]) / 1.5)  # the 0.3 one is below min_score
    np.testing.assert_allclose(out[0][1], np.full((6, 2), 0.6 / 1.5))
    np.testing.assert_allclose(out[1][0], boxes[2])
    assert weighted_nms(boxes, keypoints, scores, min_score=0.95) == []


@pytest.mark.parametrize("model", ["full", "short"])
def test_finds_the_astronaut_like_mtcnn(astronaut, model):
    faces = BlazeFaceDetector(model).detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8 and face.points == "blazeface"
    x, y, w, h = face.box
    # MTCNN's box for this face is (182, 64, 83, 107) and its eyes (204, 100) and (245, 102).
    assert abs(x + w / 2 - 223.5) < 12 and abs(y + h / 2 - 117.5) < 20 and 70 < w < 130
    left, right, nose, mouth = face.landmarks
    assert np.linalg.norm(left - [204, 100]) < 10 and np.linalg.norm(right - [245, 102]) < 10  # eyes 41 px apart
    assert left[1] < nose[1] < mouth[1] and left[0] < nose[0] < right[0]
    reported = face.to_dict()["landmarks"]
    assert list(reported) == ["right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear"]
    assert reported["right_eye"][0] < reported["left_eye"][0]  # the subject's right eye is on the image's left


def test_no_face_in_flat_or_tiny_images(astronaut):
    detector = BlazeFaceDetector()
    assert detector.detect(np.full((300, 200, 3), 128, np.uint8)) == []
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []
    wide = np.zeros((200, 1400, 3), np.uint8)  # letterboxed: boxes come back in the photo's own pixels
    wide[:, 600:800] = astronaut[100:300, 150:350]
    faces = detector.detect(np.ascontiguousarray(wide))
    assert len(faces) == 1 and 600 < faces[0].box[0] < 700


def test_a_broken_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"TFL3" + b"\0" * 100)
    with pytest.raises(DetectorModelError, match="broken.tflite"):
        BlazeFaceDetector(str(bad))
    with pytest.raises(DetectorModelError, match="no such"):
        BlazeFaceDetector(str(tmp_path / "missing.tflite"))
    with pytest.raises(ValueError, match="Received: model='medium'"):
        BlazeFaceDetector("medium")


def test_auto_finds_a_face_that_fills_the_frame(astronaut):
    from PIL import Image

    close_up = np.asarray(Image.fromarray(astronaut[70:170, 180:270]).resize((100, 120)))  # like LFW's tight crops
    faces = BlazeFaceDetector("auto").detect(close_up)
    assert len(faces) == 1 and faces[0].box[2] > 60
    assert BlazeFaceDetector("full").detect(close_up) == []  # what the second, padded pass is for


def test_each_thread_runs_its_own_interpreter():
    import threading

    from facemtl.faces.blazeface import BlazeFaceDetector

    detector = BlazeFaceDetector()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(detector._interpreter))
    thread.start()
    thread.join()
    assert seen[0] is not detector._interpreter and detector._interpreter is detector._interpreter
