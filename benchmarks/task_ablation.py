"""Ablation on one budget: multi-task vs each task alone, fixed λ vs learned task weighting.

Trains the recipe once per arm, each in its own process, on the same data,
seed and budget, one after the other, and prints one table of held-out test
accuracy per task (FER2013 PublicTest for expressions when the recipe's FER2013
source uses `test_split`; held-out photos of the training people for identity):

- `multi-task`: the recipe as it is (fixed λ from `loss_weights`);
- `expression only`: `loss_weights.identity=0` (the identity head gets no gradient);
- `identity only`: `loss_weights.expression=0`;
- `learned weighting`: `loss_weighting=uncertainty` (Kendall et al., 2018).

Every arm builds the same network and steps through the same batches, so the
cost per arm is the same; only what the shared backbone learns from differs.

With `--arms-set pretrained` (for the dlib trunk of `recipes/release_cpu.yaml`),
the arms are: the shared trunk frozen (the release setting) or fine-tuned, three
λ_identity settings with the trunk fine-tuned (λ matters only where both tasks
move shared weights), and each task alone. `--openset` also measures each arm's
export on people never seen in training (ORL: rank-1 with one image enrolled,
TAR at FAR 1e-3), which shows whether fine-tuning the trunk for expressions
costs the embedding anything.

    python benchmarks/task_ablation.py --recipe recipes/fer2013_celeba_cpu.yaml \\
        --budget train.epochs=3 --budget data.steps_per_epoch=200
    python benchmarks/task_ablation.py --recipe recipes/release_cpu.yaml --arms-set pretrained --openset \\
        --budget train.epochs=1 --budget data.steps_per_epoch=150
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import train_arm

ARMS = {
    "multi-task": [],
    "expression only": ["loss_weights.identity=0"],
    "identity only": ["loss_weights.expression=0"],
    "learned weighting": ["loss_weighting=uncertainty"],
}
PRETRAINED_ARMS = {
    "frozen trunk, λ_id 0.5": [],
    "fine-tuned trunk, λ_id 0.5": ["model.freeze_backbone=false"],
    "fine-tuned trunk, λ_id 0.1": ["model.freeze_backbone=false", "loss_weights.identity=0.1"],
    "fine-tuned trunk, λ_id 2": ["model.freeze_backbone=false", "loss_weights.identity=2.0"],
    "expression only (fine-tuned trunk)": ["model.freeze_backbone=false", "loss_weights.identity=0"],
    "identity only (fine-tuned trunk)": ["model.freeze_backbone=false", "loss_weights.expression=0"],
}
ARM_SETS = {"scratch": ARMS, "pretrained": PRETRAINED_ARMS}


def orl_openset(export_dir):
    """ORL (people never seen in training) through an export: rank-1 (1 enrolled) and TAR at FAR 1e-3."""
    from openset import TEST_SETS, load_test_set, measure

    from facemtl.export import crop_layout, read_metadata
    from facemtl.inference import Predictor
    from facemtl.recognition.embed import embed_arrays

    meta = read_metadata(export_dir)
    fmt, path, splits = TEST_SETS["ORL"]
    images, labels = load_test_set(fmt, path, splits, meta["input"]["height"],
                                   crop_layout(meta))
    r = measure(embed_arrays(Predictor(export_dir), images), labels)
    return {"rank1": r["rank1"], "tar_at_far_1e-3": r["at_far"]["0.001"]["tar"], "auc": r["auc"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/fer2013_celeba_cpu.yaml")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides every arm shares, e.g. train.epochs=3 (repeatable)")
    parser.add_argument("--arms-set", choices=list(ARM_SETS), default="scratch")
    parser.add_argument("--arms", nargs="*", help="a subset of the set's arms (default: all)")
    parser.add_argument("--openset", action="store_true", help="also measure each arm's export on ORL")
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()

    arms = ARM_SETS[args.arms_set]
    unknown = sorted(set(args.arms or []) - set(arms))
    if unknown:
        parser.error(f"unknown arms {unknown}; this set has {list(arms)}")
    results = {}
    for name in args.arms or list(arms):
        folder = os.path.join(args.out, "".join(c if c.isalnum() else "_" for c in name))
        results[name] = train_arm(args.recipe, folder, args.budget + arms[name], export=args.openset)
        if args.openset:
            results[name]["orl"] = orl_openset(results[name]["export_dir"])
        with open(os.path.join(args.out, "ablation.json"), "w", encoding="utf-8") as f:
            json.dump({"recipe": args.recipe, "budget": args.budget, "results": results}, f, indent=2)

    def cell(r, task, trained):
        t = r["test"].get(task)
        if t is None:
            return "-"
        text = f"{100 * t['accuracy']:.1f}% (F1 {t['macro_f1']:.3f})"
        return text if trained else f"({text}, untrained head)"

    print(f"\nrecipe {args.recipe}, budget {' '.join(args.budget) or 'as in the recipe'}\n")
    extra = " ORL rank-1 / TAR@1e-3 |" if args.openset else ""
    print(f"| arm | expression accuracy (macro-F1) | identity accuracy (macro-F1) |{extra} wall time |")
    print("|---|---|---|" + ("---|" if args.openset else "") + "---|")
    for name, r in results.items():
        orl = (f" {100 * r['orl']['rank1']:.1f}% / {100 * r['orl']['tar_at_far_1e-3']:.1f}% |"
               if args.openset else "")
        print(f"| {name} | {cell(r, 'expression', not name.startswith('identity only'))} | "
              f"{cell(r, 'identity', not name.startswith('expression only'))} |{orl} {r['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
