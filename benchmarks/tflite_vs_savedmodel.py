"""The release model as `.tflite` (float32, float16, dynamic, int8) against its SavedModel, on the same crops.

For each: size on disk, milliseconds per face at batch 1 (median of 200 calls on
one 150x150 crop), FER2013 PublicTest accuracy (3,589 crops, single crop), and
identity on people never seen in training (ORL and the LFW subset, BlazeFace-aligned
onto the model's layout, one photo enrolled: rank-1 over 10 draws, TAR at FAR
1e-3). int8 is calibrated on 400 real faces: 200 aligned LFW-subset training
photos and 200 FER2013 training crops.

    python benchmarks/tflite_vs_savedmodel.py [--model SAVED_MODEL (default: the installed release)]   # or --run RUN --like EXPORT (release 1)
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import numpy as np
from _runs import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def calibration_faces(size, layout):
    from openset import load_test_set
    from PIL import Image
    from release_model import DATA

    lfw, _ = load_test_set("identity_folders", os.path.join(DATA, "lfw_subset"), ["train"], size, layout)
    fer = sorted(glob.glob(os.path.join(DATA, "fer2013", "train", "*", "*.jpg")))[::100][:200]
    fer = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in fer]
    return np.concatenate([lfw[:: max(1, len(lfw) // 200)][:200], np.stack(fer)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run folder with checkpoints/best.keras (release 1's recipe)")
    parser.add_argument("--like", help="with --run: the export whose metadata to keep")
    parser.add_argument("--model", default=None,
                        help="an export that records its model_config (release 2 on; the default), rebuilt from it")
    parser.add_argument("--fer-limit", type=int, help="FER2013 crops to use (default: all)")
    parser.add_argument("--out", default="runs/benchmarks/tflite_vs_savedmodel.json")
    args = parser.parse_args()

    from openset import TEST_SETS, load_test_set, measure
    from release_model import fer_crops

    from facemtl.export import crop_layout, load_run_model
    from facemtl.inference import Predictor
    from facemtl.export.tflite import convert
    from facemtl.litert import TFLitePredictor

    if not args.run:
        from facemtl.installed import resolve_model
        from facemtl.models.presets import from_export as model_from_export

        args.model = resolve_model(args.model)
        model, metadata = model_from_export(args.model)
        args.like = args.model
    else:
        model, metadata = load_run_model(args.run, args.like)
    size, layout = metadata["input"]["height"], crop_layout(metadata)
    folder = tempfile.mkdtemp()
    files = {}
    for quantize in (None, "float16", "dynamic", "int8"):
        calibration = calibration_faces(size, layout) if quantize == "int8" else None
        path = os.path.join(folder, f"release_{quantize or 'float32'}.tflite")
        with open(path, "wb") as f:
            f.write(convert(model, metadata, quantize=quantize, calibration=calibration))
        files[quantize or "float32"] = path
    variants = {"savedmodel": Predictor(args.like, backend="savedmodel"), **{f"tflite {k}": TFLitePredictor(p) for k, p in files.items()}}

    fer_images, fer_labels = fer_crops(args.fer_limit)
    identity = {name: load_test_set(fmt, path, splits, size, layout) for name, (fmt, path, splits) in TEST_SETS.items()}
    probe = identity["LFW subset"][0][0]
    results = {"run": args.run, "like": args.like, "variants": {}}
    for name, predictor in variants.items():
        row = {}
        if name == "savedmodel":
            folder_size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.like) for f in fs)
            row["size_mb"] = round(folder_size / 2**20, 2)
        else:
            row["size_mb"] = round(os.path.getsize(files[name.split()[1]]) / 2**20, 2)
        predictor.run([probe])
        times = []
        for _ in range(200):
            t = time.perf_counter()
            predictor.run([probe])
            times.append(time.perf_counter() - t)
        row["ms_per_face_batch1"] = round(float(np.median(times)) * 1000, 2)
        probs = np.stack([r["expression_probs"] for r in predictor.run(fer_images)])
        row["fer2013_publictest_accuracy"] = round(float((probs.argmax(1) == fer_labels).mean()), 4)
        for set_name, (images, labels) in identity.items():
            report = measure(np.stack([r["embedding"] for r in predictor.run(list(images))]), labels)
            row[set_name] = {"rank1": round(report["rank1"], 4), "tar_at_far_1e-3": round(report["at_far"]["0.001"]["tar"], 4)}
        results["variants"][name] = row
        print(name, row, flush=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
