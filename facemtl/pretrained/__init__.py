"""The models that ship inside the facemtl package, and how a command picks one.

Each shipped model is a plain SavedModel in TF Serving's layout,
`facemtl/pretrained/<name>/<version>/`, with the same contract as every export
(see `facemtl.export`). Commands and `FaceAnalyzer` use the release model when
no model folder is given.
"""

from __future__ import annotations

import os

from facemtl.errors import ModelFormatError

PRETRAINED_DIR = os.path.dirname(os.path.abspath(__file__))
RELEASE = "release"


def _versions(base):
    return sorted((d for d in os.listdir(base) if d.isdigit()
                   and os.path.isfile(os.path.join(base, d, "saved_model.pb"))), key=int)


def installed_models(root=PRETRAINED_DIR):
    """The SavedModels installed with the package.

    Returns:
        A list of dicts: `name`, `version`, `path` and the headline metrics and
        crop layout recorded in the model's metadata.

    Example:
        >>> [m["name"] for m in installed_models()]
        ['release']
    """
    from facemtl.export import read_metadata

    models = []
    for name in sorted(os.listdir(root)):
        base = os.path.join(root, name)
        if not os.path.isdir(base) or name.startswith(("_", ".")):
            continue
        for version in _versions(base):
            path = os.path.join(base, version)
            meta = read_metadata(path)
            models.append({"name": name, "version": int(version), "path": path,
                           "metrics": meta.get("metrics") or {"test_accuracy": meta.get("test_accuracy")}, "crop": meta.get("crop", {}),
                           "identities": len(meta.get("identities", [])), "embedding_dim": meta.get("embedding_dim")})
    return models


def default_model(root=PRETRAINED_DIR):
    """The folder of the newest installed release model (what commands use without `--model`).

    Raises:
        ModelFormatError: no release model is installed.
    """
    base = os.path.join(root, RELEASE)
    versions = _versions(base) if os.path.isdir(base) else []
    if not versions:
        raise ModelFormatError(f"No release model is installed in {base}: pass --model (a SavedModel version "
                               "folder), or reinstall facemtl")
    return os.path.join(base, versions[-1])


def resolve_model(path=None):
    """The SavedModel version folder a command should load.

    Args:
        path: a version folder (`saved_models/NAME/3`); a model's base folder
            (`saved_models/NAME`, as TF Serving takes it), meaning its newest
            version; or `None` for the release model.

    Example:
        >>> resolve_model("saved_models/quickstart")
        'saved_models/quickstart/2'
    """
    if not path:
        return default_model()
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        versions = _versions(path)
        if versions:
            return os.path.join(path, versions[-1])
    return path
