"""What each choice for the expression branch is worth, on one budget (a row per variant).

Trains the branch of a recipe with `feature_cache.enabled` on the cached trunk
maps (`facemtl.training.feature_cache`), once per variant, and appends the
best validation scores (FER2013 train's held-out validation split, never the
test split) to `runs/expression_branch/results.jsonl`; `--table` prints them
as the markdown table in docs/expression.md.

    python benchmarks/expression_branch.py recipes/release_cpu.yaml --variant base
    python benchmarks/expression_branch.py recipes/release_cpu.yaml --variant ls0 --set feature_cache.label_smoothing=0
    python benchmarks/expression_branch.py --table
    python benchmarks/expression_branch.py --plot release30 docs/expression_training.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OUT = os.path.join("runs", "expression_branch")
RESULTS = os.path.join(OUT, "results.jsonl")


def table():
    rows = [json.loads(line) for line in open(RESULTS, encoding="utf-8")]
    print("| variant | overrides | epochs | best epoch | val plain | val plain, mirror-avg | val framed | "
          "val framed, mirror-avg | val macro-F1 | minutes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["scores"]
        print(f"| {r['variant']} | {' '.join(r['overrides']) or '(recipe as is)'} | {r['epochs']} | {r['best_epoch']} | "
              f"{s['plain']:.1%} | {s['plain_mirror_avg']:.1%} | {s['framed']:.1%} | {s['framed_mirror_avg']:.1%} | "
              f"{r['macro_f1']:.3f} | {r['minutes']:.1f} |")


def plot(variant, out):
    """Validation accuracy per framing and the training loss, epoch by epoch, from the run's history.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facemtl.training.history import read_history

    h = read_history(os.path.join(OUT, variant, "history.csv"))
    h["epoch"] = list(range(1, len(h["loss"]) + 1))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("val_plain", "crop (plain)"), ("val_plain_mirror_avg", "crop, mirror-averaged"),
                       ("val_framed", "photo (framed)"), ("val_framed_mirror_avg", "photo, mirror-averaged")):
        a.plot(h["epoch"], h[key], label=label)
    a.plot(h["epoch"], h["accuracy"], "k--", label="train (augmented)")
    a.set(xlabel="epoch", ylabel="accuracy", title=f"{variant}: validation (10% of FER2013 train)")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.plot(h["epoch"], h["loss"], "k")
    b.set(xlabel="epoch", ylabel="training loss (label smoothing 0.1)", title="training loss")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--variant", help="the row's name (its run folder: runs/expression_branch/VARIANT)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--table", action="store_true", help="print the results as a markdown table")
    parser.add_argument("--plot", nargs=2, metavar=("VARIANT", "PNG"), help="plot a variant's history")
    args = parser.parse_args()
    if args.table:
        return table()
    if args.plot:
        return plot(*args.plot)
    if not args.recipe or not args.variant:
        parser.error("give a recipe and --variant (or --table)")

    import numpy as np
    from _runs import cpu_name, git_commit

    from facemtl.config import load_recipe
    from facemtl.evaluation import classification_report
    from facemtl.labels import EXPRESSIONS
    from facemtl.training.feature_cache import prepare_caches, predict_views, train_expression_branch, view_scores

    recipe = load_recipe(args.recipe, overrides=args.set)
    run_dir = os.path.join(OUT, args.variant)
    start = time.time()
    caches = prepare_caches(recipe)
    branch, history, record = train_expression_branch(recipe, run_dir, caches)
    probs = predict_views(branch, caches.val)
    views = list(caches.val.views)
    scores = view_scores(probs, caches.val.labels, views)
    suffix = "_mirror_avg" if recipe.model.mirror_expression else ""
    pred = np.concatenate([(probs[views.index("plain")] + (probs[views.index("plain_mirror")] if suffix else 0)),
                           (probs[views.index("framed")] + (probs[views.index("framed_mirror")] if suffix else 0))])
    report = classification_report(np.concatenate([caches.val.labels] * 2), pred.argmax(1), EXPRESSIONS)
    row = {"variant": args.variant, "overrides": args.set, "epochs": recipe.train.epochs,
           "best_epoch": record["epoch"], "scores": scores, "macro_f1": report["macro_f1"],
           "per_class_recall": {n: round(c["recall"], 3) for n, c in report["per_class"].items()}, "minutes": (time.time() - start) / 60,
           "val_faces": int(len(caches.val.labels)), "framing": caches.framing, "cpu": cpu_name(),
           "commit": git_commit()}
    os.makedirs(OUT, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
