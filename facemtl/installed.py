"""Which model a command loads: the installed models, the release by default, a folder a user names.

A model is a SavedModel version folder or a shipped preset's folder
(`facemtl.models.presets`); with `write=True` a preset is answered with its
SavedModel, written into the model cache on first use (`facemtl.export.cache`).
"""

from __future__ import annotations

import os
import sys

from facemtl.errors import ModelFormatError
from facemtl.export.metadata import read_metadata
from facemtl.models.presets import (
    cached_saved_model,
    is_preset,
    model_folders,
    model_versions,
    newest_version,
)
from facemtl.pretrained import PRETRAINED_DIR, RELEASE


def _loadable(folder, write=True):
    """A SavedModel folder for `folder`: itself, or for a preset its SavedModel (written on first use).

    With `write=False` a preset's own folder is returned instead (its
    metadata and LiteRT copy answer without a SavedModel).
    """
    if os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return folder
    if is_preset(folder) and write:
        from facemtl.export.cache import saved_model_for  # deferred: writing a SavedModel needs TensorFlow

        return saved_model_for(folder, log=lambda m: print(m, file=sys.stderr))
    return folder


def installed_models(root=PRETRAINED_DIR):
    """The SavedModels installed with the package.

    Returns:
        A list of dicts: `name`, `version`, `path` (the shipped folder),
        `preset` (the name `facemtl.models.from_preset` takes, or `None` for a
        plain SavedModel), `saved_model` (where its SavedModel is, or will be
        written on first use) and the headline metrics and crop layout recorded
        in the model's metadata.

    Example:
        >>> [m["name"] for m in installed_models()]
        ['release']
    """
    models = []
    for name, version, path in model_folders(root):
        meta = read_metadata(path)
        saved_model = path if os.path.isfile(os.path.join(path, "saved_model.pb")) else cached_saved_model(meta)
        models.append({"name": name, "version": version, "path": path, "saved_model": saved_model,
                       "preset": f"{name}/{version}" if saved_model != path else None,
                       "model_id": meta.get("model_id"),
                       "metrics": meta.get("metrics") or {"test_accuracy": meta.get("test_accuracy")},
                       "crop": meta.get("crop", {}), "identities": len(meta.get("identities", [])),
                       "embedding_dim": meta.get("embedding_dim")})
    return models


def default_model(root=PRETRAINED_DIR, write=True):
    """The folder of the newest installed release model (what commands use without `--model`).

    `write=False`: the preset folder itself, no SavedModel written (see `resolve_model`).

    Raises:
        ModelFormatError: no release model is installed.
    """
    base = os.path.join(root, RELEASE)
    versions = model_versions(base) if os.path.isdir(base) else []
    if not versions:
        raise ModelFormatError(f"No release model is installed in {base}: pass --model (a SavedModel version "
                               "folder), or reinstall facemtl")
    return _loadable(os.path.join(base, versions[-1]), write)


def resolve_model(path=None, write=True):
    """The SavedModel version folder a command should load.

    Args:
        path: a version folder (`saved_models/NAME/3`); a model's base folder
            (`saved_models/NAME`, as TF Serving takes it), meaning its newest
            version; or `None` for the release model.

    Example:
        >>> resolve_model("saved_models/quickstart")
        'saved_models/quickstart/2'
    """
    return _loadable(newest_version(path), write) if path else default_model(write=write)


def model_metadata(path=None):
    """The metadata of the model `path` names (as `resolve_model` takes it), read without writing anything.

    Example:
        >>> model_metadata()["name"]
        'release'
    """
    return read_metadata(resolve_model(path, write=False))
