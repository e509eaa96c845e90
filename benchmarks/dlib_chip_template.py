"""Fits facemtl's `dlib` crop layout: where MTCNN's 5 landmarks fall on dlib's face chips.

dlib cuts its 150x150 chips (padding 0.25) from its own 5 landmarks (eye corners
and nose base, `shape_predictor_5_face_landmarks.dat`), which facemtl's detectors
do not give. For every photo where dlib's HOG detector and MTCNN each find exactly
one face, this maps MTCNN's landmarks into dlib's chip (the chip transform is
recovered from `get_face_chip_details` and checked against `get_face_chip`'s
pixels) and averages them: that is `TEMPLATE_DLIB_150` in `facemtl.faces.align`.

Then it measures what the template costs: for the same faces, dlib's descriptor
of dlib's own chip against facemtl's rebuild on facemtl's chip (MTCNN landmarks,
the fitted template), as cosine similarity.

Needs dlib (`pip install dlib-bin`), face_recognition_models and ../shared/data.

    python benchmarks/dlib_chip_template.py --limit 400
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from _runs import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def chip_transform(image, details, chip):
    """The 2x3 image->chip matrix of dlib's chip details, the one whose warp matches dlib's chip best."""
    import cv2

    r = details.rect
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    scale = chip.shape[1] / r.width()
    best = None
    for sign in (1, -1):  # dlib's angle convention, settled by the pixels
        a = sign * details.angle
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * scale
        for offset in (0.0, 0.5):
            t = np.array([chip.shape[1] / 2 - offset] * 2) - rot @ centre
            m = np.hstack([rot, t[:, None]])
            mine = cv2.warpAffine(image, m, chip.shape[1::-1], flags=cv2.INTER_LINEAR)
            err = float(np.abs(mine.astype(float) - chip).mean())
            if best is None or err < best[0]:
                best = (err, m)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="../shared/data/celeba_subset/img_celeba/*.jpg")
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--out", default="runs/dlib_chip_template.json")
    args = parser.parse_args()

    import dlib

    from facemtl.faces.align import align_face, template
    from facemtl.faces.detect import get_detector
    from facemtl.images import load_image
    from facemtl.models.dlib_format import default_model_path
    from facemtl.models.dlib_resnet import build_dlib_resnet

    models = os.path.dirname(default_model_path())
    hog = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
    mtcnn = get_detector("mtcnn")
    points, errors, dlib_chips, our_chips = [], [], [], []
    paths = sorted(glob.glob(args.photos))[: args.limit]
    for path in paths:
        image = load_image(path)
        faces = hog(image, 1)
        found = [d for d in mtcnn.detect(image) if d.score >= 0.9]
        if len(faces) != 1 or len(found) != 1:
            continue
        shape = shapes(image, faces[0])
        chip = np.asarray(dlib.get_face_chip(image, shape, 150, 0.25))
        err, m = chip_transform(image, dlib.get_face_chip_details(shape, 150, 0.25), chip)
        points.append(found[0].landmarks @ m[:, :2].T + m[:, 2])
        errors.append(err)
        dlib_chips.append(chip)
        our_chips.append(align_face(image, found[0].landmarks, 150, layout="dlib")[0])
    points = np.array(points)
    encoder = dlib.face_recognition_model_v1(default_model_path())
    ref = np.array([np.array(encoder.compute_face_descriptor(c)) for c in dlib_chips])
    ours = build_dlib_resnet().predict(np.stack(our_chips).astype("float32"), batch_size=32, verbose=0)
    cos = (ref * ours).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(ours, axis=1)
    result = {
        "photos": len(paths), "faces_used": len(points),
        "chip_warp_mean_abs_error": round(float(np.mean(errors)), 3),
        "template_fitted": points.mean(0).round(3).tolist(),
        "template_in_facemtl": template(150, layout="dlib").round(3).tolist(),
        "landmark_spread_px": points.std(0).round(2).tolist(),
        "descriptor_cosine_dlib_chip_vs_facemtl_chip": {"mean": round(float(cos.mean()), 4),
                                                        "p5": round(float(np.percentile(cos, 5)), 4),
                                                        "min": round(float(cos.min()), 4)},
    }
    write_results(args.out, result)


if __name__ == "__main__":
    main()
