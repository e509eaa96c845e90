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

    python benchmarks/task_ablation.py --recipe recipes/fer2013_celeba_cpu.yaml \\
        --budget train.epochs=3 --budget data.steps_per_epoch=200
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/fer2013_celeba_cpu.yaml")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides every arm shares, e.g. train.epochs=3 (repeatable)")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()

    results = {}
    for name in args.arms:
        results[name] = train_arm(args.recipe, os.path.join(args.out, name.replace(" ", "_")),
                                  args.budget + ARMS[name])
        with open(os.path.join(args.out, "ablation.json"), "w", encoding="utf-8") as f:
            json.dump({"recipe": args.recipe, "budget": args.budget, "results": results}, f, indent=2)

    def cell(r, task, trained):
        t = r["test"].get(task)
        if t is None:
            return "-"
        text = f"{100 * t['accuracy']:.1f}% (F1 {t['macro_f1']:.3f})"
        return text if trained else f"({text}, untrained head)"

    print(f"\nrecipe {args.recipe}, budget {' '.join(args.budget) or 'as in the recipe'}\n")
    print("| arm | expression accuracy (macro-F1) | identity accuracy (macro-F1) | wall time |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {cell(r, 'expression', name != 'identity only')} | "
              f"{cell(r, 'identity', name != 'expression only')} | {r['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
