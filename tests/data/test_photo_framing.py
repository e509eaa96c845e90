"""Loose face crops framed like served photos: the serving detector and alignment, a counted fallback, a cache."""

import numpy as np
import pytest

from facemtl.data import photo_framing
from facemtl.data.photo_framing import cached_framing, frame_like_photos
from facemtl.preprocessing import CROP_UPSCALE, resize_face


@pytest.fixture(scope="module")
def fer_like_face():
    """The astronaut's face as FER2013 stores faces: a 48x48 gray crop (copied to RGB)."""
    from PIL import Image
    from skimage import data

    face = Image.fromarray(data.astronaut()[15:225, 140:330]).convert("L").resize((48, 48), Image.BILINEAR)
    return np.repeat(np.asarray(face)[:, :, None], 3, axis=2)


def test_a_found_face_is_framed_exactly_as_face_analyzer_frames_the_photo(fer_like_face):
    from facemtl.inference import FaceAnalyzer

    framed = frame_like_photos(fer_like_face[None], size=150, layout="dlib")
    assert framed.found.tolist() == [True] and framed.fallback == 0
    analyzer = FaceAnalyzer()  # the release model: dlib layout, 150 px, BlazeFace
    detections, crops = analyzer.detect_and_align(resize_face(fer_like_face, CROP_UPSCALE))
    assert len(detections) == 1
    np.testing.assert_array_equal(framed.crops[0], crops[0])


def test_faces_not_found_take_the_mean_mapping_of_the_found_ones_and_are_counted(fer_like_face):
    import cv2

    blank = np.full((48, 48, 3), 128, np.uint8)
    framed = frame_like_photos(np.stack([fer_like_face, blank, fer_like_face[:, ::-1]]), size=150, layout="dlib")
    assert framed.found.tolist() == [True, False, True]
    assert framed.fallback == 1 and "1 (33.3%) framed by the fixed mapping" in framed.summary()
    expected = cv2.warpAffine(resize_face(blank, CROP_UPSCALE), framed.matrix, (150, 150), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(framed.crops[1], expected)
    # The mapping is the mean of the found faces' own mappings.
    each = [frame_like_photos(face[None], size=150, layout="dlib").matrix for face in (fer_like_face,
                                                                                       fer_like_face[:, ::-1])]
    np.testing.assert_allclose(framed.matrix, np.mean(each, axis=0), atol=1e-9)


def test_no_face_anywhere_falls_back_to_the_whole_photo():
    framed = frame_like_photos(np.zeros((2, 48, 48, 3), np.uint8), size=150)
    assert framed.fallback == 2
    np.testing.assert_allclose(framed.matrix, [[150 / 160, 0, 0], [0, 150 / 160, 0]])


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="Received: shape="):
        frame_like_photos(np.zeros((48, 48), np.uint8))


def test_the_cache_is_reused_and_keyed_by_pixels_and_settings(tmp_path, fer_like_face, monkeypatch):
    images = np.stack([fer_like_face, fer_like_face[:, ::-1]])
    first = cached_framing(images, str(tmp_path), "t", log=lambda *_: None)
    monkeypatch.setattr(photo_framing, "frame_like_photos",
                        lambda *a, **k: pytest.fail("the cache should have been reused"))
    again = cached_framing(images, str(tmp_path), "t", log=lambda *_: None)
    np.testing.assert_array_equal(first.crops, again.crops)
    with pytest.raises(pytest.fail.Exception):  # other settings: not the same cache
        cached_framing(images, str(tmp_path), "t", log=lambda *_: None, size=112)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
