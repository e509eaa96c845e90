"""Turning command-line paths (photos, folders, videos) into photos and sampled frames."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from facemtl.errors import ImageError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def expand_paths(paths):
    """Files named by `paths`, folders walked recursively (sorted, hidden files skipped).

    Every regular file in a folder is kept, whatever its extension, so that a
    file that is not a photo gets reported rather than silently passed over.

    Returns:
        A list of `(path, error)`; `error` is None or a message naming the path
        and what is wrong with it (missing, a symlink loop, a FIFO or device,
        which would block or make no sense to read).
    """
    from facemtl.files import unreadable_reason

    out = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        full = os.path.join(root, f)
                        reason = unreadable_reason(full)
                        out.append((full, f"{full}: {reason}" if reason else None))
        else:
            reason = unreadable_reason(path)
            if reason == "no such file":
                reason = "no such file or folder"
            out.append((path, f"{path}: {reason}" if reason else None))
    return out


def is_video(path):
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def video_frames(path, every=10, max_side=None):
    """Yields `(frame_index, rgb uint8 [h, w, 3])` for every `every`-th frame of a video.

    Raises:
        ImageError: when the file cannot be opened as a video.
    """
    import cv2

    if every < 1:
        raise ValueError(f"every must be >= 1. Received: every={every}")
    cap = cv2.VideoCapture(os.fspath(path))
    if not cap.isOpened():
        raise ImageError(f"{path}: not a readable video")
    try:
        index = 0
        while True:
            if index % every == 0:
                ok, frame = cap.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                if max_side and max(rgb.shape[:2]) > max_side:
                    s = max_side / max(rgb.shape[:2])
                    rgb = cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)),
                                     interpolation=cv2.INTER_AREA)
                yield index, np.ascontiguousarray(rgb)
            elif not cap.grab():  # skip without decoding
                break
            index += 1
    finally:
        cap.release()


def video_frame_count(path):
    import cv2

    cap = cv2.VideoCapture(os.fspath(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


class Progress:
    """A minimal progress bar on stderr (a redrawn line on a terminal, a line every few seconds otherwise)."""

    def __init__(self, total, label, stream=None, every_s=5.0):
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.time()
        self.every_s = every_s

    def update(self, n=1):
        self.done += n
        now = time.time()
        if self.tty or now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} ({rate:.1f}/s)"
            self.stream.write(("\r" + line) if self.tty else (line + "\n"))
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
