"""The `facemtl` command line: train, predict, analyze, align, evaluate.

Every user-facing error (bad recipe, missing file, unreadable image, wrong
model folder) is printed as one `facemtl: error: ...` line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from facemtl.errors import FacemtlError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of user output


def _train(args):
    from facemtl.config import load_recipe
    from facemtl.training.trainer import train

    recipe = load_recipe(args.recipe, overrides=args.set, smoke=args.smoke)
    train(recipe, run_dir=args.run_dir)
    return 0


def _predict(args):
    from facemtl.images import load_image
    from facemtl.inference import Predictor

    predictor = Predictor(args.model, batch_size=args.batch_size)
    images, paths, failures = [], [], 0
    for path in args.images:
        try:
            images.append(load_image(path))
            paths.append(path)
        except FacemtlError as exc:
            failures += 1
            print(f"facemtl: skipping {exc}", file=sys.stderr)
            print(json.dumps({"path": path, "error": str(exc)}))
    for path, raw in zip(paths, predictor.run(images)):
        answer = {"path": path, **predictor.describe(raw)}
        if not args.embedding:
            answer.pop("embedding")
        print(json.dumps(answer))
    return 1 if failures else 0


def _analyze(args):
    from facemtl.annotate import annotate
    from facemtl.inference import FaceAnalyzer
    from facemtl.media import Progress, expand_paths, is_video, video_frame_count, video_frames

    analyzer = FaceAnalyzer(args.model, detector=args.detector, min_score=args.min_score,
                            min_face_size=args.min_face_size, max_side=args.max_side)
    files = expand_paths(args.paths)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    if args.annotate:
        os.makedirs(args.annotate, exist_ok=True)
    failures, photos, faces_found = [], 0, 0
    used_names = set()

    def report_error(path, message):
        failures.append(path)
        print(f"facemtl: skipping {message}", file=sys.stderr)
        out.write(json.dumps({"path": path, "error": message}) + "\n")

    def annotated_name(path, frame):
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"{stem}_frame{frame:06d}.jpg" if frame is not None else f"{stem}.jpg"
        k = 1
        while name in used_names:
            k += 1
            name = f"{stem}_{k}.jpg" if frame is None else f"{stem}_frame{frame:06d}_{k}.jpg"
        used_names.add(name)
        return name

    def flush(batch):
        nonlocal photos, faces_found
        if not batch:
            return
        results = analyzer.analyze_images([img for _, _, img in batch])
        for (path, frame, img), faces in zip(batch, results):
            record = {"path": path}
            if frame is not None:
                record["frame"] = frame
            record.update({"size": list(img.shape[:2]), "faces": faces})
            if not args.embedding:
                for face in faces:
                    face.pop("embedding", None)
            out.write(json.dumps(record) + "\n")
            photos += 1
            faces_found += len(faces)
            if args.annotate:
                annotate(img, faces).save(os.path.join(args.annotate, annotated_name(path, frame)), quality=90)
        batch.clear()

    total = sum(max(1, video_frame_count(p) // args.every) if is_video(p) and not err else 1 for p, err in files)
    progress = Progress(total, "analyze")
    batch = []
    try:
        for path, error in files:
            if error:
                report_error(path, error)
                progress.update()
                continue
            if is_video(path):
                try:
                    for frame, img in video_frames(path, args.every, args.max_side):
                        batch.append((path, frame, img))
                        progress.update()
                        if len(batch) >= args.batch_photos:
                            flush(batch)
                except FacemtlError as exc:
                    report_error(path, str(exc))
                continue
            try:
                batch.append((path, None, analyzer.load(path)))
            except FacemtlError as exc:
                report_error(path, str(exc))
            progress.update()
            if len(batch) >= args.batch_photos:
                flush(batch)
        flush(batch)
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
    print(f"facemtl: analysed {photos} photo(s)/frame(s), found {faces_found} face(s), "
          f"{len(failures)} file(s) skipped" + (f": {', '.join(failures[:5])}" if failures else ""), file=sys.stderr)
    return 1 if failures else 0


def _align(args):
    from facemtl.faces.detect import get_detector
    from facemtl.faces.preprocess import align_folder

    if not os.path.isdir(args.src):
        raise FacemtlError(f"{args.src}: no such folder")
    report = align_folder(args.src, args.dst, get_detector(args.detector), size=(args.size, args.size),
                          face_scale=args.face_scale, max_side=args.max_side)
    print(f"facemtl: {report.summary()}", file=sys.stderr)
    for label, paths in (("no face", report.no_face), ("unreadable", report.unreadable)):
        for path in paths[:10]:
            print(f"facemtl: {label}: {path}", file=sys.stderr)
        if len(paths) > 10:
            print(f"facemtl: ... and {len(paths) - 10} more ({label})", file=sys.stderr)
    return 0


def _evaluate(args):
    from facemtl.config import load_recipe
    from facemtl.data.pipeline import load_splits
    from facemtl.evaluation import format_report, predict_saved_model, write_report
    from facemtl.export import read_metadata

    target = args.model
    if os.path.isfile(os.path.join(target, "saved_model.pb")):
        meta = read_metadata(target)
        recipe_path = args.recipe or os.path.join(meta.get("run_dir", ""), "recipe.yaml")
        out = args.out or os.path.join(target, f"eval-{args.split}")
    elif os.path.isfile(os.path.join(target, "recipe.yaml")):  # a run folder: use its export
        with open(os.path.join(target, "summary.json"), encoding="utf-8") as f:
            export = json.load(f).get("export_dir")
        if not export:
            raise FacemtlError(f"{target}: this run exported no SavedModel to evaluate")
        recipe_path = args.recipe or os.path.join(target, "recipe.yaml")
        out = args.out or os.path.join(target, f"eval-{args.split}")
        target = export
    else:
        raise FacemtlError(f"{target}: neither a SavedModel version folder nor a run folder")
    if not os.path.isfile(recipe_path):
        raise FacemtlError(f"No recipe to take the data from ({recipe_path}): pass --recipe")
    recipe = load_recipe(recipe_path, overrides=args.set)
    splits = load_splits(recipe, log=lambda m: print(m, file=sys.stderr))
    images, labels = splits.test if args.split == "test" else splits.val
    names = {"identity": splits.identity_names, "expression": splits.expression_names}
    preds, trues, model_names = predict_saved_model(target, images, labels, names)
    report = write_report(preds, trues, model_names, out, title=f"{recipe.name} {args.split} ")
    print(format_report(report))
    print(f"facemtl: report and confusion matrices in {out}", file=sys.stderr)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="facemtl", description="Multi-task face analysis: identity and expression.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, evaluate and export the model a recipe describes")
    p.add_argument("recipe", help="a YAML recipe, e.g. recipes/quickstart.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--smoke", action="store_true", help="apply the recipe's tiny smoke-test variant")
    p.add_argument("--run-dir", help="run directory (default: <output_dir>/<name>/<timestamp>)")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="expression and identity of face crops, one JSON line per image")
    p.add_argument("model", help="a SavedModel version folder, e.g. saved_models/quickstart/1")
    p.add_argument("images", nargs="+", help="image files (face crops; any size, gray/RGB/RGBA)")
    p.add_argument("--embedding", action="store_true", help="include the embedding vector in the output")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_predict)

    p = sub.add_parser("analyze", help="detect, align and analyse every face in photos, folders and videos")
    p.add_argument("paths", nargs="+", help="photos, folders (walked recursively) and video files")
    p.add_argument("--model", required=True, help="a SavedModel version folder")
    p.add_argument("--out", help="write JSON lines here instead of stdout")
    p.add_argument("--annotate", metavar="OUTDIR", help="write annotated pictures here")
    p.add_argument("--detector", choices=["mtcnn", "haar"], default="mtcnn")
    p.add_argument("--every", type=int, default=10, help="analyse every N-th video frame (default 10)")
    p.add_argument("--batch-photos", type=int, default=16, help="photos/frames per batched forward pass")
    p.add_argument("--min-score", type=float, default=0.9, help="minimum detection confidence")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels")
    p.add_argument("--max-side", type=int, default=2048, help="downscale larger photos to this longer side")
    p.add_argument("--embedding", action="store_true", help="include each face's embedding in the output")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("align", help="detect and align the main face of every photo of a folder (dataset preprocessing)")
    p.add_argument("src", help="folder of photos (sub-folders are kept)")
    p.add_argument("dst", help="output folder for the aligned crops (existing crops are reused)")
    p.add_argument("--size", type=int, default=112, help="crop side in pixels")
    p.add_argument("--face-scale", type=float, default=1.0, help="< 1 leaves more context around the face")
    p.add_argument("--detector", choices=["mtcnn", "haar"], default="mtcnn")
    p.add_argument("--max-side", type=int, default=2048)
    p.set_defaults(func=_align)

    p = sub.add_parser("evaluate", help="per-task accuracy, macro-F1, per-class table and confusion matrices")
    p.add_argument("model", help="a SavedModel version folder or a run folder")
    p.add_argument("--recipe", help="recipe naming the data (default: the run's own recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--out", help="folder for report.json and the confusion PNGs")
    p.set_defaults(func=_evaluate)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FacemtlError as exc:
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # validated model arguments (unknown backbone, bad sizes...)
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facemtl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
