"""Training images/s of the multi-task model for each precision and XLA setting, side by side.

Builds one model per setting (float32, mixed_bfloat16, mixed_float16; XLA
`jit_compile` off and on), warms each up, then times them batch by batch in
turn (rotating the order) so the machine's noise hits all alike. Prints
images/s and each setting's speed relative to float32 without XLA.

    python benchmarks/precision_xla.py                      # ResNet-18, 48x48, batch 32 (the quickstart)
    python benchmarks/precision_xla.py --size 112 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from facemtl.config import Recipe  # noqa: E402
from facemtl.models import build_multitask_model  # noqa: E402
from facemtl.training.task import MultiTaskTask, training_view  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--xla", default="off,on")
    args = parser.parse_args()

    b = args.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (b, args.size, args.size, 3)).astype("float32")
    y = {"identity": rng.integers(0, 20, b), "expression": rng.integers(0, 7, b)}
    gpus = tf.config.list_logical_devices("GPU")
    device = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get(
        "device_name", "GPU") if gpus else f"CPU ({os.cpu_count()} cores)"
    print(f"benchmark: {args.backbone}, {args.size}x{args.size}, batch {b}, {args.steps} steps x {args.rounds} rounds, "
          f"{device}, tf {tf.__version__}", flush=True)

    views = {}
    for precision in args.precisions.split(","):
        for xla in args.xla.split(","):
            keras.mixed_precision.set_global_policy(precision)
            recipe = Recipe()
            recipe.train.jit_compile = xla == "on"
            view = training_view(build_multitask_model(20, input_shape=(args.size, args.size, 3),
                                                       backbone=args.backbone))
            MultiTaskTask(recipe).compile(view, steps_per_epoch=100)
            start = time.perf_counter()
            for _ in range(2):
                view.train_on_batch(x, y)  # trace / compile
            print(f"  {precision:15s} XLA {xla:3s}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
            views[(precision, xla)] = view
    keras.mixed_precision.set_global_policy("float32")

    keys = list(views)
    times = {k: [] for k in keys}
    for r in range(args.rounds):
        totals = dict.fromkeys(keys, 0.0)
        for step in range(args.steps):
            for k in keys[step % len(keys):] + keys[:step % len(keys)]:
                start = time.perf_counter()
                views[k].train_on_batch(x, y)
                totals[k] += time.perf_counter() - start
        for k, v in totals.items():
            times[k].append(v)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)

    base = statistics.median(times[keys[0]])
    result = {"device": device, "backbone": args.backbone, "size": args.size, "batch_size": b, "settings": []}
    for k in keys:
        med = statistics.median(times[k])
        ips = args.steps * b / med
        result["settings"].append({"precision": k[0], "xla": k[1], "images_per_s": round(ips, 1),
                                   "vs_float32": round(base / med, 2)})
        print(f"{k[0]:15s} XLA {k[1]:3s}: {ips:8.1f} img/s  ({base / med:.2f}x float32 without XLA)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
