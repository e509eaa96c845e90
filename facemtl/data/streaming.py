"""Streaming image files from disk, for datasets too large to hold in memory (VGGFace2: 3.3M photos).

With `data.streaming: true` the file-based sources of a recipe are not
decoded into memory once (`materialize`); each epoch reads, decodes, crops and
resizes the files in parallel `tf.data` workers, with the same per-image code
as the in-memory path (`materialize.load_face`). Only the file list and labels
live in memory. Unreadable files are skipped and counted: the count and the
first paths are reported (`SkipLog.report`) after every epoch and at the end,
never a crash and never a silent loss.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from facemtl.data.materialize import load_face
from facemtl.data.sources import warn_skipped
from facemtl.errors import FacemtlError


class SkipLog:
    """Thread-safe record of the files a stream could not read (each counted once)."""

    def __init__(self, what):
        self.what = what
        self._lock = threading.Lock()
        self._paths = []
        self._seen = set()
        self._reported = 0

    def add(self, path):
        with self._lock:
            if path not in self._seen:
                self._seen.add(path)
                self._paths.append(path)

    @property
    def paths(self):
        with self._lock:
            return list(self._paths)

    def report(self):
        """Warns once about the files found unreadable since the last report."""
        paths = self.paths
        new = paths[self._reported:]
        self._reported = len(paths)
        warn_skipped(self.what, new, "unreadable image(s) (streaming)")
        return new


class StreamedSource:
    """A file-based `FaceSource` that is read from disk at every epoch instead of held in memory.

    Args:
        source: a `FaceSource` with `paths`.
        size: output side length (square RGB crops, like `materialize`).
        margin: box enlargement on each side.
        skips: the `SkipLog` that counts unreadable files.
    """

    def __init__(self, source, size, margin, skips):
        if source.paths is None:
            raise ValueError(f"{source.name}: streaming needs image files; pixel arrays are held in memory")
        self.source = source
        self.size = int(size)
        self.margin = float(margin)
        self.skips = skips
        self.identity = source.identity
        self.expression = source.expression
        self.identity_names = list(source.identity_names)

    def __len__(self):
        return len(self.source)

    def subset(self, index):
        return StreamedSource(self.source.subset(index), self.size, self.margin, self.skips)

    def with_identity(self, identity):
        """The same files with relabelled identities (merged label spaces)."""
        out = StreamedSource(self.source, self.size, self.margin, self.skips)
        out.identity = np.asarray(identity, np.int32)
        return out

    def _load(self, path, box):
        path = path.decode() if isinstance(path, bytes) else str(path)
        try:
            return load_face(path, None if np.isnan(box).any() else box, self.size, self.margin), True
        except (FacemtlError, ValueError, OSError):
            self.skips.add(path)
            return np.zeros((self.size, self.size, 3), np.uint8), False

    def dataset(self, *, shuffle=False, repeat=False, seed=0):
        """`(uint8 [size, size, 3], {"identity", "expression"})` per readable file.

        Args:
            shuffle: reshuffle the file order every pass (cheap: only names are shuffled).
            repeat: cycle forever (training streams).
            seed: shuffle seed.
        """
        src = self.source
        boxes = src.boxes if src.boxes is not None else np.full((len(src), 4), np.nan, np.float32)
        ds = tf.data.Dataset.from_tensor_slices(
            (np.asarray(src.paths, dtype=str), boxes.astype(np.float32), self.identity, self.expression))
        if shuffle:
            ds = ds.shuffle(len(src), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        size = self.size

        def decode(path, box, identity, expression):
            image, ok = tf.numpy_function(self._load, [path, box], [tf.uint8, tf.bool], stateful=False)
            image.set_shape([size, size, 3])
            return image, ok, {"identity": identity, "expression": expression}

        def readable(image, ok, labels):
            return ok

        def drop_flag(image, ok, labels):
            return image, labels

        # Training streams need not keep file order; evaluation streams do (reproducible reports).
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
        return ds.filter(readable).map(drop_flag)


def part_labels(part):
    """`(identity, expression)` of a part: an `(images, identity, expression)` triple or a `StreamedSource`."""
    return (part.identity, part.expression) if isinstance(part, StreamedSource) else (part[1], part[2])


def concat_for_eval(parts):
    """One finite, deterministic evaluation stream over in-memory arrays and streamed sources.

    Args:
        parts: list of `(images, identity, expression)` array triples or `StreamedSource`s.

    Returns:
        A dataset of `(uint8 [s, s, 3], {"identity", "expression"})`, sources
        interleaved (fixed seed) so every batch carries both tasks.
    """
    streams, sizes = [], []
    for part in parts:
        if isinstance(part, StreamedSource):
            streams.append(part.dataset())
            sizes.append(len(part))
        else:
            images, ids, exprs = part
            streams.append(tf.data.Dataset.from_tensor_slices((images, {"identity": ids, "expression": exprs})))
            sizes.append(len(images))
    keep = [i for i, n in enumerate(sizes) if n]
    if len(keep) == 1:
        return streams[keep[0]]
    total = sum(sizes)
    return tf.data.Dataset.sample_from_datasets([streams[i] for i in keep], weights=[sizes[i] / total for i in keep],
                                                seed=0, stop_on_empty_dataset=False)


class StreamedSplit:
    """A validation/test (or training-count) split some of whose sources stream from disk.

    Attributes:
        parts: `(images, identity, expression)` triples and `StreamedSource`s.
        labels: `{"identity", "expression"}` of every listed sample (unreadable
            files included: the stream skips them and counts them).
    """

    def __init__(self, parts):
        self.parts = list(parts)
        ids, exprs = zip(*[part_labels(p) for p in self.parts])
        self.labels = {"identity": np.concatenate(ids), "expression": np.concatenate(exprs)}

    def __len__(self):
        return len(self.labels["identity"])

    def dataset(self):
        """`(uint8 image, labels)` per readable sample, in a fixed order."""
        return concat_for_eval(self.parts)
