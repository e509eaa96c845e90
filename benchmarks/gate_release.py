"""Writes a release preset whose mirror pass runs only for uncertain faces (issue #31): release 5 from release 4.

The network and every weight are the base preset's; only `model.mirror_threshold`
is new: the expression branches answer for the face, and the faces whose
answer's top probability is below the threshold also run the mirror pass
(trunk and branches on the mirror image) and take the mean, as every face did
in the base. Identity, embedding, age and gender are the base's exactly (the
script checks it on real faces, with the answers that change). The LiteRT copy
is converted again (two signatures: the face's pass and the mirror pass; the
host gates), with the base's quantization; `model_id` is kept (the embedding is
the base's, so galleries keep working). With `--recipe`, FER2013 PublicTest is
scored once, as the recipe reports it, into the metadata's `test_accuracy`.

    python benchmarks/gate_release.py --threshold 0.60 --base release/4 --recipe release_cpu \
        --out facemtl/pretrained/release/5
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    from facemtl.export.metadata import EXPORT_FILE, read_metadata
    from facemtl.export.tflite import convert
    from facemtl.models.multitask import split_mirror_gate
    from facemtl.models.presets import (
        WEIGHTS_FILE,
        build_from_metadata,
        copy_variables,
        from_preset,
        preset_dir,
        write_preset,
    )
    from facemtl.recognition.open_set import DIRECTIONS_FILE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threshold", type=float, required=True, help="the gate, chosen on validation")
    ap.add_argument("--base", default="release/4")
    ap.add_argument("--out", required=True, help="the new preset folder (never overwritten)")
    ap.add_argument("--recipe", help="score FER2013 PublicTest as this recipe does (release_cpu) into test_accuracy")
    ap.add_argument("--check", default="../shared/data/utkface", help="real faces to compare the answers on")
    args = ap.parse_args()

    folder = preset_dir(args.base)
    base = read_metadata(folder)
    meta = {**base, "version": base["version"] + 1,
            "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "init_from": {"model_id": base["model_id"], "name": base["name"], "version": base["version"]},
            "model_config": {**base["model_config"], "mirror_threshold": args.threshold}}
    old = from_preset(folder)
    model = build_from_metadata(meta, args.out)
    copy_variables({v.path: v for v in old.variables}, model, where=folder)  # every weight: none is new

    faces = sorted(glob.glob(os.path.join(args.check, "**", "*.jpg"), recursive=True))[:256]
    if faces:
        from PIL import Image

        x = np.stack([np.asarray(Image.open(p).convert("RGB").resize(model.input_shape[2:0:-1])) for p in faces])
        a, b = old(x.astype("float32"), training=False), model(x.astype("float32"), training=False)
        for name in a:
            diff = float(np.max(np.abs(np.asarray(a[name]) - np.asarray(b[name]))))
            print(f"{name}: largest difference {diff:.6f} on {len(faces)} faces")
            if name != "expression" and diff != 0.0:
                raise SystemExit(f"{name} changed: the gate must touch only the expression answer")
        face = np.asarray(split_mirror_gate(model)[0](x.astype("float32"), training=False)["expression"])
        equal = np.mean(np.argmax(a["expression"], 1) == np.argmax(b["expression"], 1))
        print(f"expression: labels equal on {equal:.1%}; the mirror pass ran for "
              f"{np.mean(face.max(1) < args.threshold):.1%} of the faces")

    if args.recipe:  # FER2013 PublicTest, once, as the release recipe reports it (its test split, both framings)
        from facemtl.config import load_recipe
        from facemtl.data.catalog import split_source
        from facemtl.training.feature_cache import evaluate_framings, expression_source

        recipe = load_recipe(args.recipe)
        test = split_source(recipe, expression_source(recipe)[0])[3]
        report = evaluate_framings(model, recipe, test, os.path.join("runs", "gate_release", str(meta["version"])))
        meta["test_accuracy"] = {**base["test_accuracy"], "expression": report["crop"]["accuracy"],
                                 "expression_photo": report["photo"]["accuracy"]}
        print(json.dumps({"base_test_accuracy": base["test_accuracy"], "test_accuracy": meta["test_accuracy"]}))

    with tempfile.TemporaryDirectory() as tmp:
        lite = os.path.join(tmp, "model.tflite")
        flat = convert(model, meta, quantize=base["tflite"]["quantize"])
        with open(lite, "wb") as f:
            f.write(flat)
        meta["tflite"] = {**base["tflite"], "bytes": len(flat)}
        extra = [(lite, EXPORT_FILE)]
        if os.path.isfile(os.path.join(folder, DIRECTIONS_FILE)):
            extra.append((os.path.join(folder, DIRECTIONS_FILE), DIRECTIONS_FILE))
        write_preset(model, meta, args.out, extra_files=extra)
    ours, theirs = np.load(os.path.join(args.out, WEIGHTS_FILE)), np.load(os.path.join(folder, WEIGHTS_FILE))
    if sorted(ours.files) == sorted(theirs.files) and all(np.array_equal(ours[k], theirs[k]) for k in ours.files):
        # The same weights: the base's file byte for byte, so git and a wheel holding both keep one copy.
        shutil.copyfile(os.path.join(folder, WEIGHTS_FILE), os.path.join(args.out, WEIGHTS_FILE))
    print(json.dumps({"preset": args.out, "version": meta["version"], "mirror_threshold": args.threshold,
                      "tflite_bytes": meta["tflite"]["bytes"]}))


if __name__ == "__main__":
    main()
