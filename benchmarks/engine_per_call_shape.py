"""Which engine answers a face: speed at each call shape, and how far apart their answers are.

The release model's two engines: its SavedModel (`serving_default`, float32) and its LiteRT copy
(`assets.extra/model.tflite`, int8 weights, one face per invocation). For batches of 1, 4, 16 and 64
real face chips (UTKFace's aligned faces, through the release's own framing), faces/s through
`Predictor.run` of each engine, alternating rounds, medians. Then, over `--faces` real faces, how far
each engine's answers are from the SavedModel's (age in years, probabilities) and how far a face's
answer alone is from its answer in a batch of 64 under `backend="auto"`.

`--cli N` also checks the command line: `facemtl analyze` on N real photos one per call, against
one call on all of them (a folder), age and probability differences per face.

Usage:
    python benchmarks/engine_per_call_shape.py --data ../shared/data --out runs/engine_per_call_shape
    python benchmarks/engine_per_call_shape.py --data ../shared/data --cli 500 --only-cli
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _runs import cpu_name, git_commit, write_results  # noqa: E402

KEYS = ("expression_probs", "identity_probs", "gender_probs")


def chips(data, n):
    """`n` real faces framed as the release model frames crops (`Predictor.frame_crops`)."""
    from facemtl.images import load_image
    from facemtl.inference import Predictor

    paths = sorted(glob.glob(os.path.join(data, "utkface", "images", "*.jpg")))[::7][:n]
    predictor = Predictor(backend="savedmodel")
    framed, found = predictor.frame_crops([load_image(p) for p in paths])
    return [c for c, ok in zip(framed, found) if ok]


def rate(predictor, crops, batch, seconds=3.0):
    """Faces/s of `predictor.run` on batches of `batch` crops, for about `seconds`."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(crops) - batch + 1, batch):
            predictor.run(crops[i:i + batch])
            done += batch
            if time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def gaps(a, b):
    """Largest and mean differences between two engines' outputs for the same faces."""
    age = np.array([abs(float(x["age"]) - float(y["age"])) for x, y in zip(a, b)])
    prob = np.array([max(float(np.max(np.abs(x[k] - y[k]))) for k in KEYS) for x, y in zip(a, b)])
    labels = np.mean([x["expression"] == y["expression"] and x["gender"] == y["gender"] for x, y in zip(a, b)])
    return {"age_max": round(float(age.max()), 3), "age_mean": round(float(age.mean()), 3),
            "prob_max": round(float(prob.max()), 4), "labels_equal": round(float(labels), 4)}


def cli_check(data, n):
    """`facemtl analyze` one photo per call against one call on a folder of the same photos."""
    import json
    import subprocess
    import tempfile

    paths = sorted(glob.glob(os.path.join(data, "utkface", "images", "*.jpg")))[3::11][:n]
    folder = tempfile.mkdtemp(prefix="one-vs-many-")
    for i, p in enumerate(paths):
        os.symlink(os.path.abspath(p), os.path.join(folder, f"{i:05d}.jpg"))
    command = [sys.executable, "-m", "facemtl", "analyze"]

    def faces(out):
        return [json.loads(line) for line in out.splitlines()]

    together = {os.path.basename(r["path"]): r["faces"] for r in
                faces(subprocess.run(command + [folder], capture_output=True, text=True, check=True).stdout)}
    ages, probs, labels, compared = [], [], 0, 0
    for name in sorted(together):
        [alone] = faces(subprocess.run(command + [os.path.join(folder, name)], capture_output=True, text=True,
                                       check=True).stdout)
        for a, b in zip(alone["faces"], together[name]):
            ages.append(abs(a["age"] - b["age"]))
            probs.append(max(abs(a["expression"]["probabilities"][k] - b["expression"]["probabilities"][k])
                             for k in a["expression"]["probabilities"]))
            labels += a["expression"]["label"] == b["expression"]["label"] and a["gender"]["label"] == b["gender"]["label"]
            compared += 1
    return {"photos": len(paths), "faces": compared, "age_max": max(ages), "prob_max": max(probs),
            "labels_equal": labels / max(compared, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--faces", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/engine_per_call_shape")
    parser.add_argument("--cli", type=int, default=0, help="photos for the command-line check (0: none)")
    parser.add_argument("--only-cli", action="store_true", help="only the command-line check")
    args = parser.parse_args()
    if args.cli:
        results = {"cpu": cpu_name(), "commit": git_commit(), "cli_one_per_call_vs_folder": cli_check(args.data,
                                                                                                       args.cli)}
        if args.only_cli:
            write_results(os.path.join(args.out, "cli.json"), results)
            return

    from facemtl.inference import Predictor

    crops = chips(args.data, args.faces)
    engines = {"savedmodel": Predictor(backend="savedmodel"), "tflite": Predictor(backend="tflite")}
    speed = {name: {} for name in engines}
    for batch in (1, 4, 16, 64):
        runs = {name: [] for name in engines}
        for _ in range(args.rounds):  # alternating: both see the same noise
            for name, predictor in engines.items():
                runs[name].append(rate(predictor, crops[:256], batch))
        for name in engines:
            speed[name][batch] = round(float(np.median(runs[name])), 1)
        print(batch, {name: speed[name][batch] for name in engines}, flush=True)
    saved = engines["savedmodel"].run(crops)
    lite = engines["tflite"].run(crops)
    auto = Predictor()
    alone = [auto.run([c])[0] for c in crops]
    batched = auto.run(crops)
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "commit": git_commit(), "faces": len(crops),
               "command": "python benchmarks/engine_per_call_shape.py --data ../shared/data",
               "faces_per_s": speed, "tflite_vs_savedmodel": gaps(lite, saved),
               "auto_alone_vs_batch": gaps(alone, batched)}
    write_results(os.path.join(args.out, "results.json"), results)


if __name__ == "__main__":
    main()
