import numpy as np
import pytest

from facemtl.faces.align import align_face, landmarks_from_box, similarity_transform, template, transform_points


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(transform_points(m, src), dst, atol=1e-9)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)


def test_no_reflection():
    src = np.array([[0, 0], [1, 0], [0, 1.0]])
    mirrored = src * np.array([-1, 1])
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_template_scales_with_size():
    np.testing.assert_allclose(template(224), template(112) * 2, atol=1e-9)
    t = template((64, 48))
    assert t.shape == (5, 2) and (t[:, 0] < 48).all() and (t[:, 1] < 64).all()
    with pytest.raises(ValueError, match="face_scale"):
        template(112, face_scale=0)


def test_align_puts_landmarks_on_the_template():
    image = np.zeros((200, 300, 3), np.uint8)
    landmarks = template(112) * 1.3 + [90, 20]
    for x, y in landmarks.astype(int):  # mark each landmark with a bright dot
        image[y - 1:y + 2, x - 1:x + 2] = 255
    crop, m = align_face(image, landmarks, (112, 112))
    assert crop.shape == (112, 112, 3)
    for x, y in template(112):
        assert crop[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() > 100


def test_degenerate_landmarks():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), template(112))


def test_landmarks_from_box_is_a_crop_of_the_box():
    box = (10, 20, 50, 60)
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    crop, m = align_face(image, landmarks_from_box(box), (60, 50))
    np.testing.assert_allclose(m, [[1, 0, -10], [0, 1, -20]], atol=1e-9)
