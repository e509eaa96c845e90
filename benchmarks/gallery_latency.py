"""Gallery identify latency at 1k, 100k and 1M enrolled people (exact, vectorised search).

Fills a gallery with random unit embeddings (one per person, the embedding
size of the models, 128 by default), then times `Gallery.identify` for one
query at a time and for batches of 64 queries (medians over repeats), plus the
one-off template build and the gallery's memory. Exact search is one matrix
product and a partial sort, so its cost grows linearly with the gallery.

    python benchmarks/gallery_latency.py
    python benchmarks/gallery_latency.py --sizes 1000 100000 --dim 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from facemtl.recognition.gallery import Gallery

    rng = np.random.default_rng(0)
    print("| enrolled | template build (once) | identify 1 query | identify 64 queries (per query) | memory |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        embeddings = rng.standard_normal((n, args.dim), dtype=np.float32)
        names = np.char.add("p", np.arange(n).astype(str))
        gallery = Gallery("unused.npz", {"model_id": "bench", "embedding_dim": args.dim}, names, embeddings,
                          [""] * n)
        gallery.embeddings /= np.linalg.norm(gallery.embeddings, axis=1, keepdims=True)
        start = time.perf_counter()
        gallery.templates()
        build = time.perf_counter() - start
        one = rng.standard_normal((1, args.dim), dtype=np.float32)
        many = rng.standard_normal((64, args.dim), dtype=np.float32)
        gallery.identify(one, 0.5)  # warm-up
        t1 = timed(lambda: gallery.identify(one, 0.5, k=5), args.repeats)
        t64 = timed(lambda: gallery.identify(many, 0.5, k=5), max(3, args.repeats // 4))
        memory = (gallery.embeddings.nbytes + gallery.templates()[1].nbytes) / 2**20
        print(f"| {n:,} | {build * 1e3:.0f} ms | {t1 * 1e3:.2f} ms | {t64 / 64 * 1e3:.2f} ms | {memory:.0f} MiB |",
              flush=True)


if __name__ == "__main__":
    main()
