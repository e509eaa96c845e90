"""Age and gender of a release model on UTKFace's held-out faces, its bias table, and what the heads cost.

The faces go through the served path for face crops (`Predictor.predict`: each
128-px crop framed as a photo is, BlazeFace on it upscaled to 160 px then dlib's
chip, then `serving_default`). UTKFace's test split is the fixed one
(`facemtl.data.utkface`, 10% by file-name hash), never used to train or choose.

With `--base` (the release without the heads, e.g. release 3 written from its
preset) the same faces and FER2013 PublicTest crops also go through it, side by
side: the largest difference of every shared output (expression, identity,
embedding), and the cost of a forward pass per face, as the ratio of the two
models' median times on the same batches, timed in alternation.

    python benchmarks/age_gender.py --model runs/.../release/4 --base ~/.cache/facemtl/pretrained/release/3
    python benchmarks/age_gender.py --backend tflite --out runs/age_gender_tflite.json   # the LiteRT copy

UTKFace's terms allow non-commercial research only.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import cpu_name, git_commit, write_results  # noqa: E402

DATA = "../shared/data"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="the export with age and gender (default: the release)")
    parser.add_argument("--base", default=None, help="the same model without the heads, for the side-by-side check")
    parser.add_argument("--backend", choices=["savedmodel", "tflite"], default="savedmodel",
                        help="tflite: the export's LiteRT copy, one face per call (what FaceAnalyzer runs for one face)")
    parser.add_argument("--limit", type=int, help="test faces to use (default: all)")
    parser.add_argument("--fer", type=int, default=500, help="FER2013 PublicTest crops in the side-by-side check")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per model (alternating)")
    parser.add_argument("--out", default="runs/age_gender.json")
    args = parser.parse_args()

    from facemtl.data.utkface import GENDERS, RACES, load_faces, read_utkface
    from facemtl.inference import Predictor

    faces = read_utkface(os.path.join(DATA, "utkface"))
    test = faces.subset(np.flatnonzero(faces.test)[:args.limit])
    images, kept = load_faces(test)
    age, gender, race = test.age[kept], test.gender[kept], test.race[kept]
    predictor = Predictor(args.model, backend=args.backend)
    meta = predictor.metadata
    tasks = {t["name"]: t for t in meta.get("attributes", [])}
    if "age" not in tasks or "gender" not in tasks:
        raise SystemExit(f"{predictor.path}: no age and gender heads (attributes: {sorted(tasks)})")
    start = time.time()
    framed, found = predictor.frame_crops(list(images))
    raw = predictor.run(framed)
    seconds = time.time() - start
    predicted_age = np.array([r["age"] for r in raw], np.float32)
    # The export's gender classes, in its order, onto UTKFace's indices.
    order = [tasks["gender"]["classes"].index(g) for g in GENDERS]
    predicted_gender = np.array([order.index(int(np.argmax(r["gender_probs"]))) for r in raw])

    def score(mask):
        return {"faces": int(mask.sum()), "age_mae": round(float(np.abs(predicted_age[mask] - age[mask]).mean()), 3),
                "gender_accuracy": round(float((predicted_gender[mask] == gender[mask]).mean()), 4)}

    everyone = np.ones(len(age), bool)
    results = {"model": predictor.path, "name": f"{meta.get('name')}/{meta.get('version')}", "backend": args.backend,
               "commit": git_commit(),
               "cpu": cpu_name(), "test_faces": int(len(age)), "skipped_names": len(faces.skipped),
               "framed_by_detector": int(found.sum()), "seconds": round(seconds, 1), **score(everyone),
               "found_only": score(found), "groups": {}, "age_bands": {}}
    for r, rname in enumerate(RACES):
        for s, sname in enumerate(GENDERS):
            m = (race == r) & (gender == s)
            if m.any():
                results["groups"][f"{rname}/{sname}"] = score(m)
    for lo, hi in ((0, 12), (13, 19), (20, 39), (40, 59), (60, 116)):
        results["age_bands"][f"{lo}-{hi}"] = score((age >= lo) & (age <= hi))
    print(f"{results['name']}: age MAE {results['age_mae']}, gender {results['gender_accuracy']} "
          f"on {len(age)} test faces", flush=True)
    if args.base:
        results["side_by_side"] = side_by_side(predictor, Predictor(args.base, backend="savedmodel"),
                                               np.stack([c for c, f in zip(framed, found) if f][:512]), args)
    write_results(args.out, results)


def side_by_side(new, base, chips, args):
    """Largest differences of the shared outputs on UTKFace and FER2013 faces; forward time per face, new / base."""
    from facemtl.data.fer2013 import read_fer2013_folders
    from facemtl.images import load_image

    fer = read_fer2013_folders(os.path.join(DATA, "fer2013"), "test")
    pick = np.linspace(0, len(fer.paths) - 1, args.fer).astype(int)
    crops, found = new.frame_crops([load_image(fer.paths[i]) for i in pick])
    batches = {"utkface": chips, "fer2013": np.stack([c for c, f in zip(crops, found) if f])}
    out = {"base": base.path, "max_abs_difference": {}}
    for name, batch in batches.items():
        a, b = new.forward(batch), base.forward(batch)
        for key in ("expression_probs", "identity_probs", "embedding", "identity_similarity"):
            if key in a and key in b:
                diff = float(np.abs(a[key].astype(np.float64) - b[key].astype(np.float64)).max())
                out["max_abs_difference"][f"{name}/{key}"] = diff
        out["max_abs_difference"][f"{name}/expression_label_agreement"] = float((a["expression"] == b["expression"]).mean())
    # Cost per face: the same 64 chips through each model's serving_default, alternating, medians compared.
    batch = chips[:64]
    new.forward(batch), base.forward(batch)  # warm up both
    times = {"new": [], "base": []}
    for _ in range(args.repeats):
        for key, predictor in (("new", new), ("base", base)):
            t = time.perf_counter()
            predictor.forward(batch)
            times[key].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out["ms_per_face"] = {k: round(1000 * v / len(batch), 3) for k, v in med.items()}
    out["cost_ratio"] = round(med["new"] / med["base"], 4)
    print(f"cost per face: {out['ms_per_face']} (new / base = {out['cost_ratio']}); largest differences: "
          f"{out['max_abs_difference']}", flush=True)
    return out


if __name__ == "__main__":
    main()
