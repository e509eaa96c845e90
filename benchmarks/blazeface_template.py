"""Fits where BlazeFace's keypoints fall on facemtl's crop layouts, and measures what the detector swap costs.

facemtl's crop layouts are templates of MTCNN's 5 landmarks (eye centres, nose
tip, mouth corners). BlazeFace gives eyes, nose tip and the mouth's *centre* (plus
the ears), at slightly different places. On photos where both detectors find
exactly one face (the same one), this maps BlazeFace's eyes, nose and mouth
centre through the MTCNN alignment of each face and averages them, on the first
half of the photos: `BLAZEFACE_POINTS` in `facemtl.faces.align`.

Then, on the other half (held out from the fit), it compares the model's
answers for BlazeFace-aligned crops with those for MTCNN-aligned crops of the
same faces: expression agreement and embedding cosine, for the fitted template
and for the naive mapping (mouth centre on the corners' midpoint).

With `--identity`, it also measures identity on people never seen in training
(the LFW subset and ORL, one folder per person): every photo's largest face is
found by each detector, aligned its way and embedded; rank-1 with one photo
enrolled (mean of 10 draws) and TAR at FAR 1e-3, on the photos where both
detectors found a face.

    python benchmarks/blazeface_template.py --limit 600 [--model DIR] [--identity]
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from _runs import box_iou, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="../shared/data/celeba_subset/img_celeba/*.jpg")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--model", help="default: the release model")
    parser.add_argument("--identity", action="store_true", help="also rank-1 / TAR on LFW subset and ORL")
    parser.add_argument("--out", default="runs/blazeface_template.json")
    args = parser.parse_args()

    from facemtl.export import crop_layout
    from facemtl.faces.align import LAYOUTS, align_face, similarity_transform, template, transform_points
    from facemtl.faces.detect import get_detector
    from facemtl.images import load_image
    from facemtl.inference import Predictor

    mtcnn, blaze = get_detector("mtcnn"), get_detector("blazeface")
    pairs = []  # (image, mtcnn detection, blazeface detection)
    paths = sorted(glob.glob(args.photos))[: args.limit]
    for path in paths:
        image = load_image(path, max_side=2048)
        m = [d for d in mtcnn.detect(image) if d.score >= 0.9]
        b = blaze.detect(image)
        if len(m) == 1 and len(b) == 1 and box_iou(m[0].box, b[0].box) > 0.3:
            pairs.append((image, m[0], b[0]))
    fit, held_out = pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]
    fitted = {}
    for layout, (_, side) in LAYOUTS.items():
        mapped = [transform_points(similarity_transform(m.landmarks, template(side, layout=layout)), b.landmarks)
                  for _, m, b in fit]
        fitted[layout] = {"points": np.mean(mapped, 0).round(3).tolist(), "spread_px": np.std(mapped, 0).round(2).tolist()}

    predictor = Predictor(args.model)
    size = predictor.metadata["input"]["height"]
    layout = crop_layout(predictor.metadata)
    naive = lambda b: np.vstack([b.landmarks[:3], b.landmarks[3:4], b.landmarks[3:4]])  # noqa: E731
    crops = {"mtcnn": [align_face(img, m.landmarks, size, layout=layout)[0] for img, m, _ in held_out],
             "blazeface_fitted": [align_face(img, b.landmarks, size, layout=layout, points="blazeface")[0]
                                  for img, _, b in held_out],
             "blazeface_naive": [align_face(img, naive(b), size, layout=layout)[0] for img, _, b in held_out]}
    answers = {k: predictor.run(v) for k, v in crops.items()}
    compared = {}
    for name in ("blazeface_fitted", "blazeface_naive"):
        emb = np.stack([a["embedding"] for a in answers[name]])
        ref = np.stack([a["embedding"] for a in answers["mtcnn"]])
        cos = (emb * ref).sum(1)
        agree = np.mean([a["expression"] == r["expression"] for a, r in zip(answers[name], answers["mtcnn"])])
        compared[name] = {"expression_agreement_with_mtcnn": round(float(agree), 4),
                          "embedding_cosine_with_mtcnn": {"mean": round(float(cos.mean()), 4),
                                                          "p5": round(float(np.percentile(cos, 5)), 4),
                                                          "min": round(float(cos.min()), 4)}}
    results = {"photos": len(paths), "faces_both_found": len(pairs), "fit_faces": len(fit),
               "held_out_faces": len(held_out), "model": predictor.path, "layout": layout,
               "fitted": fitted, "held_out_vs_mtcnn": compared}
    if args.identity:
        results["identity"] = measure_identity(predictor, {"mtcnn": mtcnn, "blazeface": blaze}, size, layout)
    write_results(args.out, results)


IDENTITY_SETS = {"LFW subset": "../shared/data/lfw_subset/*/*/*.jpg", "ORL": "../shared/data/orl/att_faces/*/*.pgm"}


def measure_identity(predictor, detectors, size, layout):
    """Rank-1 and TAR@FAR with each detector's alignment, on the photos where every detector found a face."""
    from openset import measure

    from facemtl.faces.align import align_face
    from facemtl.images import load_image

    results = {}
    for set_name, pattern in IDENTITY_SETS.items():
        paths = sorted(glob.glob(pattern))
        crops = {name: [] for name in detectors}
        labels, missed = [], {name: 0 for name in detectors}
        for path in paths:
            image = load_image(path)
            found = {}
            for name, detector in detectors.items():
                faces = detector.detect(image)
                faces = [f for f in faces if f.score >= 0.9] if name == "mtcnn" else faces
                if faces:
                    found[name] = max(faces, key=lambda f: f.box[2] * f.box[3])
                else:
                    missed[name] += 1
            if len(found) < len(detectors):
                continue
            for name, face in found.items():
                crops[name].append(align_face(image, face.landmarks, size, layout=layout, points=face.points)[0])
            labels.append(os.path.basename(os.path.dirname(path)))
        ids = {n: i for i, n in enumerate(sorted(set(labels)))}
        labels = np.array([ids[n] for n in labels])
        results[set_name] = {"photos": len(paths), "used": int(len(labels)), "no_face": missed}
        for name in detectors:
            emb = np.stack([r["embedding"] for r in predictor.run(crops[name])])
            report = measure(emb, labels)
            results[set_name][name] = {"rank1": round(report["rank1"], 4), "rank1_std": round(report["rank1_std"], 4),
                                       "tar_at_far_1e-3": round(report["at_far"]["0.001"]["tar"], 4),
                                       "auc": round(report["auc"], 4)}
        print(set_name, results[set_name], flush=True)
    return results


if __name__ == "__main__":
    main()
