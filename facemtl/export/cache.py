"""A preset's SavedModel, written once into the model cache (`$FACEMTL_HOME/pretrained`, default `~/.cache/facemtl`).

The SavedModel of a shipped preset (TF Serving's layout, every signature) is
written the first time a command needs it (`saved_model_for`: `facemtl serve`,
`facemtl export release`, `Predictor(backend="savedmodel")`); answering photos
needs only the preset's metadata and LiteRT copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid

from facemtl.export.metadata import EXPORT_FILE, METADATA_FILE, read_metadata, update_metadata
from facemtl.export.saved_model import OWN_METADATA, export_saved_model
from facemtl.files import file_lock, writable_folder
from facemtl.models.presets import (
    WEIGHTS_FILE,
    cache_root,
    cached_saved_model,
    from_preset,
    preset_dir,
)
from facemtl.recognition.open_set import export_open_set


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
    folder = preset_dir(name)
    meta = read_metadata(folder)
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
        if os.path.isfile(os.path.join(folder, EXPORT_FILE)):  # the preset's LiteRT copy
            shutil.copyfile(os.path.join(folder, EXPORT_FILE), os.path.join(path, EXPORT_FILE))
        with open(os.path.join(path, METADATA_FILE), "w", encoding="utf-8") as f:
            preset = {"path": folder, "weights_sha1": _sha1(folder, WEIGHTS_FILE),
                      "weights_stamp": _weights_stamp(folder), "metadata_sha1": _sha1(folder, METADATA_FILE)}
            json.dump({**meta, "version": version, "preset": preset}, f, indent=2)
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


def _sha1(folder, name):
    h = hashlib.sha1()
    with open(os.path.join(folder, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def saved_model_for(name="release", log=None):
    """The SavedModel of a preset, written into `cache_root()` the first time it is asked for.

    The SavedModel records the digest of the preset weights it was written
    from, and the weights file's size and time: while those are unchanged
    (every start-up but the first after an install) nothing is hashed. When
    only the time changed (the same weights installed again), the digest is
    read once and the new time recorded. Processes asking at once write it once: the others wait for it
    (a lock file in the cache).

    Returns:
        The SavedModel version folder.
    """
    folder = preset_dir(name)
    target = cached_saved_model(read_metadata(folder))
    if _written_from(folder, target):
        return target
    writable_folder(cache_root(), "the model cache", "FACEMTL_HOME")
    # Two processes starting at once (a server and a command, or a pool's workers): the second waits for the
    # first's SavedModel instead of writing its own copy.
    with file_lock(os.path.join(cache_root(), f".{os.path.basename(os.path.dirname(target))}.lock")):
        if _written_from(folder, target):
            return target
        shutil.rmtree(target, ignore_errors=True)  # written from other weights (another install): written again
        return export_preset(folder, log=log)


def _written_from(folder, target):
    """Whether `target` holds the SavedModel of the preset in `folder` as installed now (its metadata brought
    up to date when only the metadata or the weights file's time changed)."""
    if not os.path.isfile(os.path.join(target, "saved_model.pb")):
        return False
    try:
        with open(os.path.join(target, METADATA_FILE), encoding="utf-8") as f:
            written = json.load(f).get("preset", {})
        stamp, described = _weights_stamp(folder), _sha1(folder, METADATA_FILE)
        if written.get("weights_stamp") != stamp and written.get("weights_sha1") != _sha1(folder, WEIGHTS_FILE):
            return False
        if written.get("metadata_sha1") != described:  # the same weights, newer metadata: no rewrite
            meta = read_metadata(folder)
            update_metadata(target, {**meta, "version": meta["version"],
                                     "preset": {**written, "weights_stamp": stamp, "metadata_sha1": described}})
        elif written.get("weights_stamp") != stamp:
            update_metadata(target, {"preset": {**written, "weights_stamp": stamp}})
        return True
    except (OSError, ValueError):
        return False
