"""The command line as users run it: `facemtl train` and `facemtl predict` in subprocesses (the real entry point),
error messages and the other commands in this process (`run_cli_here`: the same `main`, no start-up per call)."""

import json
import os
import subprocess
import sys

import pytest

from facemtl.errors import FacemtlError
from facemtl.labels import EXPRESSIONS
from tests.helpers import QUICKSTART, REPO, run_cli, run_cli_here, tiny_overrides


def test_missing_recipe_is_a_clear_error(tmp_path):
    r = run_cli_here("train", tmp_path / "missing.yaml")
    assert r.returncode == 2
    assert "facemtl: error: Recipe file not found" in r.stderr and "Traceback" not in r.stderr


def test_unknown_backbone_is_a_clear_error():
    r = run_cli_here("train", QUICKSTART, "--set", "model.backbone=resnet101")
    assert r.returncode == 2
    assert "model.backbone='resnet101'" in r.stderr and "Traceback" not in r.stderr


def test_bad_model_dir_for_predict(tmp_path, face_files):
    r = run_cli_here("predict", tmp_path, face_files["rgb"])
    assert r.returncode == 2 and "not a SavedModel" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_train_smoke_then_predict(tmp_path, face_files):
    # Training through the CLI's own entry in this process (the kill -9 test runs `python -m facemtl train`).
    r = run_cli_here("train", QUICKSTART, "--smoke", *sum((["--set", o] for o in tiny_overrides(tmp_path)), []))
    assert r.returncode == 0, r.stderr
    export = tmp_path / "saved_models" / "quickstart" / "1"
    assert (export / "saved_model.pb").is_file()
    run_dirs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(run_dirs) == 1
    for name in ("recipe.yaml", "history.csv", "summary.json", "training_curves.png", "checkpoints/best.keras",
                 "test/report.json", "test/confusion_expression.png"):
        assert (run_dirs[0] / name).is_file(), name
    import importlib.util

    # TensorBoard's event files where its package is installed (it is not a dependency), none otherwise.
    events = list((run_dirs[0] / "logs").rglob("events.out.tfevents*"))
    assert bool(events) == (importlib.util.find_spec("tensorboard") is not None)

    r = run_cli("predict", export, face_files["rgb"], face_files["gray"], face_files["rgba"], face_files["text"])
    assert r.returncode == 1  # one file could not be read
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    by_path = {os.path.basename(d["path"]): d for d in lines}
    assert "not a readable image" in by_path["notes.png"]["error"]
    assert "notes.png" in r.stderr and "Traceback" not in r.stderr
    for name in ("rgb.png", "gray.jpg", "rgba.png"):
        answer = by_path[name]
        assert answer["expression"]["label"] in EXPRESSIONS
        assert set(answer["expression"]["probabilities"]) == set(EXPRESSIONS)
        assert sum(answer["expression"]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert answer["identity"]["label"].startswith("person_")
        assert 0 < answer["identity"]["probability"] <= 1
        assert answer["embedding_size"] == 16 and "embedding" not in answer


@pytest.mark.slow
def test_evaluate_a_run_and_a_saved_model(trained, tmp_path, monkeypatch):
    r = run_cli_here("evaluate", trained.run_dir, "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    assert "expression: accuracy" in r.stdout and "identity: accuracy" in r.stdout and "precision" in r.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    # Same data, same weights: the export's accuracy equals the in-training test report.
    for task in ("identity", "expression"):
        assert report[task]["accuracy"] == pytest.approx(trained.test_report[task]["accuracy"], abs=1e-9)
    assert (tmp_path / "eval" / "confusion_expression.png").is_file()
    r = run_cli_here("evaluate", trained.export_dir, "--out", tmp_path / "eval2")
    assert r.returncode == 0, r.stderr
    # No --out, from another directory: the report goes beside the version folder, never into it.
    export = os.path.abspath(trained.export_dir)
    monkeypatch.chdir(tmp_path)
    r = run_cli_here("evaluate", export)
    assert r.returncode == 0, r.stderr
    beside = os.path.join(os.path.dirname(export), f"eval-{os.path.basename(export)}-test")
    assert os.path.isfile(os.path.join(beside, "report.json"))
    assert not [name for name in os.listdir(export) if name.startswith("eval")]
    r = run_cli_here("evaluate", tmp_path)
    assert r.returncode == 2 and "neither a SavedModel" in r.stderr


def test_evaluate_an_unfinished_run_is_a_clear_error(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: x\n")  # a run folder whose training never finished
    r = run_cli_here("evaluate", tmp_path)
    assert r.returncode == 2 and "no summary.json (it did not finish)" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_analyze_is_quiet_ignores_non_images_in_folders_and_succeeds(tmp_path):
    """The shipped model on a real photo beside a non-image file, as a new user runs it (no TF_CPP_* set)."""
    from PIL import Image
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.jpg", quality=95)
    (photos / "astronaut.txt").write_text("notes beside the photo\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    env["FACEMTL_NATIVE_LOG"] = str(tmp_path / "native.log")

    def analyze(*extra):
        return subprocess.run([sys.executable, "-m", "facemtl", "analyze", str(photos), *extra],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=600)

    r = analyze()
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    # Only facemtl's own lines: its progress bar and its summary, nothing from TensorFlow, absl, oneDNN or LiteRT.
    assert lines and all(line.startswith(("facemtl:", "analyze [")) for line in lines), lines
    assert "1 file(s) in folders ignored" in r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [os.path.basename(rec["path"]) for rec in records] == ["astronaut.jpg"]
    assert records[0]["faces"][0]["identity"]["label"] == "unknown"  # a stranger to the 12 trained people
    verbose = analyze("--verbose")
    assert verbose.returncode == 0 and len(verbose.stderr.splitlines()) > len(lines)


def test_version_is_printed():
    from facemtl import __version__

    r = run_cli_here("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"facemtl {__version__}"


def test_commands_without_a_model_answer_before_tensorflow_is_imported():
    # One fresh process for the three commands: after each, whether TensorFlow or Keras has been imported.
    argvs = [["models"], ["train", "no-such-recipe.yaml"], ["train", "recipes/quickstart.yaml", "--set",
                                                           "train.epochz=3"]]
    code = ("import sys; from facemtl.cli import main\n"
            f"for argv in {argvs!r}:\n"
            "    main(argv)\n"
            "    print('LOADED', argv if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'no TF')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    loaded = [line for line in r.stdout.splitlines() if line.startswith("LOADED")]
    assert loaded == ["LOADED no TF"] * 3, (loaded, r.stderr)


def test_an_unwritable_home_is_one_line_naming_it_and_the_variable(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    home = tmp_path / "a_file" / "home"  # under a file: no user, root included, can write there
    monkeypatch.setenv("FACEMTL_HOME", str(home))
    monkeypatch.delenv("FACEMTL_GALLERIES", raising=False)
    from facemtl.recognition.stores import default_store, open_store

    assert default_store() == str(home / "galleries")  # FACEMTL_HOME moves the galleries too
    with pytest.raises(FacemtlError, match=f"^{home / 'galleries'}: cannot write galleries there .*set "
                                           "FACEMTL_GALLERIES or FACEMTL_HOME"):
        open_store(str(home / "galleries")).create("g", {"model_id": "m", "embedding_dim": 2})
    from facemtl.export.cache import saved_model_for

    with pytest.raises(FacemtlError, match=f"^{home / 'pretrained'}: cannot write the model cache there "
                                           r"\(not a directory\); set FACEMTL_HOME"):
        saved_model_for("release")
    monkeypatch.setenv("FACEMTL_GALLERIES", str(tmp_path / "elsewhere"))
    assert default_store() == str(tmp_path / "elsewhere")  # its own variable wins


def test_the_native_log_is_bounded(tmp_path, monkeypatch):
    from facemtl import quiet

    log = tmp_path / "native.log"
    log.write_bytes(b"x" * (quiet.MAX_LOG_BYTES + 1))
    monkeypatch.setenv("FACEMTL_NATIVE_LOG", str(log))
    code = "from facemtl.quiet import route_native_logs; route_native_logs()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=os.environ.copy())
    assert (tmp_path / "native.log.1").stat().st_size == quiet.MAX_LOG_BYTES + 1
    assert log.stat().st_size < quiet.MAX_LOG_BYTES


def test_every_option_has_help_text():
    import argparse

    from facemtl.cli import build_parser

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{where} {name}")
            elif action.option_strings and action.dest != "help":
                yield where, action

    missing = [f"{where} {'/'.join(a.option_strings)}" for where, a in walk(build_parser(), "facemtl") if not a.help]
    assert not missing, missing


def test_the_docs_ship_and_a_page_prints():
    r = run_cli_here("docs")
    pages = [line.split()[0] for line in r.stdout.splitlines()]
    assert r.returncode == 0 and {"pipelines", "serving", "identity"} <= set(pages)
    r = run_cli_here("docs", "pipelines")
    assert r.returncode == 0 and r.stdout.startswith("# Photo collections on Apache Beam")
    r = run_cli_here("docs", "nope")
    assert r.returncode == 2 and "No page 'nope'; the pages: age_gender" in r.stderr


def test_the_sdist_holds_what_the_wheel_and_the_tests_need(tmp_path, monkeypatch):
    """The real sdist (setuptools' own build backend): every test folder with its conftest, docs, recipes, licences."""
    import glob
    import tarfile

    from setuptools import build_meta

    monkeypatch.chdir(REPO)
    name = build_meta.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tar:
        files = {"/".join(m.split("/")[1:]) for m in tar.getnames()}
    wanted = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "**", "*.py"), recursive=True)}
    assert wanted and wanted <= files, sorted(wanted - files)
    for needed in ("LICENSE", "NOTICE", "README.md", "pyproject.toml", "docs/pipelines.md", "recipes/quickstart.yaml",
                   "facemtl/recipes/quickstart.yaml", "facemtl/docs/serving.md", "facemtl/pretrained/MODEL_CARD.md",
                   ".ci/run"):
        assert needed in files, needed


def test_quiet_logs_keep_facemtls_own_warnings():
    """Beam's root-logger chatter is hidden; a skipped-files warning of facemtl's is not."""
    code = ("import logging, os; from facemtl.quiet import route_native_logs; route_native_logs(); "
            "logging.getLogger('facemtl.data').warning('train: skipped 2 unreadable images'); "
            "record = logging.LogRecord('root', logging.WARNING, os.path.join('x', 'apache_beam', 'io.py'), 1, "
            "'apitools not found', None, None); logging.getLogger().handle(record)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "FACEMTL_NATIVE_LOG": os.devnull})
    assert "train: skipped 2 unreadable images" in r.stderr and "apitools" not in r.stderr, r.stderr
