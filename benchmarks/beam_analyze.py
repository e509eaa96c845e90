"""Throughput of `facemtl analyze --runner beam` against `facemtl analyze`, on the same real photos.

Photos: 1,000 real ones from ../shared/data (600 CelebA in-the-wild scenes of up to 256 px, 250 LFW
photos of 100-250 px, 150 ORL faces of 92x112; a fixed sample). Each arm is the real command in its
own process, on all the photos and on their first 100: the difference gives the steady rate (photos/s
once the model is loaded and Beam has started), the whole run the rate a user sees. Memory is the
process's peak resident set (`wait4`): one worker process holds one model, shared by its threads.

Arms: `facemtl analyze` (one process), `--runner beam` with 1 worker, with 2 workers (threads of one
process, the default for `--direct_num_workers 2`).

Usage:
    python benchmarks/beam_analyze.py --data ../shared/data --out runs/beam_analyze
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _runs import cpu_name, git_commit, write_results  # noqa: E402


def sample_photos(data, n=1000, seed=0):
    """The benchmark's photos: 60% CelebA, 25% LFW, 15% ORL, a fixed random sample."""
    pools = [(sorted(glob.glob(os.path.join(data, "celeba_subset", "img_celeba", "*.jpg"))), 0.60),
             (sorted(glob.glob(os.path.join(data, "lfw_subset", "*", "*", "*.jpg"))), 0.25),
             (sorted(glob.glob(os.path.join(data, "orl", "att_faces", "s*", "*.pgm"))), 0.15)]
    rng = random.Random(seed)
    photos = [p for pool, share in pools for p in rng.sample(pool, round(n * share))]
    rng.shuffle(photos)
    return photos


def timed(args):
    """Runs a command; returns (seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:  # the sample holds no unreadable photo: anything else is a failed run
        raise RuntimeError(f"{' '.join(args[:6])}... failed ({proc.returncode}):\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=100, help="photos of the short run (start-up measure)")
    parser.add_argument("--out", default="runs/beam_analyze")
    args = parser.parse_args()

    photos = sample_photos(args.data, args.photos)
    work = tempfile.mkdtemp(prefix="beam-analyze-")
    facemtl = [sys.executable, "-m", "facemtl", "analyze"]
    arms = {
        "facemtl analyze": lambda paths, out: facemtl + paths + ["--out", out + ".jsonl"],
        "beam, 1 worker": lambda paths, out: facemtl + paths + ["--runner", "beam", "--out", out],
        "beam, 2 workers": lambda paths, out: facemtl + paths + ["--runner", "beam", "--out", out,
                                                                 "--direct_num_workers", "2"],
    }
    subprocess.run(facemtl + photos[:2] + ["--out", os.path.join(work, "warm.jsonl")], check=True,
                   stderr=subprocess.DEVNULL)  # the release SavedModel written into the cache before any timing
    results = {"cpu": cpu_name(), "cores": os.cpu_count(), "commit": git_commit(), "photos": len(photos),
               "command": "python benchmarks/beam_analyze.py --data ../shared/data", "arms": {}}
    for i, (name, command) in enumerate(arms.items()):
        for run in ("short", "full"):
            os.makedirs(os.path.join(work, f"arm{i}-{run}"))
        short_s, _ = timed(command(photos[:args.warm], os.path.join(work, f"arm{i}-short", "answers")))
        full_s, rss = timed(command(photos, os.path.join(work, f"arm{i}-full", "answers")))
        results["arms"][name] = {
            "seconds": round(full_s, 1), "photos_per_s": round(len(photos) / full_s, 1),
            "steady_photos_per_s": round((len(photos) - args.warm) / (full_s - short_s), 1),
            "start_up_s": round(short_s - args.warm * (full_s - short_s) / (len(photos) - args.warm), 1),
            "peak_rss_mib": round(rss)}
        print(name, results["arms"][name], flush=True)
    base = results["arms"]["facemtl analyze"]["steady_photos_per_s"]
    for arm in results["arms"].values():
        arm["steady_vs_analyze"] = round(arm["steady_photos_per_s"] / base, 2)
    write_results(os.path.join(args.out, "results.json"), results)


if __name__ == "__main__":
    main()
