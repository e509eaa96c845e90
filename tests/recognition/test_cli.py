"""`facemtl calibrate`, `verify`, `gallery`, `align` and `analyze --gallery` on an exported ArcFace model.

The commands run through `facemtl.cli.main` in this process (the concurrency test starts real
processes); `tests/test_cli.py` runs the entry point itself in new processes.
"""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from facemtl.data.synthetic import generate_faces
from facemtl.export import read_metadata
from tests.helpers import run_cli_here as run_cli  # in-process: many calls per test

pytestmark = pytest.mark.slow  # every test here trains (the ArcFace fixture) or runs the CLI in new processes


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Generated faces of 4 people, one folder each (the layout `calibrate --data` reads)."""
    root = tmp_path_factory.mktemp("people")
    images, ids, _ = generate_faces(4, 1, size=64, seed=7)
    for i, (img, person) in enumerate(zip(images, ids)):
        folder = root / f"person_{person}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def calibrated(trained_arcface, people, tmp_path_factory):
    """A copy of the ArcFace export with a calibrated threshold."""
    import shutil

    model = tmp_path_factory.mktemp("calibrated") / "1"
    shutil.copytree(trained_arcface.export_dir, model)
    r = run_cli("calibrate", "--model", model, "--data", people, "--far", "0.01")
    assert r.returncode == 0, r.stderr
    return model, json.loads(r.stdout)


def test_calibrate_stores_threshold_and_draws_roc(calibrated, people):
    model, answer = calibrated
    stored = read_metadata(model)["verification"]
    assert stored == answer
    assert stored["target_far"] == 0.01 and stored["far"] <= 0.01
    assert stored["people"] == 4 and stored["images"] == 28 and stored["pairs"] == 28 * 27 // 2
    assert (model / "assets.extra" / "calibration" / "roc.png").is_file()
    written = json.loads((model / "assets.extra" / "calibration" / "calibration.json").read_text())
    assert written["threshold"] == stored["threshold"] and len(written["roc"]["far"]) <= 600
    # The threshold really gives that FAR on those pairs.
    from facemtl.inference import Predictor
    from facemtl.recognition.embed import embed_arrays, load_labelled_faces
    from facemtl.recognition.metrics import all_pairs

    images, labels, _ = load_labelled_faces(str(people), size=64, cache_dir=None)
    scores, same = all_pairs(embed_arrays(Predictor(str(model)), images), labels)
    assert np.mean(scores[~same] >= stored["threshold"]) == pytest.approx(stored["far"], abs=1e-6)
    assert np.mean(scores[same] >= stored["threshold"]) == pytest.approx(stored["tar"], abs=1e-6)


def test_calibrate_dry_run_writes_nothing(trained_arcface, people, tmp_path):
    import shutil

    model = tmp_path / "1"
    shutil.copytree(trained_arcface.export_dir, model)
    before = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    r = run_cli("calibrate", "--model", model, "--data", people, "--far", "0.01", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target_far"] == 0.01 and "not stored" in r.stderr
    after = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert after == before  # no metadata change, no calibration folder, no ROC
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_verify_reports_score_and_threshold(calibrated, people):
    model, calibration = calibrated
    a, b = sorted((people / "person_0").iterdir())[:2]
    r = run_cli("verify", a, b, "--model", model, "--crops")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["threshold"] == calibration["threshold"] and "calibrated at FAR 0.01" in answer["threshold_source"]
    assert answer["same_person"] == (answer["score"] >= answer["threshold"])
    same = run_cli("verify", a, a, "--model", model, "--crops", "--threshold", "0.99")
    assert json.loads(same.stdout)["same_person"] is True and json.loads(same.stdout)["score"] == pytest.approx(1, abs=1e-4)


def test_verify_without_a_threshold_says_how_to_get_one(trained_arcface, people):
    a = sorted((people / "person_0").iterdir())[0]
    r = run_cli("verify", a, a, "--model", trained_arcface.export_dir, "--crops")
    assert r.returncode == 2 and "facemtl calibrate" in r.stderr and "Traceback" not in r.stderr


def test_gallery_enrol_identify_list_remove(calibrated, people, tmp_path, trained):
    model, _ = calibrated
    store = tmp_path / "store"
    photos = {p.name: sorted(p.iterdir()) for p in people.iterdir()}
    for name in ("person_0", "person_1"):
        r = run_cli("gallery", "enroll", "team", name, *photos[name][:3], "--model", model, "--crops", "--store", store)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["enrolled"] == 3
    folder = store / "team.gallery"  # the embedded store: readable by its owner only
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "gallery.sqlite").st_mode) == 0o600

    def contents():
        return run_cli("gallery", "list", "team", "--store", store).stdout

    r = run_cli("gallery", "list", "team", "--store", store)
    assert json.loads(r.stdout)["people"] == {"person_0": 3, "person_1": 3}
    assert json.loads(run_cli("gallery", "list", "--store", store).stdout)["galleries"] == ["team"]

    probe = photos["person_1"][5]
    # The model path stored in a gallery file is never loaded: a model not installed with facemtl needs --model.
    r = run_cli("gallery", "identify", "team", probe, "--crops", "--store", store)
    assert r.returncode == 2 and "pass --model" in r.stderr
    r = run_cli("gallery", "identify", "team", probe, "--crops", "--store", store, "-k", "2", "--threshold", "-1",
                "--model", model)
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert [c["name"] for c in answer["candidates"]] and len(answer["candidates"]) == 2
    assert answer["name"] == answer["candidates"][0]["name"]  # threshold -1: never unknown
    r = run_cli("gallery", "identify", "team", probe, "--crops", "--store", store, "--threshold", "1.01",
                "--model", model)
    assert json.loads(r.stdout)["name"] == "unknown"

    # A model other than the gallery's is refused; the gallery stays as it was.
    before = contents()
    r = run_cli("gallery", "enroll", "team", "person_2", photos["person_2"][0], "--model", trained.export_dir,
                "--crops", "--store", store)
    assert r.returncode == 2 and "another model" in r.stderr and contents() == before

    # Bad photos are skipped and named; only bad photos: nothing changes.
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    r = run_cli("gallery", "enroll", "team", "person_2", junk, photos["person_2"][0], "--model", model, "--crops",
                "--store", store)
    assert r.returncode == 1 and "junk.png" in r.stderr and json.loads(r.stdout)["skipped"] == [str(junk)]
    before = contents()
    r = run_cli("gallery", "enroll", "team", "person_3", junk, "--model", model, "--crops", "--store", store)
    assert r.returncode == 2 and "gallery was not changed" in r.stderr and contents() == before

    r = run_cli("gallery", "remove", "team", "person_0", "--store", store)
    assert r.returncode == 0 and json.loads(r.stdout)["embeddings"] == 3
    r = run_cli("gallery", "rename", "team", "person_1", "Ann Lee", "--store", store)
    assert r.returncode == 0, r.stderr
    r = run_cli("gallery", "merge", "team", "person_2", "Ann Lee", "--store", store)
    assert r.returncode == 0 and json.loads(r.stdout)["photos_of_name"] == 4
    assert json.loads(contents())["people"] == {"Ann Lee": 4}
    r = run_cli("gallery", "rename", "team", "nobody", "Bob", "--store", store)
    assert r.returncode == 2 and "'nobody' is not enrolled" in r.stderr
    r = run_cli("gallery", "enroll", "../../etc", "x", photos["person_0"][0], "--model", model, "--crops",
                "--store", store)
    assert r.returncode == 2 and "Bad gallery name" in r.stderr


def test_gallery_commands_on_a_milvus_store(calibrated, people, tmp_path):
    """The same commands against Milvus (Milvus Lite: the real engine in a local folder) through a store URI."""
    pytest.importorskip("milvus_lite")
    from facemtl.recognition.stores import close_stores, open_store

    model, _ = calibrated
    store = f"milvus-lite:{tmp_path}/milvus/galleries.db"
    local = tmp_path / "local"
    photos = {p.name: sorted(p.iterdir()) for p in people.iterdir()}
    # Milvus Lite's server thread is started here, outside run_cli's redirected stdout/stderr (whose
    # objects it would keep writing to after the call): the commands reuse the process's one client.
    open_store(store)
    try:
        for name in ("person_0", "person_1", "person_2"):
            for where in (store, local):
                r = run_cli("gallery", "enroll", "team", name, *photos[name][:3], "--model", model, "--crops",
                            "--store", where)
                assert r.returncode == 0, r.stderr
        assert json.loads(run_cli("gallery", "list", "--store", store).stdout)["galleries"] == ["team"]
        probes = [photos[name][4] for name in ("person_0", "person_1", "person_3")]
        answers = {}
        for where in (store, local):
            r = run_cli("gallery", "identify", "team", *probes, "--crops", "--store", where, "-k", "3",
                        "--threshold", "0.5", "--model", model)
            assert r.returncode == 0, r.stderr
            answers[where] = [json.loads(line) for line in r.stdout.splitlines()]
        for milvus, embedded in zip(answers[store], answers[local]):  # the same answers from either engine
            assert [c["name"] for c in milvus["candidates"]] == [c["name"] for c in embedded["candidates"]]
            assert [c["score"] for c in milvus["candidates"]] == pytest.approx(
                [c["score"] for c in embedded["candidates"]], abs=1e-4)
        assert run_cli("gallery", "rename", "team", "person_1", "Ann Lee", "--store", store).returncode == 0
        assert run_cli("gallery", "merge", "team", "person_2", "Ann Lee", "--store", store).returncode == 0
        assert run_cli("gallery", "remove", "team", "person_0", "--store", store).returncode == 0
        assert json.loads(run_cli("gallery", "list", "team", "--store", store).stdout)["people"] == {"Ann Lee": 6}
        r = run_cli("gallery", "list", "--store", "milvus://:19530")
        assert r.returncode == 2 and "names a host" in r.stderr
    finally:
        close_stores()


def test_concurrent_enrolments_lose_nothing(calibrated, people, tmp_path):
    import subprocess
    import sys

    model, _ = calibrated
    store = tmp_path / "store"
    photos = {p.name: sorted(p.iterdir()) for p in people.iterdir()}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen([sys.executable, "-m", "facemtl", "gallery", "enroll", "team", name, *map(str, files[:2]),
                               "--model", str(model), "--crops", "--store", str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for name, files in photos.items()]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    r = run_cli("gallery", "list", "team", "--store", store)
    assert json.loads(r.stdout)["people"] == {name: 2 for name in photos}  # every process's enrolment kept


def test_enrol_from_photos_detects_faces_and_skips_faceless_ones(calibrated, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    model, _ = calibrated
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.jpg")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "coffee.jpg")
    store = tmp_path / "store"
    r = run_cli("gallery", "enroll", "crew", "Eileen Collins", tmp_path / "astronaut.jpg", tmp_path / "coffee.jpg",
                "--model", model, "--store", store)
    assert r.returncode == 1 and "coffee.jpg: no face found" in r.stderr
    assert json.loads(r.stdout)["enrolled"] == 1

    r = run_cli("gallery", "identify", "crew", tmp_path / "astronaut.jpg", tmp_path / "coffee.jpg", "--store", store,
                "--threshold", "0.5", "--model", model)
    assert r.returncode == 0, r.stderr
    astronaut, coffee = [json.loads(line) for line in r.stdout.splitlines()]
    assert [f["name"] for f in astronaut["faces"]] == ["Eileen Collins"] and coffee["faces"] == []
    assert astronaut["faces"][0]["detection_score"] > 0.9 and astronaut["faces"][0]["score"] > 0.99

    from facemtl.inference import FaceAnalyzer
    from facemtl.recognition.gallery import Gallery

    analyzer = FaceAnalyzer(str(model), gallery=Gallery.open("crew", str(store)))
    faces = analyzer.analyze([tmp_path / "astronaut.jpg"])[0]["faces"]
    assert len(faces) == 1 and faces[0]["match"]["name"] == "Eileen Collins"
    assert faces[0]["match"]["score"] == pytest.approx(1.0, abs=1e-3)


def test_analyze_with_a_gallery_names_the_enrolled_and_not_strangers(calibrated, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    model, _ = calibrated
    astronaut = skimage_data.astronaut()
    Image.fromarray(astronaut).save(tmp_path / "astronaut.jpg")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(tmp_path / "mirrored.jpg")
    store = tmp_path / "store"
    r = run_cli("gallery", "enroll", "crew", "Eileen Collins", tmp_path / "astronaut.jpg", "--model", model,
                "--store", store)
    assert r.returncode == 0, r.stderr
    answers = {}
    for threshold in ("-1", "1.01"):  # everyone matches / no one can
        r = run_cli("analyze", tmp_path / "mirrored.jpg", tmp_path / "astronaut.jpg", "--model", model,
                    "--gallery", "crew", "--store", store, "--threshold", threshold)
        assert r.returncode == 0, r.stderr
        answers[threshold] = [json.loads(line) for line in r.stdout.splitlines()]
    for photo in answers["-1"]:
        (face,) = photo["faces"]
        assert face["match"]["name"] == "Eileen Collins"
        assert face["match"]["candidates"][0]["name"] == "Eileen Collins"
    assert answers["-1"][1]["faces"][0]["match"]["score"] == pytest.approx(1.0, abs=1e-3)  # the enrolled photo
    assert [p["faces"][0]["match"]["name"] for p in answers["1.01"]] == ["unknown", "unknown"]
    r = run_cli("analyze", tmp_path / "astronaut.jpg", "--model", model, "--gallery", "nobody", "--store", store)
    assert r.returncode != 0 and "nobody" in r.stderr


def test_align_command_writes_crops_reports_and_reuses_them(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    src = tmp_path / "photos"
    (src / "eileen").mkdir(parents=True)
    (src / "cups").mkdir()
    Image.fromarray(skimage_data.astronaut()).save(src / "eileen" / "portrait.jpg")
    Image.fromarray(skimage_data.coffee()).save(src / "cups" / "coffee.jpg")
    (src / "cups" / "broken.jpg").write_bytes(b"not a jpeg")
    r = run_cli("align", src, tmp_path / "crops", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "1 aligned, 0 already cached, 1 without a face, 1 unreadable" in r.stderr
    assert "broken.jpg" in r.stderr and "coffee.jpg" in r.stderr
    crop_path = tmp_path / "crops" / "eileen" / "portrait.png"
    crop = np.asarray(Image.open(crop_path))
    assert crop.shape == (64, 64, 3) and sorted(p.name for p in (tmp_path / "crops").rglob("*.png")) == ["portrait.png"]
    # The crop FaceAnalyzer would make of the same photo (BlazeFace, arcface layout, 64 px).
    from facemtl.faces.align import align_face
    from facemtl.faces.detect import get_detector
    from facemtl.images import load_image

    image = load_image(src / "eileen" / "portrait.jpg", max_side=2048)
    (face,) = get_detector("blazeface").detect(image)
    np.testing.assert_array_equal(crop, align_face(image, face.landmarks, (64, 64), points=face.points)[0])
    r = run_cli("align", src, tmp_path / "crops", "--size", "64")
    assert "0 aligned, 1 already cached" in r.stderr


@pytest.mark.shared_data
def test_calibrate_aligns_real_photos_and_dry_run_writes_nothing(tmp_path):
    """`calibrate --align --dry-run` on the LFW subset's photos with the release model."""
    import shutil

    from facemtl.installed import default_model
    from tests.helpers import SHARED_DATA

    model = tmp_path / "release" / "1"
    shutil.copytree(default_model(), model)
    before = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    r = run_cli("calibrate", "--model", model, "--data", os.path.join(SHARED_DATA, "lfw_subset"), "--split", "test",
                "--align", "--far", "0.01", "--dry-run")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["people"] == 12 and answer["images"] >= 60 and 0.5 < answer["threshold"] < 1
    assert answer["far"] <= 0.01 and answer["tar"] > 0.8  # dlib's embedding on aligned LFW faces
    assert {p: p.read_bytes() for p in model.rglob("*") if p.is_file()} == before  # nothing written
