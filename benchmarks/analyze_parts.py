"""Where `facemtl analyze`'s time goes per photo, and whether the detector can be made cheaper (issue #31).

On the first `--photos` CelebA-subset photos, each part as `facemtl analyze` runs it, one photo or face per call,
the interpreters at `--threads` threads (1: how each of the two streams runs on 2 cores; 2: one stream):
decoding, detection (BlazeFace full range: letterbox, `invoke`, decoding of the anchors and NMS), alignment, and
the model (the release's LiteRT copy, every answer) per face. Then the detector's own variants, on the same
letterboxed inputs: its interpreter resized to batches of 8 and 64 photos (the outputs are compared with the
one-photo calls), and, with `--sparse FILE`, MediaPipe's `face_detection_full_range_sparse.tflite` (the
pruned twin of the full-range model, in the `mediapipe==0.10.14` wheel; not shipped with facemtl): its time and
how its faces compare with the dense model's (found by both, box IoU, landmark distance per face width).

    python benchmarks/analyze_parts.py [--photos 300] [--threads 1] [--sparse PATH]

Results: runs/benchmarks/analyze_parts.json and on stdout.
"""

from __future__ import annotations

import argparse
import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import best_ms, box_iou, cpu_name, git_commit, write_results  # noqa: E402

CELEBA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "celeba_subset", "img_celeba")


def per_item_ms(fn, items, rounds=2):
    """The fastest of `rounds` passes over `items` (after a warm-up pass), in ms per item."""
    return best_ms(lambda: [fn(item) for item in items], rounds) / len(items)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sparse", help="face_detection_full_range_sparse.tflite (from mediapipe==0.10.14's wheel)")
    parser.add_argument("--out", default="runs/benchmarks/analyze_parts.json")
    args = parser.parse_args()
    from facemtl.faces.blazeface import BlazeFaceDetector
    from facemtl.images import load_image
    from facemtl.inference import FaceAnalyzer
    from facemtl.litert import split_cores

    split_cores(max(1, (os.cpu_count() or 1) // args.threads))  # every interpreter made here: --threads threads
    paths = sorted(glob.glob(os.path.join(CELEBA, "*.jpg")))[:args.photos]
    photos = [load_image(p) for p in paths]
    detector = BlazeFaceDetector("full", threads=args.threads)
    analyzer = FaceAnalyzer()
    predictor = analyzer.predictor
    found = [detector.detect(im) for im in photos]
    faces = [analyzer.preprocessor.align(im, d[0])[0] for im, d in zip(photos, found) if d]
    rows = {
        "decode (PIL)": per_item_ms(load_image, paths),
        "detect: whole": per_item_ms(detector.detect, photos),
        "detect: letterbox": per_item_ms(detector._letterbox, photos),
        "align per face": per_item_ms(lambda im_d: analyzer.preprocessor.align(*im_d),
                                      [(im, d[0]) for im, d in zip(photos, found) if d]),
    }
    interp = detector._interpreter
    inputs = np.stack([detector._letterbox(im)[0] for im in photos]).astype(np.float32)
    outputs = [detector._scores, detector._boxes]

    def invoke(batch):
        if interp.get_input_details()[0]["shape"][0] != len(batch):  # resized only when the batch size changes
            interp.resize_tensor_input(detector._input, [len(batch), *inputs.shape[1:]])
            interp.allocate_tensors()
        interp.set_tensor(detector._input, batch)
        interp.invoke()
        return [interp.get_tensor(o).reshape(len(batch), -1, interp.get_tensor(o).shape[-1]).copy() for o in outputs]

    single = [invoke(inputs[i:i + 1]) for i in range(len(inputs))]
    rows["detect: invoke, 1 photo per call"] = per_item_ms(lambda i: invoke(inputs[i:i + 1]), range(len(inputs)))
    equal = {}
    for size in (8, 64):
        starts = range(0, len(inputs) - size + 1, size)
        batched = [invoke(inputs[s:s + size]) for s in starts]
        equal[size] = all(np.array_equal(b[k][j], single[s + j][k][0]) for b, s in zip(batched, starts)
                          for j in range(size) for k in range(2))
        rows[f"detect: invoke, {size} photos per call"] = per_item_ms(
            lambda s: invoke(inputs[s:s + size]), starts) / size
    invoke(inputs[:1])  # the detector back to one photo per call, as `detect` uses it
    model_ms = per_item_ms(lambda f: predictor.run(f[None]), faces)
    rows["model per face (LiteRT copy, every answer)"] = model_ms
    compare = {}
    if args.sparse:
        sparse = BlazeFaceDetector(args.sparse, threads=args.threads)
        rows["detect: whole, sparse full range"] = per_item_ms(sparse.detect, photos)
        other = [sparse.detect(im) for im in photos]
        both = [(a[0], b[0]) for a, b in zip(found, other) if a and b]
        compare = {"found_by_both": len(both), "dense_only": sum(bool(a) and not b for a, b in zip(found, other)),
                   "sparse_only": sum(bool(b) and not a for a, b in zip(found, other)),
                   "box_iou_median": round(float(np.median([box_iou(a.box, b.box) for a, b in both])), 3),
                   "landmarks_per_face_width_p95": round(float(np.percentile(
                       [np.abs(a.landmarks - b.landmarks).max() / a.box[2] for a, b in both], 95)), 3)}
    rows = {k: round(v, 2) for k, v in rows.items()}
    per_photo = rows["decode (PIL)"] + rows["detect: whole"] + len(faces) / len(photos) * (
        rows["align per face"] + rows["model per face (LiteRT copy, every answer)"])
    for name, ms in rows.items():
        print(f"{name:48s} {ms:7.2f} ms")
    print(f"sum per photo {per_photo:.2f} ms; detection {rows['detect: whole'] / per_photo:.0%}; batched invoke "
          f"outputs equal to one-photo calls: {equal}; {compare}")
    write_results(args.out, {"cpu": cpu_name(), "commit": git_commit(), "threads": args.threads,
                             "photos": len(photos), "faces": len(faces), "ms": rows,
                             "sum_per_photo_ms": round(per_photo, 2), "batched_equal": equal, "sparse": compare})


if __name__ == "__main__":
    main()
