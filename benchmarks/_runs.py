"""Shared by the benchmarks that train several arms of a recipe: one `facemtl train` process per arm."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time


def cpu_name():
    """The CPU's model name as `lscpu` prints it (figures differ 3-4x between machines)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def git_commit():
    """The short hash of the checked-out commit a result was measured on."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def best_ms(fn, repeats):
    """The fastest of `repeats` calls, in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def box_iou(a, b):
    """Intersection over union of two `(x, y, w, h)` boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    w = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    h = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    return w * h / (aw * ah + bw * bh - w * h)


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
