"""What the old train/serve crop skew cost the release model, on held-out faces.

Before the one crop path (facemtl 0.x, commit 610ef42 and earlier), a face
reached the model differently in training and in serving:

* pre-cropped faces (FER2013): training resized them with PIL (bilinear,
  `reducing_gap=2`), serving with TensorFlow's antialiased bilinear resize in
  the graph. Now both use `facemtl.preprocessing.resize_images`.
* in-the-wild photos (LFW): training aligned MTCNN's landmarks, serving
  BlazeFace's (the default detector). Now `align: true` sources use the serving
  detector (`align_detector`, default blazeface) and crop at the model's size.

Each row scores the release model twice on the same held-out faces: with the
crop training made and with the crop serving made, and counts how often the
answer changes.

    python benchmarks/crop_skew.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def pil_resize(image, size):
    """The training resize before the one crop path (`materialize._resize` at commit 610ef42)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0), np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="at most this many FER2013 test faces (0: all)")
    args = parser.parse_args()

    from facemtl.data.fer2013 import read_fer2013_folders
    from facemtl.data.folders import read_identity_folders
    from facemtl.faces.align import align_face
    from facemtl.faces.detect import get_detector
    from facemtl.images import load_image
    from facemtl.inference import Predictor
    from facemtl.preprocessing import resize_face

    predictor = Predictor()
    side = predictor.metadata["input"]["height"]
    report = {"model": predictor.path}

    fer = read_fer2013_folders(os.path.join(SHARED, "fer2013"), "test")
    n = len(fer) if not args.limit else min(args.limit, len(fer))
    labels = np.asarray(fer.expression[:n])
    answers = {}
    for name, resize in (("training (PIL)", pil_resize), ("serving (TF graph)", resize_face)):
        preds = []
        for start in range(0, n, 256):
            crops = np.stack([resize(load_image(p), side) for p in fer.paths[start:start + 256]])
            preds.append(predictor.forward(crops)["expression_probs"].argmax(1))
        answers[name] = np.concatenate(preds)
    accuracy = {k: round(float((v == labels).mean()), 4) for k, v in answers.items()}
    changed = float((answers["training (PIL)"] != answers["serving (TF graph)"]).mean())
    report["fer2013_public_test"] = {"faces": n, "accuracy": accuracy, "labels_changed": round(changed, 4)}
    print(f"FER2013 PublicTest, {n} faces: accuracy {accuracy}; label changed on {changed:.1%}", flush=True)

    lfw = read_identity_folders(os.path.join(SHARED, "lfw_subset", "test"), name="lfw")
    names = predictor.identities
    layout = predictor.metadata.get("crop", {}).get("layout", "arcface")
    detectors = {"training (MTCNN)": get_detector("mtcnn"), "serving (BlazeFace)": get_detector("blazeface")}
    rows = {k: [] for k in detectors}
    truth, embeddings = [], {k: [] for k in detectors}
    for path, person in zip(lfw.paths, lfw.identity):
        image = load_image(path, max_side=2048)
        found = {k: d.detect(image) for k, d in detectors.items()}
        if not all(found.values()):
            continue
        truth.append(f"lfw/{lfw.identity_names[person]}")
        for k, faces in found.items():
            face = max(faces, key=lambda d: d.box[2] * d.box[3])
            crop, _ = align_face(image, face.landmarks, (side, side), layout=layout, points=face.points)
            out = predictor.forward(crop[None])
            rows[k].append(names[int(out["identity_probs"][0].argmax())])
            embeddings[k].append(out["embedding"][0])
    accuracy = {k: round(float(np.mean([a == b for a, b in zip(v, truth)])), 4) for k, v in rows.items()}
    cosine = np.sum(np.stack(embeddings["training (MTCNN)"]) * np.stack(embeddings["serving (BlazeFace)"]), 1)
    report["lfw_test"] = {"photos": len(truth), "identity_accuracy": accuracy,
                          "embedding_cosine_mean": round(float(cosine.mean()), 4),
                          "embedding_cosine_min": round(float(cosine.min()), 4)}
    print(f"LFW subset test, {len(truth)} photos: identity accuracy {accuracy}; embedding cosine mean "
          f"{cosine.mean():.4f}, min {cosine.min():.4f}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
