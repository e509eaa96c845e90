"""One backbone for two tasks vs two single-task models, measured side by side.

Trains (and then serves, as exported SavedModels) the multi-task model and the
two single-task models (identity-only, expression-only) with the same backbone,
input size, batch size and data. The three are timed batch by batch in turn
(rotating the order), so the machine's noise hits all three alike. Prints images/s and the ratios

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

import tensorflow as tf  # noqa: E402

from facemtl.data.synthetic import generate_faces, identity_names  # noqa: E402
from facemtl.export import export_saved_model  # noqa: E402
from facemtl.labels import EXPRESSIONS  # noqa: E402
from facemtl.models import build_multitask_model  # noqa: E402
from facemtl.training.task import MultiTaskTask, training_view  # noqa: E402
from facemtl.config import Recipe  # noqa: E402

VARIANTS = {"multitask": ("identity", "expression"), "identity": ("identity",), "expression": ("expression",)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median taken)")
    parser.add_argument("--serve-repeats", type=int, default=4, help="passes over the images per serving round")
    parser.add_argument("--identities", type=int, default=20)
    args = parser.parse_args()

    b, n = args.batch_size, args.batch_size * args.steps
    per_pair = max(1, -(-n // (args.identities * 7)))
    images, ids, exprs = generate_faces(args.identities, per_pair, size=args.size, seed=1)
    images, ids, exprs = images[:n], ids[:n], exprs[:n]
    x = images.astype("float32")
    recipe = Recipe()
    models, views, labels = {}, {}, {}
    for name, tasks in VARIANTS.items():
        models[name] = build_multitask_model(args.identities, input_shape=(args.size, args.size, 3),
                                             backbone=args.backbone, tasks=tasks)
        views[name] = training_view(models[name], tasks)
        MultiTaskTask(recipe).compile(views[name], args.steps)
        labels[name] = {t: {"identity": ids, "expression": exprs}[t] for t in tasks}
        for _ in range(2):  # trace + warm up
            views[name].train_on_batch(x[:b], {t: v[:b] for t, v in labels[name].items()})

    print(f"benchmark: {args.backbone}, {args.size}x{args.size}, batch {b}, {n} images per round, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs, tf {tf.__version__}", flush=True)
    names = list(VARIANTS)

    def interleaved(step_fns, batches):
        """Times every variant on every batch in turn (rotating the order), so noise hits all alike."""
        totals = dict.fromkeys(names, 0.0)
        for i, batch in enumerate(batches):
            for name in names[i % 3:] + names[:i % 3]:
                start = time.perf_counter()
                step_fns[name](batch)
                totals[name] += time.perf_counter() - start
        return totals

    train_steps = {name: (lambda s, name=name: views[name].train_on_batch(
        x[s], {t: v[s] for t, v in labels[name].items()})) for name in names}
    train_batches = [slice(i, i + b) for i in range(0, n - b + 1, b)]
    train_times = {k: [] for k in names}
    for r in range(args.rounds):
        for k, v in interleaved(train_steps, train_batches).items():
            train_times[k].append(v)
        print(f"  training round {r + 1}/{args.rounds}: " +
              ", ".join(f"{k} {n / v[-1]:.0f} img/s" for k, v in train_times.items()), flush=True)

    # Serving: each model exported as a SavedModel, loaded back, fed uint8 crops.
    tmp = tempfile.mkdtemp(prefix="facemtl-bench-")
    serve = {}
    for name, model in models.items():
        path = export_saved_model(model, identity_names(args.identities), EXPRESSIONS, base_dir=tmp, name=name)
        serve[name] = tf.saved_model.load(path).signatures["serving_default"]
    serve_batches = [tf.constant(images[i:i + b]) for i in range(0, n - b + 1, b)] * args.serve_repeats
    serve_steps = {name: (lambda batch, fn=fn: [v.numpy() for v in fn(images=batch).values()])
                   for name, fn in serve.items()}
    for name in names:
        serve_steps[name](serve_batches[0])  # warm up
    serve_times = {k: [] for k in names}
    served = len(serve_batches) * b
    for r in range(args.rounds):
        for k, v in interleaved(serve_steps, serve_batches).items():
            serve_times[k].append(v)
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
