"""The `facemtl` command line: train, predict.

Every user-facing error (bad recipe, missing file, unreadable image, wrong
model folder) is printed as one `facemtl: error: ...` line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from facemtl.errors import FacemtlError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of user output


def _train(args):
    from facemtl.config import load_recipe
    from facemtl.training.trainer import train

    recipe = load_recipe(args.recipe, overrides=args.set, smoke=args.smoke)
    train(recipe, run_dir=args.run_dir)
    return 0


def _predict(args):
    from facemtl.images import load_image
    from facemtl.inference import Predictor

    predictor = Predictor(args.model, batch_size=args.batch_size)
    images, paths, failures = [], [], 0
    for path in args.images:
        try:
            images.append(load_image(path))
            paths.append(path)
        except FacemtlError as exc:
            failures += 1
            print(f"facemtl: skipping {exc}", file=sys.stderr)
            print(json.dumps({"path": path, "error": str(exc)}))
    for path, raw in zip(paths, predictor.run(images)):
        answer = {"path": path, **predictor.describe(raw)}
        if not args.embedding:
            answer.pop("embedding")
        print(json.dumps(answer))
    return 1 if failures else 0


def build_parser():
    parser = argparse.ArgumentParser(prog="facemtl", description="Multi-task face analysis: identity and expression.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, evaluate and export the model a recipe describes")
    p.add_argument("recipe", help="a YAML recipe, e.g. recipes/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--smoke", action="store_true", help="apply the recipe's tiny smoke-test variant")
    p.add_argument("--run-dir", help="run directory (default: <output_dir>/<name>/<timestamp>)")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="expression and identity of face crops, one JSON line per image")
    p.add_argument("model", help="a SavedModel version folder, e.g. saved_models/quickstart/1")
    p.add_argument("images", nargs="+", help="image files (face crops; any size, gray/RGB/RGBA)")
    p.add_argument("--embedding", action="store_true", help="include the embedding vector in the output")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_predict)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FacemtlError as exc:
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # validated model arguments (unknown backbone, bad sizes...)
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facemtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
