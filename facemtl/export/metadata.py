"""An export's metadata file (`assets.extra/facemtl.json`), read without TensorFlow.

Commands that only read metadata (`facemtl models`, errors about a model
folder) answer before TensorFlow is imported.
"""

from __future__ import annotations

import json
import os

from facemtl.errors import ModelFormatError
from facemtl.files import write_json_atomically

METADATA_FILE = os.path.join("assets.extra", "facemtl.json")
# Where an export keeps its LiteRT copy (TF Serving ignores assets.extra).
EXPORT_FILE = os.path.join("assets.extra", "model.tflite")


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
    return (metadata.get("preprocessor") or {}).get("layout") or metadata.get("crop", {}).get("layout", "arcface")


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
