"""Peak memory while the bad-input corpus (`tests/helpers.py`) goes through the photo and crop front ends.

Each input goes through `FaceAnalyzer.analyze` between two good photos, then
through `Predictor.predict` beside a good crop, in one process. The report:
resident memory once the model is loaded and warm, the high-water mark at the
end, and the inputs that raised the high-water mark the most (a decompression
bomb that got decoded would show here as hundreds of MB to GB).

    python benchmarks/bad_inputs_memory.py [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_mb():
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SavedModel version folder (default: the release model)")
    args = parser.parse_args()

    import warnings

    from skimage import data

    from facemtl.inference import FaceAnalyzer
    from tests.helpers import corpus

    warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning on the bombs' headers, several faces...
    items = corpus(tempfile.mkdtemp(prefix="facemtl-bad-inputs-"))
    analyzer = FaceAnalyzer(args.model)
    good = data.astronaut()
    crop = good[50:190, 170:280]
    analyzer.analyze([good, good])  # warm: graphs traced, detector loaded
    analyzer.predictor.predict([crop, crop])
    warm, start = current_mb(), time.perf_counter()
    high, raised, errors = peak_mb(), [], 0
    for name, source in items:
        before = peak_mb()
        answers = analyzer.analyze([good, source, good])
        crops = analyzer.predictor.predict([crop, source, crop])
        errors += ("error" in answers[1]) + ("error" in crops[1])
        if peak_mb() > before:
            raised.append((round(peak_mb() - before, 1), name))
    seconds = time.perf_counter() - start
    raised.sort(reverse=True)
    report = {"inputs": len(items), "errors_named": errors, "seconds": round(seconds, 1),
              "rss_warm_mb": round(warm, 1), "peak_before_corpus_mb": round(high, 1),
              "peak_after_corpus_mb": round(peak_mb(), 1), "peak_rise_mb": round(peak_mb() - high, 1),
              "largest_rises_mb": raised[:5]}
    print(f"{len(items)} inputs through analyze and predict in {seconds:.0f} s ({errors} named errors); resident "
          f"{warm:.0f} MB warm; high-water mark {high:.0f} -> {peak_mb():.0f} MB "
          f"(+{peak_mb() - high:.0f} MB); largest rises: {raised[:5]}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
