"""End-to-end face analysis speed (detect + align + model) and detection rate.

Measures, on real in-the-wild photos (the CelebA subset in ../shared/data when
present, otherwise scikit-image's astronaut photo repeated):

* faces/s end to end at batch 1 (one photo per `analyze` call) and batched
  (`--batch` photos per call, one forward pass for all their faces);
* where the time goes: detector vs alignment vs model;
* the detection rate (photos with at least one face found), for each detector
  (BlazeFace, MTCNN, Haar), side by side in one run on the same decoded photos;
* `analyze_photo`: the SavedModel's in-graph photo signature (BlazeFace,
  alignment and model inside TensorFlow) on the same photos, JPEG-encoded
  (its time includes decoding, which the Python rows do not).

Without `--model` it runs the release model shipped with facemtl;
`--model quickstart` exports an untrained model of the quickstart architecture
to a temporary folder (its speed does not depend on its weights).

    python benchmarks/faces_end_to_end.py --limit 200
    python benchmarks/faces_end_to_end.py --model saved_models/quickstart/1 --detectors haar
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CELEBA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "celeba_subset", "img_celeba")


def quickstart_model():
    from facemtl.config import load_recipe
    from facemtl.data.synthetic import identity_names
    from facemtl.export import export_saved_model
    from facemtl.labels import EXPRESSIONS
    from facemtl.models import build_multitask

    recipe = load_recipe(os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart.yaml"))
    n = recipe.data.synthetic.num_identities
    model = build_multitask(recipe.model, n)
    return export_saved_model(model, identity_names(n), EXPRESSIONS, base_dir=tempfile.mkdtemp(), name="bench")


def photo_signature(model, images, batch_size):
    """The `analyze_photo` signature on the photos encoded as JPEG (quality 95), at 1 and `batch_size` per call."""
    import io

    import tensorflow as tf
    from PIL import Image

    encoded = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=95)
        encoded.append(buf.getvalue())
    signature = tf.saved_model.load(model).signatures["analyze_photo"]
    signature(images=tf.constant(encoded[:2]))  # warm up
    runs = {}
    for label, batch in (("batch1", 1), (f"batch{batch_size}", batch_size)):
        faces, found, start = 0, 0, time.perf_counter()
        for i in range(0, len(encoded), batch):
            counts = signature(images=tf.constant(encoded[i:i + batch]))["count"].numpy()
            faces += int(counts.sum())
            found += int((counts > 0).sum())
        seconds = time.perf_counter() - start
        runs[label] = {"faces": faces, "faces_per_s": round(faces / seconds, 2),
                       "photos_per_s": round(len(images) / seconds, 2)}
        print(f"  {'analyze_photo':9s} {label:8s}: {runs[label]['faces_per_s']:7.2f} faces/s, "
              f"{runs[label]['photos_per_s']:6.2f} photos/s (in the graph, JPEG decoding included)", flush=True)
    rate = found / len(images)
    print(f"  {'analyze_photo':9s} detection rate: {found}/{len(images)} photos with a face ({rate:.1%})", flush=True)
    return {"runs": runs, "detection_rate": round(rate, 4), "photos": len(images)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SavedModel version folder (default: the release model; "
                                        "'quickstart': an untrained model of the quickstart architecture)")
    parser.add_argument("--photos", default=CELEBA, help="folder of photos (default: the shared CelebA subset)")
    parser.add_argument("--limit", type=int, default=200, help="photos to use")
    parser.add_argument("--batch", type=int, default=16, help="photos per call in the batched run")
    parser.add_argument("--detectors", default="blazeface,analyze_photo,mtcnn,haar",
                        help="comma-separated; analyze_photo is the SavedModel's photo signature")
    args = parser.parse_args()

    from facemtl.images import load_image
    from facemtl.inference import FaceAnalyzer

    paths = sorted(glob.glob(os.path.join(args.photos, "*.jpg")))[: args.limit]
    if paths:
        source = f"{len(paths)} photos from {os.path.relpath(args.photos)}"
        images = [load_image(p) for p in paths]
    else:
        from skimage import data

        source = f"scikit-image astronaut x{args.limit} (no photos under {args.photos})"
        images = [data.astronaut()] * args.limit
    from facemtl.installed import resolve_model

    model = quickstart_model() if args.model == "quickstart" else resolve_model(args.model)
    print(f"benchmark: {source}; model {model}; {os.cpu_count()} CPUs", flush=True)
    report = {"source": source, "model": model, "detectors": {}}
    for name in args.detectors.split(","):
        if name == "analyze_photo":
            report["detectors"][name] = photo_signature(model, images, args.batch)
            continue
        analyzer = FaceAnalyzer(model, detector=name)
        analyzer.analyze_images(images[:2])  # warm up (graph tracing)
        runs = {}
        for label, batch in (("batch1", 1), (f"batch{args.batch}", args.batch)):
            for k in analyzer.timings:
                analyzer.timings[k] = 0.0
            faces, found, start = 0, 0, time.perf_counter()
            for i in range(0, len(images), batch):
                results = analyzer.analyze_images(images[i:i + batch])
                faces += sum(len(r) for r in results)
                found += sum(1 for r in results if r)
            seconds = time.perf_counter() - start
            runs[label] = {
                "faces": faces,
                "faces_per_s": round(faces / seconds, 2),
                "photos_per_s": round(len(images) / seconds, 2),
                "share": {k: round(v / seconds, 3) for k, v in analyzer.timings.items()},
            }
            print(f"  {name:9s} {label:8s}: {runs[label]['faces_per_s']:7.2f} faces/s, "
                  f"{runs[label]['photos_per_s']:6.2f} photos/s; time in detect "
                  f"{runs[label]['share']['detect']:.0%}, align {runs[label]['share']['align']:.0%}, "
                  f"model {runs[label]['share']['model']:.0%}", flush=True)
        rate = found / len(images)
        print(f"  {name:9s} detection rate: {found}/{len(images)} photos with a face ({rate:.1%})", flush=True)
        report["detectors"][name] = {"runs": runs, "detection_rate": round(rate, 4), "photos": len(images)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
