"""Distils release 4's expression ensemble into one branch that answers the face alone (issue #31, item 3).

Release 4 answers an expression with two branches, each on the face and its mirror image, averaged: 2 trunk passes
and 4 branch passes per face. The student is one branch (release 4's branch 1 to start from; `--students 2`: both
branches, averaged) that sees one view of the face and learns the ensemble's answer for it: the teacher's averaged
probabilities, blended with the label (`--label-weight`), on the frozen trunk's cached maps of FER2013 train's
training part (views `plain`, `framed` and their mirrors: the teacher's answer for a face and for its mirror image
is the same average). It trains through the one training loop (`facemtl.training.loop.fit_phases`), the best epoch
chosen on the validation split's single-view accuracy (plain and framed, no mirror pass), carved as
`recipes/release_cpu.yaml` carves it. The test split is not touched: a student that holds within 0.3 points on
validation is the candidate for a release, which reports PublicTest once.

    python benchmarks/distill_branch.py [--epochs 8] [--max-faces N] [--transfer utkface]

`--transfer utkface` adds a transfer set the branches never trained on: UTKFace's faces (no expression label),
made gray and 48 px like FER2013's crops, then taken through the same views (plain, framed as photos, mirrors);
their target is the teacher's answer alone. The validation and test splits stay FER2013's.

Results: runs/benchmarks/distill_branch.json (validation accuracy and macro-F1 of the teacher and the student in
both framings) and the student's weights in runs/benchmarks/distill_branch/.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import cpu_name, git_commit, write_results  # noqa: E402

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "release_cpu.yaml")
VIEWS = ("plain", "plain_mirror", "framed", "framed_mirror")


def averaged(branches):
    """The branches' mean answer, as one Keras model (trained together: the ensemble is what is distilled)."""
    import keras

    class Mean(keras.Model):
        def __init__(self, parts):
            super().__init__(name="students")
            self.parts = parts

        def call(self, x, training=False):
            return sum(p(x, training=training) for p in self.parts) / len(self.parts)

    return Mean(branches)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--students", type=int, choices=(1, 2), default=1,
                        help="2: both branches (from release 4's two) learn the ensemble's answer, averaged, face only")
    parser.add_argument("--cosine", action="store_true", help="the learning rate decays to 0 along a cosine")
    parser.add_argument("--label-weight", type=float, default=0.3, help="the label's share of each target")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-faces", type=int, default=0, help="a quick run on fewer training faces")
    parser.add_argument("--transfer", choices=("none", "utkface"), default="none",
                        help="unlabelled faces the teacher answers for the student to learn from")
    parser.add_argument("--transfer-max", type=int, default=0, help="at most this many transfer faces (0: all)")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="runs/benchmarks/distill_branch.json")
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    from facemtl.config import load_recipe
    from facemtl.data.catalog import split_source
    from facemtl.data.feature_cache import build_trunk_cache
    from facemtl.data.materialize import materialize
    from facemtl.data.photo_framing import cached_framing
    from facemtl.evaluation import classification_report
    from facemtl.export.metadata import read_metadata
    from facemtl.models.dlib_resnet import build_expression_branch, build_trunk, expression_branch_prefix
    from facemtl.models.presets import copy_weights_by_name, from_preset, preset_dir
    from facemtl.training.callbacks import AtomicBestCheckpoint
    from facemtl.training.feature_cache import (ValidationScores, class_names, crop_side, expression_source,
                                                framing_settings, predict_views)
    from facemtl.training.loop import Phase, fit_phases

    recipe = load_recipe(RECIPE)
    k, cfg = expression_source(recipe)
    src, train, val, _ = split_source(recipe, k, log=print)
    if args.max_faces and args.max_faces < len(train):
        train = train.subset(np.sort(np.random.default_rng(0).choice(len(train), args.max_faces, replace=False)))
    m, data = recipe.model, recipe.data
    trunk = build_trunk((m.height, m.width, 3), m.split_stage)

    def trunk_cache(source):
        """A source's faces decoded, framed like photos and through the frozen trunk in every view (all cached)."""
        name = f"{source.name}-{source.split}"
        mat = materialize(source, crop_side(cfg), margin=data.crop_margin, cache_dir=data.cache_dir)
        framed = cached_framing(mat.images, data.cache_dir, name, **framing_settings(m))
        return build_trunk_cache(mat.images, framed.crops, mat.expression, trunk, data.cache_dir, name, views=VIEWS,
                                 cfg=recipe.feature_cache)

    caches = {"train": trunk_cache(train), "val": trunk_cache(val)}
    if args.transfer == "utkface":
        from facemtl.data.sources import FaceSource, no_labels
        from facemtl.data.utkface import load_faces, read_utkface

        faces, _ = load_faces(read_utkface(os.path.join(args.data, "utkface")), side=48)
        if args.transfer_max:
            faces = faces[np.sort(np.random.default_rng(1).choice(len(faces), args.transfer_max, replace=False))]
        gray = faces.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # FER2013's crops are gray
        gray = np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=-1)
        caches["transfer"] = trunk_cache(FaceSource("utkface_gray", no_labels(len(gray)), no_labels(len(gray)),
                                                    pixels=gray, split="transfer"))
    names = class_names(src)
    meta = read_metadata(preset_dir("release"))
    assert meta["expressions"] == names, (meta["expressions"], names)
    model = from_preset("release")
    maps_shape = caches["train"].features.shape[2:]

    def branch(b=None):
        net = build_expression_branch(maps_shape, split_stage=m.split_stage, last_stage=m.expression_last_stage,
                                      units=m.expression_units, num_classes=len(names), weights=None,
                                      pool=m.expression_pool, learnable_affine=m.learnable_affine)
        if b is not None:
            copy_weights_by_name(model.get_layer("expression_branch"), net, prefix=expression_branch_prefix(b),
                                 target_prefix="expression")
        return net

    teachers = [branch(b) for b in range(1, m.expression_branches + 1)]

    def teacher(cache):
        """Release 4's answer per face and framing, `[views, n, classes]`: the branches' mean over face and mirror."""
        p = np.mean([predict_views(t, cache) for t in teachers], axis=0)
        out = np.empty_like(p)
        for v, view in enumerate(VIEWS):
            face = VIEWS.index(view.removesuffix("_mirror"))
            out[v] = (p[face] + p[face + 1]) / 2
        return out

    targets = teacher(caches["train"])
    labels = caches["train"].labels
    soft = (1 - args.label_weight) * targets + args.label_weight * np.eye(len(names), dtype=np.float32)[labels]
    pools = [(caches["train"].features, soft)]
    if "transfer" in caches:
        pools.append((caches["transfer"].features, teacher(caches["transfer"])))
    owner = np.concatenate([np.full(p[0].shape[1], k) for k, p in enumerate(pools)])
    row = np.concatenate([np.arange(p[0].shape[1]) for p in pools])
    rng = np.random.default_rng(recipe.feature_cache.seed)
    n = len(owner)

    def endless():
        while True:
            order = rng.permutation(n)
            for s in range(0, n, args.batch_size):
                idx = np.sort(order[s:s + args.batch_size])
                pick = rng.integers(0, len(VIEWS), len(idx))
                x = np.empty((len(idx), *maps_shape), np.float32)
                y = np.empty((len(idx), len(names)), np.float32)
                for k, (features, goal) in enumerate(pools):
                    for v in np.unique(pick):
                        sel = (pick == v) & (owner[idx] == k)
                        x[sel] = features[v, row[idx[sel]]]
                        y[sel] = goal[v, row[idx[sel]]]
                yield x, y

    spec = (tf.TensorSpec([None, *maps_shape], tf.float32), tf.TensorSpec([None, len(names)], tf.float32))
    dataset = tf.data.Dataset.from_generator(endless, output_signature=spec).prefetch(2)
    student = branch(1) if args.students == 1 else averaged([branch(1), branch(2)])
    run_dir = os.path.splitext(args.out)[0]
    checkpoint = AtomicBestCheckpoint(student, os.path.join(run_dir, "checkpoints", "best.weights.h5"),
                                      monitor="val_expression_accuracy", mode="max", weights_only=True)

    def compile_student():
        rate = args.learning_rate
        if args.cosine:
            rate = keras.optimizers.schedules.CosineDecay(rate, args.epochs * -(-n // args.batch_size))
        student.compile(keras.optimizers.Adam(rate), loss=keras.losses.CategoricalCrossentropy(),
                        metrics=["accuracy"])
        return student

    fit_phases([Phase(0, args.epochs, compile_student)], run_dir=run_dir, checkpoint=checkpoint, verbose=2,
               first_callbacks=[ValidationScores(caches["val"], mirror=False)],
               fit_kwargs=dict(x=dataset, steps_per_epoch=-(-n // args.batch_size), shuffle=False))
    student.load_weights(checkpoint.path)
    val_labels = caches["val"].labels
    teacher_val = teacher(caches["val"])
    student_val = predict_views(student, caches["val"])
    rows = {}
    for label, probs in (("release 4: 2 branches, face and mirror", teacher_val),
                         (f"distilled: {args.students} branch{'es' if args.students > 1 else ''}, face only",
                          student_val)):
        rows[label] = {}
        for framing in ("plain", "framed"):
            report = classification_report(val_labels, probs[VIEWS.index(framing)].argmax(1), names)
            rows[label]["crop" if framing == "plain" else "photo"] = {"accuracy": round(report["accuracy"], 4),
                                                                      "macro_f1": round(report["macro_f1"], 4)}
        print(label, rows[label])
    write_results(args.out, {"cpu": cpu_name(), "commit": git_commit(), "training_faces": int(len(labels)),
                             "students": args.students, "transfer": args.transfer,
                             "transfer_faces": int(n - len(labels)),
                             "validation_faces": int(len(val_labels)), "epochs": args.epochs,
                             "best_epoch": checkpoint.best_epoch + 1, "label_weight": args.label_weight,
                             "learning_rate": args.learning_rate, "cosine": args.cosine, "validation": rows})


if __name__ == "__main__":
    main()
