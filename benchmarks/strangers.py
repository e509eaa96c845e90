"""Open-set identity on real strangers: calibrates and measures the rule that says "unknown".

The release model's identity head knows 12 people (the LFW subset). Everyone
else is a stranger and must be answered "unknown". This script:

1. aligns every photo as `FaceAnalyzer` does (BlazeFace, the model's crop
   layout; cached) and embeds it with the model;
2. takes each known person's direction: the normalised mean embedding of their
   LFW *training* photos (and, for comparison, the identity head's own class weights);
3. splits the strangers (ORL, 40 people; the CelebA subset, 299 people; none of
   them among the 12) by person into two halves with a fixed seed, calibrates the
   threshold on half A at the target false-positive identification rate (FPIR,
   default 0.5%), and measures it on half B, on all strangers, and on the LFW
   *test* photos of the 12 (named correctly);
4. galleries: 1:N search over G enrolled people (each a template of up to 5
   photos, drawn from all 351 people), probes of people not enrolled: the FPIR
   at the 1:1 verification threshold, and the threshold that keeps FPIR at the
   target, for G = 1, 10, 100 (simulated, 20 draws each) and 1,000 (estimated:
   FPIR_G = 1 - (1 - p)^G, with p the per-template false-match rate measured on
   every stranger-template pair; the same estimate is printed beside the
   simulations for 10 and 100 as a check), and 10,000 to 1,000,000 (extrapolated:
   no data set here has that many people, and p must be read far below the
   1/2.9M resolution of the measured pairs, so its tail is fitted: above the
   0.1% highest impostor scores u, P(score > t) = 0.001 * exp(-(t - u) / sigma),
   sigma their mean excess over u (an exponential tail, peaks over threshold).
   Where the fitted threshold passes MAX_THRESHOLD, the table keeps
   MAX_THRESHOLD and states the FPIR estimated there instead of the target).

With `--update-preset`, writes the gallery thresholds into the shipped preset's metadata
(`open_set.gallery_thresholds`; SavedModels written from it take them at their next use).

With `--export BASE`, writes the model again under `BASE/<name>/<version>`
with the rule inside (directions, threshold, gallery thresholds; the LiteRT
copy too when the model has one), keeping its model id (the embedding does not change).

    python benchmarks/strangers.py --model facemtl/pretrained/release/3 [--fpir 0.005] [--export runs/open_set]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _runs import cpu_name, git_commit, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = "../shared/data"
GALLERY_SIZES = (1, 10, 100)
EXTRAPOLATED_SIZES = (10_000, 100_000, 1_000_000)
TAIL_SHARE = 1e-3
MAX_THRESHOLD = 0.99  # beyond it the embedding names almost nobody (the results give the genuine acceptance)
TEMPLATE_PHOTOS = 5


def faces(path, fmt, split, layout, size):
    from facemtl.recognition.embed import load_labelled_faces

    images, labels, names = load_labelled_faces(path, fmt=fmt, split=split, align=True, size=size, layout=layout,
                                                log=lambda *_: None)
    return images, np.array([names[k] for k in labels])


def head_directions(saved_model_dir):
    """The cosine classifier's class weights (`identity_similarity/kernel`, `[D, N]`) as directions `[N, D]`."""
    from facemtl.models.presets import export_variables

    kernel = export_variables(saved_model_dir).get("identity_similarity/kernel")
    return None if kernel is None else kernel.T


def gallery_trials(emb, people, threshold, fpir, sizes, rng, trials=20):
    """Simulated 1:N searches: FPIR at `threshold`, and the threshold for `fpir`, per gallery size."""
    from facemtl.recognition.metrics import normalize
    from facemtl.recognition.open_set import stranger_fpir, threshold_for_fpir

    names = np.unique(people)
    by_person = {n: np.flatnonzero(people == n) for n in names}
    out = {}
    for size in sizes:
        at_1to1, thresholds = [], []
        for _ in range(trials):
            enrolled = rng.choice(names, size, replace=False)
            templates = normalize(np.stack([emb[rng.permutation(by_person[n])[:TEMPLATE_PHOTOS]].mean(0)
                                            for n in enrolled]))
            probes = np.flatnonzero(~np.isin(people, enrolled))
            best = (normalize(emb[probes]) @ templates.T).max(1)
            at_1to1.append(stranger_fpir(best, threshold))
            thresholds.append(threshold_for_fpir(best, fpir))
        out[str(size)] = {"fpir_at_1to1_threshold": float(np.mean(at_1to1)),
                          "threshold_for_target": float(np.median(thresholds)), "trials": trials}
    return out


def per_template_rate(emb, people, rng, threshold_grid):
    """p(t): the share of (stranger photo, other person's template) pairs scoring >= t, for each t of the grid."""
    from facemtl.recognition.metrics import normalize

    names = np.unique(people)
    templates = normalize(np.stack([emb[rng.permutation(np.flatnonzero(people == n))[:TEMPLATE_PHOTOS]].mean(0)
                                    for n in names]))
    sims = normalize(emb) @ templates.T
    impostor = sims[people[:, None] != names[None, :]]
    return np.array([(impostor >= t).mean() for t in threshold_grid]), int(impostor.size), impostor


def genuine_scores(emb, people, rng):
    """Each photo against a template of up to TEMPLATE_PHOTOS *other* photos of its person (people with 2+)."""
    from facemtl.recognition.metrics import normalize

    e, out = normalize(emb), []
    for n in np.unique(people):
        idx = np.flatnonzero(people == n)
        for i in idx if len(idx) > 1 else []:
            others = rng.permutation(idx[idx != i])[:TEMPLATE_PHOTOS]
            out.append(float(e[i] @ normalize(e[others].mean(0, keepdims=True))[0]))
    return np.asarray(out)


def tail_thresholds(impostor, fpir, sizes):
    """Thresholds for `fpir` at gallery sizes beyond the data, from an exponential fit of the impostor tail."""
    scores = np.sort(np.asarray(impostor, np.float64))[::-1]
    k = int(TAIL_SHARE * len(scores))
    u, sigma = float(scores[k]), float((scores[:k] - scores[k]).mean())
    out = {}
    for g in sizes:
        p = 1 - (1 - fpir) ** (1 / g)  # per-template false-match rate that gives `fpir` over g templates
        fitted = u + sigma * np.log(TAIL_SHARE / p)
        used = min(fitted, MAX_THRESHOLD)
        p_used = TAIL_SHARE * np.exp(-(used - u) / sigma)
        out[str(g)] = {"threshold_fitted": round(float(fitted), 4), "threshold": round(float(used), 4),
                       "fpir_estimated": float(1 - (1 - p_used) ** g)}
    return {"tail_share": TAIL_SHARE, "u": u, "sigma": sigma, "sizes": out}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="export to calibrate (default: the shipped release)")
    parser.add_argument("--fpir", type=float, default=0.005, help="target false-positive identification rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-preset", action="store_true",
                        help="write the gallery thresholds into the preset's metadata (the shipped release by default)")
    parser.add_argument("--export", metavar="BASE", help="write the model with the rule under BASE/<name>/<version>")
    parser.add_argument("--out", default="runs/strangers/results.json")
    args = parser.parse_args()

    from facemtl.export import crop_layout
    from facemtl.inference import Predictor
    from facemtl.installed import resolve_model
    from facemtl.recognition.embed import embed_arrays
    from facemtl.recognition.metrics import model_threshold, normalize
    from facemtl.recognition.open_set import OpenSetRule, class_directions, stranger_fpir, threshold_for_fpir

    path = resolve_model(args.model)
    predictor = Predictor(path, backend="savedmodel")
    meta = predictor.metadata
    layout, size = crop_layout(meta), meta["input"]["height"]
    known = [n.split("/", 1)[-1] for n in meta["identities"]]
    sets = {"lfw_train": (f"{DATA}/lfw_subset", "identity_folders", "train"),
            "lfw_test": (f"{DATA}/lfw_subset", "identity_folders", "test"),
            "orl": (f"{DATA}/orl/att_faces", "identity_folders", None),
            "celeba": (f"{DATA}/celeba_subset", "celeba", None)}
    emb, people = {}, {}
    for name, (root, fmt, split) in sets.items():
        images, people[name] = faces(root, fmt, split, layout, size)
        emb[name] = embed_arrays(predictor, images)
        print(f"{name}: {len(images)} faces of {len(np.unique(people[name]))} people", flush=True)
    overlap = set(known) & (set(people["orl"]) | set(people["celeba"]))
    assert not overlap, f"strangers must not be known people: {overlap}"
    strangers = np.concatenate([emb["orl"], emb["celeba"]])
    stranger_people = np.concatenate([["orl/" + p for p in people["orl"]], ["celeba/" + p for p in people["celeba"]]])
    rng = np.random.default_rng(args.seed)
    names = np.unique(stranger_people)
    half_a = set(rng.permutation(names)[: len(names) // 2])
    in_a = np.array([p in half_a for p in stranger_people])
    lfw_labels = np.array([known.index(p) for p in people["lfw_train"]])
    candidates = {"class means of LFW training photos": class_directions(emb["lfw_train"], lfw_labels, len(known)),
                  "identity head's class weights": head_directions(path)}
    results = {"model": path, "model_id": meta.get("model_id"), "commit": git_commit(), "cpu": cpu_name(),
               "target_fpir": args.fpir, "strangers": {"people": int(len(names)), "faces": int(len(strangers)),
                                                       "calibration_half": {"people": len(half_a),
                                                                            "faces": int(in_a.sum())}},
               "lfw_test_faces": int(len(emb["lfw_test"])), "directions": {}}
    for label, directions in candidates.items():
        if directions is None:
            continue
        directions = normalize(directions)
        best = (normalize(strangers) @ directions.T).max(1)
        threshold = threshold_for_fpir(best[in_a], args.fpir)
        rule = OpenSetRule(directions, known, threshold)
        answers = [d["label"] for d in rule.decide(emb["lfw_test"])]
        named_right = float(np.mean([a == p for a, p in zip(answers, people["lfw_test"])]))
        train_answers = [d["label"] for d in rule.decide(emb["lfw_train"])]
        results["directions"][label] = {
            "threshold": threshold, "fpir_calibration_half": stranger_fpir(best[in_a], threshold),
            "fpir_held_out_half": stranger_fpir(best[~in_a], threshold),
            "strangers_unknown_all": 1 - stranger_fpir(best, threshold),
            "strangers_unknown_orl": 1 - stranger_fpir(best[: len(emb["orl"])], threshold),
            "strangers_unknown_celeba": 1 - stranger_fpir(best[len(emb["orl"]):], threshold),
            "lfw_test_named_correctly": named_right,
            "lfw_train_named_correctly": float(np.mean([a == p for a, p in zip(train_answers, people["lfw_train"])]))}
        print(label, results["directions"][label], flush=True)
    chosen = candidates["class means of LFW training photos"]
    threshold = results["directions"]["class means of LFW training photos"]["threshold"]

    # Galleries: every person of every set can be enrolled; probes are the people not enrolled.
    all_emb = np.concatenate([emb["lfw_train"], emb["lfw_test"], strangers])
    all_people = np.concatenate([["lfw/" + p for p in people["lfw_train"]], ["lfw/" + p for p in people["lfw_test"]],
                                 stranger_people])
    one_to_one = model_threshold(meta)[0]
    sims = gallery_trials(all_emb, all_people, one_to_one, args.fpir, GALLERY_SIZES, rng)
    grid = np.linspace(0.80, 1.0, 2001)
    p, pairs, impostor = per_template_rate(all_emb, all_people, rng, grid)
    table = {}
    for g in (*GALLERY_SIZES, 1000):
        fpir_grid = 1 - (1 - p) ** g
        estimate = float(grid[np.argmax(fpir_grid <= args.fpir)])
        entry = sims.setdefault(str(g), {})
        entry["threshold_estimated"] = estimate
        entry["fpir_at_1to1_threshold_estimated"] = float(1 - (1 - np.interp(one_to_one, grid, p)) ** g)
        table[str(g)] = entry.get("threshold_for_target", estimate)
    tail = tail_thresholds(impostor, args.fpir, EXTRAPOLATED_SIZES)
    for g, entry in tail["sizes"].items():
        table[g] = entry["threshold"]
    genuine = genuine_scores(all_emb, all_people, rng)
    tail["genuine_accepted"] = {g: float((genuine >= t).mean()) for g, t in table.items()}
    results["tail"] = tail
    results["galleries"] = {"one_to_one_threshold": one_to_one, "people_in_pool": int(len(np.unique(all_people))),
                            "template_photos": TEMPLATE_PHOTOS, "stranger_template_pairs": pairs, "sizes": sims,
                            "thresholds": table}
    write_results(args.out, results)
    print("gallery thresholds:", table, "extrapolated:", tail, flush=True)
    if args.update_preset:
        from facemtl.models.presets import preset_dir, update_preset_metadata

        folder = preset_dir(args.model or "release")
        open_set = {**meta["open_set"], "gallery_thresholds": table,
                    "gallery_thresholds_estimated": {
                        "1000": "1 - (1 - p)^N with p measured on every stranger-template pair",
                        "10000+": f"exponential fit of the top {TAIL_SHARE:g} impostor scores (u {tail['u']:.4f}, "
                                  f"sigma {tail['sigma']:.5f}); capped at {MAX_THRESHOLD}, FPIR estimated there: "
                                  + ", ".join(f"{g}: {e['fpir_estimated']:.3g}" for g, e in tail["sizes"].items())}}
        update_preset_metadata(folder, {"open_set": open_set})
        print(f"gallery thresholds written into {folder}")

    if args.export:
        export_with_rule(path, meta, chosen, threshold, table, args, results)


def export_with_rule(path, meta, directions, threshold, table, args, results):
    """The model written again with the open-set rule in its graph and metadata."""
    from facemtl.export import OWN_METADATA, export_saved_model
    from facemtl.models.presets import from_export as model_from_export
    from facemtl.training.feature_cache import write_lite_copy

    model, _ = model_from_export(path)
    chosen = results["directions"]["class means of LFW training photos"]
    open_set = {"directions": directions, "threshold": threshold, "target_fpir": args.fpir,
                "directions_from": "mean embedding of each person's LFW-subset training photos (BlazeFace-aligned)",
                "calibrated_on": f"half of the strangers by person (ORL + CelebA subset: "
                                 f"{results['strangers']['calibration_half']['people']} of "
                                 f"{results['strangers']['people']} people), seed {args.seed}",
                "fpir_held_out_half": chosen["fpir_held_out_half"],
                "lfw_test_named_correctly": chosen["lfw_test_named_correctly"],
                "gallery_thresholds": table, "measured_by": "benchmarks/strangers.py"}
    keep = {k: v for k, v in meta.items() if k not in OWN_METADATA}
    out = export_saved_model(model, meta["identities"], meta["expressions"], base_dir=args.export,
                             name=meta["name"], version=meta["version"], open_set=open_set,
                             extra_metadata={**keep, "model_id": meta["model_id"]})
    if meta.get("tflite"):
        write_lite_copy(model, out, meta["tflite"]["quantize"], None)
    print(f"exported with the open-set rule: {out}")


if __name__ == "__main__":
    main()
