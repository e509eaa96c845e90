"""Exports a trained model as a SavedModel in TF Serving's versioned layout.

`saved_models/<name>/<version>/` holds `saved_model.pb`, `variables/` and
`assets.extra/facemtl.json` (class names, input size, model id). The
`serving_default` signature is the public contract:

    inputs:  images           uint8   [batch, height, width, 3]  any size, resized inside
    outputs: expression_probs float32 [batch, 7]   FER2013 order
             expression       string  [batch]
             identity_probs   float32 [batch, N]
             identity         string  [batch]
             embedding        float32 [batch, D]   L2-normalised
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid

import keras
import tensorflow as tf

from facemtl.errors import ModelFormatError
from facemtl.files import write_json_atomically
from facemtl.preprocessing import prepare_images

METADATA_FILE = os.path.join("assets.extra", "facemtl.json")
FORMAT_VERSION = 1


def next_version(model_base):
    """The next free integer version under `saved_models/<name>/` (1 when empty)."""
    if not os.path.isdir(model_base):
        return 1
    versions = [int(d) for d in os.listdir(model_base) if d.isdigit()]
    return max(versions, default=0) + 1


def make_serving_fn(model, identity_names, expression_names):
    """The uint8-images-in, named-outputs-out function that the SavedModel serves.

    A single-task model (used by the benchmarks' baselines) serves only its
    own task's outputs.
    """
    height, width, channels = model.input_shape[1:]
    id_names = tf.constant(list(identity_names) or [""])
    ex_names = tf.constant(list(expression_names))

    def serve(images):
        x = prepare_images(images, height, width, channels)
        out = model(x, training=False)
        result = {}
        if "expression" in out:
            result["expression_probs"] = out["expression"]
            result["expression"] = tf.gather(ex_names, tf.argmax(out["expression"], axis=-1))
        if "identity" in out:
            result["identity_probs"] = out["identity"]
            result["identity"] = tf.gather(id_names, tf.argmax(out["identity"], axis=-1))
            result["embedding"] = out["embedding"]
        return result

    return serve


def export_saved_model(model, identity_names, expression_names, *, base_dir="saved_models", name="facemtl",
                       version=None, extra_metadata=None):
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

    Returns:
        The path of the new version folder.

    Example:
        >>> path = export_saved_model(model, ["ann", "bob"], EXPRESSIONS, name="demo")
    """
    tasks = [t for t in ("identity", "expression") if t in model.output_names]
    if not tasks:
        raise ValueError(f"The model has no identity or expression output. Received: output_names={model.output_names}")
    num_identities = model.output["identity"].shape[-1] if "identity" in tasks else 0
    if "identity" in tasks and num_identities != len(identity_names):
        raise ValueError(f"identity_names has {len(identity_names)} names but the model has "
                         f"{num_identities} identities")
    model_base = os.path.join(base_dir, name)
    version = next_version(model_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    target = os.path.join(model_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} already exists; versions are never overwritten")
    os.makedirs(model_base, exist_ok=True)
    tmp = os.path.join(model_base, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serving_default",
            fn=make_serving_fn(model, identity_names, expression_names),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
        )
        # Keras 3.15's archive saves every weight twice: its tracked lists hold the Keras
        # variables, and the endpoints' list (`_all_variables`) the TF variables inside them,
        # which are all that serving restores. Dropping the former halves the export
        # (tests/test_export.py checks the size and that answers are unchanged).
        trackable = archive._tf_trackable
        trackable.variables, trackable.trainable_variables, trackable.non_trainable_variables = [], [], []
        archive.write_out(tmp, verbose=False)
        height, width, channels = model.input_shape[1:]
        metadata = {
            "format_version": FORMAT_VERSION,
            "model_id": uuid.uuid4().hex,
            "name": name,
            "version": version,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "input": {"height": height, "width": width, "channels": channels},
            "expressions": list(expression_names),
            "identities": list(identity_names),
            "tasks": tasks,
            "embedding_dim": int(model.output["embedding"].shape[-1]) if "identity" in tasks else 0,
            **(extra_metadata or {}),
        }
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_metadata(saved_model_dir):
    """Reads `assets.extra/facemtl.json` of an export, with clear errors."""
    if not os.path.isdir(saved_model_dir):
        raise ModelFormatError(f"{saved_model_dir}: no such model directory")
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        versions = sorted((d for d in os.listdir(saved_model_dir) if d.isdigit()), key=int)
        hint = f" (did you mean {os.path.join(saved_model_dir, versions[-1])}?)" if versions else ""
        raise ModelFormatError(f"{saved_model_dir}: not a SavedModel directory (no saved_model.pb){hint}")
    path = os.path.join(saved_model_dir, METADATA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"{saved_model_dir}: not exported by facemtl (no {METADATA_FILE})") from None
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: corrupt metadata ({exc})") from None


def crop_layout(metadata):
    """The face crop layout an export was trained on (`facemtl.faces.align.LAYOUTS`); older exports: arcface."""
    return metadata.get("crop", {}).get("layout", "arcface")


def update_metadata(saved_model_dir, updates):
    """Merges `updates` into an export's `assets.extra/facemtl.json`, atomically.

    Only the metadata changes (TF Serving ignores `assets.extra`); the graph and
    weights of a served version are never touched.

    Returns:
        The new metadata.
    """
    metadata = {**read_metadata(saved_model_dir), **updates}
    write_json_atomically(os.path.join(saved_model_dir, METADATA_FILE), metadata, indent=2)
    return metadata
