"""TFLite export of the multi-task model (crops in, both answers out); `facemtl.litert` runs it.

The `.tflite` takes one face crop already at the model's size, `uint8 [1, H, W, 3]`
(resize on the host: phones and small boxes have their own image pipelines), and
returns `expression_probs`, `identity_probs` and `embedding` from one signature,
`serving_default` (a mirror-gated model adds `mirror`: see `convert`). The class names,
input size, crop layout and model id travel in the file itself, as TFLite metadata named
`facemtl` (JSON).

    facemtl export RUN_DIR --format tflite [--quantize float16|int8] [--calibration FACES_DIR]
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from facemtl.errors import FacemtlError
from facemtl.export.metadata import EXPORT_FILE
from facemtl.export.outputs import attribute_output
from facemtl.export.saved_model import load_run_model, write_archive
from facemtl.files import write_bytes_atomically
from facemtl.images import load_image
from facemtl.litert import METADATA_NAME, MIRROR_SIGNATURE
from facemtl.models.multitask import split_mirror_gate

QUANTIZATIONS = (None, "float16", "dynamic", "int8")


def _model_input(model, images):
    """uint8 RGB crops as the model takes them (float, gray for a 1-channel model)."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    return tf.image.rgb_to_grayscale(x) if model.input_shape[-1] == 1 else x


def _serving_function(model, attributes=()):
    def serve(images):
        out = model(_model_input(model, images), training=False)
        result = {"expression_probs": out["expression"]}
        if "identity" in out:
            result.update(identity_probs=out["identity"], embedding=out["embedding"])
        for task in attributes:  # a number (age), or probabilities (gender_probs): labels are the host's
            result[attribute_output(task)] = out[task["name"]]
        return result

    return serve


def _mirror_function(mirror_model):
    def mirror(images):
        return {"expression_probs": mirror_model(_model_input(mirror_model, images), training=False)}

    return mirror


def convert(model, metadata, *, quantize=None, calibration=None):
    """The `.tflite` bytes of a Keras multi-task model, with facemtl's metadata inside.

    Args:
        model: the Keras model (see `facemtl.export.load_run_model`).
        metadata: the export metadata to embed (class names, input, layout...).
        quantize: `None` (float32), `"float16"` (weights), `"dynamic"` (int8
            weights, float activations: no calibration needed) or `"int8"`
            (weights and activations, calibrated on `calibration`; inputs and
            outputs stay uint8 / float32).
        calibration: for int8, `uint8 [n, H, W, 3]` real face crops at the model's size.

    A mirror-gated model (`model.mirror_threshold`) becomes two signatures:
    `serving_default` answers for the face alone and `mirror` is the expression
    branches' answer for its mirror image; the host gates (`TFLitePredictor`),
    with the threshold recorded in the metadata.

    Returns:
        `bytes`.
    """
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}")
    height, width, _ = model.input_shape[1:]
    attributes = metadata.get("attributes", [])
    spec = [tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")]
    parts = split_mirror_gate(model)
    # A mirror gate runs the mirror pass on a data-dependent part of the batch, which LiteRT's XNNPACK cannot
    # reshape to: the copy has the face's pass and the mirror pass as two signatures, the host gates
    # (`litert.TFLitePredictor`).
    endpoints = [("serving_default", _serving_function(parts[0] if parts else model, attributes), spec)]
    if parts:
        endpoints.append((MIRROR_SIGNATURE, _mirror_function(parts[1]), spec))
    with tempfile.TemporaryDirectory() as tmp:
        # Through a SavedModel (Keras's own export), so the converter sees the weights as variables to freeze.
        write_archive(tmp, endpoints)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[e[0] for e in endpoints])
        flat = _convert(converter, quantize, calibration)
    if parts:  # the host's gate: the file says it itself (a standalone .tflite has no export metadata beside it)
        metadata = {**metadata, "mirror_threshold": model.get_layer("mirror_gate").threshold}
    meta = {**metadata, "format": "tflite", "quantize": quantize or "float32",
            "outputs": ["expression_probs", "identity_probs", "embedding", *map(attribute_output, attributes)]}
    return add_metadata(flat, meta)


def _convert(converter, quantize, calibration):
    import tensorflow as tf

    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise FacemtlError("int8 quantization needs calibration faces (real face crops)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([c[None].astype(np.uint8)] for c in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def add_metadata(flat, metadata):
    """Writes `metadata` (JSON) into a `.tflite` flatbuffer as the `facemtl` metadata entry."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flat))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(run_dir, out_path, *, like=None, quantize=None, calibration=None):
    """Writes a run's model as one `.tflite` (atomically), with its class names in the file's metadata.

    Args:
        run_dir, like: the run and its earlier export (see `facemtl.export.load_run_model`).
        out_path: the `.tflite` file to write.
        quantize, calibration: see `convert`; `calibration` may also be a folder
            of face photos (already cropped), read and resized to the model's size.

    Returns:
        `out_path`.

    Example:
        >>> export_tflite("runs/release_cpu/20261128-102036", "release.tflite", quantize="float16")
    """
    model, metadata = load_run_model(run_dir, like)
    if isinstance(calibration, (str, os.PathLike)):
        calibration = read_calibration_faces(calibration, model.input_shape[1:3])
    flat = convert(model, metadata, quantize=quantize, calibration=calibration)
    write_bytes_atomically(out_path, flat)
    return out_path


def read_calibration_faces(folder, size, limit=500):
    """Up to `limit` face crops under `folder` (recursively), as `uint8 [n, H, W, 3]` at `size`."""
    from PIL import Image

    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.lower().endswith((".jpg", ".jpeg", ".png", ".pgm", ".bmp")))
    if not paths:
        raise FacemtlError(f"{folder}: no face images for int8 calibration")
    step = max(1, len(paths) // limit)
    faces = [np.asarray(Image.fromarray(load_image(p)).resize(size[::-1], Image.BILINEAR)) for p in paths[::step][:limit]]
    return np.stack(faces)


def write_into_export(export_dir, flat):
    """Writes `.tflite` bytes as the export's LiteRT copy (`EXPORT_FILE`), atomically; returns its path."""
    path = os.path.join(export_dir, EXPORT_FILE)
    write_bytes_atomically(path, flat)
    return path
