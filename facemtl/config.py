"""Recipes: YAML files validated into dataclasses, overridable from the command line.

A recipe is data. `load_recipe("recipes/quickstart.yaml", overrides=["train.epochs=3"])`
reads the YAML, applies `--set`-style overrides (values parsed as YAML), applies
the recipe's own `smoke:` overrides when asked, and validates everything into a
`Recipe`. Unknown keys and bad values stop with a `RecipeError` that names the
file and the dotted key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import types
import typing
from typing import Literal, Optional

import yaml

from facemtl.errors import RecipeError
from facemtl.faces.detection import DEFAULT_DETECTOR
from facemtl.files import write_text_atomically


@dataclasses.dataclass
class ModelConfig:
    """Architecture of the multi-task network."""

    # dlib_resnet: dlib's face-recognition ResNet, pretrained on ~3M faces (its
    # weights ship in facemtl); height/width 150 and crop_layout: dlib match its training chips.
    backbone: str = "resnet18"  # a name in facemtl.models.multitask.BACKBONES (register_backbone adds to it)
    height: int = 64
    width: int = 64
    channels: Literal[1, 3] = 3
    stem: Literal["standard", "small"] = "standard"
    stage_blocks: Optional[list[int]] = None
    base_filters: int = 64
    identity_units: list[int] = dataclasses.field(default_factory=lambda: [256])
    expression_units: list[int] = dataclasses.field(default_factory=lambda: [256])
    activation: str = "relu"
    dropout: float = 0.3
    embedding_dim: int = 128
    # How the identity head is trained: plain softmax, or a margin loss on
    # normalised features (open-set embeddings): ArcFace or CosFace.
    identity_head: Literal["softmax", "arcface", "cosface"] = "softmax"
    margin: Optional[float] = None  # default: 0.5 (ArcFace, radians), 0.35 (CosFace)
    margin_scale: float = 30.0
    backbone_weights: Optional[str] = None
    normalization: Literal["auto", "tf", "caffe"] = "auto"
    freeze_backbone: bool = False
    # Synchronise BatchNormalization statistics across replicas/workers.
    sync_batchnorm: bool = False
    # dlib_resnet only: stages 0 (stem) .. split_stage are shared (frozen with
    # freeze_backbone); the expression branch copies dlib's stages up to
    # expression_last_stage; the identity branch is dlib's upper stages and projection.
    split_stage: int = 2
    expression_last_stage: int = 4
    freeze_identity_branch: bool = True
    # Where aligned faces put their landmarks: "arcface" (the 112-px 5-point
    # template) or "dlib" (dlib's 150-px chip, padding 0.25). Training alignment
    # and serving (FaceAnalyzer, from the export's metadata) both use it.
    crop_layout: Literal["arcface", "dlib"] = "arcface"
    # dlib_resnet only: the expression branch also answers for the mirror image and averages the two
    # (one forward pass, the face and its mirror in one batch).
    mirror_expression: bool = False
    # With mirror_expression: the mirror pass runs only for the faces whose face-only answer's top probability is
    # below this (None: for every face). The same weights; the threshold is chosen on validation.
    mirror_threshold: Optional[float] = None
    # dlib_resnet only: independently trained expression branches averaged inside the network (an ensemble in
    # one forward pass; feature_cache.branches says how each is trained).
    expression_branches: int = 1
    # dlib_resnet only: how the expression branch pools stage maps ("average", or "spatial": a 1x1 convolution and
    # the flattened map), and whether its stages' Affine scales and shifts train (dlib's folded batch norm).
    expression_pool: Literal["average", "spatial"] = "average"
    learnable_affine: bool = False
    # dlib_resnet only: start from an export's weights (a SavedModel version folder, or "release" for the
    # shipped model), e.g. to keep its identity branch and classifier exactly.
    init_from: Optional[str] = None


@dataclasses.dataclass
class SyntheticDataConfig:
    """Generated faces (facemtl.data.synthetic)."""

    num_identities: int = 20
    train_per_pair: int = 40
    val_per_pair: int = 4
    test_per_pair: int = 8
    seed: int = 0
    # "both": every sample has both labels. "split": half the samples keep only
    # the identity label, half only the expression label, as in merged datasets.
    label_mode: Literal["both", "split"] = "both"


@dataclasses.dataclass
class AugmentConfig:
    """Training-only augmentation with Keras 3 preprocessing layers (0 turns one off)."""

    flip: bool = False
    rotation: float = 0.0  # fraction of a full turn, e.g. 0.03 = +-11 degrees
    translation: float = 0.0  # fraction of height/width
    zoom: float = 0.0  # fraction
    brightness: float = 0.0  # fraction of the [0, 255] range
    contrast: float = 0.0  # factor


@dataclasses.dataclass
class SourceConfig:
    """One real dataset in the training mix (`data.source: mixed`)."""

    # expression_folders: root[/split]/<class>/*: your own expression classes (fine-tuning; feature-cache recipes)
    # utkface: UTKFace's aligned faces, age/gender/race in the file names (labels age and gender; a fixed test split
    # by file-name hash, `test_fraction` of the faces)
    format: Literal["fer2013_folders", "fer2013_csv", "vggface2", "celeba", "identity_folders",
                    "expression_folders", "utkface"] = "identity_folders"
    path: str = ""
    name: Optional[str] = None  # identity namespace; defaults to the format's dataset name
    split: str = "train"  # folder split, or the CSV's Usage (Training, PublicTest, PrivateTest)
    images: Optional[str] = None  # celeba: image folder, e.g. aligned crops from `facemtl align`
    weight: float = 1.0  # sampling ratio in the training mix
    min_images: int = 1  # identity sources: leave out people with fewer photos
    # Detect and align every photo once into data.cache_dir before use: for in-the-wild
    # photos (CelebA's img_celeba, LFW...). The crop is made by the serving path's own
    # detector and aligner, at the model's input size (no second resize), so training
    # and FaceAnalyzer give the model byte-identical crops of the same photo.
    align: bool = False
    align_size: Optional[int] = None  # crop side; default: the model's input side
    align_detector: Literal["blazeface", "mtcnn", "haar"] = DEFAULT_DETECTOR  # FaceAnalyzer's default
    val_fraction: float = 0.05  # held out of `split` (stratified by label) for validation
    test_split: Optional[str] = None  # a separate split for the test report (FER2013's PublicTest)...
    test_fraction: float = 0.0  # ...or this fraction of `split` held out (identity: held-out photos)


@dataclasses.dataclass
class DataConfig:
    """Where training data comes from."""

    source: Literal["synthetic", "mixed"] = "synthetic"
    synthetic: SyntheticDataConfig = dataclasses.field(default_factory=SyntheticDataConfig)
    sources: list[SourceConfig] = dataclasses.field(default_factory=list)
    cache_dir: str = "data/cache"  # decoded, resized datasets are kept here
    crop_margin: float = 0.2  # around dataset boxes (VGGFace2, CelebA bbox lists)
    # Random grayscale per sample, so colour cannot tell which dataset (task) a face is from.
    grayscale_probability: float = 0.0
    # Read file-based sources from disk at every epoch instead of decoding them
    # into memory once (datasets larger than RAM, e.g. VGGFace2's 3.3M photos).
    streaming: bool = False
    # FER2013's imbalance: "class_weights" (weighted loss), "sampling" (class-balanced draws) or "none".
    expression_balance: Literal["none", "class_weights", "sampling"] = "none"
    steps_per_epoch: Optional[int] = None  # mixed streams are endless; default: training images / batch
    shuffle_buffer: int = 10000
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)


# Pixel-level views of each training face cached by `feature_cache` (see facemtl.training.feature_cache).
TRAIN_VIEWS = ("plain", "plain_mirror", "framed", "framed_mirror", "plain_jitter", "framed_jitter")


@dataclasses.dataclass
class FeatureCacheConfig:
    """The expression branch trained on cached trunk maps (`facemtl.training.feature_cache`)."""

    enabled: bool = False
    views: list[str] = dataclasses.field(default_factory=lambda: list(TRAIN_VIEWS))
    label_smoothing: float = 0.1
    map_shift: int = 2  # random shifts of the cached maps, in cells (0: off)
    cutout: int = 0  # side of a zeroed square of the maps, in cells (0: off)
    mixup: float = 0.0  # Beta(a, a) mixing of two faces' maps and labels (0: off)
    probe_epochs: int = 0  # epochs with the branch's stages frozen (head only, Adam 1e-3) first
    average_last: int = 0  # weight averaging (SWA): also score the mean of the last N epochs' weights (0: off)
    # Where a trained branch starts: "dlib" (dlib's stages 3-4, a new head) or "init_from" (model.init_from's
    # expression branch 1: fine-tuning; its class layer is new when the classes differ).
    start: Literal["dlib", "init_from"] = "dlib"
    class_balance: float = 0.0  # loss weight per class ~ (1 / frequency) ** this (0: off, 1: fully balanced)
    jitter_shift: float = 0.05  # pixel-level jitter views: shift (fraction), scale and rotation
    jitter_scale: float = 0.08
    jitter_rotation: float = 10.0  # degrees
    seed: int = 0
    max_faces: Optional[int] = None  # train and validate on a random subset this large (smoke runs)
    # Attribute tasks (`tasks` beyond identity and expression): their heads train on cached embeddings this long.
    attribute_epochs: int = 30
    attribute_learning_rate: float = 1e-3
    # One entry per expression branch (model.expression_branches), each a mapping of this section's training
    # settings that differ for that branch (e.g. {label_smoothing: 0, map_shift: 0}), or {keep: true}: the branch
    # keeps model.init_from's weights and is not trained. Empty: every branch trains with the settings above.
    branches: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LossWeights:
    """λ1 and λ2 in L = λ1·L_identity + λ2·L_expression."""

    identity: float = 1.0
    expression: float = 1.0


@dataclasses.dataclass
class TaskConfig:
    """One task of the network: its kind, classes, λ, which sources label it and where its head sits.

    `identity` and `expression` are the two built-in tasks (their heads are the
    backbone's branches; their classes come from the data). Any other task is
    an attribute head on the identity `embedding` (`level: embedding`), trained
    on cached embeddings of the sources that label it (`feature_cache` recipes).
    """

    name: str = ""
    # classification: softmax over `classes`; regression: one number; distribution: softmax over 0..max_value,
    # answered as its expected value (age in years); embedding: the identity task's open-set descriptor.
    kind: Literal["classification", "regression", "distribution", "embedding"] = "classification"
    classes: list[str] = dataclasses.field(default_factory=list)
    max_value: int = 116  # distribution: the last bin
    loss_weight: float = 1.0  # λ_t in L = Σ λ_t · L_t
    sources: list[str] = dataclasses.field(default_factory=list)  # formats or names of data.sources (empty: all)
    level: Literal["trunk", "embedding"] = "embedding"
    units: int = 256  # the head's hidden layer
    dropout: float = 0.3


BUILT_IN_TASKS = ("identity", "expression")
# Names a task may not take: the other outputs of the network and the SavedModel.
RESERVED_NAMES = ("embedding", "identity_probs", "expression_probs", "identity_closest", "identity_similarity",
                  "image", "images")


@dataclasses.dataclass
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    clipnorm: Optional[float] = None
    # The learning rate is for the global batch `train.batch_size`. Set this to
    # the batch size the learning rate was tuned for to scale it linearly
    # (lr x batch_size / reference_batch_size) when the global batch changes.
    reference_batch_size: Optional[int] = None


@dataclasses.dataclass
class ScheduleConfig:
    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    step_factor: float = 0.1


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32  # global: split across replicas
    strategy: Literal["auto", "default", "mirrored", "one_device", "multi_worker"] = "auto"
    # "fit" (Keras model.fit) or "custom" (a strategy.run loop; the only one that
    # works under multi_worker, keras-team/keras#20585). "auto" picks by strategy.
    loop: Literal["auto", "fit", "custom"] = "auto"
    # Devices for `mirrored` (e.g. ["/cpu:0", "/cpu:1"]); all visible GPUs when None.
    devices: Optional[list[str]] = None
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    jit_compile: bool = False
    unfreeze_at_epoch: Optional[int] = None
    finetune_lr_factor: float = 0.1
    seed: int = 0
    verbose: Literal["auto", 0, 1, 2] = "auto"
    early_stopping_patience: Optional[int] = None
    early_stopping_min_delta: float = 0.0  # a smaller val_loss improvement does not count
    # Preemption: back up the training state every epoch, and every N steps when set;
    # running the same command again resumes an unfinished run of the same recipe.
    backup: bool = True
    backup_every_steps: Optional[int] = None


@dataclasses.dataclass
class ExportConfig:
    enabled: bool = True
    name: Optional[str] = None  # defaults to the recipe name
    base_dir: str = "saved_models"
    version: Optional[int] = None  # defaults to the next free integer
    max_faces: int = 16  # the most faces the `analyze_photo` signature answers per photo
    # feature_cache recipes: also write the model as a LiteRT (TFLite) file inside the export
    # (assets.extra/model.tflite, which TF Serving ignores); `Predictor` answers every call through it.
    tflite: Optional[Literal["float32", "float16", "dynamic", "int8"]] = None


@dataclasses.dataclass
class Recipe:
    """A whole training recipe."""

    name: str = "facemtl"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss_weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    # The network's tasks beyond (or instead of the defaults of) identity and expression, e.g. age and gender
    # heads; identity and expression take their λ from loss_weights unless listed here. See `task_list`.
    tasks: list[TaskConfig] = dataclasses.field(default_factory=list)
    # "fixed": L = λ1·L_identity + λ2·L_expression. "uncertainty": learned task
    # weights (Kendall et al. 2018) on top of λ.
    loss_weighting: Literal["fixed", "uncertainty"] = "fixed"
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    feature_cache: FeatureCacheConfig = dataclasses.field(default_factory=FeatureCacheConfig)
    output_dir: str = "runs"
    # Overrides (dotted key -> value) applied by `--smoke`: a tiny variant of
    # this recipe that runs in seconds.
    smoke: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)


_POSITIVE = {
    "model.height", "model.width", "model.base_filters", "model.embedding_dim",
    "data.synthetic.num_identities", "data.synthetic.train_per_pair", "data.synthetic.val_per_pair",
    "data.synthetic.test_per_pair", "train.epochs", "train.batch_size", "data.shuffle_buffer",
    "optimizer.learning_rate", "schedule.step_epochs", "train.backup_every_steps", "export.max_faces",
    "optimizer.reference_batch_size", "data.steps_per_epoch", "model.margin_scale", "feature_cache.max_faces",
    "feature_cache.attribute_epochs", "feature_cache.attribute_learning_rate", "tasks.units", "tasks.max_value",
    "model.expression_branches",
}
_NON_NEGATIVE = {"train.early_stopping_min_delta", "loss_weights.identity", "loss_weights.expression", "optimizer.weight_decay", "schedule.warmup_epochs",
                 "data.augment.rotation", "data.augment.translation", "data.augment.zoom", "data.augment.brightness",
                 "data.augment.contrast", "data.crop_margin", "data.grayscale_probability", "model.margin",
                 "feature_cache.label_smoothing", "feature_cache.map_shift", "feature_cache.cutout", "feature_cache.mixup",
                 "feature_cache.probe_epochs", "feature_cache.class_balance", "tasks.loss_weight", "tasks.dropout"}

_FRACTIONS = {"model.mirror_threshold"}  # a probability


def _check(value, tp, key):
    """Validates `value` against the annotation `tp`; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(f"Bad value for '{key}': expected one of {list(choices)}. Received: {key}={value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise RecipeError(f"Bad value for '{key}': expected a list. Received: {key}={value!r}")
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    if tp not in _PLAIN:
        raise TypeError(f"Unsupported recipe annotation {tp!r} for {key}")
    types_, expected = _PLAIN[tp]
    if tp is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads "1e-4" without a dot as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
        raise RecipeError(f"Bad value for '{key}': expected {expected}. Received: {key}={value!r}")
    return float(value) if tp is float else value


# The plain annotations a recipe value may have: the Python types that pass, and how the error says it.
_PLAIN = {dict: ((dict,), "a mapping"), bool: ((bool,), "true or false"), int: ((int,), "an integer"),
          float: ((int, float), "a number"), str: ((str,), "a string")}


def _from_dict(cls, data, prefix=""):
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"Bad value for '{prefix or '<recipe>'}': expected a mapping. Received: {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise RecipeError(f"Unknown recipe key {where}. Valid keys here: {names}")
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            value = _check(data[name], hints[name], key)
            rule = re.sub(r"\[\d+\]", "", key)  # an entry of a list of sections: tasks[1].units is tasks.units
            if rule in _POSITIVE and value is not None and value <= 0:
                raise RecipeError(f"Bad value for '{key}': must be > 0. Received: {key}={value!r}")
            if rule in _NON_NEGATIVE and value is not None and value < 0:
                raise RecipeError(f"Bad value for '{key}': must be >= 0. Received: {key}={value!r}")
            if rule in _FRACTIONS and value is not None and not 0 <= value <= 1:
                raise RecipeError(f"Bad value for '{key}': must be in [0, 1]. Received: {key}={value!r}")
            kwargs[name] = value
    return cls(**kwargs)


def _apply_override(raw, dotted, value, source):
    parts = dotted.split(".")
    node, cls = raw, Recipe
    for i, part in enumerate(parts):
        if isinstance(node, list):  # an entry of a list of sections: data.sources.0.path
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"Cannot set '{dotted}' from {source}: '{'.'.join(parts[:i])}' has {len(node)} "
                                  f"entries; '{part}' is not the index of one")
            if i == len(parts) - 1:
                node[int(part)] = value
                return
            node = node[int(part)]
            if not isinstance(node, dict):
                raise RecipeError(f"Cannot set '{dotted}' from {source}: '{'.'.join(parts[: i + 1])}' is not a mapping")
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls else None
        if fields is not None and part not in fields:
            raise RecipeError(f"Unknown recipe key '{'.'.join(parts[: i + 1])}' in {source}. Valid keys here: {list(fields)}")
        if i == len(parts) - 1:
            node[part] = value
            return
        hint = typing.get_type_hints(cls)[part] if cls else None
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
        if item is not None and dataclasses.is_dataclass(item) and isinstance(node.get(part), list):
            node, cls = node[part], item
            continue
        cls = hint if hint is not None and dataclasses.is_dataclass(hint) else None
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"Cannot set '{dotted}' from {source}: '{'.'.join(parts[: i + 1])}' is not a mapping")
        node = child


def parse_override(text):
    """Splits `"train.epochs=3"` into `("train.epochs", 3)` (value parsed as YAML)."""
    if "=" not in text:
        raise RecipeError(f"Bad override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise RecipeError(f"Bad override {text!r}: the value is not valid YAML ({exc})") from None


def recipe_from_dict(raw, overrides=(), smoke=False, source="<dict>"):
    """Validates a raw mapping (as read from YAML) into a `Recipe`.

    Args:
        raw: the mapping.
        overrides: `"dotted.key=value"` strings, applied after `smoke`.
        smoke: apply the recipe's own `smoke:` overrides first.
        source: what to call the mapping in error messages (a file name).

    Returns:
        A validated `Recipe`.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping at top level. Received: {type(raw).__name__}")
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    if smoke:
        smoke_overrides = raw.get("smoke") or {}
        if not isinstance(smoke_overrides, dict):
            raise RecipeError(f"{source}: 'smoke' must be a mapping of dotted keys to values")
        for key, value in smoke_overrides.items():
            _apply_override(raw, key, value, f"{source} (smoke)")
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(raw, key, value, "--set")
    try:
        recipe = _from_dict(Recipe, raw)
        branch_settings(recipe)
        task_list(recipe)
        return recipe
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None


def task_list(recipe):
    """The recipe's tasks, resolved: identity and expression (λ from `loss_weights` unless listed), then the others.

    Returns:
        A list of `TaskConfig`.

    Raises:
        RecipeError: a task repeats a name, takes a reserved one, has no classes
            where it needs them, labels from no source, or is an attribute head
            outside a feature-cache recipe (naming the `tasks[i]` key).
    """
    listed = {t.name: t for t in recipe.tasks}
    out = [listed.pop(name, None) or TaskConfig(name, "embedding" if name == "identity" else "classification",
                                                 loss_weight=getattr(recipe.loss_weights, name), level="trunk")
           for name in BUILT_IN_TASKS]
    seen = set()
    for i, t in enumerate(recipe.tasks):
        key = f"tasks[{i}]"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", t.name or ""):
            raise RecipeError(f"Bad value for '{key}.name': a lower-case identifier (it names the output). "
                              f"Received: {key}.name={t.name!r}")
        if t.name in seen or t.name in RESERVED_NAMES:
            raise RecipeError(f"Bad value for '{key}.name': {'repeated' if t.name in seen else 'reserved'}. "
                              f"Received: {key}.name={t.name!r}")
        seen.add(t.name)
        if t.name in BUILT_IN_TASKS:
            continue
        if t.kind == "embedding":
            raise RecipeError(f"Bad value for '{key}.kind': only the identity task is an embedding")
        if t.kind == "classification" and len(t.classes) < 2:
            raise RecipeError(f"Bad value for '{key}.classes': a classification task needs two or more classes. "
                              f"Received: {t.classes}")
        if t.level != "embedding":
            raise RecipeError(f"Bad value for '{key}.level': heads beyond identity and expression sit on the "
                              f"identity embedding. Received: {t.level!r}")
        if not recipe.feature_cache.enabled:
            raise RecipeError(f"'{key}' ({t.name}): heads beyond identity and expression train on cached embeddings; "
                              "set feature_cache.enabled (see recipes/release_cpu.yaml)")
        named = {s.name or s.format for s in recipe.data.sources} | {s.format for s in recipe.data.sources}
        unknown = [s for s in t.sources if s not in named]
        if unknown or not t.sources:
            raise RecipeError(f"Bad value for '{key}.sources': the data.sources (format or name) that label "
                              f"{t.name}. Received: {t.sources}; data.sources: {sorted(named)}")
        out.append(t)
    return out


def attribute_tasks(recipe):
    """The tasks whose heads sit on the embedding (all but identity and expression)."""
    return [t for t in task_list(recipe) if t.name not in BUILT_IN_TASKS]


def branch_settings(recipe):
    """How each expression branch of a feature-cache recipe is trained.

    Returns:
        One entry per branch (`model.expression_branches`): `None` for a branch
        kept from `model.init_from`, else the `FeatureCacheConfig` it trains with
        (`feature_cache` with the branch's own entry of `feature_cache.branches` applied).

    Raises:
        RecipeError: an entry names an unknown setting, or the list's length is
            not the number of branches.
    """
    fc, n = recipe.feature_cache, recipe.model.expression_branches
    entries = fc.branches or [{}] * n
    if len(entries) != n:
        raise RecipeError(f"Bad value for 'feature_cache.branches': one entry per expression branch "
                          f"(model.expression_branches={n}). Received: {len(entries)} entries")
    allowed = [f.name for f in dataclasses.fields(FeatureCacheConfig)
               if f.name not in ("enabled", "branches", "max_faces", "attribute_epochs", "attribute_learning_rate")]
    out = []
    for i, entry in enumerate(entries):
        entry = dict(entry)
        keep = entry.pop("keep", False)
        if keep is not True and keep is not False:
            raise RecipeError(f"Bad value for 'feature_cache.branches[{i}].keep': expected true or false. "
                              f"Received: {keep!r}")
        if keep:
            if entry:
                raise RecipeError(f"'feature_cache.branches[{i}]' keeps model.init_from's branch; it takes no "
                                  f"training settings. Received: {sorted(entry)}")
            if not recipe.model.init_from:
                raise RecipeError(f"'feature_cache.branches[{i}].keep' needs model.init_from (the export whose "
                                  "branch to keep)")
            out.append(None)
            continue
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise RecipeError(f"Unknown recipe key 'feature_cache.branches[{i}].{unknown[0]}'. Valid keys here: "
                              f"{['keep', *allowed]}")
        merged = {**dataclasses.asdict(fc), **entry, "branches": []}
        out.append(_from_dict(FeatureCacheConfig, merged, f"feature_cache.branches[{i}]"))
    return out


RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


def shipped_recipes():
    """The recipes installed with facemtl: `{name: the first line of its comment}`, by name.

    Example:
        >>> list(shipped_recipes())[:2]
        ['celeba_identity_cpu', 'fer2013_celeba_cpu']
    """
    out = {}
    for file in sorted(os.listdir(RECIPES_DIR)) if os.path.isdir(RECIPES_DIR) else []:
        if file.endswith(".yaml"):
            words = []
            with open(os.path.join(RECIPES_DIR, file), encoding="utf-8") as f:
                for line in f:  # the opening comment, up to its first sentence's end or its example commands
                    text = line.strip()
                    if not text.startswith("#") or text.lstrip("# ").startswith("facemtl "):
                        break
                    words.append(text.lstrip("#").strip())
            summary = " ".join(w for w in words if w)
            end = re.search(r"\.\s+(?=[A-Z])", summary)  # "e.g. x" does not end a sentence
            summary = summary[:end.start() + 1] if end else summary
            out[file[:-len(".yaml")]] = summary if len(summary) <= 110 else summary[:107].rstrip() + "..."
    return out


def recipe_path(recipe):
    """The file of a recipe given as a path, or as the name of a shipped one (`quickstart`).

    Raises:
        RecipeError: neither a file nor a shipped recipe's name (the names are listed).
    """
    recipe = os.fspath(recipe)
    if os.path.isfile(recipe):
        return recipe
    name = os.path.basename(recipe)[:-len(".yaml")] if recipe.endswith(".yaml") else recipe
    shipped = os.path.join(RECIPES_DIR, name + ".yaml")
    if os.sep not in recipe and "/" not in recipe and os.path.isfile(shipped):
        return shipped
    raise RecipeError(f"Recipe file not found: {recipe} (a YAML file, or one of the recipes shipped with facemtl: "
                      f"{', '.join(shipped_recipes())}; `facemtl recipes` describes them)")


def load_recipe(path, overrides=(), smoke=False):
    """Reads and validates a YAML recipe.

    Args:
        path: the recipe file, or the name of a shipped recipe (`"quickstart"`,
            see `shipped_recipes`).
        overrides: `"dotted.key=value"` strings (the CLI's `--set`).
        smoke: apply the recipe's `smoke:` section (the CLI's `--smoke`).

    Returns:
        A `Recipe`.

    Example:
        >>> recipe = load_recipe("recipes/quickstart.yaml", ["train.epochs=2"])
        >>> recipe.train.epochs
        2
    """
    path = recipe_path(path)
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    return recipe_from_dict(raw, overrides, smoke, source=path)


def save_recipe(recipe, path):
    """Writes the resolved recipe as YAML (the run directory keeps one)."""
    # Resume compares against this file: a crash mid-write must not leave half a recipe.
    write_text_atomically(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
