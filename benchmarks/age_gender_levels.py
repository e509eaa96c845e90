"""At which level of the release network should age and gender heads sit, and how should age be predicted?

UTKFace (../shared/data/utkface; non-commercial research terms) faces are framed as served
photos are (`Predictor.frame_crops`: BlazeFace on the 128-px crop upscaled to 160, alignment
onto dlib's chip; a face not found is resized as it is), then the release model
(`facemtl.models.from_preset("release")`, frozen) gives three levels of features per face:

- `trunk`: the shared trunk's stage-2 maps, average-pooled (64);
- `expression_stage4`: expression branch 1's stage-4 maps, average-pooled (256);
- `embedding`: the identity branch's L2-normalised descriptor (128).

On each level a small head (Dense 256, ReLU, dropout 0.3) is trained for a fixed number of
epochs on the training faces (no choice made on the test faces): gender (2-way softmax) and
age, either as regression in years (L1 loss) or as a distribution over 0..116 years whose
expected value is the answer. Reported on the fixed test split (`facemtl.data.utkface`,
10% by file-name hash): gender accuracy, age MAE, and per race x gender group for the best.

    python benchmarks/age_gender_levels.py [--limit N] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from _runs import cpu_name, git_commit, write_results  # noqa: E402

DATA = "../shared/data"


def features(paths, batch=64):
    import keras
    import tensorflow as tf
    from PIL import Image

    from facemtl.inference import Predictor
    from facemtl.models import from_preset
    from facemtl.preprocessing import resize_face

    model = from_preset("release")
    predictor = Predictor(backend="savedmodel")
    trunk = model.get_layer("backbone")
    branch = model.get_layer("expression_branch")
    stage4 = keras.Model(branch.input, branch.get_layer("expression_pool").output)
    embed = keras.Model(model.input, model.output["embedding"])
    run = tf.function(lambda x: (tf.reduce_mean(trunk(x), axis=[1, 2]), stage4(trunk(x)), embed(x)),
                      reduce_retracing=True)
    out, found_all = {"trunk": [], "expression_stage4": [], "embedding": []}, []
    start = time.time()
    for s in range(0, len(paths), batch):
        crops = [np.asarray(Image.open(p).convert("RGB")) for p in paths[s:s + batch]]
        framed, found = predictor.frame_crops(crops)
        chips = np.stack([c if c.shape[:2] == (150, 150) else resize_face(c, 150) for c in framed])
        for key, value in zip(out, run(tf.constant(chips, tf.float32))):
            out[key].append(value.numpy())
        found_all.append(found)
        if s // batch % 40 == 0:
            print(f"features: {s + len(crops)}/{len(paths)} faces, {time.time() - start:.0f} s", flush=True)
    return {k: np.concatenate(v) for k, v in out.items()}, np.concatenate(found_all)


def fit_head(x, y, kind, epochs, seed=0):
    """Trains one head on standardised features; returns a predict function."""
    import keras

    keras.utils.set_random_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-6
    units = {"gender": 2, "age_regression": 1, "age_distribution": 117}[kind]
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dropout(0.3)(keras.layers.Dense(256, activation="relu")(inputs))
    outputs = keras.layers.Dense(units, activation=None if kind == "age_regression" else "softmax")(h)
    head = keras.Model(inputs, outputs)
    loss = "mean_absolute_error" if kind == "age_regression" else "sparse_categorical_crossentropy"
    head.compile(keras.optimizers.Adam(1e-3), loss)
    target = y.astype(np.float32) if kind == "age_regression" else np.round(y).astype(np.int32)
    head.fit((x - mean) / std, target, epochs=epochs, batch_size=128, verbose=0)

    def predict(z):
        p = head.predict((z - mean) / std, batch_size=1024, verbose=0)
        if kind == "gender":
            return p.argmax(1)
        if kind == "age_regression":
            return p[:, 0]
        return p @ np.arange(117, dtype=np.float32)  # the expected age of the distribution

    return predict


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="faces to use (default: all)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/age_gender_levels.json")
    args = parser.parse_args()

    from facemtl.data.utkface import GENDERS, RACES, read_utkface

    faces = read_utkface(os.path.join(DATA, "utkface"))
    keep = np.arange(len(faces.paths))[:args.limit]
    paths = [faces.paths[i] for i in keep]
    age, gender, race, test = faces.age[keep], faces.gender[keep], faces.race[keep], faces.test[keep]
    start = time.time()
    levels, found = features(paths)
    results = {"faces": len(paths), "test_faces": int(test.sum()), "skipped_names": faces.skipped,
               "framed_by_detector": int(found.sum()), "feature_seconds": round(time.time() - start, 1),
               "epochs": args.epochs, "commit": git_commit(), "cpu": cpu_name(), "levels": {}}
    train = ~test
    for level, x in levels.items():
        r = {}
        g = fit_head(x[train], gender[train], "gender", args.epochs)(x[test])
        r["gender_accuracy"] = float((g == gender[test]).mean())
        for kind in ("age_regression", "age_distribution"):
            a = fit_head(x[train], age[train], kind, args.epochs)(x[test])
            r[f"{kind}_mae"] = float(np.abs(a - age[test]).mean())
        results["levels"][level] = r
        print(level, json.dumps(r), flush=True)
    best = min(results["levels"], key=lambda k: results["levels"][k]["age_distribution_mae"]
               - results["levels"][k]["gender_accuracy"])
    x = levels[best]
    g = fit_head(x[train], gender[train], "gender", args.epochs)(x[test])
    kind = min(("age_regression", "age_distribution"), key=lambda k: results["levels"][best][f"{k}_mae"])
    a = fit_head(x[train], age[train], kind, args.epochs)(x[test])
    groups = {}
    for r, rname in enumerate(RACES):
        for s, sname in enumerate(GENDERS):
            m = (race[test] == r) & (gender[test] == s)
            if m.any():
                groups[f"{rname}/{sname}"] = {"faces": int(m.sum()), "gender_accuracy": float((g[m] == s).mean()),
                                              "age_mae": float(np.abs(a[m] - age[test][m]).mean())}
    bands = {}
    for lo, hi in ((0, 12), (13, 19), (20, 39), (40, 59), (60, 116)):
        m = (age[test] >= lo) & (age[test] <= hi)
        bands[f"{lo}-{hi}"] = {"faces": int(m.sum()), "age_mae": float(np.abs(a[m] - age[test][m]).mean()),
                               "gender_accuracy": float((g[m] == gender[test][m]).mean())}
    results["best"] = {"level": best, "age": kind, "groups": groups, "age_bands": bands}
    write_results(args.out, results)


if __name__ == "__main__":
    main()
