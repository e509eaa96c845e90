"""Is the data pipeline ever the bottleneck? Pipeline images/s alone vs the training step's.

Builds the recipe's mixed training stream (materialised sources, sampling,
augmentation, random grayscale, resizing) and times pulling batches from it
alone; then times the recipe's model training on one fixed batch alone. Both
run in this process, one after the other, and the ratio is printed (target:
the pipeline at least 5x the training step).

    python benchmarks/pipeline_vs_training.py --recipe recipes/fer2013_celeba_cpu.yaml
    python benchmarks/pipeline_vs_training.py --recipe recipes/fer2013_celeba_cpu.yaml \\
        --set "data.sources=[{format: fer2013_folders, path: ../shared/data/fer2013, test_split: test}]"
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "recipes",
                                                         "fer2013_celeba_cpu.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=100, help="batches pulled from the pipeline")
    parser.add_argument("--steps", type=int, default=15, help="timed training steps")
    args = parser.parse_args()

    from facemtl.config import load_recipe
    from facemtl.data.pipeline import load_splits
    from facemtl.models import build_multitask
    from facemtl.training.task import MultiTaskTask, training_view

    recipe = load_recipe(args.recipe, overrides=args.set)
    splits = load_splits(recipe, log=print)
    b = recipe.train.batch_size
    stream = splits.train_stream(b, 0, recipe.data.augment)
    it = iter(stream)
    for _ in range(5):  # warm up (tracing, prefetch buffers)
        next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
        x, _ = next(it)
    pipeline = args.batches * b / (time.perf_counter() - start)
    print(f"pipeline : {pipeline:8.1f} img/s ({args.batches} batches of {b})", flush=True)

    x, y = next(it)
    view = training_view(build_multitask(recipe.model, len(splits.identity_names)))
    MultiTaskTask(recipe).compile(view, 100)
    for _ in range(2):
        view.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        view.train_on_batch(x, y)
    training = args.steps * b / (time.perf_counter() - start)
    print(f"training : {training:8.1f} img/s ({recipe.model.backbone}, {recipe.model.height}x{recipe.model.width}"
          f"x{recipe.model.channels}, batch {b})")
    print(f"ratio    : pipeline / training = {pipeline / training:.1f}x (target >= 5x)")
    print(json.dumps({"pipeline_images_per_s": round(pipeline, 1), "training_images_per_s": round(training, 1),
                      "ratio": round(pipeline / training, 2)}))


if __name__ == "__main__":
    main()
