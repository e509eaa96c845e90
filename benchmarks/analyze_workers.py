"""`facemtl analyze` on 1,000 real photos: one photo stream against several sharing the cores.

`analyze_files` (what `facemtl analyze` runs) answers batches of photos on `workers` threads, each making
LiteRT interpreters with its share of the cores (`litert.split_cores`). `workers=1` is how it ran before
(one stream, 2-thread interpreters on 2 cores). The arms alternate over the same photos (decoding, detection,
alignment and the model included), each twice; photos/s is the median. The records of every arm must be equal
(checked here: the answers do not depend on the workers).

With `--base`, the base also runs as `facemtl analyze` ran when issue #31 was filed: one stream, each batch's faces
answered one after another on the stream's 2-thread interpreter (`TFLitePredictor` shares a batch out among
one-thread interpreters since commit `0762bae`); that arm comes first and every arm is compared with it.

    python benchmarks/analyze_workers.py [--photos 1000] [--workers 1 2 4] [--base PREVIOUS_RELEASE_FOLDER]

Results: runs/benchmarks/analyze_workers.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import cpu_name, git_commit, write_results  # noqa: E402

CELEBA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "celeba_subset", "img_celeba")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base", help="another model (e.g. the previous release's preset folder): its arms run "
                                       "on the same photos in the same rounds, and every arm is also compared with "
                                       "its first arm (the base with the first --workers: how analyze ran before)")
    parser.add_argument("--out", default="runs/benchmarks/analyze_workers.json")
    args = parser.parse_args()
    from facemtl.inference import FaceAnalyzer, analyze_files

    paths = sorted(glob.glob(os.path.join(CELEBA, "*.jpg")))[:args.photos]
    if len(paths) < args.photos:
        raise SystemExit(f"{CELEBA}: {len(paths)} photos, {args.photos} asked for")
    models = {**({"base": FaceAnalyzer(args.base)} if args.base else {}), "release": FaceAnalyzer()}
    arms = [(m, w) for m in models for w in args.workers]
    if args.base:
        in_turn = FaceAnalyzer(args.base)
        lite = in_turn.predictor._lite
        lite.run = lambda images: lite._run(lite.resize(images))  # the faces one after another, this thread's
        models["base, faces in turn"] = in_turn
        arms.insert(0, ("base, faces in turn", 1))
    for analyzer in models.values():
        list(analyze_files(analyzer, paths[:32], progress=False))  # warm-up: the model and the detector loaded
    seconds, answers = {a: [] for a in arms}, {}
    for _ in range(args.rounds):
        for m, w in arms:
            t = time.perf_counter()
            records = [r for r, _ in analyze_files(models[m], paths, progress=False, workers=w)]
            seconds[m, w].append(time.perf_counter() - t)
            answers[m, w] = json.dumps(records, sort_keys=True)
    # The answers do not depend on the workers (per model; two models answer differently).
    families = {m.split(",")[0] for m in models}  # "base, faces in turn" answers as "base"
    same = all(len({a for (m, _), a in answers.items() if m.split(",")[0] == f}) == 1 for f in families)
    rows = {f"{m} workers={w}": {"photos_per_s": round(len(paths) / float(np.median(s)), 1)}
            for (m, w), s in seconds.items()}
    first = rows[next(iter(rows))]["photos_per_s"]
    for row in rows.values():
        row["vs_first"] = round(row["photos_per_s"] / first, 2)
    for name, row in rows.items():
        print(f"{name:32s} {row['photos_per_s']:7.1f} photos/s  x{row['vs_first']}")
    print(f"records equal across workers: {same}")
    write_results(args.out, {"cpu": cpu_name(), "cores": os.cpu_count(), "commit": git_commit(), "photos": len(paths),
                             "faces": sum(len(r.get("faces", [])) for r in json.loads(answers[arms[-1]])),
                             "base": args.base, "arms": rows, "records_equal": same})


if __name__ == "__main__":
    main()
