"""Shared by the benchmarks that train several arms of a recipe: one `facemtl train` process per arm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def write_results(path, results):
    """Writes a benchmark's results as indented JSON to `path` (folders made) and prints them."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


def train_arm(recipe, folder, overrides, export=False):
    """Runs `facemtl train recipe` into `folder` with `overrides`; returns its summary.json (plus `wall_s`)."""
    args = [sys.executable, "-m", "facemtl", "train", recipe, "--set", f"output_dir={folder}",
            "--set", f"export.enabled={'true' if export else 'false'}", "--set", "train.backup=false",
            "--set", f"export.base_dir={os.path.join(folder, 'saved_models')}"]
    for o in overrides:
        args += ["--set", o]
    print(f"== {folder}: {' '.join(args[3:])}", flush=True)
    start = time.time()
    subprocess.run(args, check=True)
    summaries = [os.path.join(root, "summary.json") for root, _, files in os.walk(folder) if "summary.json" in files]
    with open(max(summaries, key=os.path.getmtime), encoding="utf-8") as f:
        summary = json.load(f)
    summary["wall_s"] = round(time.time() - start, 1)
    return summary
