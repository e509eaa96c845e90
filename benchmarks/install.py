"""A new user's first minutes: install the wheel into a fresh venv, then the first commands, from outside the clone.

Steps, each timed (wall): build the wheel (`pip wheel --no-deps .`); `pip install <wheel>` into a
fresh venv (dependencies from the package index or pip's cache, as a user's pip finds them) and the
venv's size on disk; then, from an empty temporary folder with an empty `FACEMTL_HOME`: `facemtl
--version`, `facemtl models`, the first `facemtl analyze PHOTO` (scikit-image's astronaut photo,
written as JPEG) and a second one; `facemtl train quickstart` (which needs TensorFlow: its one-line
error); then `pip install <wheel>[cpu]` (TensorFlow and Keras) and the venv's size again.

Targets (issue #29): install at most 1 min and 1.5 GB; first analyze at most 8 s, later ones 5 s;
`models` and `--version` at most 1 s.

Usage:
    python benchmarks/install.py --out runs/install
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _runs import cpu_name, git_commit, write_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(args, **kwargs):
    start = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return round(seconds, 2), r


def folder_size(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


SIZES = """
import importlib.metadata as md, json, os
out = {}
for dist in md.distributions():
    total = 0
    for f in dist.files or []:
        try:
            total += os.path.getsize(dist.locate_file(f))
        except OSError:
            pass
    out[dist.metadata["Name"]] = round(total / 2**20, 1)
print(json.dumps(dict(sorted(out.items(), key=lambda kv: -kv[1])[:20])))
"""


def distribution_sizes(python):
    """The 20 largest installed distributions of a venv, MB on disk each."""
    import json

    return json.loads(subprocess.run([python, "-c", SIZES], capture_output=True, text=True, check=True).stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/install")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="facemtl-install-")
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "commit": git_commit(),
               "command": "python benchmarks/install.py", "python": sys.version.split()[0]}
    results["wheel_s"], _ = timed([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                                   os.path.join(work, "dist"), REPO])
    wheel = glob.glob(os.path.join(work, "dist", "facemtl-*.whl"))[0]
    results["wheel_mb"] = round(os.path.getsize(wheel) / 2**20, 1)
    venv = os.path.join(work, "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    results["install_s"], _ = timed([os.path.join(venv, "bin", "pip"), "install", "-q", wheel])
    results["venv_gb"] = round(folder_size(venv) / 2**30, 2)
    results["largest_mb"] = distribution_sizes(os.path.join(venv, "bin", "python"))

    from PIL import Image
    from skimage import data

    here = os.path.join(work, "elsewhere")  # not the clone: nothing of the repository is on the path
    os.makedirs(here)
    Image.fromarray(data.astronaut()).save(os.path.join(here, "astronaut.jpg"), quality=95)
    env = {**os.environ, "FACEMTL_HOME": os.path.join(work, "home")}
    env.pop("PYTHONPATH", None)
    facemtl = os.path.join(venv, "bin", "facemtl")
    for name, argv in (("version_s", ["--version"]), ("models_s", ["models"]),
                       ("first_analyze_s", ["analyze", "astronaut.jpg"]), ("second_analyze_s", ["analyze", "astronaut.jpg"])):
        results[name], r = timed([facemtl, *argv], cwd=here, env=env)
        if name == "first_analyze_s":
            results["first_answer"] = r.stdout.strip()[:200]
    r = subprocess.run([facemtl, "train", "quickstart", "--smoke"], cwd=here, env=env, capture_output=True, text=True)
    results["train_without_tensorflow"] = {"status": r.returncode, "stderr": r.stderr.strip()}
    results["install_cpu_s"], _ = timed([os.path.join(venv, "bin", "pip"), "install", "-q", f"{wheel}[cpu]"])
    results["venv_cpu_gb"] = round(folder_size(venv) / 2**30, 2)
    results["home_written_mb"] = round(folder_size(env["FACEMTL_HOME"]) / 2**20, 1) \
        if os.path.isdir(env["FACEMTL_HOME"]) else 0.0
    targets = {"install_s": 60, "venv_gb": 1.5, "first_analyze_s": 8, "second_analyze_s": 5, "models_s": 1,
               "version_s": 1}
    results["meets"] = {k: results[k] <= v for k, v in targets.items()}
    write_results(os.path.join(args.out, "results.json"), results)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
