"""Detectors on a real photo that scikit-image ships (NASA's astronaut portrait)."""

import numpy as np
import pytest

from facemtl.faces.align import align_face, template
from facemtl.faces.detect import get_detector

skimage_data = pytest.importorskip("skimage.data")

# The astronaut's face in skimage.data.astronaut() (512x512), measured by eye.
FACE_REGION = (170, 40, 280, 180)  # x0, y0, x1, y1


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def mtcnn():
    return get_detector("mtcnn")


def _inside(box, region, slack=10):
    x, y, w, h = box
    x0, y0, x1, y1 = region
    return x >= x0 - slack and y >= y0 - slack and x + w <= x1 + slack and y + h <= y1 + slack


def test_mtcnn_finds_the_face_with_sane_box_and_landmarks(astronaut, mtcnn):
    faces = mtcnn.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95
    assert _inside(face.box, FACE_REGION)
    assert 50 < face.box[2] < 130 and 50 < face.box[3] < 150
    lm = face.landmarks
    left_eye, right_eye, nose, mouth_l, mouth_r = lm
    assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_alignment_puts_the_eyes_where_the_template_says(astronaut, mtcnn):
    face = mtcnn.detect(astronaut)[0]
    crop, _ = align_face(astronaut, face.landmarks, (112, 112))
    # Detect again on the aligned crop (padded so MTCNN has context): eyes must land on the template.
    padded = np.pad(crop, ((56, 56), (56, 56), (0, 0)), mode="edge")
    again = mtcnn.detect(padded)
    assert again, "no face found in the aligned crop"
    eyes = again[0].landmarks[:2] - 56
    np.testing.assert_allclose(eyes, template(112)[:2], atol=6)


def test_no_face_gives_an_empty_list(mtcnn):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((40, 40, 1))).astype(np.uint8)
    assert mtcnn.detect(smooth) == []
    assert mtcnn.detect(np.zeros((5, 5, 3), np.uint8)) == []


def test_haar_fallback_finds_the_face(astronaut):
    faces = get_detector("haar").detect(astronaut)
    assert faces, "Haar found nothing"
    assert _inside(faces[0].box, FACE_REGION, slack=25)
    assert faces[0].estimated_landmarks


def test_unknown_detector():
    with pytest.raises(ValueError, match="Unknown detector"):
        get_detector("yolo")


@pytest.mark.shared_data
def test_mtcnn_finds_faces_in_real_in_the_wild_photos(mtcnn):
    """CelebA's in-the-wild photos each show a labelled person: most must yield a face."""
    import glob
    import os

    from facemtl.images import load_image
    from tests.helpers import SHARED_DATA

    paths = sorted(glob.glob(os.path.join(SHARED_DATA, "celeba_subset", "img_celeba", "*.jpg")))[:30]
    assert len(paths) == 30
    found = sum(1 for p in paths if mtcnn.detect(load_image(p)))
    assert found >= 24, f"faces found in only {found}/30 photos"


def test_landmark_names_are_the_subjects_sides_under_every_detector(astronaut, mtcnn):
    from facemtl.faces.detect import DEFAULT_DETECTOR

    assert get_detector().__class__ is get_detector(DEFAULT_DETECTOR).__class__
    for detector in (mtcnn, get_detector("blazeface"), get_detector("haar")):
        points = detector.detect(astronaut)[0].to_dict()["landmarks"]
        # A frontal face: the subject's right eye is on the image's left.
        assert points["right_eye"][0] < points["left_eye"][0], (detector, points)
        if "mouth_right" in points:
            assert points["mouth_right"][0] < points["mouth_left"][0]
        assert "nose_tip" in points
