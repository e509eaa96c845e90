"""The models shipped inside the package: lookup, listing, and the release model on a real photo."""

import json
import os
import shutil

import pytest

from facemtl.errors import ModelFormatError
from facemtl.installed import default_model, installed_models
from facemtl.labels import EXPRESSIONS
from facemtl.pretrained import PRETRAINED_DIR, RELEASE
from tests.helpers import run_cli_here


def test_no_release_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFormatError, match="No release model is installed.*--model"):
        default_model(tmp_path)


@pytest.mark.slow
def test_lists_and_picks_the_newest_version(tmp_path, trained):
    for version in ("1", "3"):
        shutil.copytree(trained.export_dir, tmp_path / RELEASE / version)
    (tmp_path / RELEASE / "7").mkdir()  # an empty folder is not a model
    assert default_model(tmp_path) == str(tmp_path / RELEASE / "3")
    listed = installed_models(tmp_path)
    assert [(m["name"], m["version"]) for m in listed] == [(RELEASE, 1), (RELEASE, 3)]
    assert listed[0]["embedding_dim"] == 16


def _release_or_skip():
    try:
        return default_model()
    except ModelFormatError:
        pytest.skip(f"no release model in {PRETRAINED_DIR}")


@pytest.mark.slow
def test_release_model_answers_a_real_photo_without_model_argument():
    from skimage import data

    from facemtl.inference import FaceAnalyzer

    _release_or_skip()
    photo = data.astronaut()  # Eileen Collins, NASA portrait (public domain)
    analyzer = FaceAnalyzer()
    faces = analyzer.analyze([photo])[0]["faces"]
    assert len(faces) == 1
    assert analyzer.layout == "dlib" and analyzer.crop_size == (150, 150)
    face = faces[0]
    assert face["expression"]["label"] in EXPRESSIONS
    assert face["expression"]["label"] == "happy"  # she is smiling broadly
    assert len(face["embedding"]) == 128


@pytest.mark.slow
def test_models_command_lists_the_release_model():
    path = _release_or_skip()
    r = run_cli_here("models")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(row["saved_model"] == path and row["preset"] == "release/5" and row["metrics"] for row in rows)


@pytest.mark.slow
@pytest.mark.shared_data
def test_analyze_photo_matches_face_analyzer_on_real_photos(tmp_path):
    """The release model's in-graph photo signature against FaceAnalyzer (BlazeFace) on CelebA and LFW photos."""
    import glob
    import os

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from facemtl.inference import FaceAnalyzer
    from tests.helpers import SHARED_DATA

    _release_or_skip()
    celeba = sorted(glob.glob(os.path.join(SHARED_DATA, "celeba_subset", "img_celeba", "*.jpg")))
    photos = celeba[:40] + sorted(glob.glob(os.path.join(SHARED_DATA, "lfw_subset", "test", "*", "*.jpg")))[::40]
    for g in range(2):  # group photos: six faces each
        canvas = Image.new("RGB", (1280, 720))
        for k in range(6):
            with Image.open(celeba[100 + 6 * g + k]) as face:
                canvas.paste(face.convert("RGB").resize((200, 250)), (30 + (k % 3) * 420, 40 + (k // 3) * 340))
        photos.append(str(tmp_path / f"group{g}.jpg"))
        canvas.save(photos[-1], quality=95)
    analyzer = FaceAnalyzer()
    expected = analyzer.analyze(photos)
    signature = analyzer.predictor.saved_model.signatures["analyze_photo"]
    served = {k: v.numpy() for k, v in signature(images=tf.constant([open(p, "rb").read() for p in photos])).items()}
    assert [len(r["faces"]) for r in expected] == served["count"].tolist()
    assert min(served["count"][-2:]) >= 4  # several faces per group photo
    same, faces = 0, 0
    for i, photo in enumerate(expected):
        for j, face in enumerate(photo["faces"]):
            np.testing.assert_allclose(served["boxes"][i, j], face["box"], atol=3.0)
            assert float(np.dot(served["embedding"][i, j], face["embedding"])) > 0.98
            same += served["expression"][i, j].decode() == face["expression"]["label"]
            faces += 1
    assert faces >= 50 and same / faces >= 0.95, f"{same}/{faces} expression labels agree"


@pytest.mark.slow
def test_analyze_photo_on_awkward_photos_answers_like_face_analyzer():
    """No face anywhere in the batch, a photo over 2048 px, gray, RGBA and palette GIF photos."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from skimage import data

    from facemtl.inference import FaceAnalyzer

    _release_or_skip()

    def encoded(image, fmt="PNG"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        return buf.getvalue()

    astronaut = Image.fromarray(data.astronaut())
    big = Image.new("RGB", (3000, 2000))
    big.paste(astronaut.resize((1500, 1500)), (1200, 300))
    analyzer = FaceAnalyzer()
    signature = analyzer.predictor.saved_model.signatures["analyze_photo"]
    faceless = [encoded(Image.new("RGB", (1, 1))), encoded(Image.fromarray(data.coffee()), "JPEG")]
    out = signature(images=tf.constant(faceless))  # the model is never given an empty batch
    assert out["count"].numpy().tolist() == [0, 0] and out["embedding"].shape == (2, 16, 128)
    photos = [encoded(big, "JPEG"), encoded(astronaut.convert("L")), encoded(astronaut.convert("RGBA")),
              encoded(astronaut.convert("P"), "GIF")]
    out = {k: v.numpy() for k, v in signature(images=tf.constant(photos)).items()}
    expected = analyzer.analyze(photos)
    assert out["image_size"].tolist() == [r["size"] for r in expected] and expected[0]["size"] == [1365, 2048]
    for i, photo in enumerate(expected):
        assert out["count"][i] == len(photo["faces"]) == 1
        face = photo["faces"][0]
        np.testing.assert_allclose(out["boxes"][i, 0], face["box"], atol=3.0)
        assert out["expression"][i, 0].decode() == face["expression"]["label"] == "happy"


@pytest.mark.slow
def test_predict_frames_a_face_crop_as_a_photo_and_leaves_a_faceless_crop_as_it_is():
    """The crop path (`Predictor.predict`) and the photo path give one face the same answer."""
    import numpy as np
    from skimage import data

    from facemtl.inference import FaceAnalyzer, Predictor
    from facemtl.preprocessing import resize_face

    path = _release_or_skip()
    photo = data.astronaut()
    crop = resize_face(photo[0:260, 130:330], 120)  # a loose square crop around her face, smaller than 160 px
    blank = np.full((48, 48, 3), 128, np.uint8)
    predictor = Predictor(path, backend="savedmodel")
    framed, found = predictor.frame_crops([crop, blank])
    assert list(found) == [True, False]
    assert framed[0].shape == (150, 150, 3) and framed[1] is blank
    # The framed crop is what FaceAnalyzer makes of the crop sent as a photo (upscaled to 160 px).
    from facemtl.preprocessing import CROP_UPSCALE, resize_face

    analyzer = FaceAnalyzer(path)
    _, chips = analyzer.detect_and_align(resize_face(crop, CROP_UPSCALE))
    np.testing.assert_array_equal(framed[0], chips[0])
    aligned, plain = predictor.predict([crop])[0], Predictor(path, align_crops=False).predict([crop])[0]
    photo_answer = analyzer.analyze([resize_face(crop, CROP_UPSCALE)])[0]["faces"][0]
    # The same chip; one face per call may run the LiteRT copy (int8 weights) on one side: labels equal, scores close.
    assert aligned["expression"]["label"] == photo_answer["expression"]["label"] == "happy"
    for name, p in aligned["expression"]["probabilities"].items():
        assert abs(p - photo_answer["expression"]["probabilities"][name]) < 2e-3
    assert aligned["embedding"] != plain["embedding"]


def test_the_shipped_metadata_names_no_path_of_the_machine_that_made_it():
    """`facemtl verify` says where its threshold came from, `evaluate` reads `run_dir`: neither may be ours."""
    from facemtl.export.metadata import read_metadata
    from facemtl.models.presets import model_folders
    from facemtl.recognition.metrics import model_threshold

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    for _, _, folder in model_folders():
        meta = read_metadata(folder)
        machine = [s for s in strings(meta) if os.path.isabs(s) or "../" in s or "shared/data" in s]
        assert not machine and "run_dir" not in meta, machine
        assert model_threshold(meta)[1].endswith("of lfw_subset")
