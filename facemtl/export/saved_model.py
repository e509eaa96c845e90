"""Exports a trained model as a SavedModel in TF Serving's versioned layout.

`saved_models/<name>/<version>/` holds `saved_model.pb`, `variables/` and
`assets.extra/facemtl.json` (class names, input size, model id). Two
signatures are the public contract:

`serving_default`:
    inputs:  images           uint8   [batch, height, width, 3]  any size, resized inside
    outputs: expression_probs float32 [batch, 7]   FER2013 order
             expression       string  [batch]
             identity_probs   float32 [batch, N]
             identity         string  [batch]      a trained name, or "unknown" (the open-set rule,
                                                   `facemtl.recognition.open_set`, when the export has one)
             identity_closest string  [batch]      the closest trained name, whatever its similarity
             identity_similarity float32 [batch]   cosine to that person's direction
             embedding        float32 [batch, D]   L2-normalised
             (identity_closest and identity_similarity only in exports with an open-set rule)

`serving_bytes` (what stock TF Serving's `{"b64": ...}` JSON values feed):
    inputs:  images           string  [batch]  encoded JPEG/PNG/BMP/GIF crops, any size each
    outputs: the same as `serving_default`

`analyze_photo` (whole photos: detection and alignment run in the graph, see
`facemtl.faces.graph`; F is the export's `max_faces`, rows past `count` are zeros):
    inputs:  images           string  [batch]  encoded photos, any size each
    outputs: count            int32   [batch]        faces found (at most F, best first)
             image_size       int32   [batch, 2]     (height, width) the boxes refer to
             boxes            float32 [batch, F, 4]  (x, y, width, height) in pixels
             scores           float32 [batch, F]     detection confidence
             keypoints        float32 [batch, F, 6, 2]  BlazeFace's (x, y): eyes, nose tip,
                                                      mouth centre, ears
             expression_probs, expression, identity_probs, identity, embedding:
                                      [batch, F, ...]  as `serving_default`, per face
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import uuid

import keras
import numpy as np
import tensorflow as tf

from facemtl.config import load_recipe
from facemtl.errors import ModelFormatError
from facemtl.export.metadata import METADATA_FILE, read_metadata
from facemtl.export.outputs import attribute_output, label_outputs
from facemtl.faces.graph import BlazeFaceGraph, align_crops
from facemtl.files import replaced_atomically
from facemtl.models.multitask import build_multitask, split_mirror_gate
from facemtl.preprocessing import Preprocessor, prepare_images
from facemtl.recognition.open_set import DIRECTIONS_FILE, OpenSetRule, export_open_set

FORMAT_VERSION = 1


def next_version(model_base):
    """The next free integer version under `saved_models/<name>/` (1 when empty)."""
    if not os.path.isdir(model_base):
        return 1
    versions = [int(d) for d in os.listdir(model_base) if d.isdigit()]
    return max(versions, default=0) + 1


SIGNATURES = ("serving_default", "serving_bytes", "analyze_photo")
# Metadata that each export writes for itself; a re-export takes the rest over from the earlier export.
OWN_METADATA = ("format_version", "name", "version", "created", "input", "expressions", "identities", "tasks",
                "embedding_dim", "signatures", "analyze_photo", "open_set", "tflite")
# analyze_photo's defaults: the most faces answered per photo, and the longest photo side analysed
# (larger photos are downscaled first, as `FaceAnalyzer(max_side=2048)` does).
MAX_FACES = 16
MAX_PHOTO_SIDE = 2048


def make_serving_fns(model, identity_names, expression_names, *, preprocessor=None, max_faces=MAX_FACES,
                     max_side=MAX_PHOTO_SIDE, rule=None, attributes=()):
    """The functions that the SavedModel serves, by signature name.

    `serving_default` takes uint8 images; `serving_bytes` takes encoded images
    and decodes them in the graph, then both run the same `prepare_images` and
    model. `analyze_photo` finds and aligns faces as the `Preprocessor` says
    (BlazeFace in the graph, its crop layout and face scale; default: the
    model's input size, arcface layout) and answers up to `max_faces` faces
    per photo. A single-task model (used by the benchmarks'
    baselines) serves only its own task's outputs and has no `analyze_photo`.
    With an `OpenSetRule`, `identity` is a name or "unknown" and the closest
    name and its similarity are outputs of their own. Each attribute task
    (`attributes`: task dicts, e.g. age and gender) adds its outputs: a
    number (`age`, in years), or probabilities and a label (`gender_probs`,
    `gender`).
    """
    height, width, channels = model.input_shape[1:]
    id_names = list(identity_names) or [""]
    ex_names = list(expression_names)

    def decode(data):
        # Any format decode_image knows, 16-bit PNGs rescaled to uint8; animations give their first frame.
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        return prepare_images(image, height, width, 3)

    def serve_bytes(images):
        x = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        return serve(x)

    # The network is traced once, here (a mirror-gated one: its two passes), and every signature calls those
    # concrete functions: traced inside each signature it was most of an export's time, and a `tf.function` would
    # be traced again when written out.
    def trace(net):
        return tf.function(lambda x: net(x, training=False), autograph=False,
                           input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32)]
                           ).get_concrete_function()

    def guarded(fn, x):  # no images, no network: TensorFlow 2.21's oneDNN convolution (on by default on CPUs with
        # AVX-512 VNNI, BF16 or AMX) answers a batch of no images with its input's shape and the graph fails
        empty = tf.nest.map_structure(lambda t: tf.zeros((0, *t.shape[1:]), t.dtype), fn.structured_outputs)
        return tf.cond(tf.shape(x)[0] > 0, lambda: fn(x), lambda: empty)

    parts = split_mirror_gate(model)
    if parts is None:
        network = trace(model)

        def forward(x):
            return guarded(network, x)
    else:  # the mirror pass for the uncertain faces only, and not at all when there are none (where the Keras
        # graph runs it on a stand-in face: `TakeRows`)
        face_pass, mirror_pass = trace(parts[0]), trace(parts[1])
        gate, merge = model.get_layer("mirror_gate"), model.get_layer("mirror_average")

        def forward(x):
            out = dict(guarded(face_pass, x))
            rows = gate(out["expression"])
            out["expression"] = merge([out["expression"], rows, guarded(mirror_pass, tf.gather(x, rows))])
            return out

    def serve(images):
        out = forward(prepare_images(images, height, width, channels))
        numbers = {f"{task}_probs": out[task] for task in ("expression", "identity") if task in out}
        if "identity" in out:
            numbers["embedding"] = out["embedding"]
        numbers.update({attribute_output(task): out[task["name"]] for task in attributes})
        return label_outputs(numbers, ex_names, id_names, attributes, rule, engine="tf")

    fns = {"serving_default": serve, "serving_bytes": serve_bytes}
    if "identity" in model.output_names and "expression" in model.output_names:
        preprocessor = preprocessor or Preprocessor(height, width)
        if (preprocessor.height, preprocessor.width) != (height, width):
            raise ValueError(f"The preprocessor's size differs from the model's input ({height}x{width}). "
                             f"Received: preprocessor={preprocessor}")
        if preprocessor.detector != "blazeface":
            raise ValueError(f"analyze_photo runs BlazeFace inside the graph; the preprocessor asks for another "
                             f"detector. Received: detector={preprocessor.detector!r}")
        fns["analyze_photo"] = _analyze_photo_fn(serve, preprocessor, max_faces, max_side)
    return fns


@functools.lru_cache(maxsize=8)
def _photo_finder(max_faces, max_side, height, width, face_scale, layout):
    """One photo's faces, found and aligned in the graph: a concrete function per setting, kept for the process.

    Tracing the detector's graph takes about a second; kept, the trace serves every later export with the same
    settings (a training run's exports, the test suite's). A concrete function, not the `tf.function`: writing
    the SavedModel would trace a `tf.function` called inside a signature once more (in its save context).
    """
    detector = BlazeFaceGraph(max_faces=max_faces)

    # Plain TF ops (tf.cond, map_fn) throughout: autograph's source rewrite would only add seconds to tracing.
    @functools.partial(tf.function, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def find(data):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        shape = tf.shape(image)[:2]
        longest = tf.reduce_max(shape)
        new = tf.cast(tf.round(tf.cast(shape, tf.float64) * max_side / tf.cast(longest, tf.float64)), tf.int32)
        image = tf.cond(longest > max_side, lambda: tf.cast(tf.round(tf.image.resize(
            image, tf.maximum(new, 1), method="bilinear", antialias=True)), tf.uint8), lambda: image)
        boxes, keypoints, scores, count = detector.detect(image)
        crops = align_crops(image, keypoints[:, :4], (height, width), face_scale, layout)
        pad = max_faces - count
        xywh = tf.concat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        return (tf.ensure_shape(tf.pad(crops, [[0, pad], [0, 0], [0, 0], [0, 0]]), [max_faces, height, width, 3]),
                tf.pad(xywh, [[0, pad], [0, 0]]), tf.pad(scores, [[0, pad]]),
                tf.pad(keypoints, [[0, pad], [0, 0], [0, 0]]), count, tf.shape(image)[:2])

    return find.get_concrete_function()


def _analyze_photo_fn(serve, preprocessor, max_faces, max_side):
    height, width = preprocessor.height, preprocessor.width
    find = _photo_finder(max_faces, max_side, height, width, preprocessor.face_scale, preprocessor.layout)
    crop_spec = tf.TensorSpec([max_faces, height, width, 3], tf.uint8)

    @tf.autograph.experimental.do_not_convert
    def analyze_photo(images):
        crops, boxes, scores, keypoints, count, size = tf.map_fn(
            find, images, fn_output_signature=(crop_spec, tf.TensorSpec([max_faces, 4], tf.float32),
                                               tf.TensorSpec([max_faces], tf.float32),
                                               tf.TensorSpec([max_faces, 6, 2], tf.float32),
                                               tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32)))
        # Only the faces found go through the model, in one batch; padded rows stay zeros.
        valid = tf.sequence_mask(count, max_faces)
        where = tf.where(valid)  # int64 [n, 2] (photo, face)
        found = tf.gather_nd(crops, where)
        n = tf.shape(found)[0]
        # Some models' graphs (dlib's affine layers) cannot take an empty batch: with no face in any
        # photo, one blank crop goes through and no answer is kept.
        blank = tf.zeros(tf.stack([1 - tf.minimum(n, 1), height, width, 3]), tf.uint8)
        answers = {k: v[:n] for k, v in serve(tf.concat([found, blank], 0)).items()}
        batch = tf.shape(images, out_type=tf.int64)[0]
        result = {"count": count, "image_size": size, "boxes": boxes, "scores": scores, "keypoints": keypoints}
        for key, value in answers.items():
            shape = tf.concat([[batch, max_faces], tf.shape(value, out_type=tf.int64)[1:]], 0)
            if value.dtype == tf.string:
                result[key] = tf.tensor_scatter_nd_update(tf.fill([batch, max_faces], ""), where, value)
            else:
                result[key] = tf.scatter_nd(where, value, shape)
        return result

    return analyze_photo


def write_archive(path, endpoints):
    """Writes functions as a SavedModel at `path` through a Keras `ExportArchive`, each weight once.

    The archive never `track`s the model: the endpoints' functions carry every variable they use (which is all
    that serving restores), while a tracked model adds each weight a second time and makes Keras walk every
    layer for lookup tables, tracing the functions it finds on the way (a large share of an export's time).
    Our networks hold no lookup table; one that did would fail here loudly (TensorFlow refuses to save a
    function that uses an untracked resource), not export without it. tests/test_export.py checks the export's
    size and answers; tests/test_tflite.py the LiteRT copy made from it.

    Args:
        path: the SavedModel folder to write.
        endpoints: `(name, fn, input_signature)` triples; the first is also TF Serving's default.
    """
    archive = keras.export.ExportArchive()
    for name, fn, input_signature in endpoints:
        archive.add_endpoint(name=name, fn=fn, input_signature=input_signature)
    archive.write_out(path, verbose=False)


def export_saved_model(model, identity_names, expression_names, *, base_dir="saved_models", name="facemtl",
                       version=None, extra_metadata=None, max_faces=MAX_FACES, open_set=None, preprocessor=None,
                       attributes=()):
    """Writes `model` to `base_dir/name/version/`, atomically.

    The export is written to a hidden temporary folder beside the target and
    renamed into place only when complete, so a crash never leaves a
    half-written version where TF Serving would pick it up, and an existing
    version is never overwritten.

    Args:
        model: the multi-task Keras model (outputs identity, expression,
            embedding); a single-task model exports only its own outputs.
        identity_names: training identity names, in label order.
        expression_names: expression names, in label order.
        base_dir: root of the model repository (`saved_models`).
        name: model name (a folder under `base_dir`).
        version: integer version; the next free one when `None`.
        extra_metadata: more JSON-able facts for `assets.extra/facemtl.json`.
        preprocessor: how photos and crops become the input (`facemtl.preprocessing.Preprocessor`):
            `analyze_photo` detects and aligns with it, and the metadata records it. Default: the one
            `extra_metadata` describes (`Preprocessor.from_metadata`).
        attributes: the model's attribute tasks (`TaskConfig`s or dicts: age, gender...), one output each;
            recorded in the metadata's `attributes` (and `tasks`), which rebuilds the network
            (`presets.build_from_metadata`). Default: the `attributes` of `extra_metadata`.
        max_faces: the most faces `analyze_photo` answers per photo.
        open_set: the open-set identity rule (`facemtl.recognition.open_set`):
            `{"directions": [N, D], "threshold": float, ...}` (the other keys
            describe the calibration and go into the metadata's `open_set`);
            `None`: `identity` is the classifier's top name for every face.

    Returns:
        The path of the new version folder.

    Example:
        >>> path = export_saved_model(model, ["ann", "bob"], EXPRESSIONS, name="demo")
    """
    tasks = [t for t in ("identity", "expression") if t in model.output_names]
    if not tasks:
        raise ValueError(f"The model has no identity or expression output. Received: output_names={model.output_names}")
    attributes = [dict(a) if isinstance(a, dict) else dataclasses.asdict(a)
                  for a in (attributes or (extra_metadata or {}).get("attributes", []))]
    missing = [a["name"] for a in attributes if a["name"] not in model.output_names]
    if missing:
        raise ValueError(f"The model has no output for the attribute tasks {missing}. "
                         f"Received: output_names={model.output_names}")
    num_identities = model.output["identity"].shape[-1] if "identity" in tasks else 0
    if "identity" in tasks and num_identities != len(identity_names):
        raise ValueError(f"identity_names has {len(identity_names)} names but the model has "
                         f"{num_identities} identities")
    model_base = os.path.join(base_dir, name)
    version = next_version(model_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    if int(max_faces) < 1:
        raise ValueError(f"max_faces must be a positive integer. Received: max_faces={max_faces}")
    target = os.path.join(model_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} already exists; versions are never overwritten")
    os.makedirs(model_base, exist_ok=True)
    with replaced_atomically(target) as tmp:  # a hidden name: TF Serving takes only numbered folders
        height, width, channels = model.input_shape[1:]
        if preprocessor is None:
            preprocessor = Preprocessor.from_metadata({"input": {"height": height, "width": width},
                                                       **(extra_metadata or {})})
        rule = None
        if open_set is not None and "identity" in tasks:
            rule = OpenSetRule(open_set["directions"], identity_names, open_set.get("threshold"))
        fns = make_serving_fns(model, identity_names, expression_names, preprocessor=preprocessor,
                               max_faces=int(max_faces), rule=rule, attributes=attributes)
        endpoints = [("serving_default", fns["serving_default"],
                      [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])]
        endpoints += [(signature, fns[signature], [tf.TensorSpec([None], tf.string, name="images")])
                      for signature in ("serving_bytes", "analyze_photo") if signature in fns]
        write_archive(tmp, endpoints)
        metadata = {
            "format_version": FORMAT_VERSION,
            "model_id": uuid.uuid4().hex,
            "name": name,
            "version": version,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "input": {"height": height, "width": width, "channels": channels},
            "expressions": list(expression_names),
            "identities": list(identity_names),
            "tasks": tasks + [a["name"] for a in attributes],
            "embedding_dim": int(model.output["embedding"].shape[-1]) if "identity" in tasks else 0,
            "signatures": sorted(fns),
            **({"analyze_photo": {"detector": "blazeface", "max_faces": int(max_faces), "max_side": MAX_PHOTO_SIDE,
                                  "crop": {"layout": preprocessor.layout}}} if "analyze_photo" in fns else {}),
            **(extra_metadata or {}),
            **({"attributes": attributes} if attributes else {}),
            # How photos and crops become the input: what analyze_photo ran with (and, for older readers, its layout).
            "preprocessor": preprocessor.to_dict(),
            "crop": {**(extra_metadata or {}).get("crop", {}), "layout": preprocessor.layout},
        }
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        if rule is not None:
            np.save(os.path.join(tmp, DIRECTIONS_FILE), rule.directions)
            metadata["open_set"] = {k: v for k, v in open_set.items() if k != "directions"}
            metadata["open_set"]["threshold"] = rule.threshold
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
    return target


def run_relative(run_dir, path):
    """`path` as a run records it: relative to the run folder, so the record holds from any working directory."""
    return None if path is None else os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))


def resolve_run_path(run_dir, recorded):
    """A path a run recorded (`run_relative`), as a usable path; absolute and older cwd-relative records kept."""
    if not recorded or os.path.isabs(recorded):
        return recorded
    in_run = os.path.normpath(os.path.join(run_dir, recorded))
    # Runs before run-relative records wrote paths relative to the directory training ran in.
    return recorded if not os.path.exists(in_run) and os.path.exists(recorded) else in_run


def run_export(run_dir):
    """The export a finished run recorded in its `summary.json` (`None` when it exported nothing).

    Raises:
        ModelFormatError: the run has no `summary.json` (it did not finish) or an unreadable one.
    """
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            return resolve_run_path(run_dir, json.load(f).get("export_dir"))
    except FileNotFoundError:
        raise ModelFormatError(f"{run_dir}: the run has no summary.json (it did not finish); use its export "
                               "folder, or train it to the end first") from None
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not readable ({exc})") from None


def load_run_model(run_dir, like=None):
    """A run's model, rebuilt from its `recipe.yaml` with its best checkpoint's weights, and its export's metadata.

    Args:
        run_dir: a run folder (`runs/<recipe>/<timestamp>`).
        like: an earlier export of the run whose metadata (class names,
            calibration, model id) to use (default: the run's own export, from
            its `summary.json`).

    Returns:
        `(keras model, metadata dict)`.

    Raises:
        ModelFormatError: the run has no checkpoint, or no earlier export is known.
    """
    checkpoint = os.path.join(run_dir, "checkpoints", "best.keras")
    if not os.path.isfile(checkpoint):
        raise ModelFormatError(f"{run_dir}: no checkpoints/best.keras to export")
    if like is None:
        try:
            like = run_export(run_dir)
        except ModelFormatError:
            like = None
        if not like:
            raise ModelFormatError(f"{run_dir}: no earlier export recorded in summary.json; pass the export "
                                   "whose class names and calibration to keep")
    metadata = read_metadata(like)
    recipe = load_recipe(os.path.join(run_dir, "recipe.yaml"))
    model = build_multitask(recipe.model, len(metadata["identities"]))
    model.load_weights(checkpoint)
    return model, metadata


def export_run(run_dir, *, like=None, base_dir="saved_models", name=None, version=None, max_faces=MAX_FACES):
    """Exports a run's best checkpoint again, e.g. to gain the signatures of a newer facemtl.

    The model is rebuilt from the run's resolved `recipe.yaml` and given the
    weights of `checkpoints/best.keras`. Its metadata (class names, calibrated
    threshold, metrics, `model_id`) is taken from an earlier export of the same
    run, so galleries made with that export keep working with the new one.

    Args:
        run_dir, like: see `load_run_model`.
        base_dir, name, version: where to write (see `export_saved_model`);
            `name` defaults to the earlier export's.
        max_faces: the most faces `analyze_photo` answers per photo.

    Returns:
        The new version folder.

    Example:
        >>> export_run("runs/release_cpu/20261128-102036", base_dir="/tmp/models")
    """
    model, metadata = load_run_model(run_dir, like)
    like = like or run_export(run_dir)
    keep = {k: v for k, v in metadata.items() if k not in OWN_METADATA}
    return export_saved_model(model, metadata["identities"], metadata["expressions"], base_dir=base_dir,
                              name=name or metadata["name"], version=version, max_faces=max_faces,
                              extra_metadata={**keep, "exported_from": os.path.basename(os.path.normpath(run_dir))},
                              open_set=export_open_set(like, metadata))
