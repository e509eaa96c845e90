"""What release 4's expression ensemble and mirror pass buy, on the validation split, against what they cost.

Release 4 answers expressions with two branches, each on the face and its mirror image, averaged (4 branch passes
and 2 trunk passes per face); one cheaper row runs the mirror's branch passes on the face's own trunk maps flipped
left-right, with no second trunk pass. This scores the cheaper ways of answering with the same weights on FER2013
train's validation split, carved exactly as `facemtl train recipes/release_cpu.yaml` carves it
(`catalog.split_source`), in both framings (`crop`: the crop resized as served; `photo`: framed like a served photo,
`photo_framing`): accuracy and macro-F1 per variant, and ms per face of the whole model at batch 64 built from the
parts' times measured in the same run (trunk, identity branch, one expression branch; float32 Keras). The test split
is not touched (it is reported once, for a shipped release).

    python benchmarks/ensemble_cost.py [--repeats 10]

Results: runs/benchmarks/ensemble_cost.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import best_ms, cpu_name, git_commit, write_results  # noqa: E402

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "release_cpu.yaml")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--mirror-shares", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                        help="gated rows: the share of least confident faces that also run the mirror pass")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[],
                        help="gated rows with a fixed threshold (model.mirror_threshold): the faces whose face-only "
                             "top probability is below it also run the mirror pass")
    parser.add_argument("--out", default="runs/benchmarks/ensemble_cost.json")
    args = parser.parse_args()
    import tensorflow as tf

    from facemtl.config import load_recipe
    from facemtl.data.catalog import split_source
    from facemtl.data.feature_cache import view_images
    from facemtl.data.materialize import materialize
    from facemtl.data.photo_framing import cached_framing
    from facemtl.evaluation import classification_report
    from facemtl.export.metadata import read_metadata
    from facemtl.models.dlib_resnet import build_expression_branch, expression_branch_prefix
    from facemtl.models.presets import copy_weights_by_name, from_preset, preset_dir
    from facemtl.training.feature_cache import class_names, crop_side, expression_source, framing_settings

    recipe = load_recipe(RECIPE)
    k, cfg = expression_source(recipe)
    src, _, val, _ = split_source(recipe, k, log=print)
    mat = materialize(val, crop_side(cfg), margin=recipe.data.crop_margin, cache_dir=recipe.data.cache_dir)
    framed = cached_framing(mat.images, recipe.data.cache_dir, f"{src.name}-{val.split}",
                            **framing_settings(recipe.model))
    views = {"crop": view_images(mat.images, framed.crops, "plain"), "photo": framed.crops}
    labels, names = mat.expression, class_names(src)

    meta = read_metadata(preset_dir("release"))
    model = from_preset("release")
    trunk, identity = model.get_layer("backbone"), model.get_layer("identity_branch")
    m = meta["model_config"]
    maps_shape = tuple(trunk.output.shape[1:])
    branches = []
    for b in range(1, m["expression_branches"] + 1):
        branch = build_expression_branch(maps_shape, split_stage=m["split_stage"], last_stage=m["expression_last_stage"],
                                         units=m["expression_units"], num_classes=len(meta["expressions"]),
                                         weights=None, pool=m["expression_pool"], learnable_affine=m["learnable_affine"])
        copy_weights_by_name(model.get_layer("expression_branch"), branch, prefix=expression_branch_prefix(b),
                             target_prefix="expression")
        branches.append(tf.function(lambda x, net=branch: net(x, training=False), reduce_retracing=True))
    run_trunk = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True)
    assert meta["expressions"] == names, (meta["expressions"], names)

    def probs(images):
        """Per branch, the probabilities of each face, of its mirror image, and of the face's trunk maps flipped
        left-right (the mirror pass without its trunk pass): `[branch, face/mirror/flipped maps, n, classes]`."""
        out = np.zeros((len(branches), 3, len(images), len(names)), np.float32)
        for s in range(0, len(images), 128):
            x = tf.constant(images[s:s + 128], tf.float32)
            face = run_trunk(x)
            for side, maps in enumerate((face, run_trunk(x[:, :, ::-1]), face[:, :, ::-1])):
                for b, branch in enumerate(branches):
                    out[b, side, s:s + 128] = branch(maps).numpy()
        return out

    every = list(range(len(branches)))
    variants = {  # name: (branches used, which passes: 0 face, 1 mirror image, 2 the face's maps flipped)
        f"{len(branches)} branches, face and mirror (release 4)": (every, (0, 1)),
        f"{len(branches)} branches, face only": (every, (0,)),
        f"{len(branches)} branches, face and its trunk maps flipped": (every, (0, 2)),
        **{f"branch {b + 1}, face and mirror": ([b], (0, 1)) for b in every},
        **{f"branch {b + 1}, face only": ([b], (0,)) for b in every},
    }
    all_probs = {framing: probs(images) for framing, images in views.items()}

    def per_face_ms(fn, x):
        return best_ms(lambda: fn(x).numpy(), args.repeats) / len(x)

    batch = tf.constant(views["photo"][:64], tf.float32)
    maps = run_trunk(batch)
    run_identity = tf.function(lambda x: identity(x, training=False), reduce_retracing=True)
    parts = {"trunk pass": per_face_ms(run_trunk, batch), "identity branch": per_face_ms(run_identity, maps),
             "expression branch pass": per_face_ms(branches[0], maps)}
    rows = {}

    def add_row(name, answers, trunk_passes, branch_passes, extra=None):
        """A row: accuracy and macro-F1 of `answers` (per framing, the probabilities), and ms per face of that many
        trunk and expression branch passes (fractions: passes run for a share of the faces) and the identity branch."""
        rows[name] = {}
        for framing, answer in answers.items():
            report = classification_report(labels, answer.argmax(1), names)
            rows[name][framing] = {"accuracy": round(report["accuracy"], 4), "macro_f1": round(report["macro_f1"], 4),
                                   **(extra or {}).get(framing, {})}
        ms = (parts["trunk pass"] * trunk_passes + parts["identity branch"]
              + parts["expression branch pass"] * branch_passes)
        rows[name]["ms_per_face_b64"] = round(ms, 3)
        print(f"{name:40s} crop {rows[name]['crop']['accuracy']:.4f} / F1 {rows[name]['crop']['macro_f1']:.4f}  "
              f"photo {rows[name]['photo']['accuracy']:.4f} / F1 {rows[name]['photo']['macro_f1']:.4f}  "
              f"{ms:6.2f} ms/face (b64, Keras float32)")

    for name, (used, sides) in variants.items():
        add_row(name, {framing: p[used][:, list(sides)].mean(axis=(0, 1)) for framing, p in all_probs.items()},
                trunk_passes=1 + (1 in sides), branch_passes=len(used) * len(sides))
    # The mirror pass only where it pays: the face-only answer stands where its top probability is high; the least
    # confident `share` of the faces also run the mirror pass (the threshold is that quantile of the confidence, so
    # it is fitted on these faces: a screen, not a release figure).
    for share in args.mirror_shares:
        answers, thresholds = {}, {}
        for framing, p in all_probs.items():
            face, both = p[:, 0].mean(axis=0), p[:, :2].mean(axis=(0, 1))
            confidence = face.max(1)
            threshold = float(np.quantile(confidence, share))
            answers[framing] = np.where((confidence < threshold)[:, None], both, face)
            thresholds[framing] = {"threshold": round(threshold, 4)}
        add_row(f"{len(branches)} branches, mirror pass for the {share:.0%} least confident", answers,
                trunk_passes=1 + share, branch_passes=len(branches) * (1 + share), extra=thresholds)
    # A fixed threshold, as a release serves it (model.mirror_threshold): the share of faces it sends to the mirror
    # pass is measured, not chosen.
    for threshold in args.thresholds:
        answers, shares = {}, {}
        for framing, p in all_probs.items():
            face, both = p[:, 0].mean(axis=0), p[:, :2].mean(axis=(0, 1))
            gated = face.max(1) < threshold
            answers[framing] = np.where(gated[:, None], both, face)
            shares[framing] = {"mirror_share": round(float(gated.mean()), 4)}
        share = float(np.mean([s["mirror_share"] for s in shares.values()]))
        add_row(f"{len(branches)} branches, mirror pass below {threshold:.2f} ({share:.0%})", answers,
                trunk_passes=1 + share, branch_passes=len(branches) * (1 + share), extra=shares)
    write_results(args.out, {"cpu": cpu_name(), "commit": git_commit(), "validation_faces": int(len(labels)),
                             "parts_ms_per_face_b64": {k: round(v, 3) for k, v in parts.items()}, "variants": rows})


if __name__ == "__main__":
    main()
