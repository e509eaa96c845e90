"""The metadata file of an export or a preset (`assets.extra/facemtl.json`), read without TensorFlow.

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


def read_metadata(folder):
    """Reads the metadata (`assets.extra/facemtl.json`) of an export or of a preset folder, with clear errors."""
    if not os.path.isdir(folder):
        raise ModelFormatError(f"{folder}: no such model directory")
    path = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(os.path.join(folder, "saved_model.pb")) and not os.path.isfile(path):
        versions = sorted((d for d in os.listdir(folder) if d.isdigit()), key=int)
        hint = f" (did you mean {os.path.join(folder, versions[-1])}?)" if versions else ""
        raise ModelFormatError(f"{folder}: not a SavedModel directory (no saved_model.pb){hint}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"{folder}: not exported by facemtl (no {METADATA_FILE})") from None
    except (OSError, ValueError) as exc:
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
