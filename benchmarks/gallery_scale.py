"""Galleries at 10,000 to 1,000,000 people: enrol, open, identify, recall, disk and memory, per store.

Synthetic people, two kinds:

- `--people uniform` (default): random unit 128-d templates, numpy seed 0: HNSW's hardest case,
  with no structure to navigate; queries are enrolled people's templates plus Gaussian noise
  (sigma 0.05 per dimension, renormalised: cosine about 0.87 to the person), and fresh random
  vectors (strangers);
- `--people face-like --data ../shared/data`: drawn like the release model's real embeddings:
  the CelebA subset's faces (each photo's largest, through `FaceAnalyzer`) give the mean and
  covariance of people's templates and of a photo's deviation from its person's template;
  templates are Gaussian with the first, queries add the second (a new photo of the person),
  strangers are fresh templates.

Stores:

- `local`: facemtl's embedded store (SQLite + usearch HNSW), the default;
- `milvus-lite`: Milvus Lite, the embedded Milvus (the same code as a Milvus server);
- `npz`: the earlier one-file gallery (read whole, rewritten whole), as it behaved.

Usage:
    python benchmarks/gallery_scale.py --sizes 10000 100000 1000000 --stores local npz \\
        --milvus-sizes 10000 100000 --out runs/gallery_scale

Writes `results.json` (one row per store and size) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

DIM = 128
MODEL = {"model_id": "benchmark", "name": "synthetic", "version": 1, "embedding_dim": DIM}

_FRESH = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from facemtl.recognition.gallery import Gallery
t1 = time.perf_counter()
g = Gallery.open(sys.argv[2], sys.argv[1])
q = np.load(sys.argv[3])
answer = g.identify(q[:1], threshold=0.5, k=5)
t2 = time.perf_counter()
# VmHWM, not ru_maxrss: Linux keeps the parent's high-water mark in ru_maxrss across exec.
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"import_s": t1 - t0, "open_identify_s": t2 - t1, "name": answer[0]["candidates"][0]["name"],
                  "rss_mb": peak / 1024}))
"""


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


LIKE = None  # (mean, between-person factor, within-person factor) for --people face-like


def people(n, seed=0):
    z = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return unit(z if LIKE is None else LIKE[0] + z @ LIKE[1].T)


def photo_noise(rng, n):
    z = rng.normal(size=(n, DIM)).astype(np.float32)
    return 0.05 * z if LIKE is None else z @ LIKE[2].T


def face_like(data, out):
    """The mean and covariance factors of real embeddings: people's templates, and photos around them."""
    cache = os.path.join(out, "face_like.npz")
    if not os.path.isfile(cache):
        from facemtl.inference import FaceAnalyzer, analyze_files

        root = os.path.join(data, "celeba_subset")
        with open(os.path.join(root, "identity_CelebA.txt")) as f:
            who = dict(line.split() for line in f if line.strip())
        embeddings, labels = [], []
        for record, _ in analyze_files(FaceAnalyzer(), [os.path.join(root, "img_celeba", k) for k in sorted(who)],
                                       progress=False, ignored=[]):
            if record.get("faces"):
                embeddings.append(max(record["faces"], key=lambda f: f["box"][2] * f["box"][3])["embedding"])
                labels.append(who[os.path.basename(record["path"])])
        e, labels = unit(np.asarray(embeddings, np.float32)), np.asarray(labels)
        names = [n for n in np.unique(labels) if (labels == n).sum() >= 5]
        templates = unit(np.stack([e[labels == n].mean(0) for n in names]))
        deviations = np.concatenate([e[labels == n] - templates[i] for i, n in enumerate(names)])
        ridge = 1e-6 * np.eye(DIM)
        np.savez(cache, mean=templates.mean(0), between=np.linalg.cholesky(np.cov(templates.T) + ridge),
                 within=np.linalg.cholesky(np.cov(deviations.T) + ridge), people=len(names), faces=len(deviations))
    z = np.load(cache)
    return z["mean"].astype(np.float32), z["between"].astype(np.float32), z["within"].astype(np.float32)


def names(idx):
    return [f"p{i:07d}" for i in idx]


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def median_ms(times):
    return round(float(np.median(times)) * 1000, 3)


def exact_top1(templates, queries):
    """Per query, the exact best person's index and similarity."""
    idx, score = [], []
    for i in range(0, len(queries), 256):
        s = queries[i:i + 256] @ templates.T
        idx.append(np.argmax(s, axis=1))
        score.append(s.max(axis=1))
    return list(zip(np.concatenate(idx), np.concatenate(score)))


def agreement(found, truth):
    """The share of queries whose approximate top-1 is the exact one: the same person, or a tie (a person with the
    same similarity to 1e-5: either answer is exact)."""
    return float(np.mean([name == f"p{t:07d}" or score >= best - 1e-5 for (name, score), (t, best) in zip(found, truth)]))


def run_store(kind, n, workdir, queries_noisy, queries_random, log):
    from facemtl.recognition.gallery import Gallery, read_npz
    from facemtl.recognition.stores import close_stores

    templates = people(n)
    row = {"store": kind, "people": n}
    store = os.path.join(workdir, kind) if kind != "milvus-lite" else f"milvus-lite:{workdir}/milvus/g.db"
    t0 = time.perf_counter()
    if kind == "npz":
        path = os.path.join(workdir, "g.npz")
        np.savez(path, meta=json.dumps({"format_version": 1, "model": MODEL}), names=np.asarray(names(range(n))),
                 embeddings=templates, sources=np.asarray([""] * n))
        row["build_s"] = round(time.perf_counter() - t0, 2)
        row["disk_mb"] = round(du(path) / 2**20, 1)
        opened = []
        for _ in range(3):
            t = time.perf_counter()
            meta, nm, emb, src = read_npz(path)
            opened.append(time.perf_counter() - t)
        row["open_ms"] = median_ms(opened)
        enrol = []
        for i in range(3):  # the earlier enrolment: read the file, append, write it whole
            t = time.perf_counter()
            meta, nm, emb, src = read_npz(path)
            tmp = path + ".tmp.npz"
            np.savez(tmp, meta=json.dumps(meta), names=np.append(nm, f"new{i}"),
                     embeddings=np.vstack([emb, templates[:1]]), sources=np.append(src, ""))
            os.replace(tmp, path)
            enrol.append(time.perf_counter() - t)
        row["enrol_one_ms"] = median_ms(enrol)
        t = time.perf_counter()
        meta, nm, emb, src = read_npz(path)
        order = np.argsort(nm, kind="stable")
        row["templates_s"] = round(time.perf_counter() - t, 2)
        warm = []
        for q in queries_noisy[:200]:
            t = time.perf_counter()
            s = emb @ q
            np.argpartition(-s, 5)[:5]
            warm.append(time.perf_counter() - t)
        row["identify_warm_ms"] = median_ms(warm)
        row["top1_agreement_noisy"] = row["top1_agreement_random"] = 1.0  # exact by construction
        del order
        return row

    gallery = Gallery.open("bench", store, model=MODEL, create=True)
    chunk = 20000
    for start in range(0, n, chunk):
        idx = range(start, min(n, start + chunk))
        gallery.backend.add([(nm, templates[i:i + 1], [""]) for nm, i in zip(names(idx), idx)])
        if start // chunk % 10 == 0:
            log(f"{kind} {n}: {min(n, start + chunk)} people inserted ({time.perf_counter() - t0:.0f} s)")
    row["insert_s"] = round(time.perf_counter() - t0, 2)
    t = time.perf_counter()
    gallery.compact(force=True)
    row["index_s"] = round(time.perf_counter() - t, 2)
    log(f"{kind} {n}: indexed in {row['index_s']} s")
    # Approximate vs exact, top-1 person, and warm latency one query at a time.
    truth_noisy, truth_random = exact_top1(templates, queries_noisy), exact_top1(templates, queries_random)
    if kind == "local":  # the HNSW search breadth: agreement and latency per efSearch (the shipped one below)
        from facemtl.recognition.stores import local

        shipped, row["ef_sweep"] = local.EXPANSION_SEARCH, []
        for ef in (64, 128, 256, 512, 1024):
            local.EXPANSION_SEARCH = ef
            got, times = [], []
            for q in queries_noisy[:1000]:
                t = time.perf_counter()
                got.append(gallery.search(q, k=5)[0][0])
                times.append(time.perf_counter() - t)
            rand = [r[0] for r in gallery.search(queries_random, k=5)]
            row["ef_sweep"].append({
                "ef": ef, "identify_warm_ms": median_ms(times),
                "top1_agreement_noisy": agreement(got, truth_noisy),
                "top1_agreement_random": agreement(rand, truth_random)})
            log(f"{kind} {n}: {row['ef_sweep'][-1]}")
        local.EXPANSION_SEARCH = shipped
    if kind == "milvus-lite":  # its search scans rows in Python (~0.1 s per query at 10,000 people)
        queries_noisy, queries_random = queries_noisy[:200], queries_random[:200]
    truth_noisy, truth_random = truth_noisy[:len(queries_noisy)], truth_random[:len(queries_random)]
    got_noisy, warm = [], []
    for q in queries_noisy:
        t = time.perf_counter()
        got_noisy.append(gallery.search(q, k=5)[0][0])
        warm.append(time.perf_counter() - t)
    got_random = [row_[0] for row_ in gallery.search(queries_random, k=5)]
    row["identify_warm_ms"] = median_ms(warm)
    row["identify_warm_p99_ms"] = round(float(np.percentile(warm, 99)) * 1000, 3)
    row["queries"] = len(queries_noisy)
    row["top1_agreement_noisy"] = agreement(got_noisy, truth_noisy)
    row["top1_agreement_random"] = agreement(got_random, truth_random)
    if kind == "local":  # Milvus' exact path reads every template back page by page: minutes at 100,000
        t = time.perf_counter()
        gallery.search(queries_noisy[:1], k=5, exact=True)
        row["exact_first_query_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        gallery.search(queries_noisy[:10], k=5, exact=True)
        row["exact_warm_ms_per_query"] = round((time.perf_counter() - t) * 100, 2)
    # Enrol one person: one commit each (the index is not rewritten).
    extra = people(20 if kind == "local" else 5, seed=1)
    enrol = []
    for i, e in enumerate(extra):
        t = time.perf_counter()
        gallery.enroll(f"new{i:03d}", e[None])
        enrol.append(time.perf_counter() - t)
    row["enrol_one_ms"] = median_ms(enrol)
    row["enrol_one_max_ms"] = round(max(enrol) * 1000, 2)
    t = time.perf_counter()
    gallery.compact(force=True)
    row["compact_after_20_s"] = round(time.perf_counter() - t, 2)
    location = gallery.backend.folder if kind == "local" else os.path.join(workdir, "milvus")
    gallery.backend.close()
    close_stores()
    row["disk_mb"] = round(du(location) / 2**20, 1)
    # A fresh process: open the store, identify one face.
    qfile = os.path.join(workdir, "q.npy")
    np.save(qfile, queries_noisy[:1])
    walls = []
    for _ in range(3):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _FRESH, store, "bench", qfile], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"the fresh process failed: {out.stderr[-2000:]}")
        walls.append(time.perf_counter() - t)
        fresh = json.loads(out.stdout.strip().splitlines()[-1])
    row["fresh_process_wall_s"] = round(float(np.median(walls)), 3)
    row["fresh_open_identify_s"] = round(fresh["open_identify_s"], 3)
    row["fresh_import_s"] = round(fresh["import_s"], 3)
    row["fresh_rss_mb"] = round(fresh["rss_mb"], 0)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000, 1000000])
    parser.add_argument("--stores", nargs="+", default=["local", "npz"], choices=["local", "npz", "milvus-lite"])
    parser.add_argument("--milvus-sizes", type=int, nargs="*", default=[10000, 100000],
                        help="sizes at which Milvus Lite runs too (it is slow to build at a million)")
    parser.add_argument("--queries", type=int, default=2000, help="noisy queries for the recall figure")
    parser.add_argument("--workdir", help="where the stores are built (default: a temporary folder, removed)")
    parser.add_argument("--out", default="runs/gallery_scale", help="folder for results.json")
    parser.add_argument("--people", choices=["uniform", "face-like"], default="uniform",
                        help="how synthetic people are drawn (see the module docstring)")
    parser.add_argument("--data", default="../shared/data", help="with --people face-like: holds celeba_subset/")
    parser.add_argument("--connectivity", type=int, help="HNSW links per node for the embedded store (default: "
                                                         "the shipped facemtl.recognition.stores.local.CONNECTIVITY)")
    args = parser.parse_args(argv)
    global LIKE

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    os.makedirs(args.out, exist_ok=True)
    if args.connectivity:
        from facemtl.recognition.stores import local

        local.CONNECTIVITY = args.connectivity
    if args.people == "face-like":
        LIKE = face_like(args.data, args.out)
    rows = []
    for n in args.sizes:
        templates = people(n)
        rng = np.random.default_rng(2)
        picks = rng.integers(0, n, args.queries)
        noisy = unit(templates[picks] + photo_noise(rng, args.queries))
        log(f"{args.people} people: cosine of a query to its person {np.mean(np.sum(noisy * templates[picks], 1)):.3f}, "
            f"of two people {np.mean(np.sum(templates[:1000] * templates[1000:2000], 1)):.3f}")
        strangers = people(500, seed=3)
        del templates
        stores = list(args.stores) + (["milvus-lite"] if n in args.milvus_sizes and "milvus-lite" not in args.stores
                                      else [])
        for kind in stores:
            workdir = tempfile.mkdtemp(prefix=f"gallery-{kind}-{n}-", dir=args.workdir)
            try:
                log(f"{kind} at {n} people")
                rows.append({**run_store(kind, n, workdir, noisy, strangers, log), "people_kind": args.people,
                             "connectivity": args.connectivity or "shipped"})
                log(json.dumps(rows[-1]))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(rows, f, indent=1)
    keys = ["store", "people", "disk_mb", "enrol_one_ms", "fresh_open_identify_s", "fresh_process_wall_s",
            "identify_warm_ms", "top1_agreement_noisy", "top1_agreement_random", "insert_s", "index_s", "fresh_rss_mb"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
