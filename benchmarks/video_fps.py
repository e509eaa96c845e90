"""Frames per second of `facemtl analyze` on a 720p video made from real photos.

Builds a 1280x720, 25 fps clip (MPEG-4) from CelebA photos in ../shared/data
(each photo scaled onto the frame and held for `--hold` frames, with a slow
pan so consecutive frames differ), then analyses every frame with each
detector, as `facemtl analyze clip.mp4 --every 1` does: decode, detect, align,
one forward pass per `--batch` frames. Reports frames/s end to end and the
share of the time per stage.

    python benchmarks/video_fps.py [--seconds 10] [--detectors blazeface,mtcnn]
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import numpy as np
from _runs import write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_clip(path, photos, seconds, fps=25, hold=25):
    import cv2

    from facemtl.images import load_image

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (1280, 720))
    frames = int(seconds * fps)
    for i in range(frames):
        photo = load_image(photos[(i // hold) % len(photos)])
        scale = 600 / photo.shape[0]
        small = cv2.resize(photo, (int(photo.shape[1] * scale), 600))
        frame = np.full((720, 1280, 3), 40, np.uint8)
        x = 100 + (i % hold) * 8  # a slow pan within each shot
        frame[60:660, x:x + small.shape[1]] = small[:, : 1280 - x]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return frames


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="../shared/data/celeba_subset/img_celeba/*.jpg")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--detectors", default="blazeface,mtcnn")
    parser.add_argument("--batch", type=int, default=16, help="frames per forward pass (analyze's --batch-photos)")
    parser.add_argument("--model", help="default: the release model")
    parser.add_argument("--out", default="runs/benchmarks/video_fps.json")
    args = parser.parse_args()

    from facemtl.inference import FaceAnalyzer
    from facemtl.media import video_frames

    photos = sorted(glob.glob(args.photos))[:40]
    if not photos:
        raise SystemExit(f"no photos match {args.photos}")
    clip = os.path.join(tempfile.mkdtemp(), "clip_720p.mp4")
    frames = make_clip(clip, photos, args.seconds)
    results = {"clip": f"{frames} frames, 1280x720, 25 fps, MPEG-4, from {len(photos)} CelebA photos", "detectors": {}}
    for name in args.detectors.split(","):
        analyzer = FaceAnalyzer(args.model, detector=name)
        analyzer.analyze_images([np.zeros((720, 1280, 3), np.uint8)])  # warm up
        for k in analyzer.timings:
            analyzer.timings[k] = 0.0
        start, decode, batch, faces, n, with_face = time.perf_counter(), 0.0, [], 0, 0, 0
        t = time.perf_counter()
        for _, image in video_frames(clip, 1, 2048):
            decode += time.perf_counter() - t
            batch.append(image)
            if len(batch) == args.batch:
                found = analyzer.analyze_images(batch)
                faces, with_face, n = faces + sum(map(len, found)), with_face + sum(map(bool, found)), n + len(batch)
                batch = []
            t = time.perf_counter()
        if batch:
            found = analyzer.analyze_images(batch)
            faces, with_face, n = faces + sum(map(len, found)), with_face + sum(map(bool, found)), n + len(batch)
        seconds = time.perf_counter() - start
        shares = {k: round(v / seconds, 3) for k, v in {"decode": decode, **analyzer.timings}.items()}
        results["detectors"][name] = {"frames": n, "frames_per_s": round(n / seconds, 2),
                                      "frames_with_a_face": with_face, "faces": faces, "share": shares}
        print(f"{name:9s}: {n / seconds:6.2f} frames/s ({faces} faces in {n} frames); time share {shares}", flush=True)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
