"""One backbone for two tasks vs two single-task models, measured side by side.

Trains (and then serves, as exported SavedModels) the multi-task model and the
two single-task models (identity-only, expression-only) with the same backbone,
input size, batch size and data, interleaving the measurements so the machine's
noise hits all three alike. Prints images/s and the ratios

    training:  (t_identity + t_expression) / t_multitask
    inference: (t_identity + t_expression) / t_multitask

i.e. how much faster one multi-task model answers both questions than the pair
does. Target: >= 1.8x on both.

    python benchmarks/multitask_vs_single.py                 # ResNet-18, 48x48, batch 32 (the quickstart)
    python benchmarks/multitask_vs_single.py --backbone resnet34 --size 112
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from facemtl.data.synthetic import generate_faces, identity_names  # noqa: E402
from facemtl.export import export_saved_model  # noqa: E402
from facemtl.labels import EXPRESSIONS  # noqa: E402
from facemtl.models import build_multitask_model  # noqa: E402
from facemtl.training.trainer import compile_model, training_view  # noqa: E402
from facemtl.config import Recipe  # noqa: E402

VARIANTS = {"multitask": ("identity", "expression"), "identity": ("identity",), "expression": ("expression",)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    parser.add_argument("--identities", type=int, default=20)
    args = parser.parse_args()

    b, n = args.batch_size, args.batch_size * args.steps
    per_pair = max(1, -(-n // (args.identities * 7)))
    images, ids, exprs = generate_faces(args.identities, per_pair, size=args.size, seed=1)
    images, ids, exprs = images[:n], ids[:n], exprs[:n]
    x = images.astype("float32")
    recipe = Recipe()
    models, views, datasets = {}, {}, {}
    for name, tasks in VARIANTS.items():
        models[name] = build_multitask_model(args.identities, input_shape=(args.size, args.size, 3),
                                             backbone=args.backbone, tasks=tasks)
        views[name] = training_view(models[name], tasks)
        compile_model(views[name], recipe, args.steps)
        labels = {t: {"identity": ids, "expression": exprs}[t] for t in tasks}
        datasets[name] = tf.data.Dataset.from_tensor_slices((x, labels)).batch(b, drop_remainder=True).cache()
        views[name].fit(datasets[name].take(2), epochs=1, verbose=0, shuffle=False)  # trace + warm up

    def train_time(name):
        start = time.perf_counter()
        views[name].fit(datasets[name], epochs=1, verbose=0, shuffle=False)
        return time.perf_counter() - start

    print(f"benchmark: {args.backbone}, {args.size}x{args.size}, batch {b}, {n} images per round, "
          f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs, tf {tf.__version__}", flush=True)
    train_times = {k: [] for k in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS:
            train_times[name].append(train_time(name))
        print(f"  training round {r + 1}/{args.rounds}: " +
              ", ".join(f"{k} {n / v[-1]:.0f} img/s" for k, v in train_times.items()), flush=True)

    # Serving: each model exported as a SavedModel, loaded back, fed uint8 crops.
    tmp = tempfile.mkdtemp(prefix="facemtl-bench-")
    serve = {}
    for name, model in models.items():
        path = export_saved_model(model, identity_names(args.identities), EXPRESSIONS, base_dir=tmp, name=name)
        serve[name] = tf.saved_model.load(path).signatures["serving_default"]
    batches = [tf.constant(images[i:i + b]) for i in range(0, n - b + 1, b)]
    for fn in serve.values():
        fn(images=batches[0])  # warm up

    def serve_time(name):
        start = time.perf_counter()
        for batch in batches:
            out = serve[name](images=batch)
            next(iter(out.values())).numpy()
        return time.perf_counter() - start

    serve_times = {k: [] for k in VARIANTS}
    served = len(batches) * b
    for r in range(args.rounds):
        for name in VARIANTS:
            serve_times[name].append(serve_time(name))
        print(f"  serving round {r + 1}/{args.rounds}: " +
              ", ".join(f"{k} {served / v[-1]:.0f} img/s" for k, v in serve_times.items()), flush=True)

    med = {phase: {k: statistics.median(v) for k, v in times.items()}
           for phase, times in (("train", train_times), ("serve", serve_times))}
    result = {"backbone": args.backbone, "size": args.size, "batch_size": b}
    for phase, count in (("train", n), ("serve", served)):
        m = med[phase]
        result[phase] = {
            "images_per_s": {k: round(count / v, 1) for k, v in m.items()},
            "ratio_pair_over_multitask": round((m["identity"] + m["expression"]) / m["multitask"], 2),
        }
    print(f"training : multi-task {result['train']['images_per_s']['multitask']} img/s; pair "
          f"{n / (med['train']['identity'] + med['train']['expression']):.1f} img/s; "
          f"ratio {result['train']['ratio_pair_over_multitask']}x")
    print(f"inference: multi-task {result['serve']['images_per_s']['multitask']} img/s; pair "
          f"{served / (med['serve']['identity'] + med['serve']['expression']):.1f} img/s; "
          f"ratio {result['serve']['ratio_pair_over_multitask']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
