"""A generated corpus of 120+ awkward inputs through FaceAnalyzer, Predictor and `facemtl analyze`.

Every input gets an answer or an error naming it, no other exception, no hang;
one bad input never costs the answers for the good ones around it.
"""

import json
import os
import subprocess
import sys

import pytest

from facemtl.inference import FaceAnalyzer, Predictor
from tests.helpers import corpus

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow

# Inputs that must be refused, and the words their error must hold besides their name.
MUST_FAIL = {"bomb_25000.png": "over facemtl's limit", "bomb_20000_gray.png": "over facemtl's limit",
             "rows_20_of_200.png": "truncated PNG", "pipe.jpg": "named pipe", "loop1.jpg": "link loop",
             "dangling.jpg": "dangling", "folder.jpg": "a folder", "device": "character device",
             "empty.jpg": "empty file", "truncated_0.5.jpg": "truncated", "array_nan": "NaN",
             "array_object": "dtype object", "none": "expected a path"}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("bad_inputs"))


def _label(name, source):
    """What an error message must name: the file's path, else the in-memory input's kind."""
    if isinstance(source, str):
        return source or "<empty path>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>" if source else "<0 bytes>"
    return f"<{type(source).__name__}>"


def test_the_corpus_is_big_and_varied(items):
    assert len(items) >= 120
    kinds = {type(source).__name__ for _, source in items}
    assert {"str", "bytes", "ndarray", "NoneType", "int", "list", "dict"} <= kinds


def test_analyzer_answers_every_input_between_two_good_photos(trained, items):
    analyzer = FaceAnalyzer(trained.export_dir)
    good = skimage_data.astronaut()
    failed = set()
    for name, source in items:
        results = analyzer.analyze([good, source, good])
        assert len(results) == 3, name
        assert len(results[0]["faces"]) == 1 and len(results[2]["faces"]) == 1, name
        answer = results[1]
        assert ("faces" in answer) != ("error" in answer), (name, answer)
        if "error" in answer:
            failed.add(name)
            assert _label(name, source) in answer["error"], (name, answer["error"])
        else:
            assert isinstance(answer["faces"], list) and len(answer["size"]) == 2
    for name, words in MUST_FAIL.items():
        assert name in failed, name
    for name, source in items:
        if name in MUST_FAIL:
            assert MUST_FAIL[name] in analyzer.analyze([source])[0]["error"], name
    # Readable images in awkward forms are read, not refused.
    for name in ("png_named.jpg", "jpeg_named.txt", "mode_CMYK.tiff", "mode_I_16.png", "gray16.png", "cmyk.jpg",
                 "animated.gif", "multipage.tiff", "exif_6.jpg", "array_uint16", "array_bool", "tiny_1x1.png"):
        assert name not in failed, name


def test_predictor_answers_every_input_beside_a_good_crop(trained, items):
    predictor = Predictor(trained.export_dir, batch_size=2)
    crop = skimage_data.astronaut()[50:190, 170:280]
    for name, source in items:
        answers = predictor.predict([crop, source, crop])
        assert len(answers) == 3 and "expression" in answers[0] and "expression" in answers[2], name
        assert ("expression" in answers[1]) != ("error" in answers[1]), (name, answers[1])
        if "error" in answers[1]:
            assert _label(name, source) in answers[1]["error"], (name, answers[1]["error"])
        else:
            assert answers[1]["expression"]["label"] in answers[1]["expression"]["probabilities"]


def test_cli_analyze_on_the_corpus_folder(trained, items, tmp_path):
    folder = os.path.dirname(next(source for _, source in items if isinstance(source, str) and source))
    r = subprocess.run([sys.executable, "-m", "facemtl", "analyze", folder, "--model", trained.export_dir],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == 1, r.stderr[-2000:]  # some files were skipped, and said so
    records = [json.loads(line) for line in r.stdout.splitlines()]
    by_name = {os.path.basename(rec["path"]): rec for rec in records}
    # Every file of the folder has its record (missing.jpg does not exist; folder.jpg is a folder, walked into).
    files = [name for name, source in items if isinstance(source, str) and source.startswith(folder)
             and name not in ("missing.jpg", "folder.jpg")]
    from facemtl.media import media_extensions

    # Files that are images or videos by name each get a record; the others are ignored and counted.
    media = [name for name in files if os.path.splitext(name)[1].lower() in media_extensions()]
    for name in media:
        assert name in by_name, name
    others = set(files) - set(media)
    assert not others & set(by_name)
    if others:
        assert f"{len(others)} file(s) in folders ignored" in r.stderr, r.stderr[-1000:]
    assert "named pipe" in by_name["pipe.jpg"]["error"] and "over facemtl's limit" in by_name["bomb_25000.png"]["error"]
    assert len(by_name["exif_1.jpg"]["faces"]) == 1
    assert "Traceback" not in r.stderr


def _corpus_folder(items):
    return os.path.dirname(next(source for _, source in items if isinstance(source, str) and source))


def test_gallery_embedder_answers_every_input_between_two_good_photos(trained, items):
    """What `facemtl gallery enroll` runs on each photo: an embedding, or an error naming the input."""
    from facemtl.recognition.embed import Embedder

    embedder = Embedder(trained.export_dir)
    good = skimage_data.astronaut()
    for name, source in items:
        faces = embedder.embed([good, source, good])
        assert len(faces) == 3 and faces[0].embedding is not None and faces[2].embedding is not None, name
        assert (faces[1].embedding is None) == (faces[1].error is not None), name
        if name in MUST_FAIL:
            assert faces[1].error and MUST_FAIL[name] in faces[1].error, (name, faces[1].error)


def test_align_folder_accounts_for_every_file_of_the_corpus(items, tmp_path):
    from facemtl.faces.align_folder import align_folder
    from facemtl.faces.detect import get_detector
    from facemtl.media import expand_paths

    folder = _corpus_folder(items)
    report = align_folder(folder, str(tmp_path / "crops"), get_detector("blazeface"), size=(64, 64), progress=False)
    listed = expand_paths([folder])
    assert report.aligned + report.cached + len(report.no_face) + len(report.unreadable) == len(listed)
    unreadable = {os.path.basename(p) for p in report.unreadable}
    for name in ("pipe.jpg", "loop1.jpg", "dangling.jpg", "empty.jpg", "bomb_25000.png", "rows_20_of_200.png"):
        assert name in unreadable, name
    assert not list((tmp_path / "crops").rglob(".*"))  # no temporary file left behind


def test_dataset_readers_skip_and_count_the_corpus(items, tmp_path):
    """The corpus as one person's folder: readable photos are read, the rest skipped and listed, nothing raised."""
    from facemtl.data.folders import read_identity_folders
    from facemtl.data.materialize import materialize

    folder = _corpus_folder(items)
    (tmp_path / "people").mkdir()
    os.symlink(folder, tmp_path / "people" / "someone")
    source = read_identity_folders(str(tmp_path / "people"))
    out = materialize(source, 32)
    assert len(out.images) + len(out.skipped) == len(source) and out.images.shape[1:] == (32, 32, 3)
    skipped = {os.path.basename(p) for p in out.skipped}
    for name in ("empty.jpg", "bomb_25000.png", "rows_20_of_200.png", "truncated_0.5.jpg"):
        assert name in skipped, name
    assert "png_named.jpg" not in skipped and len(out.images) > 20
