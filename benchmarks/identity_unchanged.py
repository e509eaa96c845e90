"""Is the identity half of two releases the same? Embeddings and identity probabilities on real faces.

`--all-outputs` also compares every other output (expression probabilities, open-set
similarity): e.g. a SavedModel written from the preset against the one it was made from.

Faces: the LFW subset's test photos and the first CelebA photos, detected and aligned
by BlazeFace onto the old model's crop layout, then embedded by both SavedModels.

    python benchmarks/identity_unchanged.py --old RELEASE_1_DIR [--new SAVED_MODEL] [--all-outputs]
"""

from __future__ import annotations

import argparse
import glob
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

DATA = "../shared/data"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the earlier export (e.g. release 1 from git history)")
    parser.add_argument("--new", default=None, help="default: the release model installed with facemtl")
    parser.add_argument("--all-outputs", action="store_true", help="also the largest difference of every other output")
    parser.add_argument("--celeba", type=int, default=135, help="CelebA photos added to the LFW test photos")
    args = parser.parse_args()

    from facemtl.inference import FaceAnalyzer, Predictor

    analyzer = FaceAnalyzer(args.old)
    paths = sorted(glob.glob(os.path.join(DATA, "lfw_subset", "test", "*", "*.jpg")))
    paths += sorted(glob.glob(os.path.join(DATA, "celeba_subset", "img_celeba", "*.jpg")))[:args.celeba]
    crops = np.stack([c for p in paths for c in analyzer.detect_and_align(analyzer.load(p))[1]])
    old, new = Predictor(args.old, backend="savedmodel"), Predictor(args.new, backend="savedmodel")

    def outputs(predictor, key):
        return np.concatenate([predictor.forward(crops[s:s + 64])[key] for s in range(0, len(crops), 64)])

    cosine = (outputs(old, "embedding") * outputs(new, "embedding")).sum(1)
    diff = np.abs(outputs(old, "identity_probs") - outputs(new, "identity_probs")).max()
    print(f"{len(crops)} faces from {len(paths)} photos: embedding cosine min {cosine.min():.7f}, "
          f"mean {cosine.mean():.7f}; max |identity_probs difference| {diff:.2e}")
    if args.all_outputs:
        first = old.forward(crops[:2])
        for key in sorted(first):
            if key not in ("embedding", "identity_probs") and np.asarray(first[key]).dtype.kind == "f":
                print(f"max |{key} difference| {np.abs(outputs(old, key) - outputs(new, key)).max():.2e}")


if __name__ == "__main__":
    main()
