"""Turning command-line paths (photos, folders, videos, cameras) into photos and sampled frames."""

from __future__ import annotations

import functools
import os
import re
import sys
import time

import numpy as np

from facemtl.errors import ImageError
from facemtl.files import unreadable_reason

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# A camera: `camera:0` (OpenCV's device index) or a V4L2 device file such as `/dev/video0`.
_CAMERA = re.compile(r"camera:(\d+)|/dev/video\d+")


def is_camera(path):
    """Whether `path` names a camera (`camera:N` or `/dev/videoN`) rather than a file."""
    return bool(_CAMERA.fullmatch(os.fspath(path)))


@functools.cache
def media_extensions():
    """File-name endings of the images Pillow reads and of videos (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return frozenset(Image.registered_extensions()) | VIDEO_EXTENSIONS


def expand_paths(paths, ignored=None):
    """Files named by `paths`, folders walked recursively (sorted, hidden files skipped).

    Every regular file in a folder is kept, whatever its extension, so that a
    file that is not a photo gets reported rather than silently passed over;
    unless `ignored` is a list: then a folder's files that are neither images
    nor videos by name (a `.txt` or `.tem` beside each photo) go into it
    instead. Files named explicitly are always kept.

    Returns:
        A list of `(path, error)`; `error` is None or a message naming the path
        and what is wrong with it (missing, a symlink loop, a FIFO or device,
        which would block or make no sense to read).
    """
    out = []
    for path in paths:
        path = os.fspath(path)
        if is_camera(path):  # opened when its frames are read; a missing camera is reported then
            out.append((path, None))
        elif os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        full = os.path.join(root, f)
                        if ignored is not None and os.path.splitext(f)[1].lower() not in media_extensions():
                            ignored.append(full)
                            continue
                        reason = unreadable_reason(full)
                        out.append((full, f"{full}: {reason}" if reason else None))
        else:
            reason = unreadable_reason(path)
            if reason == "no such file":
                reason = "no such file or folder"
            out.append((path, f"{path}: {reason}" if reason else None))
    return out


def is_video(path):
    """Whether `path` is a video file (by its extension) or a camera."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS or is_camera(path)


def video_frames(path, every=10, max_side=None, max_frames=None):
    """Yields `(frame_index, rgb uint8 [h, w, 3])` for every `every`-th frame of a video or camera.

    Args:
        path: a video file, or a camera (`camera:N`, `/dev/videoN`).
        every: keep every `every`-th frame (the others are grabbed, not decoded).
        max_side: downscale frames longer than this.
        max_frames: stop after this many kept frames (a camera otherwise runs
            until the caller stops, e.g. on Ctrl-C).

    Raises:
        ImageError: when the file or camera cannot be opened.
    """
    import cv2

    if every < 1:
        raise ValueError(f"every must be >= 1. Received: every={every}")
    match = _CAMERA.fullmatch(os.fspath(path))
    source = int(match.group(1)) if match and match.group(1) is not None else os.fspath(path)
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise ImageError(f"{path}: not a readable {'camera' if match else 'video'}")
    try:
        index, kept = 0, 0
        while max_frames is None or kept < max_frames:
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
                kept += 1
            elif not cap.grab():  # skip without decoding
                break
            index += 1
    finally:
        cap.release()


def video_frame_count(path):
    """Frames in a video file (0 when unknown, and for cameras)."""
    import cv2

    if is_camera(path):
        return 0
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
        if not n:  # nothing new (an empty batch): no line drawn twice
            return
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
