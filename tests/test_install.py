"""The wheel as a new user gets it: built, installed into a fresh venv, used from outside the clone."""

import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # a venv, the wheel's dependencies from pip's cache: about 40 s


def test_the_installed_wheel_analyzes_without_tensorflow_and_trains_with_it(tmp_path):
    from PIL import Image
    from skimage import data

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), REPO],
                   check=True)
    [wheel] = (tmp_path / "dist").glob("facemtl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True)

    here = tmp_path / "elsewhere"  # no clone in sight: recipes, docs and the model come from the wheel
    here.mkdir()
    Image.fromarray(data.astronaut()).save(here / "astronaut.jpg", quality=95)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FACEMTL_GALLERIES")}
    env["FACEMTL_HOME"] = str(tmp_path / "home")

    def facemtl(*args, status=0):
        r = subprocess.run([str(venv / "bin" / "facemtl"), *args], cwd=here, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == status, (args, r.stderr[-3000:])
        return r

    assert "quickstart" in facemtl("recipes").stdout
    assert facemtl("docs", "install").stdout.startswith("# Installing facemtl")
    answer = json.loads(facemtl("analyze", "astronaut.jpg").stdout)
    assert len(answer["faces"]) == 1 and answer["faces"][0]["expression"]["label"] == "happy"
    assert not (tmp_path / "home").exists()  # the first answer wrote nothing: no SavedModel from the preset
    assert not list(venv.glob("lib/python*/site-packages/tensorflow*"))  # and needed no TensorFlow
    r = facemtl("train", "quickstart", "--smoke", status=2)
    assert r.stderr.strip().splitlines() == [
        'facemtl: error: `facemtl train` needs TensorFlow, which is not installed: pip install "facemtl[cpu]" (or '
        '"facemtl[gpu]"; any tensorflow 2.21 with keras 3.15 works)']
    # The TensorFlow the user already has (here: this suite's, seen through a .pth file) satisfies the cpu extra:
    # pip keeps it (pyproject.toml's promise) instead of installing 1.3 GB again.
    [site] = venv.glob("lib/python*/site-packages")
    (site / "outer_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", f"{wheel}[cpu]"], check=True, capture_output=True,
                         text=True).stdout
    # The extra asks for TensorFlow and Keras, and pip found this suite's in its ranges: it installed neither.
    for wanted in ("tensorflow(-cpu)?", "keras"):
        assert re.search(rf"Requirement already satisfied: {wanted}[<>=!,.\d]* in .* \(from facemtl==", pip), (
            wanted, pip[-3000:])
    assert not list(site.glob("tensorflow*")) and not list(site.glob("keras*"))
    facemtl("train", "quickstart", "--smoke")
    exports = list((here / "runs" / "smoke" / "saved_models" / "quickstart").glob("*/saved_model.pb"))
    assert exports, list(here.rglob("*"))[:20]
