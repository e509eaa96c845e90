"""The models shipped inside the package: lookup, listing, and the release model on a real photo."""

import json
import shutil

import pytest

from facemtl.errors import ModelFormatError
from facemtl.labels import EXPRESSIONS
from facemtl.pretrained import PRETRAINED_DIR, RELEASE, default_model, installed_models
from tests.test_cli import run_cli


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
    r = run_cli("models")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(row["path"] == path and row["metrics"] for row in rows)
