"""Age and gender heads on the release model's identity embedding, trained on a cache of embeddings.

The heads read the L2-normalised `embedding` (128 values) that the frozen
trunk and identity branch compute for every face anyway, so answering age and
gender costs two small dense heads per face, not a second network.
`benchmarks/age_gender_levels.py` measured the level (the embedding beat the
shared trunk's maps and the expression branch's stage 4 for both tasks).

As for the expression branch (`facemtl.training.feature_cache`), the frozen
part runs once per face and view: the faces are framed like served photos
(the serving detector on the crop, then the chip), and the embedding of each
framed face and of its mirror image is cached; the heads then train in
seconds per epoch.
"""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import numpy as np

from facemtl.config import attribute_tasks
from facemtl.data.feature_cache import model_views
from facemtl.data.photo_framing import cached_framing
from facemtl.data.utkface import load_faces, read_utkface, split_faces, task_labels
from facemtl.errors import RecipeError
from facemtl.evaluation import labelled, scores
from facemtl.labels import IGNORE_LABEL
from facemtl.models.heads import attribute_head
from facemtl.preprocessing import Preprocessor
from facemtl.training.callbacks import AtomicBestCheckpoint
from facemtl.training.loop import Phase, fit_phases
from facemtl.training.losses import MaskedMeanAbsoluteError, MaskedSparseCategoricalCrossentropy

EMBEDDING_VIEWS = ("framed", "framed_mirror")


def embedding_cache(crops, model, cache_dir, name, views=EMBEDDING_VIEWS, batch_size=128, log=print):
    """The `embedding` output of `model` for every view of every framed face, cached in `cache_dir`.

    Args:
        crops: `uint8 [n, size, size, 3]` faces framed like served photos.
        model: a Keras model with an `embedding` output (e.g. `from_preset("release")`).
        cache_dir: where the cache file goes (keyed by the pixels, the views and the weights that
            compute the embedding: retraining another branch does not invalidate it).
        name: the file name's prefix.
        views: `"framed"` and/or `"framed_mirror"`.

    Returns:
        `float32 [len(views), n, dim]`.
    """
    embed = keras.Model(model.input, model.output["embedding"])
    return model_views(embed, None, crops, cache_dir, f"{name}-embedding", views, dtype=np.float32,
                       batch_size=batch_size, log=log)


@dataclasses.dataclass
class AttributeFaces:
    """The faces of the sources that label attribute tasks, framed, embedded, with their labels.

    Attributes:
        embeddings: `float32 [views, n, dim]` (`EMBEDDING_VIEWS`).
        labels: `{task: array [n]}`: years (float) or class indices; `IGNORE_LABEL` / NaN where
            a face's source does not label that task.
        split: `int8 [n]`: 0 train, 1 validation, 2 test.
        groups: `{name: array [n]}` for the bias table (UTKFace: race, gender, age).
        framing: how many faces the detector found, per source.
    """

    embeddings: np.ndarray
    labels: dict
    split: np.ndarray
    groups: dict
    framing: dict


def attribute_faces(recipe, model, log=print):
    """Reads, frames (like served photos) and embeds the faces of every source an attribute task names.

    Each source's test faces are its fixed split (UTKFace: by file-name hash,
    `test_fraction`); validation is `val_fraction` of the rest (seed
    `train.seed + k`): heads are chosen on it, never on the test faces.

    Returns:
        An `AttributeFaces`.
    """
    tasks = attribute_tasks(recipe)
    p = Preprocessor.from_model_config(recipe.model)
    parts, framing = [], {}
    for k, cfg in enumerate(recipe.data.sources):
        wanted = [t for t in tasks if cfg.format in t.sources or (cfg.name and cfg.name in t.sources)]
        if not wanted:
            continue
        if cfg.format != "utkface":
            raise RecipeError(f"data.sources[{k}]: attribute tasks read UTKFace sources (format: utkface). "
                              f"Received: format={cfg.format!r}")
        faces = read_utkface(cfg.path, test_fraction=cfg.test_fraction)
        for name, why in faces.skipped:
            log(f"utkface: skipped {name}: {why}")
        limit = recipe.feature_cache.max_faces
        if limit and limit < len(faces.paths):  # a smoke run: fewer faces, the same split rule
            pick = np.random.default_rng(recipe.feature_cache.seed).choice(len(faces.paths), limit, replace=False)
            faces = faces.subset(np.sort(pick))
        images, kept = load_faces(faces, log=log)
        framed = cached_framing(images, recipe.data.cache_dir, cfg.name or "utkface", log=log, size=p.height,
                                layout=p.layout, detector=p.detector, upscale=p.crop_upscale,
                                face_scale=p.face_scale)
        framing[cfg.name or cfg.format] = {"faces": int(len(framed.found)), "fallback": framed.fallback}
        embeddings = embedding_cache(framed.crops, model, recipe.data.cache_dir, cfg.name or "utkface", log=log)
        labels = {}
        for t in tasks:
            if t in wanted:
                labels[t.name] = task_labels(faces, t)[kept]
            else:
                labels[t.name] = (np.full(kept.sum(), IGNORE_LABEL, np.int32) if t.kind == "classification"
                                  else np.full(kept.sum(), np.nan, np.float32))
        split = split_faces(faces.subset(np.flatnonzero(kept)), cfg.val_fraction, recipe.train.seed + k)
        groups = {"race": faces.race[kept], "gender": faces.gender[kept], "age": faces.age[kept]}
        parts.append((embeddings, labels, split, groups))
    if not parts:
        raise RecipeError("tasks: no data.sources entry labels the attribute tasks "
                          f"{[t.name for t in tasks]} (each task's sources: formats or names)")
    return AttributeFaces(np.concatenate([p[0] for p in parts], axis=1),  # [views, faces, dim]
                          {t.name: np.concatenate([p[1][t.name] for p in parts]) for t in tasks},
                          np.concatenate([p[2] for p in parts]),
                          {g: np.concatenate([p[3][g] for p in parts]) for g in parts[0][3]}, framing)


def build_heads(tasks, dim):
    """The attribute heads alone, on an embedding input: `{task: trained output}` (as in the full model)."""
    inputs = keras.Input((dim,), name="embedding")
    return keras.Model(inputs, {t.name: attribute_head(inputs, t)[1] for t in tasks}, name="attribute_heads")


def _losses(tasks):
    # Distributions learn the bin of the label (its whole years), regression the value itself.
    return {t.name: MaskedMeanAbsoluteError() if t.kind == "regression" else MaskedSparseCategoricalCrossentropy()
            for t in tasks}


def _targets(tasks, labels, index):
    out = {}
    for t in tasks:
        y = labels[t.name][index]
        if t.kind == "distribution":
            y = np.where(np.isnan(y), IGNORE_LABEL, np.clip(np.round(np.nan_to_num(y)), 0, t.max_value)).astype(np.int32)
        out[t.name] = y
    return out


def answers(heads, tasks, x):
    """`{task: answer}` of the heads on embeddings `x`: years (distribution/regression) or class indices."""
    out = heads.predict(x, batch_size=4096, verbose=0)
    result = {}
    for t in tasks:
        y = np.asarray(out[t.name])
        if t.kind == "classification":
            result[t.name] = y.argmax(-1)
        elif t.kind == "distribution":
            result[t.name] = y @ np.arange(y.shape[-1], dtype=np.float32)
        else:
            result[t.name] = y.reshape(-1)
    return result


def _error(score):
    """A task's error from its `scores` entry: the MAE, or the error rate."""
    return score["mae"] if "mae" in score else 1.0 - score["accuracy"]


def relative_error(tasks, labels, predicted, mask, reference):
    """Σ λ_t · (task error / the error of a constant answer): one score for choosing an epoch, whatever the units.

    A task's error is its MAE (years) or its error rate; `reference` gives each
    task's error when always answering the training labels' median (or most
    frequent class), so each task counts by how much of the trivial error it removes.
    """
    got = scores(tasks, labels, predicted, mask)
    return sum(t.loss_weight * _error(got[t.name]) / max(reference[t.name], 1e-12) for t in tasks)


def constant_errors(tasks, labels, train, val):
    """Each task's validation error when always answering the training labels' median or most frequent class."""
    constant = {}
    for t in tasks:
        y = labels[t.name][train & labelled(t, labels[t.name])]
        constant[t.name] = np.full(len(val), np.bincount(y).argmax() if t.kind == "classification" else np.median(y))
    got = scores(tasks, labels, constant, val)
    return {t.name: _error(got[t.name]) for t in tasks}


class RelativeErrorScores(keras.callbacks.Callback):
    """Logs `val_relative_error` after each epoch: the figure the best epoch is chosen on (lowest).

    Not the validation loss: an age distribution's cross-entropy grows (sharper
    wrong peaks) while its expected value's error still falls.
    """

    def __init__(self, tasks, faces):
        super().__init__()
        self.tasks = tasks
        val = faces.split == 1
        self.reference = constant_errors(tasks, faces.labels, faces.split == 0, val)
        # The validation faces as served (their own embedding), and their labels.
        self.x, self.labels = faces.embeddings[0][val], {k: v[val] for k, v in faces.labels.items()}

    def scores(self, model):
        """`scores` of `model` on the validation faces, and their `relative_error`."""
        everyone = np.ones(len(self.x), bool)
        predicted = answers(model, self.tasks, self.x)
        return (scores(self.tasks, self.labels, predicted, everyone),
                relative_error(self.tasks, self.labels, predicted, everyone, self.reference))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_relative_error"] = self.scores(self.model)[1]


def train_heads(recipe, faces, run_dir, log=print):
    """Fits the attribute heads jointly (L = Σ λ_t · L_t, masked) on the cached embeddings; keeps the best epoch.

    Training draws both views of each training face (the face and its mirror
    image); validation scores the face as served (its own embedding). The heads
    fit through the one training loop (`facemtl.training.loop.fit_phases`, in
    `run_dir/attributes/`): the epoch with the lowest validation `relative_error`
    is kept in `best.weights.h5`, the history in `history.csv`, and a stopped run resumes.

    Returns:
        `(heads model with the best weights, validation scores, best epoch)`.
    """
    tasks = attribute_tasks(recipe)
    keras.utils.set_random_seed(recipe.train.seed)
    heads = build_heads(tasks, faces.embeddings.shape[-1])
    train, val = np.flatnonzero(faces.split == 0), np.flatnonzero(faces.split == 1)
    views = len(faces.embeddings)
    x = np.concatenate([faces.embeddings[v][train] for v in range(views)])
    y = {k: np.tile(v, views) for k, v in _targets(tasks, faces.labels, train).items()}
    heads.compile(keras.optimizers.Adam(recipe.feature_cache.attribute_learning_rate), loss=_losses(tasks),
                  loss_weights={t.name: t.loss_weight for t in tasks})
    folder = os.path.join(run_dir, "attributes")
    checkpoint = AtomicBestCheckpoint(heads, os.path.join(folder, "best.weights.h5"), monitor="val_relative_error",
                                      weights_only=True)
    scorer = RelativeErrorScores(tasks, faces)
    epochs = recipe.feature_cache.attribute_epochs
    start = time.time()
    log(f"facemtl: attribute heads {[t.name for t in tasks]}: {len(train)} training faces x {views} views, "
        f"{len(val)} validation faces, {epochs} epochs")
    # No Keras validation pass: the epoch is chosen on the scorer's own scoring of the validation faces.
    fit_phases([Phase(0, epochs, lambda: heads)], run_dir=folder, checkpoint=checkpoint, first_callbacks=[scorer],
               verbose=0, log=log, fit_kwargs=dict(x=x, y=y, batch_size=128, shuffle=True))
    heads.load_weights(checkpoint.path)
    validation = scorer.scores(heads)[0]
    log(f"facemtl: attribute heads: best epoch {checkpoint.best_epoch + 1} of {epochs} ({time.time() - start:.0f} s); "
        "validation " + ", ".join(f"{k}: " + ", ".join(f"{m} {v:.4f}" for m, v in r.items() if m != "count")
                                  for k, r in validation.items()))
    return heads, validation, checkpoint.best_epoch + 1


def copy_heads(heads, model):
    """Sets the full model's attribute-head layers to the trained heads' weights (matched by layer name)."""
    names = [layer.name for layer in heads.layers if layer.weights]
    for name in names:
        model.get_layer(name).set_weights(heads.get_layer(name).get_weights())
    return names
