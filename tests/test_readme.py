"""The README's first code block, run as a new user runs it, gives the output the README shows."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

README = os.path.join(REPO, "README.md")


def blocks(language):
    text = open(README, encoding="utf-8").read()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def keys(value):
    """The shape of a JSON value: dicts by their keys (recursively), lists by their items' shapes."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(v) for v in value]
    return type(value).__name__ if not isinstance(value, (int, float)) else "number"


def test_readme_is_short():
    assert len(open(README, encoding="utf-8").read().splitlines()) <= 250


@pytest.mark.slow
def test_the_first_code_block_gives_the_output_shown(tmp_path):
    from PIL import Image
    from skimage import data

    first = blocks("bash")[0].splitlines()
    commands = [line for line in first if line.startswith("facemtl ")]
    assert commands == ["facemtl analyze astronaut.jpg"], first
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.jpg", quality=95)
    r = subprocess.run([sys.executable, "-m", "facemtl", *shlex.split(commands[0])[1:]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    shown = json.loads(blocks("json")[0])
    assert keys(got) == keys(shown)
    face, shown_face = got["faces"][0], shown["faces"][0]
    for field in ("expression", "identity"):
        assert face[field]["label"] == shown_face[field]["label"]
    assert face["identity"]["closest"] == shown_face["identity"]["closest"]
    np.testing.assert_allclose(face["box"], shown_face["box"], atol=2)
    assert face["identity"]["similarity"] == pytest.approx(shown_face["identity"]["similarity"], abs=0.01)
