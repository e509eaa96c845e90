"""People in a collection: `cluster_photos` on labelled real photos, and the time to group synthetic people.

For each dataset (one folder per person: the LFW subset's train and test photos, ORL), every
photo goes through `facemtl gallery cluster`'s code (detect, align, embed with the release
model, neighbour search, Chinese whispers) into a temporary gallery; each photo's labelled face
(its largest) is scored against the folder's person: pairwise precision, recall and F1 of the
groups (photos with no face found, or a face left unclustered, count as groups of one), and the
share of photos left unclustered.

`--choose` picks the link threshold on a validation set that is neither of those: the CelebA
subset (299 people, in-the-wild photos; each photo's largest face), the best pairwise F1 over
a grid of thresholds; the release's metadata records the choice (`clustering.threshold`).

`--synthetic N` also times `cluster_embeddings` on N synthetic people with 2 faces each (random
128-d centres, noise 0.05 per dimension), the grouping step alone.

Usage:
    python benchmarks/cluster_people.py --data ../shared/data --synthetic 100000 --out runs/cluster_people
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np


def labelled_photos(root):
    """`(paths, people)` of a one-folder-per-person tree (README files and the like skipped)."""
    from facemtl.media import media_extensions

    paths, people = [], []
    for person in sorted(os.listdir(root)):
        folder = os.path.join(root, person)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            if os.path.splitext(f)[1].lower() in media_extensions():
                paths.append(os.path.join(folder, f))
                people.append(person)
    return paths, people


def score_dataset(analyzer, name, paths, people, workdir):
    from facemtl.recognition.clustering import UNCLUSTERED, cluster_photos, pairwise_scores
    from facemtl.recognition.gallery import Gallery, model_info

    gallery = Gallery.open(name, workdir, model=model_info(analyzer.predictor.metadata), create=True)
    t0 = time.perf_counter()
    faces, summary = cluster_photos(analyzer, paths, gallery, sheets=os.path.join(workdir, f"{name}-sheets"),
                                    progress=False)
    seconds = time.perf_counter() - t0
    largest = {}
    for face in faces:
        area = face["box"][2] * face["box"][3]
        if face["path"] not in largest or area > largest[face["path"]][0]:
            largest[face["path"]] = (area, face["group"])
    groups = {g: i for i, g in enumerate(sorted({g for _, g in largest.values() if g}))}
    labels = np.asarray([groups[largest[p][1]] if p in largest and largest[p][1] else UNCLUSTERED for p in paths])
    scores = pairwise_scores(labels, np.asarray(people))
    return {"dataset": name, "photos": len(paths), "faces": summary["faces"],
            "photos_without_face": len(paths) - len(largest), **{k: round(v, 4) if isinstance(v, float) else v
                                                                   for k, v in scores.items()},
            "seconds": round(seconds, 1), "photos_per_s": round(len(paths) / seconds, 1)}


def choose(analyzer, data, grid):
    """Pairwise F1 on the CelebA subset for each link threshold of `grid`: `[{threshold, f1, ...}]`."""
    from facemtl.inference import analyze_files
    from facemtl.recognition.clustering import cluster_embeddings, pairwise_scores

    root = os.path.join(data, "celeba_subset")
    with open(os.path.join(root, "identity_CelebA.txt")) as f:
        who = dict(line.split() for line in f if line.strip())
    paths = [os.path.join(root, "img_celeba", name) for name in sorted(who)]
    embeddings, people = [], []
    for record, _ in analyze_files(analyzer, paths, progress=False, ignored=[]):
        if record.get("faces"):
            face = max(record["faces"], key=lambda f: f["box"][2] * f["box"][3])
            embeddings.append(face["embedding"])
            people.append(who[os.path.basename(record["path"])])
    e, truth = np.asarray(embeddings, np.float32), np.asarray(people)
    rows = []
    for t in grid:
        s = pairwise_scores(cluster_embeddings(e, t), truth)
        rows.append({"dataset": "celeba_subset (validation)", "threshold": round(float(t), 4), "faces": len(e),
                     **{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()}})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def synthetic(n, seed=0):
    from facemtl.recognition.clustering import cluster_embeddings, pairwise_scores

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n), 2)
    e = centres[truth] + rng.normal(scale=0.05, size=(2 * n, 128)).astype(np.float32)
    t0 = time.perf_counter()
    labels = cluster_embeddings(e, threshold=0.6)
    seconds = time.perf_counter() - t0
    s = pairwise_scores(labels, truth)
    return {"dataset": f"synthetic {n} people x 2 faces", "faces": 2 * n, "f1": round(s["f1"], 4),
            "unclustered": round(s["unclustered"], 4), "seconds": round(seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="the folder holding lfw_subset/ and orl/")
    parser.add_argument("--model", help="a SavedModel (default: the release model)")
    parser.add_argument("--synthetic", type=int, default=0, help="also time grouping N synthetic people")
    parser.add_argument("--choose", action="store_true", help="only sweep the link threshold on the CelebA subset")
    parser.add_argument("--update-preset", action="store_true",
                        help="with --choose: record the chosen threshold in the preset's metadata (the release's)")
    parser.add_argument("--out", default="runs/cluster_people")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    datasets = [("lfw_subset", [os.path.join(args.data, "lfw_subset", s) for s in ("train", "test")]),
                ("orl", [os.path.join(args.data, "orl", "att_faces")])]
    if args.choose:
        from facemtl.inference import FaceAnalyzer

        rows = choose(FaceAnalyzer(args.model), args.data, np.round(np.arange(0.90, 0.9501, 0.005), 4))
        best = max(rows, key=lambda r: r["f1"])
        print(json.dumps({"chosen_threshold": best["threshold"], "f1": best["f1"]}))
        if args.update_preset:
            from facemtl.models.presets import preset_dir, update_preset_metadata

            folder = preset_dir(args.model or "release")
            update_preset_metadata(folder, {"clustering": {
                "threshold": best["threshold"], "validation_f1": best["f1"],
                "chosen_on": f"CelebA subset, {best['faces']} faces of 299 people (each photo's largest face): the best "
                             "pairwise F1 over link thresholds 0.900-0.950 in steps of 0.005",
                "measured_by": "benchmarks/cluster_people.py --choose"}})
            print(f"clustering threshold written into {folder}", file=sys.stderr)
        datasets = []
    if datasets and all(os.path.isdir(r) for _, roots in datasets for r in roots):
        from facemtl.inference import FaceAnalyzer

        analyzer = FaceAnalyzer(args.model)
        for name, roots in datasets:
            paths, people = [], []
            for root in roots:
                p, who = labelled_photos(root)
                paths += p
                people += who
            with tempfile.TemporaryDirectory() as workdir:
                rows.append(score_dataset(analyzer, name, paths, people, workdir))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    elif datasets:
        print(f"{args.data}: no lfw_subset/ and orl/ here; real-photo figures skipped", file=sys.stderr)
    if args.synthetic:
        rows.append(synthetic(args.synthetic))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
