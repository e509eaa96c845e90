"""Colour or gray for the expression branch: what colour photos do to a branch trained on gray faces.

FER2013 is gray; served photos are colour. On colour faces with no expression
labels (the LFW subset's test photos and CelebA photos, detected and aligned
as `facemtl analyze` does), this compares a model's expression answer for the
colour crop with its answer for the same crop converted to gray (ITU-R 601,
copied to three channels, what the branch saw in training): how often the
label agrees and how far the probabilities move (total variation). It also
times the two ways of serving gray to the expression branch: as now (colour
in), or a gray copy through the trunk as well (what "gray in the graph" costs,
since the identity branch needs the colour trunk maps).

    python benchmarks/expression_colour.py [--model DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import write_results  # noqa: E402

DATA = "../shared/data"


def colour_faces(limit):
    from facemtl.inference import FaceAnalyzer

    paths = sorted(glob.glob(os.path.join(DATA, "lfw_subset", "test", "*", "*.jpg")))
    paths += sorted(glob.glob(os.path.join(DATA, "celeba_subset", "img_celeba", "*.jpg")))[:max(0, limit - len(paths))]
    analyzer = FaceAnalyzer()
    crops = []
    for path in paths[:limit]:
        image = analyzer.load(path)
        detections, found = analyzer.detect_and_align(image)
        if found:
            best = int(np.argmax([d.score for d in detections]))
            crops.append(found[best])
    return np.stack(crops), len(paths[:limit])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the release model installed with facemtl")
    parser.add_argument("--limit", type=int, default=600, help="photos to read (LFW test first, then CelebA)")
    parser.add_argument("--out", default="runs/expression_colour.json")
    args = parser.parse_args()

    from facemtl.inference import Predictor

    predictor = Predictor(args.model)
    crops, photos = colour_faces(args.limit)
    gray = np.round(crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    gray = np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    colour_p = np.concatenate([predictor.forward(crops[s:s + 64])["expression_probs"] for s in range(0, len(crops), 64)])
    gray_p = np.concatenate([predictor.forward(gray[s:s + 64])["expression_probs"] for s in range(0, len(gray), 64)])
    names = predictor.expressions

    def timed(batch, rounds=5):
        predictor.forward(batch)
        t = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            predictor.forward(batch)
            t.append(time.perf_counter() - t0)
        return float(np.median(t))

    batch = crops[:32]
    one = timed(batch)
    # Gray in the graph costs one more trunk pass per face: at most what the same faces cost once more.
    both = timed(np.concatenate([batch, gray[:32]]))
    results = {
        "model": predictor.path, "photos": photos, "faces": len(crops),
        "label_agreement": float((colour_p.argmax(1) == gray_p.argmax(1)).mean()),
        "mean_total_variation": float(0.5 * np.abs(colour_p - gray_p).sum(1).mean()),
        "label_share_colour": {n: float((colour_p.argmax(1) == k).mean()) for k, n in enumerate(names)},
        "label_share_gray": {n: float((gray_p.argmax(1) == k).mean()) for k, n in enumerate(names)},
        "seconds_per_32_faces": one, "seconds_per_32_faces_plus_their_gray_copies": both,
    }
    write_results(args.out, results)


if __name__ == "__main__":
    main()
