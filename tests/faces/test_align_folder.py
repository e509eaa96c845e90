import numpy as np
import pytest
from PIL import Image

from facemtl.faces.align import template
from facemtl.faces.align_folder import align_folder
from facemtl.faces.detect import get_detector

skimage_data = pytest.importorskip("skimage.data")


def test_align_folder_mirrors_layout_reports_and_caches(tmp_path):
    src = tmp_path / "photos"
    (src / "astronaut_person").mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(src / "astronaut_person" / "a.jpg")
    Image.fromarray(skimage_data.coffee()).save(src / "astronaut_person" / "coffee.jpg")
    (src / "astronaut_person" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    detector = get_detector("mtcnn")
    report = align_folder(src, tmp_path / "aligned", detector, size=(112, 112), progress=False)
    assert report.aligned == 1
    assert [p.endswith("coffee.jpg") for p in report.no_face] == [True]
    assert [p.endswith("broken.jpg") for p in report.unreadable] == [True]
    crop = np.asarray(Image.open(tmp_path / "aligned" / "astronaut_person" / "a.png"))
    assert crop.shape == (112, 112, 3)
    # The crop is aligned: the detector finds the eyes on the template in it.
    padded = np.pad(crop, ((56, 56), (56, 56), (0, 0)), mode="edge")
    eyes = detector.detect(padded)[0].landmarks[:2] - 56
    np.testing.assert_allclose(eyes, template(112)[:2], atol=6)
    again = align_folder(src, tmp_path / "aligned", detector, progress=False)
    assert again.cached == 1 and again.aligned == 0
