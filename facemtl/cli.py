"""The `facemtl` command line: train, predict, analyze, align, evaluate, verify, calibrate, gallery, models,
export, serve (analyze, align and gallery enroll-folders also on Apache Beam: `--runner`).

Every user-facing error (bad recipe, missing file, unreadable image, wrong
model folder) is printed as one `facemtl: error: ...` line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from facemtl import __version__
from facemtl.errors import FacemtlError
from facemtl.faces.detect import DETECTORS as DETECTOR_NAMES
from facemtl.faces.detection import DEFAULT_DETECTOR
from facemtl.pipelines import LOCAL
from facemtl.quiet import VERBOSE_HELP, route_native_logs


def _train(args):
    from facemtl.config import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, smoke=args.smoke)  # a bad recipe is said before TF starts
    from facemtl.training.trainer import train

    train(recipe, run_dir=args.run_dir)
    return 0


def _predict(args):
    from facemtl.inference import Predictor

    model, images_in = args.model, list(args.images)
    if model is None and len(images_in) > 1 and os.path.isdir(images_in[0]):
        model = images_in.pop(0)  # the older form: facemtl predict MODEL IMAGE...
    predictor = Predictor(model, batch_size=args.batch_size, align_crops=not args.no_align)
    failures = 0
    for start in range(0, len(images_in), args.batch_size):  # decoded a batch at a time: bounded memory
        chunk = images_in[start:start + args.batch_size]
        for path, answer in zip(chunk, predictor.predict(chunk)):
            if "error" in answer:
                failures += 1
                print(f"facemtl: skipping {answer['error']}", file=sys.stderr)
            elif not args.embedding:
                answer.pop("embedding", None)
            print(json.dumps({"path": path, **answer}))
    return 1 if failures else 0


def _analyze(args):
    from facemtl.annotate import AnnotationNames, annotate
    from facemtl.inference import FaceAnalyzer, analyze_files

    if args.every < 1:
        raise FacemtlError(f"--every must be a positive number of frames. Received: --every {args.every}")
    if args.max_frames is not None and args.max_frames < 1:
        raise FacemtlError(f"--max-frames must be positive. Received: --max-frames {args.max_frames}")
    if args.runner != LOCAL:
        return _analyze_on_beam(args)
    if args.parquet or args.num_shards is not None:
        raise FacemtlError("--parquet and --num-shards are for sharded output: use them with --runner beam")
    gallery = None
    if args.gallery:
        from facemtl.recognition.gallery import Gallery

        gallery = Gallery.open(args.gallery, args.store)
    analyzer = FaceAnalyzer(args.model, detector=args.detector, fallback=args.fallback, min_score=args.min_score,
                            min_face_size=args.min_face_size, max_side=args.max_side, gallery=gallery,
                            threshold=args.threshold)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    if args.annotate:
        os.makedirs(args.annotate, exist_ok=True)
    names = AnnotationNames()
    failures, ignored, photos, frames, faces_found, interrupted = [], [], 0, 0, 0, False
    start = time.perf_counter()
    records = analyze_files(analyzer, args.paths, every=args.every, batch_photos=args.batch_photos,
                            max_frames=args.max_frames, ignored=ignored)
    try:
        for record, image in records:
            if "error" in record:
                failures.append(record["path"])
                print(f"facemtl: skipping {record['error']}", file=sys.stderr)
            else:
                photos += 1
                frames += "frame" in record
                faces_found += len(record["faces"])
                if args.annotate:
                    annotate(image, record["faces"]).save(
                        os.path.join(args.annotate, names(record["path"], record.get("frame"))), quality=90)
                if not args.embedding:
                    for face in record["faces"]:
                        face.pop("embedding", None)
            out.write(json.dumps(record) + "\n")
            out.flush()  # a camera runs until stopped: every answer is out as soon as it exists
    except KeyboardInterrupt:  # Ctrl-C ends a camera (or a long run): what was analysed is kept and summed up
        interrupted = True
        records.close()
    finally:
        if out is not sys.stdout:
            out.close()
    seconds = time.perf_counter() - start
    fallback = (f", {args.fallback} fallback on {analyzer.fallback_photos} photo(s)/frame(s) where {args.detector} "
                "found no face" if args.fallback else "")
    unit = "frames/s" if frames else "photos/s"
    print(f"facemtl: analysed {photos} photo(s)/frame(s) in {seconds:.1f} s ({photos / max(seconds, 1e-9):.1f} "
          f"{unit}, decoding included), found {faces_found} face(s){fallback}, {len(failures)} unreadable file(s)"
          + (f": {', '.join(failures[:5])}" if failures else "")
          + (f", {len(ignored)} file(s) in folders ignored (not images or videos by name)" if ignored else "")
          + (" (interrupted)" if interrupted else ""), file=sys.stderr)
    return 130 if interrupted else (1 if failures else 0)


def _analyze_on_beam(args):
    from facemtl.pipelines.analyze import analyze_collection, dead_letter_prefix
    from facemtl.pipelines.io import single_shard

    if not args.out:
        raise FacemtlError("--runner beam writes sharded files: give --out PREFIX (e.g. --out answers/photos)")
    if args.annotate:
        raise FacemtlError("--annotate is not available with --runner beam (annotated pictures are written in one "
                           "process: run `facemtl analyze --annotate` on the photos you want to see)")
    if args.gallery:  # a missing gallery is one line here, not an error in every worker
        from facemtl.recognition.gallery import Gallery

        Gallery.open(args.gallery, args.store)
    shards = args.num_shards or 8
    start = time.perf_counter()
    counts = analyze_collection(
        args.paths, args.out, runner=args.runner, beam_args=args.beam_args, num_shards=shards, parquet=args.parquet,
        model=args.model, detector=args.detector, fallback=args.fallback, min_score=args.min_score,
        min_face_size=args.min_face_size, max_side=args.max_side, every=args.every, max_frames=args.max_frames,
        batch_photos=args.batch_photos, embedding=args.embedding, gallery=args.gallery, store=args.store,
        threshold=args.threshold)
    seconds = time.perf_counter() - start
    n = counts["photos"] + counts["frames"]
    print(f"facemtl: analysed {n} photo(s)/frame(s) in {seconds:.1f} s on {args.runner} ({n / max(seconds, 1e-9):.1f}"
          f"/s, start-up included), found {counts['faces']} face(s), {counts['unreadable']} unreadable file(s)"
          + (f", {counts['ignored']} file(s) in folders ignored (not images or videos by name)"
             if counts["ignored"] else "")
          + f"; answers in {args.out}-*-of-{shards:05d}.jsonl"
          + (" and .parquet" if args.parquet else "")
          + (f", unreadable files in {single_shard(dead_letter_prefix(args.out))}"
             if counts["unreadable"] else ""), file=sys.stderr)
    return 1 if counts["unreadable"] else 0


def _align(args):
    from facemtl.faces.align_folder import align_folder
    from facemtl.faces.detect import get_detector

    if args.runner != LOCAL:
        from facemtl.pipelines.align import align_collection, report_prefix
        from facemtl.pipelines.io import single_shard

        counts = align_collection(args.src, args.dst, detector=args.detector, size=(args.size, args.size),
                                  face_scale=args.face_scale, max_side=args.max_side, runner=args.runner,
                                  beam_args=args.beam_args)
        print(f"facemtl: {counts['aligned']} aligned, {counts['cached']} already cached, {counts['no_face']} "
              f"without a face, {counts['unreadable']} unreadable, {counts['several_faces']} with several faces "
              f"(largest kept), {counts['ignored']} ignored (not images by name); the list is in "
              f"{single_shard(report_prefix(args.dst))}", file=sys.stderr)
        return 0
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
    from facemtl.evaluation import format_report
    from facemtl.scoring import evaluate_target

    report, out = evaluate_target(args.model, recipe=args.recipe, split=args.split, overrides=args.set, out=args.out,
                                  log=lambda m: print(m, file=sys.stderr))
    print(format_report(report))
    print(f"facemtl: report and confusion matrices in {out}", file=sys.stderr)
    return 0


def _embedder(args, model):
    from facemtl.recognition.embed import Embedder

    return Embedder(model, crops=args.crops, detector=args.detector)


def _verify(args):
    from facemtl.recognition.metrics import model_threshold

    embedder = _embedder(args, args.model)
    threshold, origin = model_threshold(embedder.metadata, args.threshold)
    a, b = embedder.embed([args.a, args.b])
    for face in (a, b):
        if face.embedding is None:
            raise FacemtlError(f"{face.source}: {face.error}")
    score = float(a.embedding @ b.embedding)
    print(json.dumps({"a": args.a, "b": args.b, "same_person": score >= threshold, "score": round(score, 6),
                      "threshold": threshold, "threshold_source": origin}))
    return 0


def _calibrate(args):
    from facemtl.recognition.calibration import calibrate

    result = calibrate(args.model, args.data, far=args.far, fmt=args.format, split=args.split, align=args.align,
                       out=args.out, dry_run=args.dry_run, log=lambda m: print(m, file=sys.stderr))
    out = result.pop("written_to")
    print(json.dumps(result))
    print(f"facemtl: threshold {result['threshold']:.4f} for FAR {args.far:g} (TAR {result['tar']:.3f}) "
          f"{'computed (not stored: --dry-run)' if args.dry_run else 'stored in the model metadata'}"
          + (f"; ROC curve in {os.path.join(out, 'roc.png')}" if out else ""), file=sys.stderr)
    return 0


def _installed_model_of(gallery):
    """The installed model (shipped with facemtl) that made a gallery's embeddings.

    The model path recorded in a gallery is never loaded: the gallery may come from
    someone else, and loading a SavedModel runs its graph.
    """
    from facemtl.installed import installed_models, resolve_model

    wanted = gallery.model.get("model_id")
    for m in installed_models():
        if m["model_id"] == wanted:
            return resolve_model(m["path"], write=False)
    raise FacemtlError(f"{gallery.path} was made with the model at {gallery.model.get('path')!r}, which is not one "
                       "installed with facemtl; pass --model with that model's folder (facemtl does not load a "
                       "model path read from a gallery)")


def _gallery(args):
    from facemtl.recognition.gallery import Gallery, list_galleries, model_info
    from facemtl.recognition.stores import open_store

    store = args.store
    if args.action == "list" and not args.gallery:
        print(json.dumps({"store": open_store(store).uri, "galleries": list_galleries(store)}))
        return 0
    if args.action == "enroll-folders":
        return _enroll_folders(args)
    if args.action in ("enroll", "cluster"):
        embedder = _embedder(args, args.model) if args.action == "enroll" else None
        metadata = embedder.metadata if embedder else None
        if args.action == "cluster":
            from facemtl.inference import FaceAnalyzer

            analyzer = FaceAnalyzer(args.model, detector=args.detector)
            metadata = analyzer.predictor.metadata
        # A wrong model is refused before any photo is read.
        gallery = Gallery.open(args.gallery, store, model=model_info(metadata, args.model), create=True)
        if args.action == "cluster":
            return _cluster(args, analyzer, gallery)
        faces = embedder.embed(args.photos)
        good = [f for f in faces if f.embedding is not None]
        for f in faces:
            if f.embedding is None:
                print(f"facemtl: skipping {f.source}: {f.error}", file=sys.stderr)
        if not good:
            raise FacemtlError(f"No face to enrol for {args.name!r}: the gallery was not changed")
        total = gallery.enroll(args.name, [f.embedding for f in good], [f.source for f in good])
        print(json.dumps({"gallery": gallery.path, "name": args.name, "enrolled": len(good),
                          "skipped": [f.source for f in faces if f.embedding is None],
                          "several_faces": [f.source for f in good if f.faces > 1], "photos_of_name": total}))
        return 1 if len(good) < len(faces) else 0
    gallery = Gallery.open(args.gallery, store)
    done = None  # what list, remove, rename and merge answer
    if args.action == "list":
        done = {"model": gallery.model, "people": gallery.people()}
    elif args.action == "remove":
        done = {"removed": args.name, "embeddings": gallery.remove(args.name)}
    elif args.action == "rename":
        gallery.rename(args.name, args.new_name)
        done = {"renamed": args.name, "to": args.new_name}
    elif args.action == "merge":
        done = {"merged": args.name, "into": args.into, "photos_of_name": gallery.merge(args.name, args.into)}
    if done is not None:
        print(json.dumps({"gallery": gallery.path, **done}))
        return 0
    model = args.model or _installed_model_of(gallery)
    failures = 0
    if args.crops:  # already-aligned face crops: one face each
        embedder = _embedder(args, model)
        threshold = gallery.threshold_for(embedder.metadata, args.threshold)
        for face in embedder.embed(args.photos):
            if face.embedding is None:
                failures += 1
                print(json.dumps({"path": face.source, "error": face.error}))
                continue
            print(json.dumps({"path": face.source, **gallery.identify(face.embedding, threshold, args.k)[0]}))
        return 1 if failures else 0
    from facemtl.inference import FaceAnalyzer

    analyzer = FaceAnalyzer(model, detector=args.detector, gallery=gallery, threshold=args.threshold, top_k=args.k)
    chunks = (args.photos[i:i + 16] for i in range(0, len(args.photos), 16))  # bounded memory, one pass per chunk
    for path, result in ((p, r) for chunk in chunks for p, r in zip(chunk, analyzer.analyze(chunk))):
        if "error" in result:
            failures += 1
            print(json.dumps({"path": path, "error": result["error"]}))
            continue
        print(json.dumps({"path": path, "faces": [{"box": f["box"], "detection_score": f["score"], **f["match"]}
                                                  for f in result["faces"]]}))
    return 1 if failures else 0


def _enroll_folders(args):
    from facemtl.recognition.enrolment import enroll_folders, enrolment_summary
    from facemtl.recognition.gallery import Gallery, model_info

    if args.runner == LOCAL:
        from facemtl.recognition.embed import Embedder

        embedder = Embedder(args.model, detector=args.detector)
        gallery = Gallery.open(args.gallery, args.store, model=model_info(embedder.metadata, args.model), create=True)
        counts, report = enroll_folders(gallery, args.root, embedder)
    else:
        from facemtl.installed import model_metadata
        from facemtl.pipelines.enroll import enroll_collection
        from facemtl.pipelines.io import read_bytes, single_shard

        # Made here, once, with the model's info: the workers only add to it.
        metadata = model_metadata(args.model)
        gallery = Gallery.open(args.gallery, args.store, model=model_info(metadata, args.model), create=True)
        prefix = args.report or f"{args.gallery}-enrolment-report"
        counts = enroll_collection(args.root, args.gallery, prefix, store=args.store, model=args.model,
                                   detector=args.detector, runner=args.runner, beam_args=args.beam_args)
        report = [json.loads(line) for line in read_bytes(single_shard(prefix)).decode("utf-8").splitlines()]
    print(json.dumps(enrolment_summary(gallery, counts, report)))
    return 1 if counts["no_face"] or counts["unreadable"] else 0


def _cluster(args, analyzer, gallery):
    from facemtl.recognition.clustering import cluster_photos

    sheets = args.sheets or f"{args.gallery}-people"
    faces, summary = cluster_photos(analyzer, args.photos, gallery, threshold=args.threshold, sheets=sheets,
                                    min_size=args.min_size)
    for face in faces:
        print(json.dumps(face))
    for bad in summary["unreadable"]:
        print(f"facemtl: skipping {bad['path']}: {bad['error']}", file=sys.stderr)
    print(f"facemtl: {summary['faces']} face(s) in {summary['photos']} photo(s): {summary['groups']} group(s) "
          f"({len(summary['new_people'])} new in gallery {args.gallery!r}"
          + (f", {len(summary['joined'])} joined people already there" if summary["joined"] else "")
          + f"), {summary['unclustered']} face(s) left unclustered; contact sheets in {sheets}/; name a group with "
          f"`facemtl gallery rename {args.gallery} person-0001 \"Ann Lee\"`", file=sys.stderr)
    return 1 if summary["unreadable"] else 0


def _models(args):
    from facemtl.installed import installed_models

    models = installed_models()
    for m in models:
        print(json.dumps(m))
    if not models:
        print("facemtl: no model is installed with the package", file=sys.stderr)
    return 0


def _docs(args):
    docs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs")
    pages = {f[:-3]: os.path.join(docs, f) for f in sorted(os.listdir(docs)) if f.endswith(".md")}
    if args.page:
        name = args.page[:-3] if args.page.endswith(".md") else args.page
        if name not in pages:
            raise FacemtlError(f"No page {args.page!r}; the pages: {', '.join(pages)}")
        with open(pages[name], encoding="utf-8") as f:
            sys.stdout.write(f.read())
        return 0
    width = max(map(len, pages))
    for name, path in pages.items():
        with open(path, encoding="utf-8") as f:
            title = f.readline().lstrip("#").strip()
        print(f"{name:<{width}}  {title}")
    print(f"facemtl: {len(pages)} page(s) in {docs}; read one with `facemtl docs NAME`", file=sys.stderr)
    return 0


def _recipes(args):
    from facemtl.config import RECIPES_DIR, shipped_recipes

    recipes = shipped_recipes()
    width = max(map(len, recipes), default=0)
    for name, line in recipes.items():
        print(f"{name:<{width}}  {line}")
    print(f"facemtl: {len(recipes)} recipe(s) in {RECIPES_DIR}; run one with `facemtl train NAME` (`--smoke` for a "
          "tiny run; copy the file to change it)", file=sys.stderr)
    return 0


def _export(args):
    if args.format == "tflite":
        from facemtl.export.tflite import export_tflite

        if not os.path.isdir(args.run):
            raise FacemtlError(f"--format tflite exports a run folder; a preset's SavedModel carries its LiteRT copy "
                               f"(assets.extra/model.tflite): facemtl export {args.run}")
        if args.quantize == "int8" and not args.calibration:
            raise FacemtlError("--quantize int8 needs --calibration FOLDER (real face crops to calibrate on)")
        out = args.out or f"{os.path.basename(os.path.normpath(args.run))}.tflite"
        path = export_tflite(args.run, out, like=args.like, quantize=args.quantize, calibration=args.calibration)
        print(json.dumps({"tflite": path, "bytes": os.path.getsize(path), "quantize": args.quantize or "float32"}))
        return 0
    from facemtl.export.cache import export_preset
    from facemtl.export.saved_model import export_run
    from facemtl.models.presets import preset_dir, preset_from_export

    if args.format == "preset":
        path = preset_from_export(args.run, args.out)
        print(json.dumps({"preset": path}))
        return 0

    if not os.path.isdir(args.run):
        preset_dir(args.run)  # not a folder: a preset's name, or one clear error that lists them
        path = export_preset(args.run, args.base_dir, version=args.version)
        print(json.dumps({"export_dir": path}))
        return 0
    path = export_run(args.run, like=args.like, base_dir=args.base_dir, name=args.name, version=args.version,
                      max_faces=args.max_faces)
    print(json.dumps({"export_dir": path}))
    return 0


def _serve(args):
    try:
        import uvicorn

        from facemtl.serving.app import create_app
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in ("tensorflow", "keras"):
            raise  # said by main(): TensorFlow is missing
        raise FacemtlError(f"`facemtl serve` needs the serve extra ({exc.name} is missing): "
                           'pip install "facemtl[serve,cpu]"') from None
    from facemtl.export.metadata import read_metadata
    from facemtl.installed import resolve_model

    read_metadata(resolve_model(args.model))  # a wrong folder is one clear error, before the server starts
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"facemtl: serving on {args.host}: reachable from other machines", file=sys.stderr)
    app = create_app(args.model, name=args.name, detector=args.detector, max_batch_size=args.max_batch_size,
                     max_wait_ms=args.max_wait_ms, api_key=args.api_key, gallery_store=args.store,
                     max_body_bytes=int(args.max_body_mb * 2**20), max_instances=args.max_instances,
                     cors_origins=args.cors_origin)
    # uvicorn stops taking connections on SIGTERM/SIGINT, lets open requests finish, then runs the app's shutdown.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=30)
    return 0


DETECTORS = sorted(DETECTOR_NAMES, key=lambda n: n != DEFAULT_DETECTOR)  # the default first
TENSORFLOW_HINT = 'pip install "facemtl[cpu]" (or "facemtl[gpu]"; any tensorflow 2.21 with keras 3.15 works)'
MODEL_HELP = "a SavedModel version folder (default: the release model shipped with facemtl, see `facemtl models`)"
STORE_HELP = ("where galleries live: a folder (default $FACEMTL_GALLERIES, $FACEMTL_HOME/galleries or "
              "~/.facemtl/galleries), milvus://HOST:19530[/DB], milvus+https://HOST or milvus-lite:PATH.db "
              "(docs/identity.md)")
# The options several commands share, each said once.
OPTIONS = {
    "--model": dict(help=MODEL_HELP),
    "--detector": dict(choices=DETECTORS, default=DEFAULT_DETECTOR,
                       help="face detector: blazeface (default, fast), mtcnn (5 landmarks, slower) or haar"),
    "--runner": dict(default=LOCAL, help="local (default: this process), beam (Apache Beam's local runner; add "
                     "--direct_num_workers N) or a Beam runner: DirectRunner, FlinkRunner, SparkRunner, "
                     "DataflowRunner...; Beam's own options (--project, --flink_master...) are passed to it as "
                     "written (docs/pipelines.md; needs facemtl[beam])"),
    "--store": dict(help=STORE_HELP),
    "--max-side": dict(type=int, default=2048, help="downscale larger photos to this longer side"),
    "--crops": dict(action="store_true", help="inputs are aligned face crops: skip detection"),
    "--set": dict(action="append", default=[], metavar="KEY=VALUE",
                  help="override a recipe value, e.g. --set train.epochs=3 (repeatable)"),
}


def _options(p, *names, **changed):
    """Adds the shared `OPTIONS` named (`changed`: `{dest: {setting: value}}` for this command's own wording)."""
    for name in names:
        p.add_argument(name, **{**OPTIONS[name], **changed.get(name.lstrip("-").replace("-", "_"), {})})


def build_parser():
    parser = argparse.ArgumentParser(prog="facemtl", description="Multi-task face analysis: who a face is (trained "
                                     "people or unknown, galleries), its expression, apparent age and gender; "
                                     "training, export and serving.")
    parser.add_argument("--version", action="version", version=f"facemtl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, evaluate and export the model a recipe describes")
    p.add_argument("recipe", help="a shipped recipe's name (quickstart, finetune_release...: `facemtl recipes`) or a "
                                  "YAML file")
    _options(p, "--set")
    p.add_argument("--smoke", action="store_true", help="apply the recipe's tiny smoke-test variant")
    p.add_argument("--run-dir", help="run directory (default: <output_dir>/<name>/<timestamp>)")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="expression and identity of face crops, one JSON line per image")
    p.add_argument("images", nargs="+", help="image files (face crops; any size, gray/RGB/RGBA); a SavedModel "
                   "folder first is taken as --model")
    _options(p, "--model")
    p.add_argument("--embedding", action="store_true", help="include the embedding vector in the output")
    p.add_argument("--batch-size", type=int, default=64, help="crops per forward pass (default 64)")
    p.add_argument("--no-align", action="store_true",
                   help="give the model each crop as it is (default: the face in the crop is found and aligned "
                        "as in a photo, where one is found)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("analyze", help="detect, align and analyse every face in photos, folders and videos")
    p.add_argument("paths", nargs="+", help="photos, folders (walked recursively), video files and cameras "
                                            "(camera:0 or /dev/video0; Ctrl-C stops)")
    _options(p, "--model", "--detector", "--max-side", "--store", "--runner")
    p.add_argument("--out", help="write JSON lines here instead of stdout")
    p.add_argument("--annotate", metavar="OUTDIR", help="write annotated pictures here")
    p.add_argument("--fallback", choices=DETECTORS, help="run this detector on photos where --detector finds no "
                                                          "face (e.g. mtcnn); counted in the summary")
    p.add_argument("--every", type=int, default=10, help="analyse every N-th video frame (default 10)")
    p.add_argument("--batch-photos", type=int, default=16, help="photos/frames per batched forward pass")
    p.add_argument("--max-frames", type=int, help="analyse at most N frames of each video or camera")
    p.add_argument("--min-score", type=float, help="minimum detection confidence (default: the detector's own: "
                                                   "blazeface 0.6, mtcnn and haar 0.9)")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels")
    p.add_argument("--embedding", action="store_true", help="include each face's embedding in the output")
    p.add_argument("--gallery", help="name every face from this gallery (see `facemtl gallery`)")
    p.add_argument("--threshold", type=float, help="match threshold (default: the model's calibrated one)")
    p.add_argument("--num-shards", type=int, help="--runner beam: output files PREFIX-SSSSS-of-NNNNN.jsonl (default "
                                                  "8; about one per 100,000 photos)")
    p.add_argument("--parquet", action="store_true", help="--runner beam: also write each shard as Parquet")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("align", help="detect and align the main face of every photo of a folder (dataset preprocessing)")
    p.add_argument("src", help="folder of photos (sub-folders are kept)")
    p.add_argument("dst", help="output folder for the aligned crops (existing crops are reused)")
    p.add_argument("--size", type=int, default=112, help="crop side in pixels")
    p.add_argument("--face-scale", type=float, default=1.0, help="< 1 leaves more context around the face")
    _options(p, "--detector", "--max-side", "--runner")
    p.set_defaults(func=_align)

    p = sub.add_parser("evaluate", help="per-task accuracy, macro-F1, per-class table and confusion matrices")
    p.add_argument("model", help="a SavedModel version folder or a run folder")
    p.add_argument("--recipe", help="recipe naming the data (default: the run's own recipe)")
    _options(p, "--set")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test (the held-out split, default) or val (the split checkpoints were chosen on)")
    p.add_argument("--out", help="folder for report.json and the confusion PNGs")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("verify", help="are two photos the same person? score and threshold")
    p.add_argument("a", help="first photo")
    p.add_argument("b", help="second photo")
    p.add_argument("--threshold", type=float, help="default: the model's calibrated threshold")
    _options(p, "--model", "--crops", "--detector")
    p.set_defaults(func=_verify)

    p = sub.add_parser("calibrate", help="pick the verification threshold for a target false-accept rate")
    p.add_argument("--model", required=True, help="a SavedModel version folder (its metadata gets the threshold)")
    p.add_argument("--data", required=True, help="labelled faces, e.g. one folder per person")
    p.add_argument("--format", default="identity_folders", choices=["identity_folders", "celeba", "vggface2"],
                   help="the layout of --data: one folder per person (default), CelebA's, or VGGFace2's")
    p.add_argument("--split", help="the dataset split to use, where it has splits (e.g. test)")
    p.add_argument("--align", action="store_true", help="detect and align in-the-wild photos first (cached)")
    p.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    p.add_argument("--out", help="folder for roc.png and calibration.json (default: in the model's assets.extra)")
    p.add_argument("--dry-run", action="store_true", help="report the threshold; write nothing (unless --out is given)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("gallery", help="enrol people, identify faces, find the people of a photo collection")
    gsub = p.add_subparsers(dest="action", required=True)
    g = gsub.add_parser("enroll", help="add photos of a person (several photos are combined)")
    g.add_argument("gallery", help="gallery name (created when new)")
    g.add_argument("name", help="the person's name")
    g.add_argument("photos", nargs="+", help="photos of that person (the largest face of each is used)")
    _options(g, "--model", "--crops", "--detector")
    g = gsub.add_parser("enroll-folders", help="enrol everyone of a labelled folder tree ROOT/<person>/<photos> "
                                               "(reruns add nothing twice; --runner beam for big trees)")
    g.add_argument("gallery", help="gallery name (created when new)")
    g.add_argument("root", help="folder with one sub-folder of photos per person (the folder name is the name)")
    _options(g, "--model", "--detector", "--runner")
    g.add_argument("--report", help="--runner beam: prefix of the report of photos not used (default "
                                    "./<gallery>-enrolment-report; somewhere the workers can write)")
    g = gsub.add_parser("identify", help="who is in these photos? top-k names with scores, or unknown")
    g.add_argument("gallery", help="gallery name")
    g.add_argument("photos", nargs="+", help="photos (every face is identified) or, with --crops, face crops")
    _options(g, "--model", "--crops", "--detector", model={"help": "default: the model the gallery was made with"})
    g.add_argument("-k", type=int, default=3, help="candidates per face")
    g.add_argument("--threshold", type=float, help="default: the model's calibrated threshold for the gallery's size")
    g = gsub.add_parser("cluster", help="find the people in photos (no enrolment first): groups written into the "
                                        "gallery as person-0001..., one JSON line per face, a contact sheet per group")
    g.add_argument("gallery", help="gallery name (created when new)")
    g.add_argument("photos", nargs="+", help="photos, folders (walked recursively) and videos")
    _options(g, "--model", "--detector")
    g.add_argument("--threshold", type=float, help="similarity that links two faces (default: the model's "
                                                   "verification threshold)")
    g.add_argument("--min-size", type=int, default=2, help="smallest group kept (default 2; smaller: unclustered)")
    g.add_argument("--sheets", help="folder for the contact sheets (default: ./<gallery>-people)")
    g = gsub.add_parser("list", help="the galleries of the store, or the people of one gallery")
    g.add_argument("gallery", nargs="?", help="gallery name (default: list the galleries)")
    g = gsub.add_parser("remove", help="remove a person from a gallery")
    g.add_argument("gallery", help="gallery name")
    g.add_argument("name", help="the person to remove")
    g = gsub.add_parser("rename", help='name a person, e.g. a group found by cluster: rename G person-0001 "Ann Lee"')
    g.add_argument("gallery", help="gallery name")
    g.add_argument("name", help="the person's current name")
    g.add_argument("new_name", help="the new name")
    g = gsub.add_parser("merge", help="join two people (e.g. two groups of one person): merge G person-0002 person-0001")
    g.add_argument("gallery", help="gallery name")
    g.add_argument("name", help="the person whose photos move (removed afterwards)")
    g.add_argument("into", help="the person who keeps them")
    for g in gsub.choices.values():
        _options(g, "--store")
    p.set_defaults(func=_gallery)

    p = sub.add_parser("models", help="the models installed with facemtl: paths and headline metrics")
    p.set_defaults(func=_models)

    p = sub.add_parser("docs", help="the documentation installed with facemtl: the pages, or one page as text")
    p.add_argument("page", nargs="?", help="a page's name (e.g. pipelines, serving); default: list the pages")
    p.set_defaults(func=_docs)

    p = sub.add_parser("recipes", help="the training recipes installed with facemtl, one line each "
                                       "(`facemtl train NAME`)")
    p.set_defaults(func=_recipes)

    p = sub.add_parser("export", help="export a run's best checkpoint again, or a preset (facemtl export release): "
                                      "a SavedModel (keeps its metadata) or a .tflite")
    p.add_argument("run", help="run folder, e.g. runs/quickstart/20261128-120000, or a preset: release, release/5")
    p.add_argument("--like", help="the earlier export whose class names, calibration and model id to keep "
                                  "(default: the run's own export)")
    p.add_argument("--base-dir", default="saved_models", help="the model repository the export goes into, in TF "
                                                               "Serving's layout <base-dir>/<name>/<version>")
    p.add_argument("--name", help="default: the earlier export's name")
    p.add_argument("--version", type=int, help="default: the next free version (a preset: its own version)")
    p.add_argument("--max-faces", type=int, default=16,
                   help="saved_model: the most faces the analyze_photo signature answers per photo")
    p.add_argument("--format", choices=["saved_model", "tflite", "preset"], default="saved_model",
                   help="tflite: one .tflite file, crops at the model's size in, both answers out; preset: an "
                        "export (RUN is its version folder) as a preset folder (--out, default: the package's)")
    p.add_argument("--quantize", choices=["float16", "dynamic", "int8"],
                   help="tflite only (default: float32); dynamic: int8 weights, float activations")
    p.add_argument("--calibration", help="tflite int8: a folder of real face crops to calibrate on")
    p.add_argument("--out", help="tflite: the file to write (default: <run name>.tflite); preset: the folder")
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="TF Serving's REST API, photos, galleries and a web page over HTTP")
    _options(p, "--model", "--detector", "--store",
             model={"help": MODEL_HELP + "; a model's base folder serves its newest version"})
    p.add_argument("--name", help="the model name in /v1/models/<name> (default: the export's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501, help="TF Serving's REST port by default")
    p.add_argument("--max-batch-size", type=int, default=32, help="dynamic batching: most crops per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="dynamic batching: how long a batch's first request waits for others (default 0: a batch "
                        "takes the requests that queued while the model was busy, so a lone request never waits)")
    p.add_argument("--api-key", help="key for gallery writes (default $FACEMTL_API_KEY; none: writes refused)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="bigger requests are answered 413")
    p.add_argument("--max-instances", type=int, default=256, help="most images per :predict request")
    p.add_argument("--cors-origin", action="append", default=[], help="allow this origin (CORS is off by default)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="the server's log level (default info)")
    p.set_defaults(func=_serve)
    return parser


def _commands(parser):
    """The parser and every (sub-)sub-command's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _commands(child)


def _add_verbose(parser):
    """`--verbose` on every (sub)command, so it can follow the command's own arguments."""
    for command in _commands(parser):
        command.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def run():
    """The `facemtl` console script: native libraries' log lines go to a file unless `--verbose`."""
    route_native_logs(verbose="--verbose" in sys.argv[1:])
    sys.exit(main())


def _parse(parser, argv):
    """Parses facemtl's arguments; with `--runner` other than local, Beam's own options are set apart for Beam."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.beam_args = []
    if getattr(args, "runner", LOCAL) == LOCAL:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    from facemtl.pipelines.runner import split_beam_args

    mine, args_for_beam = split_beam_args(argv, {o for c in _commands(parser) for o in c._option_string_actions})
    args = parser.parse_args(mine)
    args.beam_args = args_for_beam
    return args


def main(argv=None):
    parser = build_parser()
    _add_verbose(parser)
    try:
        args = _parse(parser, argv)
    except FacemtlError as exc:  # --runner beam without Apache Beam installed
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (FacemtlError, ValueError) as exc:  # ValueError: validated model arguments (unknown backbone, sizes...)
        print(f"facemtl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facemtl: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # TensorFlow is optional: the commands that need it say how to get it
        if (exc.name or "").split(".")[0] not in ("tensorflow", "keras"):
            raise
        print(f"facemtl: error: `facemtl {args.command}` {'with these options ' if args.command == 'analyze' else ''}"
              f"needs TensorFlow, which is not installed: {TENSORFLOW_HINT}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
