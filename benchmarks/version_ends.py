"""The test suite at the low end of the TensorFlow and Keras ranges pyproject.toml allows.

CI runs the high end (pip picks the newest release in range); this installs the project with its
`[test]` extra into a fresh venv, TensorFlow and Keras held at the range's lowest releases by a
constraints file, and runs the README's test command there.

Usage:
    python benchmarks/version_ends.py                      # tensorflow-cpu 2.20.0, keras 3.12.0
    python benchmarks/version_ends.py --tensorflow 2.21.0 --keras 3.15.1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensorflow", default="2.20.0")
    parser.add_argument("--keras", default="3.12.0")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (default: the whole suite)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="facemtl-versions-")
    constraints = os.path.join(work, "constraints.txt")
    with open(constraints, "w", encoding="utf-8") as f:
        f.write(f"tensorflow-cpu=={args.tensorflow}\nkeras=={args.keras}\n")
    venv = os.path.join(work, "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", f"{REPO}[test]", "-c", constraints], check=True)
    versions = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('tensorflow-cpu'), "
                               "m.version('keras'))"], capture_output=True, text=True, check=True).stdout.split()
    print(f"== tensorflow-cpu {versions[0]}, keras {versions[1]}", flush=True)
    start = time.time()
    code = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args.pytest_args], cwd=REPO,
                          env={**os.environ, "FACEMTL_HOME": os.path.join(work, "home")}).returncode
    print(f"== pytest exit status {code} in {time.time() - start:.0f} s (tensorflow-cpu {versions[0]}, "
          f"keras {versions[1]})")
    sys.exit(code)


if __name__ == "__main__":
    main()
