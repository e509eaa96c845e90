"""Open-set identity: people never seen in training, softmax vs margin heads vs raw pixels.

Trains the identity recipe once per head (plain softmax, ArcFace, CosFace), each
in its own process on the same data, seed and budget, exports each, and then
measures every export and a raw-pixel baseline on test sets of *other* people:

- rank-1 identification with one enrolled image per person (mean over 10 random
  choices of the enrolled image; every other image is a probe);
- verification over all pairs: ROC AUC and TAR at FAR = 1e-2 and 1e-3.

The test photos go through the serving path's detector and aligner (MTCNN,
5-point alignment, cached); photos where no face is found are skipped and
counted. Writes `results.json` and one ROC PNG per test set under `--out`.

    python benchmarks/openset.py                               # trains 3 models (~30 min on 2 cores)
    python benchmarks/openset.py --models runs/openset/*/saved_models/*/1   # measure existing exports only
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from _runs import train_arm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HEADS = ("softmax", "arcface", "cosface")
TEST_SETS = {  # name: (format, path, splits)
    "ORL": ("identity_folders", "../shared/data/orl/att_faces", [None]),
    "LFW subset": ("identity_folders", "../shared/data/lfw_subset", ["train", "test"]),
}


def load_test_set(fmt, path, splits, size, layout="arcface"):
    """Aligned crops and person labels of a test set (a person in several splits keeps one label)."""
    from facemtl.recognition.embed import load_labelled_faces

    images, labels, index = [], [], {}
    for split in splits:
        imgs, labs, names = load_labelled_faces(path, fmt=fmt, split=split, align=True, size=size, layout=layout)
        images.append(imgs)
        labels.append(np.array([index.setdefault(names[v], len(index)) for v in labs]))
    return np.concatenate(images), np.concatenate(labels)


def pixel_embeddings(images, size):
    """The raw-pixel baseline: gray, resized like the model's input, mean-centred per image."""
    import tensorflow as tf

    x = tf.image.resize(tf.image.rgb_to_grayscale(tf.cast(images, tf.float32)), (size, size)).numpy()
    x = x.reshape(len(x), -1)
    return x - x.mean(axis=1, keepdims=True)


def measure(embeddings, labels):
    from facemtl.recognition.metrics import rank1_identification, verification_report

    report = verification_report(embeddings, labels, fars=(1e-2, 1e-3))
    mean, std, probes = rank1_identification(embeddings, labels, trials=10)
    report.update(rank1=mean, rank1_std=std, probes=probes, images=int(len(labels)),
                  people=int(len(np.unique(labels))))
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/celeba_identity_cpu.yaml")
    parser.add_argument("--heads", nargs="*", default=list(HEADS), choices=HEADS)
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides every arm shares, e.g. train.epochs=8 (repeatable)")
    parser.add_argument("--models", nargs="*", help="measure these exports instead of training (label = folder)")
    parser.add_argument("--out", default="runs/openset")
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    models, training = {}, {}
    if args.models:
        models = {m: m for m in args.models}
    else:
        for head in args.heads:
            summary = train_arm(args.recipe, os.path.join(args.out, head), args.budget +
                                [f"model.identity_head={head}"], export=True)
            models[head] = summary["export_dir"]
            training[head] = summary

    from facemtl.export import read_metadata
    from facemtl.inference import Predictor
    from facemtl.recognition.embed import embed_arrays
    from facemtl.recognition.metrics import plot_roc

    size = read_metadata(next(iter(models.values())))["input"]["height"]
    results = {}
    for set_name, (fmt, path, splits) in TEST_SETS.items():
        if not os.path.isdir(path):
            print(f"skipping {set_name}: {path} not found")
            continue
        images, labels = load_test_set(fmt, path, splits, 112)
        results[set_name] = {"raw pixels": measure(pixel_embeddings(images, size), labels)}
        for label, model in models.items():
            results[set_name][label] = measure(embed_arrays(Predictor(model), images), labels)
        plot_roc({f"{k} (AUC {r['auc']:.3f})": r.pop("roc") for k, r in results[set_name].items()},
                 os.path.join(args.out, f"roc_{set_name.split()[0].lower()}.png"),
                 title=f"{set_name}: people never seen in training")

    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"recipe": args.recipe, "budget": args.budget, "models": models, "training": training,
                   "results": results}, f, indent=2)
    print(f"\nrecipe {args.recipe}, budget {' '.join(args.budget) or 'as in the recipe'}\n")
    for set_name, rows in results.items():
        any_row = next(iter(rows.values()))
        print(f"{set_name}: {any_row['people']} people, {any_row['images']} images, "
              f"{any_row['probes']} probes per trial\n")
        print("| embedding | rank-1 (1 image enrolled) | ROC AUC | TAR @ FAR 1e-2 | TAR @ FAR 1e-3 |")
        print("|---|---|---|---|---|")
        for label, r in rows.items():
            at = r["at_far"]
            print(f"| {label} | {100 * r['rank1']:.1f}% ± {100 * r['rank1_std']:.1f} | {r['auc']:.3f} | "
                  f"{100 * at['0.01']['tar']:.1f}% | {100 * at['0.001']['tar']:.1f}% |")
        print()
    for head, s in training.items():
        print(f"{head}: closed-set identity accuracy on held-out CelebA photos "
              f"{100 * s['test']['identity']['accuracy']:.1f}%, trained in {s['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
