"""Where a face's time goes in the release model, its FLOPs, and how far each engine is from the machine's peak.

Parts, timed on the release model rebuilt from its preset (Keras, float32, one `tf.function` each), per face at
batch 1 and batch 64: the in-graph resize (160 px crop to 150), the shared trunk (run on the face and its mirror
image: the expression branches answer for both), the identity branch, the expression branches (both, on face and
mirror maps), one expression branch alone without the mirror pass (what a distilled single branch would cost),
the attribute heads (age, gender); the whole Keras model; and, per photo, detection (BlazeFace) and alignment.
FLOPs of each part come from TensorFlow's profiler on its graph at batch 1.

Engines, ms per face on the same crops: the SavedModel's `serving_default` (TF Serving's artefact) and the LiteRT
copy as `Predictor` runs it (what `facemtl analyze` and `/v1/analyze` use).

The machine's peak: a 2048^3 matrix product in float32 and bfloat16 (`tf.linalg.matmul`, all cores), GFLOP/s.

With `--peers` the pip peers answer the same face in the same run, given its box: `fer` (expression) and dlib
through `face_recognition` (landmarks and descriptor), one face per call and 64 faces per call (a mosaic of 64
faces with their 64 boxes, each package's own batch API), against facemtl's LiteRT copy with the alignment included
(every answer: identity, expression, embedding, age, gender). Install them first, offline-safe:
`pip install --no-deps fer==25.10.3 face_recognition==1.3.0 && pip install pandas requests tqdm`.

Engines are also timed on `--faces` real faces (CelebA-subset photos, detected and aligned as served), one per call
and all in one call, with `--base` (e.g. the previous release's preset folder) side by side; the peers' ratio uses
those (a mirror-gated release answers a confident face like the astronaut's without its mirror pass).

    python benchmarks/profile_parts.py [--device cpu|gpu] [--repeats 30] [--peers] [--base FOLDER]

Results: runs/benchmarks/profile_parts.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import best_ms, cpu_name, git_commit, write_results  # noqa: E402


def isa_flags():
    """The matrix instruction sets `lscpu` lists (AVX-512, bfloat16, AMX)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]


def graph_flops(tf, fn, spec):
    """FLOPs of `fn` on one input of `spec`, from TensorFlow's profiler (variables folded into constants)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler import model_analyzer, option_builder

    frozen = convert_variables_to_constants_v2(tf.function(fn).get_concrete_function(spec))
    options = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
    info = model_analyzer.profile(graph=frozen.graph, options=options.with_empty_output().build())
    return int(info.total_float_ops)


def peer_ms(face, repeats):
    """ms per face of `fer` + `face_recognition` given the face's box: one face per call, then 64 per call."""
    import logging

    import cv2
    import face_recognition
    from fer.fer import FER

    logging.getLogger("fer").setLevel(logging.ERROR)
    fer = FER(mtcnn=False)
    h, w = face.shape[:2]
    mosaic = np.tile(face, (8, 8, 1))
    cells = [(x * w, y * h) for y in range(8) for x in range(8)]

    def answer(image, origins):
        # fer widens a box by 10 px each side before classifying: these boxes make it classify each whole crop.
        fer.detect_emotions(cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            face_rectangles=[(x + 10, y + 10, w - 20, h - 20) for x, y in origins])
        face_recognition.face_encodings(image, known_face_locations=[(y, x + w, y + h, x) for x, y in origins])

    return {"ms_per_face_b1": round(best_ms(lambda: answer(face, [(0, 0)]), repeats), 3),
            "ms_per_face_b64": round(best_ms(lambda: answer(mosaic, cells), max(3, repeats // 5)) / 64, 3)}


def real_faces(analyzer, data, n):
    """Up to `n` real faces, aligned as served: the best face of each CelebA-subset photo, in file order."""
    import glob

    faces = []
    for path in sorted(glob.glob(os.path.join(data, "celeba_subset", "img_celeba", "*.jpg"))):
        if len(faces) >= n:
            break
        detections, crops = analyzer.detect_and_align(analyzer.load(path))
        if crops:
            faces.append(crops[int(np.argmax([d.score for d in detections]))])
    return np.stack(faces) if faces else np.zeros((0,))


def peak_gflops(tf, dtype, repeats, n=2048):
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    run = tf.function(lambda x: tf.linalg.matmul(x, x))
    ms = best_ms(lambda: run(a).numpy(), repeats)
    return 2 * n ** 3 / (ms / 1000) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--peers", action="store_true", help="also fer and face_recognition on the same face")
    parser.add_argument("--faces", type=int, default=64,
                        help="engines also on this many real faces (CelebA-subset photos, detected and aligned): a "
                             "mirror-gated release's cost depends on the share of its faces that run the mirror pass")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--base", help="the previous, ungated release's preset or export folder: its LiteRT copy "
                                       "timed on the same faces in the same run (every face runs its mirror pass)")
    parser.add_argument("--out", default="runs/benchmarks/profile_parts.json")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import keras
    import tensorflow as tf
    from skimage import data

    from facemtl.export.metadata import read_metadata
    from facemtl.faces.detect import get_detector
    from facemtl.inference import FaceAnalyzer, Predictor
    from facemtl.models.dlib_resnet import build_expression_branch
    from facemtl.models.presets import copy_weights_by_name, from_preset, preset_dir
    from facemtl.preprocessing import Preprocessor, prepare_images

    meta = read_metadata(preset_dir("release"))
    model = from_preset("release")
    p = Preprocessor.from_metadata(meta)
    analyzer = FaceAnalyzer()
    photo = data.astronaut()
    _, crops = analyzer.detect_and_align(photo)
    face = crops[0]
    small = np.stack([np.asarray(tf.image.resize(face, (160, 160)), np.uint8)])  # a loose 160-px crop

    trunk = model.get_layer("backbone")
    identity = model.get_layer("identity_branch")
    expression = model.get_layer("expression_branch")
    heads = keras.Model(model.get_layer("embedding").output, [model.get_layer("age").output,
                                                                model.get_layer("gender").output])
    maps_shape = tuple(trunk.output.shape[1:])
    m = meta["model_config"]
    one_branch = build_expression_branch(maps_shape, split_stage=m["split_stage"], last_stage=m["expression_last_stage"],
                                         units=m["expression_units"], num_classes=len(meta["expressions"]), weights=None,
                                         pool=m["expression_pool"], learnable_affine=m["learnable_affine"])
    copy_weights_by_name(expression, one_branch)
    parts = {  # name: (function of a batch, input of one face, faces it stands for)
        "resize (160 px crop to 150)": (lambda x: prepare_images(x, p.height, p.width, 3), small.astype(np.float32)),
        "trunk, face and mirror (x2)": (lambda x: trunk(tf.concat([x, x[:, :, ::-1]], 0)),
                                        face[None].astype(np.float32)),
        "identity branch": (lambda x: identity(x), None),
        "expression branches (2, face and mirror)": (lambda x: expression(tf.concat([x, x], 0)), None),
        "one expression branch, no mirror": (lambda x: one_branch(x), None),
        "age and gender heads": (lambda x: heads(x), None),
        "whole Keras model": (lambda x: model(x), face[None].astype(np.float32)),
    }
    gate = m.get("mirror_threshold")
    if gate is not None:  # a gated release: the mirror pass is a part of its own, run for the uncertain faces only
        from facemtl.models.multitask import split_mirror_gate

        face_model, mirror_model = split_mirror_gate(model)
        parts["mirror pass (trunk and branches, mirror image)"] = (lambda x: mirror_model(x),
                                                                   face[None].astype(np.float32))
    maps = trunk(face[None].astype(np.float32)).numpy()
    embedding = model(face[None].astype(np.float32))["embedding"].numpy()
    inputs = {"identity branch": maps, "expression branches (2, face and mirror)": maps,
              "one expression branch, no mirror": maps, "age and gender heads": embedding}
    rows = {}
    for name, (fn, one) in parts.items():
        one = inputs.get(name, one)
        run = tf.function(fn, reduce_retracing=True)
        flops = graph_flops(tf, fn, tf.TensorSpec((1, *one.shape[1:]), tf.float32))
        row = {"mflops_per_face": round(flops / 1e6, 1)}
        for batch in (1, 64):
            x = tf.constant(np.repeat(one, batch, axis=0))
            row[f"ms_per_face_b{batch}"] = round(best_ms(lambda: run(x), args.repeats) / batch, 3)
        rows[name] = row
        print(f"{name:45s} {row['mflops_per_face']:9.1f} MFLOP  {row['ms_per_face_b1']:8.3f} ms (b1)  "
              f"{row['ms_per_face_b64']:8.3f} ms/face (b64)")
    detector = get_detector("blazeface")
    det = detector.detect(photo)
    rows["detection per photo (BlazeFace, 512 px)"] = {"ms": round(best_ms(lambda: detector.detect(photo),
                                                                           args.repeats), 3)}
    rows["alignment per face"] = {"ms": round(best_ms(lambda: p.align(photo, det[0]), args.repeats), 3)}
    engines = {}
    batch64 = np.repeat(face[None], 64, axis=0)
    real = real_faces(analyzer, args.data, args.faces)
    share = 0.0 if gate is not None else 1.0
    if gate is not None and len(real):
        share = float(np.mean(np.asarray(face_model(real.astype(np.float32))["expression"]).max(1) < gate))
        print(f"{len(real)} real faces; the mirror pass runs for {share:.0%} of them (threshold {gate})")
        engines["mirror_share_real_faces"] = round(share, 4)
    arms = [("SavedModel serving_default", None, "savedmodel"), ("LiteRT copy (Predictor)", None, "auto")]
    if args.base:
        arms.append((f"LiteRT copy of {args.base}", args.base, "auto"))
    folder_of = {label: folder for label, folder, _ in arms}
    for label, folder, backend in arms:
        predictor = Predictor(folder, backend=backend)
        repeats = max(3, args.repeats // 3)
        engines[label] = {f"ms_per_face_b{b}": round(best_ms(lambda: predictor.forward(x), repeats) / len(x), 3)
                          for b, x in ((1, face[None]), (64, batch64))}
        if len(real):  # one real face per call, each in turn; then all of them in one call
            engines[label]["real_ms_per_face_b1"] = round(
                best_ms(lambda: [predictor.forward(f[None]) for f in real], repeats) / len(real), 3)
            engines[label]["real_ms_per_face_b64"] = round(best_ms(lambda: predictor.forward(real), repeats)
                                                           / len(real), 3)
        print(f"{label:45s} " + "  ".join(f"{k} {v:.3f}" for k, v in engines[label].items()))
    peak = {dtype: round(peak_gflops(tf, getattr(tf, dtype), args.repeats), 1) for dtype in ("float32", "bfloat16")}
    # The profiler counts a data-dependent part of the batch as nothing: a gated model's graph is its face pass, and
    # the mirror pass adds its FLOPs for the share of faces that run it.
    total_mflops = rows["whole Keras model"]["mflops_per_face"]
    mirror_mflops = rows.get("mirror pass (trunk and branches, mirror image)", {}).get("mflops_per_face", 0.0)
    real_mflops = total_mflops + share * mirror_mflops
    for label, row in engines.items():
        if not isinstance(row, dict):
            continue
        astronaut, faces = (total_mflops, real_mflops) if folder_of.get(label) is None else (
            total_mflops + mirror_mflops, total_mflops + mirror_mflops)  # the base: every face runs its mirror pass
        row["gflops_per_s_b64"] = round(astronaut / 1e3 / (row["ms_per_face_b64"] / 1e3), 1)
        row["share_of_float32_peak_b64"] = round(row["gflops_per_s_b64"] / peak["float32"], 3)
        if "real_ms_per_face_b64" in row:
            row["real_gflops_per_s_b64"] = round(faces / 1e3 / (row["real_ms_per_face_b64"] / 1e3), 1)
    print(f"peak matmul GFLOP/s: {peak}; model {total_mflops:.0f} MFLOP per face; engines at batch 64: " +
          ", ".join(f"{k}: {v['gflops_per_s_b64']} GFLOP/s ({v['share_of_float32_peak_b64']:.0%} of float32 peak)"
                    for k, v in engines.items() if isinstance(v, dict)))
    peers = {}
    if args.peers:
        align_ms = rows["alignment per face"]["ms"]
        peers = {"fer + face_recognition, given the box": peer_ms(face, args.repeats)}
        lite = engines["LiteRT copy (Predictor)"]
        # On real faces where there are: the astronaut is a confident face, which a mirror gate answers cheaply.
        key = "real_ms_per_face_b{}" if "real_ms_per_face_b1" in lite else "ms_per_face_b{}"
        ours = {f"ms_per_face_b{b}": round(lite[key.format(b)] + align_ms, 3) for b in (1, 64)}
        peers["facemtl (LiteRT copy and alignment, every answer)"] = ours
        peers["speedup"] = {f"b{b}": round(peers["fer + face_recognition, given the box"][f"ms_per_face_b{b}"] /
                                           ours[f"ms_per_face_b{b}"], 1) for b in (1, 64)}
        print(f"peers: {peers}")
    write_results(args.out, {"mflops_per_real_face": round(real_mflops, 1), "peers": peers, "cpu": cpu_name(), "isa": isa_flags(), "cores": os.cpu_count(), "commit": git_commit(),
                             "device": args.device, "parts": rows, "engines": engines,
                             "peak_gflops": peak, "tensorflow": tf.__version__})


if __name__ == "__main__":
    main()
