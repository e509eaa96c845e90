"""The CPU recipes' expression branches, trained on the feature cache (`facemtl.data.feature_cache`).

The frozen trunk's maps of a few views of each training face are cached
once; each expression branch (`facemtl.models.dlib_resnet.build_expression_branch`)
then trains on them with Keras `fit` for many epochs, checkpoints chosen on a
validation split carved from the expression source's train split (never on
its test split), scored on its plain and framed views, each averaged with its
mirror. The trained branches are assembled with `model.init_from`'s trunk and
identity half into the whole model, the attribute heads trained on its
embeddings (`facemtl.training.attribute_heads`), and the run scored and exported.

Example:
    >>> result = train_on_cache(load_recipe("release_cpu", smoke=True))
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from facemtl.config import TRAIN_VIEWS, TaskConfig, attribute_tasks, branch_settings
from facemtl.data.catalog import split_source
from facemtl.data.feature_cache import (
    EVAL_VIEWS,
    TrunkCache,
    batches,
    build_trunk_cache,
    class_weight_vector,
    view_images,
)
from facemtl.data.materialize import materialize
from facemtl.data.photo_framing import cached_framing
from facemtl.data.utkface import DATA_TERMS as UTKFACE_TERMS
from facemtl.errors import RecipeError
from facemtl.evaluation import bias_table, classification_report, scores
from facemtl.export.metadata import read_metadata, update_metadata
from facemtl.export.saved_model import export_saved_model, run_relative
from facemtl.export.tflite import EXPORT_FILE, convert, write_into_export
from facemtl.files import write_json_atomically
from facemtl.labels import EXPRESSIONS
from facemtl.models.dlib_resnet import build_expression_branch, build_trunk, expression_branch_prefix
from facemtl.models.multitask import build_multitask
from facemtl.models.presets import copy_weights_by_name, load_weights_from, source_folder
from facemtl.preprocessing import Preprocessor
from facemtl.recognition.open_set import export_open_set
from facemtl.training import attribute_heads as ah
from facemtl.training.callbacks import AtomicBestCheckpoint, record_path, save_model_atomically
from facemtl.training.loop import Phase, fit_phases
from facemtl.training.optimizers import build_optimizer
from facemtl.training.runs import TrainResult, check_before_training, close_run, open_run

# Where a branch's best validation epoch is kept, in its run folder (its record beside it: `record_path`).
BEST_WEIGHTS = os.path.join("checkpoints", "best.weights.h5")


def predict_views(branch, cache, indices=None, batch_size=512):
    """The branch's probabilities per cached view: `float32 [views, n, classes]`."""
    run = tf.function(lambda x: branch(x, training=False), reduce_retracing=True)
    n = cache.features.shape[1] if indices is None else len(indices)
    indices = np.arange(n) if indices is None else np.asarray(indices)
    out = []
    for v in range(len(cache.views)):
        out.append(np.concatenate([run(tf.constant(cache.features[v, indices[s:s + batch_size]], tf.float32)).numpy()
                                   for s in range(0, n, batch_size)]))
    return np.stack(out)


def view_scores(probs, labels, views):
    """Accuracy per framing, single and mirror-averaged, from `predict_views`' output."""
    scores = {}
    for name in ("plain", "framed"):
        if name in views and f"{name}_mirror" in views:
            single = probs[views.index(name)]
            mirrored = (single + probs[views.index(f"{name}_mirror")]) / 2
            scores[name] = float((single.argmax(1) == labels).mean())
            scores[f"{name}_mirror_avg"] = float((mirrored.argmax(1) == labels).mean())
    return scores


class ValidationScores(keras.callbacks.Callback):
    """Scores the branch on the cached validation views after each epoch; logs `val_expression_accuracy`.

    `val_expression_accuracy` is the mean over the plain and framed views of
    the mirror-averaged accuracy when the model serves mirror averaging, else
    of the single-view accuracy: the figure checkpoints are chosen on.
    """

    def __init__(self, cache, mirror=False, log=print):
        super().__init__()
        self.cache, self.mirror, self.log = cache, mirror, log

    def on_epoch_end(self, epoch, logs=None):
        scores = view_scores(predict_views(self.model, self.cache), self.cache.labels, list(self.cache.views))
        suffix = "_mirror_avg" if self.mirror else ""
        value = (scores[f"plain{suffix}"] + scores[f"framed{suffix}"]) / 2
        if logs is not None:
            logs["val_expression_accuracy"] = value
            logs.update({f"val_{k}": v for k, v in scores.items()})
        self.log(f"epoch {epoch + 1}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


class KeepForAverage(keras.callbacks.Callback):
    """Keeps the weights at the end of each epoch from `first` on, in `folder` (files: resumes keep them)."""

    def __init__(self, folder, first):
        super().__init__()
        self.folder, self.first = folder, first

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 > self.first:
            os.makedirs(self.folder, exist_ok=True)
            save_model_atomically(self.model, os.path.join(self.folder, f"epoch{epoch + 1}.weights.h5"),
                                  weights_only=True)


def fit_branch(branch, train_cache, val_cache, cfg, *, epochs, batch_size, optimizer, run_dir, mirror=False,
               log=print, verbose=2):
    """Fits the branch on the cache through the one training loop (`facemtl.training.loop.fit_phases`).

    Resumable (the same call with the same `run_dir` goes on), the best
    validation epoch kept in `run_dir/checkpoints/best.weights.h5` (its record
    beside it), the history in `run_dir/history.csv`. With `cfg.probe_epochs`
    a first phase trains only the head (the copied stages frozen).

    Args:
        branch: from `build_expression_branch`.
        train_cache, val_cache: `TrunkCache`s.
        cfg: a `FeatureCacheConfig`.
        epochs, batch_size: the schedule.
        optimizer: a `keras.optimizers.Optimizer` (its schedule spans all epochs).
        run_dir: where checkpoints, the backup and the history go.
        mirror: choose checkpoints on mirror-averaged validation accuracy.

    Returns:
        The history (`read_history`: loss, accuracy and the validation scores per
        epoch); with `cfg.average_last`, also `average`: the weight average's
        scores. A resumed run draws its batches afresh (the generator's state is not saved).
    """
    num_classes = branch.output_shape[-1]
    rng = np.random.default_rng(cfg.seed)
    indices = np.arange(len(train_cache.labels))
    weights = class_weight_vector(train_cache.labels, cfg.class_balance, num_classes) if cfg.class_balance else None
    steps = -(-len(indices) // batch_size)
    spec = (tf.TensorSpec([None, *train_cache.features.shape[2:]], tf.float32),
            tf.TensorSpec([None, num_classes], tf.float32))
    if weights is not None:
        spec = (*spec, tf.TensorSpec([None], tf.float32))

    def endless():
        while True:
            yield from batches(train_cache, indices, batch_size, cfg, num_classes, rng, weights)

    data = tf.data.Dataset.from_generator(endless, output_signature=spec).prefetch(2)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    checkpoint = AtomicBestCheckpoint(branch, os.path.join(run_dir, BEST_WEIGHTS),
                                      monitor="val_expression_accuracy", mode="max", weights_only=True)

    def phase(stages_train, opt):
        def compile_phase():
            for layer in branch.layers:
                if layer.name.startswith("expression_stage"):
                    layer.trainable = stages_train
            branch.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
            return branch
        return compile_phase

    phases = [Phase(0, cfg.probe_epochs, phase(False, keras.optimizers.Adam(1e-3)))] if cfg.probe_epochs else []
    phases.append(Phase(cfg.probe_epochs, epochs, phase(True, optimizer)))
    averaged = os.path.join(run_dir, "average")
    history = fit_phases(phases, run_dir=run_dir, checkpoint=checkpoint, verbose=verbose, log=log,
                         first_callbacks=[ValidationScores(val_cache, mirror, log)],
                         callbacks=[KeepForAverage(averaged, epochs - cfg.average_last)] if cfg.average_last else [],
                         fit_kwargs=dict(x=data, steps_per_epoch=steps, shuffle=False))  # random draws already
    if cfg.average_last:
        history["average"] = _score_average(branch, averaged, val_cache, mirror, checkpoint, log)
    return history


def _score_average(branch, folder, val_cache, mirror, checkpoint, log):
    """SWA: sets the branch to the mean of the kept epochs' weights, scores it, and keeps it if it beats the best."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".weights.h5"))
    total = None
    for name in files:
        branch.load_weights(os.path.join(folder, name))
        w = branch.get_weights()
        total = w if total is None else [t + x for t, x in zip(total, w)]
    branch.set_weights([t / len(files) for t in total])
    scorer = ValidationScores(val_cache, mirror, log)
    scorer.set_model(branch)
    logs = {}
    scorer.on_epoch_end(-1, logs)
    value = logs["val_expression_accuracy"]
    log(f"weight average of {len(files)} epochs: {value:.4f} (best single epoch {checkpoint.best_value:.4f}, "
        f"epoch {checkpoint.best_epoch + 1})")
    if value > checkpoint.best_value:
        checkpoint.keep(value, f"average of {len(files)}")
    return {"epochs": [f[len("epoch"):-len(".weights.h5")] for f in files], **logs}


@dataclasses.dataclass
class CachedSplits:
    """The expression source's trunk caches: `train` (all views) and `val` (`EVAL_VIEWS`), and what framing did."""

    train: TrunkCache
    val: TrunkCache
    framing: dict
    expression_names: list
    calibration: np.ndarray = None  # a few training faces in both framings (int8 LiteRT calibration)
    test: object = None  # the source's test part (`catalog.split_source`), not decoded: `evaluate_framings` scores it


EXPRESSION_FORMATS = ("fer2013_folders", "fer2013_csv", "expression_folders")


def expression_source(recipe):
    """The recipe's one expression source (FER2013, or your own class folders) and its index in `data.sources`."""
    found = [(k, s) for k, s in enumerate(recipe.data.sources) if s.format in EXPRESSION_FORMATS]
    if len(found) != 1:
        raise RecipeError(f"feature_cache.enabled needs exactly one expression source ({', '.join(EXPRESSION_FORMATS)})"
                          f" in data.sources. Received: {[s.format for s in recipe.data.sources]}")
    return found[0]


def framing_settings(model_config):
    """`photo_framing.cached_framing`'s settings: the recipe's `Preprocessor`, as serving will frame photos."""
    p = Preprocessor.from_model_config(model_config)
    return {"size": p.height, "layout": p.layout, "detector": p.detector, "upscale": p.crop_upscale,
            "face_scale": p.face_scale}


def crop_side(cfg):
    """The side the expression source's crops are decoded at before framing: FER2013's own 48 px, else 96."""
    return 48 if cfg.format.startswith("fer2013") else 96


def class_names(src):
    """The expression classes of a source, in label order."""
    return list(src.expression_names or EXPRESSIONS)


def prepare_caches(recipe, log=print):
    """Reads the expression source, splits off validation as `facemtl train` does, frames and caches it.

    Returns:
        A `CachedSplits`.
    """
    k, cfg = expression_source(recipe)
    data, m = recipe.data, recipe.model
    wanted = set()
    for i, settings in enumerate(branch_settings(recipe)):
        if settings is None:
            continue
        unknown = sorted(set(settings.views) - set(TRAIN_VIEWS))
        if unknown:
            key = "feature_cache.views" if not recipe.feature_cache.branches else f"feature_cache.branches[{i}].views"
            raise RecipeError(f"Bad value for '{key}': {unknown} are not views; expected some of {list(TRAIN_VIEWS)}")
        wanted.update(settings.views)
    # Only the views some trained branch draws from are cached (each view costs a pass of the trunk).
    train_views = tuple(v for v in TRAIN_VIEWS if v in wanted)
    # The same source, split and held out as `facemtl train` does it (`catalog.split_source`).
    src, train, val, test = split_source(recipe, k, log)
    limit = recipe.feature_cache.max_faces
    if limit and limit < len(train) + len(val):  # a smoke run: the same split, fewer faces
        rng = np.random.default_rng(recipe.feature_cache.seed)
        n_val = max(1, round(limit * len(val) / (len(train) + len(val))))
        train = train.subset(np.sort(rng.choice(len(train), limit - n_val, replace=False)))
        val = val.subset(np.sort(rng.choice(len(val), n_val, replace=False)))
    trunk = build_trunk((m.height, m.width, 3), m.split_stage, m.backbone_weights or "auto")
    caches, framing, calibration = {}, {}, None
    for part, sub, views in (("train", train, train_views), ("val", val, EVAL_VIEWS)):
        # FER2013's own 48 px: the photo it stands for is upscaled from the original crop, as in serving.
        mat = materialize(sub, crop_side(cfg), margin=data.crop_margin, cache_dir=data.cache_dir)
        framed = cached_framing(mat.images, data.cache_dir, f"{src.name}-{sub.split}", log=log,
                                **framing_settings(m))
        framing[part] = {"faces": int(len(framed.found)), "fallback": framed.fallback}
        caches[part] = build_trunk_cache(mat.images, framed.crops, mat.expression, trunk, data.cache_dir,
                                         f"{src.name}-{sub.split}", views=views, cfg=recipe.feature_cache, log=log)
        if part == "train":
            pick = np.linspace(0, len(mat.images) - 1, min(200, len(mat.images))).astype(int)
            calibration = np.concatenate([view_images(mat.images[pick], framed.crops[pick], "plain"),
                                          framed.crops[pick]])
    return CachedSplits(caches["train"], caches["val"], framing, class_names(src), calibration, test)


def train_expression_branch(recipe, run_dir, caches=None, log=print, verbose=2, settings=None):
    """Trains one expression branch of the recipe on the trunk caches (resumable in `run_dir`).

    Args:
        settings: the `FeatureCacheConfig` it trains with (default: the recipe's `feature_cache`).

    Returns:
        `(branch with the best validation weights, history dict, best record)`.
    """
    caches = caches or prepare_caches(recipe, log)
    settings = settings or recipe.feature_cache
    m = recipe.model
    # bfloat16 compute (float32 weights) is ~1.5x faster on CPUs with AVX-512 BF16 / AMX; the branch is
    # exported in float32 either way (assemble_model builds the whole model under the float32 policy).
    keras.mixed_precision.set_global_policy(recipe.train.precision)
    try:
        branch = _build_branch(recipe, caches)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if settings.start == "init_from" and not os.path.isfile(os.path.join(run_dir, BEST_WEIGHTS)):
        start_from_init(branch, recipe, caches.expression_names, log)
    steps = -(-len(caches.train.labels) // recipe.train.batch_size)
    keras.utils.set_random_seed(recipe.train.seed)
    history = fit_branch(branch, caches.train, caches.val, settings, epochs=recipe.train.epochs,
                         batch_size=recipe.train.batch_size, optimizer=build_optimizer(recipe, steps),
                         run_dir=run_dir, mirror=m.mirror_expression, log=log, verbose=verbose)
    best = os.path.join(run_dir, BEST_WEIGHTS)
    # The best weights into a float32 copy of the branch: what is assembled, scored and exported.
    branch = _build_branch(recipe, caches)
    branch.load_weights(best)
    with open(record_path(best), encoding="utf-8") as f:
        record = json.load(f)
    if isinstance(record["epoch"], int):  # epochs counted from 1 in reports, as the logs count them
        record["epoch"] += 1
    return branch, history, record


def start_from_init(branch, recipe, names, log=print):
    """Sets a branch to `model.init_from`'s expression branch 1 (fine-tuning).

    The class layer is kept only for the same classes: in the recipe's order
    when the names are the same in another order, else it starts new.

    Args:
        names: the recipe's expression classes, in label order.

    Returns:
        The names of the layers copied.
    """
    if not recipe.model.init_from:
        raise RecipeError("feature_cache.start: init_from needs model.init_from (e.g. release)")
    fresh = [w.numpy() for w in branch.get_layer("expression").weights]
    done, meta = load_weights_from(branch, recipe.model.init_from, partial=True)
    copied = {name.split("/")[0] for name in done}
    theirs = list(meta["expressions"])
    if "expression" in copied and theirs != list(names):
        layer = branch.get_layer("expression")
        if sorted(theirs) == sorted(names):  # the same classes in another order: the columns follow the names
            order = [theirs.index(n) for n in names]
            for w in layer.weights:
                w.assign(w.numpy()[..., order])
        else:
            for w, value in zip(layer.weights, fresh):
                w.assign(value)
            copied.discard("expression")
    layers = {layer.name for layer in branch.layers if layer.weights}
    log(f"facemtl: expression branch starts from {recipe.model.init_from}'s ({len(copied)} layers; new: "
        f"{sorted(layers - copied)})")
    return sorted(copied)


def _build_branch(recipe, caches, weights="auto"):
    m = recipe.model
    weights = weights and (m.backbone_weights or weights)
    return build_expression_branch(caches.train.features.shape[2:], split_stage=m.split_stage,
                                     last_stage=m.expression_last_stage, units=m.expression_units, dropout=m.dropout,
                                     num_classes=len(caches.expression_names), weights=weights,
                                     pool=m.expression_pool, learnable_affine=m.learnable_affine)


def assemble_model(recipe, branches, log=print, num_expressions=None):
    """The whole multi-task model: `model.init_from`'s trunk and identity, and the trained expression branches.

    Args:
        branches: one entry per expression branch: a trained branch model, or
            `None` for a branch kept from `model.init_from` (a single model
            stands for `[model]`).
        num_expressions: expression classes (default: the init export's).

    Returns:
        `(keras model, the init export's metadata)`.
    """
    if not isinstance(branches, (list, tuple)):
        branches = [branches]

    init = recipe.model.init_from
    if not init:
        raise RecipeError("feature_cache.enabled needs model.init_from (an export whose trunk and identity "
                          "branch to keep, e.g. release)")
    meta = read_metadata(source_folder(init))
    model = build_multitask(recipe.model, num_identities=len(meta["identities"]),
                            num_expressions=num_expressions or len(meta["expressions"]),
                            attributes=model_attributes(recipe, meta))
    trained = [(expression_branch_prefix(k), b) for k, b in enumerate(branches, 1) if b is not None]
    # Weight names do not depend on whether the branch is a sub-model (mirror_expression) or not; the recipe's
    # attribute heads are trained afterwards (`attribute_heads`), init_from's other heads kept.
    skip = [p for p, _ in trained] + [t.name for t in attribute_tasks(recipe)]
    count, _ = load_weights_from(model, init, skip=skip)
    log(f"facemtl: {count} weights from {source_folder(init)}")
    target = branch_model(model)
    for prefix, branch in trained:
        copied = copy_weights_by_name(branch, target, target_prefix=prefix)
        log(f"facemtl: expression branch {prefix!r} ({len(copied)} layers) from its trained weights")
    return model, meta


def model_attributes(recipe, meta):
    """The attribute heads of the assembled model: the recipe's (trained here), then `init_from`'s others (kept).

    A recipe that fine-tunes the expression branch of a release with age and
    gender keeps them; one that lists a task of the same name trains it anew.
    """
    trained = attribute_tasks(recipe)
    names = {t.name for t in trained}
    fields = {f.name for f in dataclasses.fields(TaskConfig)}
    return trained + [TaskConfig(**{k: v for k, v in a.items() if k in fields})
                      for a in meta.get("attributes", []) if a["name"] not in names]


def branch_validation(model, recipe, caches):
    """Each expression branch's and the ensemble's accuracy on the cached validation views.

    Returns:
        `{"branch1": scores, ..., "ensemble": scores}` (`view_scores`' keys);
        `"ensemble"` only with more than one branch.
    """
    target, probs, out = branch_model(model), [], {}
    for k in range(1, recipe.model.expression_branches + 1):
        branch = _build_branch(recipe, caches, weights=None)
        copy_weights_by_name(target, branch, prefix=expression_branch_prefix(k), target_prefix="expression")
        probs.append(predict_views(branch, caches.val))
        out[f"branch{k}"] = view_scores(probs[-1], caches.val.labels, list(caches.val.views))
    if len(probs) > 1:
        out["ensemble"] = view_scores(np.mean(probs, axis=0), caches.val.labels, list(caches.val.views))
    return out


def branch_model(model):
    """The model (or sub-model) that holds the expression branches' layers."""
    try:
        return model.get_layer("expression_branch")
    except ValueError:
        return model


def evaluate_framings(model, recipe, test, run_dir, log=print, batch_size=128):
    """Scores the whole model on the expression source's test split, as a crop and as a photo.

    `crop`: the test crop resized as `serving_default` resizes it. `photo`: the
    crop upscaled to a small photo, then the serving detector and alignment
    (`facemtl.data.photo_framing`); `photo_found` counts only the faces the
    detector found (the others get no answer when served as photos).

    Args:
        test: the test part of the expression source (`CachedSplits.test`, from `catalog.split_source`).

    Returns:
        `{framing: classification report}`, also written to `run_dir/test/report.json`.
    """
    _, cfg = expression_source(recipe)
    data, m = recipe.data, recipe.model
    names = class_names(test)
    mat = materialize(test, crop_side(cfg), margin=data.crop_margin, cache_dir=data.cache_dir)
    framed = cached_framing(mat.images, data.cache_dir, f"{test.name}-{test.split}", log=log,
                            **framing_settings(m))
    run = tf.function(lambda x: model(x, training=False)["expression"], reduce_retracing=True)

    def predict(images):
        return np.concatenate([run(tf.constant(images[s:s + batch_size], tf.float32)).numpy().argmax(1)
                               for s in range(0, len(images), batch_size)])

    answers = {"crop": predict(view_images(mat.images, framed.crops, "plain")), "photo": predict(framed.crops)}
    report = {"crop": classification_report(mat.expression, answers["crop"], names),
              "photo": classification_report(mat.expression, answers["photo"], names),
              "photo_found": classification_report(mat.expression[framed.found], answers["photo"][framed.found],
                                                   names)}
    report["photo"]["no_face_found"] = framed.fallback
    os.makedirs(os.path.join(run_dir, "test"), exist_ok=True)
    write_json_atomically(os.path.join(run_dir, "test", "report.json"), report, indent=2)
    for name, r in report.items():
        log(f"facemtl: test expression ({name}): accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f} "
            f"({r['count']} faces)")
    return report


def write_lite_copy(model, export_dir, quantize, calibration, log=print):
    """Converts the model to LiteRT and stores it inside the export (`facemtl.export.tflite.EXPORT_FILE`)."""
    meta = read_metadata(export_dir)
    flat = convert(model, meta, quantize=None if quantize == "float32" else quantize,
                   calibration=calibration if quantize == "int8" else None)
    path = write_into_export(export_dir, flat)
    update_metadata(export_dir, {"tflite": {"file": EXPORT_FILE, "quantize": quantize,
                                            "bytes": os.path.getsize(path)}})
    log(f"facemtl: LiteRT copy ({quantize}, {os.path.getsize(path) / 2**20:.1f} MB) at {path}")
    return path


def train_on_cache(recipe, run_dir=None, log=print):
    """`facemtl train` for a recipe with `feature_cache.enabled`: cache, train the branch, assemble, test, export.

    The same command resumes an interrupted run (its run folder is found as
    `facemtl train` finds any unfinished run of the same recipe).

    Returns:
        A `facemtl.training.runs.TrainResult`.
    """
    start = time.time()
    check_before_training(recipe, run_dir)
    keras.utils.set_random_seed(recipe.train.seed)
    run_dir = open_run(recipe, run_dir, True, log)
    settings = branch_settings(recipe)
    caches = None
    if any(cfg is not None for cfg in settings):  # some expression branch trains: the trunk caches
        caches = prepare_caches(recipe, log)
        log(f"facemtl: expression branches on cached trunk maps: {len(caches.train.labels)} train faces x "
            f"{len(caches.train.views)} views, {len(caches.val.labels)} validation faces; framing: {caches.framing}")
    branches, history, records = [], {}, {}
    for k, cfg in enumerate(settings, 1):
        if cfg is None:
            log(f"facemtl: expression branch {k}: kept from {recipe.model.init_from}")
            branches.append(None)
            continue
        # One branch keeps the run folder's own layout; several train each in branch<k>/.
        branch_dir = run_dir if len(settings) == 1 else os.path.join(run_dir, f"branch{k}")
        branch, history[k], records[k] = train_expression_branch(recipe, branch_dir, caches, log, settings=cfg)
        log(f"facemtl: expression branch {k}: best validation epoch {records[k]['epoch']} "
            f"({records[k]['value']:.4f})")
        branches.append(branch)
    model, meta = assemble_model(recipe, branches, log,
                                 num_expressions=len(caches.expression_names) if caches else None)
    expression_names = caches.expression_names if caches else list(meta["expressions"])
    validation = branch_validation(model, recipe, caches) if caches else {}
    if validation:
        log("facemtl: validation (mirror-averaged where served so): " + "; ".join(
            f"{name}: " + ", ".join(f"{k}: {v:.4f}" for k, v in scores.items()) for name, scores in validation.items()))
    attributes, attribute_report = attribute_tasks(recipe), {}
    if attributes:  # age, gender...: heads on the embedding, trained on cached embeddings
        faces = ah.attribute_faces(recipe, model, log)
        heads, validation["attributes"], best_epoch = ah.train_heads(recipe, faces, run_dir, log)
        ah.copy_heads(heads, model)
        predicted = ah.answers(heads, attributes, faces.embeddings[0])
        test = faces.split == 2
        attribute_report = {"test": scores(attributes, faces.labels, predicted, test), "best_epoch": best_epoch,
                            "framing": faces.framing, **bias_table(attributes, faces, predicted, test)}
        os.makedirs(os.path.join(run_dir, "test"), exist_ok=True)
        write_json_atomically(os.path.join(run_dir, "test", "attributes.json"), attribute_report, indent=2)
        log("facemtl: test " + ", ".join(f"{k}: " + ", ".join(f"{m} {v:.4f}" for m, v in r.items() if m != "count")
                                         + f" ({r['count']} faces)" for k, r in attribute_report["test"].items()))
    report = {}
    if not caches:  # every expression branch is init_from's: its figures stand (benchmarks/age_gender.py --base)
        log(f"facemtl: expression branches unchanged from {recipe.model.init_from}: its test figures are kept")
    elif expression_source(recipe)[1].test_split:
        report = evaluate_framings(model, recipe, caches.test, run_dir, log)
    else:
        log("facemtl: no test split (data.sources: test_split): the test report is skipped")
    export_dir = None
    if recipe.export.enabled:
        keep = {k: meta[k] for k in ("verification", "identity_head") if k in meta}
        # What this run did not train keeps init_from's figures: identity, the expression branches when all are
        # kept, and the attribute heads it keeps; what it trained reports its own test scores.
        theirs = meta.get("test_accuracy") or {}
        exported = model_attributes(recipe, meta)
        inherited = ["identity", *(() if caches else ("expression", "expression_photo")),
                     *(t.name if t.kind == "classification" else f"{t.name}_mae" for t in exported
                       if t not in attributes)]
        test_accuracy = {"expression": report.get("crop", {}).get("accuracy"),
                         "expression_photo": report.get("photo", {}).get("accuracy"),
                         **{key: theirs.get(key) for key in inherited},
                         **{f"{k}_mae" if "mae" in r else k: r.get("mae", r.get("accuracy"))
                            for k, r in attribute_report.get("test", {}).items()}}
        export_dir = export_saved_model(
            model, meta["identities"], expression_names, base_dir=recipe.export.base_dir,
            name=recipe.export.name or recipe.name, version=recipe.export.version, max_faces=recipe.export.max_faces,
            preprocessor=Preprocessor.from_model_config(recipe.model),
            attributes=[dataclasses.asdict(t) for t in exported],
            # The identity half is init_from's, unchanged: its model_id (galleries made with it keep working).
            extra_metadata={**keep, **({"model_id": meta["model_id"]} if meta.get("model_id") else {}),
                            "recipe": recipe.name, "run_dir": os.path.abspath(run_dir),
                            "backbone": recipe.model.backbone,
                            "init_from": {"model_id": meta.get("model_id"), "name": meta.get("name"),
                                          "version": meta.get("version")},
                            "mirror_expression": recipe.model.mirror_expression,
                            # What `presets.from_export` rebuilds the Keras model from (no run folder needed).
                            "model_config": dataclasses.asdict(recipe.model),
                            "test_accuracy": test_accuracy,
                            **({"attribute_data": meta.get("attribute_data", UTKFACE_TERMS)}
                               if exported else {})},
            # The identity half is init_from's, unchanged: so is its open-set rule.
            open_set=export_open_set(source_folder(recipe.model.init_from), meta))
        log(f"facemtl: exported SavedModel to {export_dir}")
        if recipe.export.tflite:
            write_lite_copy(model, export_dir, recipe.export.tflite, caches.calibration if caches else None, log)
    seconds = close_run(run_dir, start, {
        "export_dir": run_relative(run_dir, export_dir), "best_epoch": {k: r["epoch"] for k, r in records.items()},
        "validation": validation, "framing": caches.framing if caches else {},
        "attributes": attribute_report.get("test", {}),
        "test": {"expression": {k: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for k, r in report.items()}}},
        log)
    return TrainResult(run_dir, model, history[min(history)] if len(history) == 1 else history,
                       {**report, **({"attributes": attribute_report} if attribute_report else {})}, export_dir, seconds)
