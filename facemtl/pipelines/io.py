"""Pipeline input and output on any filesystem Beam reads: local paths, `gs://`, `s3://`, `hdfs://`...

Inputs are matched inside the pipeline (a launcher never lists millions of
files), photos are decoded by `facemtl.images.load_image` as in `facemtl
analyze`, and outputs are deterministic: each record goes to the shard its key
hashes to, every shard is sorted and written whole under a temporary name,
then renamed into place. A retried bundle rewrites the same shard with the same
bytes, and a rerun on the same input writes the same files.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zlib

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from facemtl.errors import FacemtlError, ImageError
from facemtl.files import temporary_name, write_bytes_atomically
from facemtl.images import load_image
from facemtl.media import is_camera, media_extensions
from facemtl.pipelines.runner import counter

DEAD_LETTER = "dead_letter"
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")
_GLOB = re.compile(r"[*?\[]")


def is_local(path):
    """Whether `path` is on this machine's filesystem (no `scheme://`)."""
    return not _SCHEME.match(path)


def join(folder, name):
    """`folder/name` for local paths and URLs alike."""
    return os.path.join(folder, name) if is_local(folder) else folder.rstrip("/") + "/" + name


def input_patterns(paths):
    """The Beam file patterns of command-line inputs: `[(pattern, root, walked)]`.

    A local folder, or any path ending in `/`, is walked recursively
    (`folder/**`, `root` is the folder): as in `facemtl analyze`, its hidden
    files and the files that are neither images nor videos by name are left
    out (and counted). Files and globs are taken as named (`walked` False).

    Raises:
        FacemtlError: a camera (a pipeline reads files).
    """
    out = []
    for path in map(os.fspath, paths):
        if is_camera(path):
            raise FacemtlError(f"{path}: a camera cannot be read by a pipeline; use `facemtl analyze` without "
                               "--runner")
        if path.endswith("/") or (is_local(path) and os.path.isdir(path)):
            out.append((join(path, "**"), path, True))
        else:
            out.append((path, None, False))
    return out


def relative_to(path, root):
    """`path` relative to `root` (both as Beam gives them)."""
    if is_local(path):
        return os.path.relpath(path, root)
    return path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/") + "/") else path


class _Match(beam.DoFn):
    """Pattern -> the files it names; a pattern matching nothing is a dead letter."""

    def process(self, element):
        pattern, root, walked = element
        try:
            found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        except Exception as exc:  # Beam wraps a listing error in BeamIOError
            found, error = [], f"{pattern}: cannot be listed ({exc})"
        else:
            error = None if found or walked else (f"{pattern}: no such file or folder" if not _GLOB.search(pattern)
                                                  else f"{pattern}: no file matches")
        if error:
            counter("unreadable").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, {"path": pattern, "error": error})
        for path in found:
            if walked:
                rel = relative_to(path, root)
                if any(part.startswith(".") for part in re.split(r"[/\\]", rel)):
                    continue  # hidden, as in `facemtl analyze`'s folder walk
                if os.path.splitext(path)[1].lower() not in media_extensions():
                    counter("ignored").inc()
                    continue
            yield path, root


class MatchFiles(beam.PTransform):
    """Command-line inputs -> `(path, root)` of every file, spread over the workers.

    Outputs a main PCollection and a `dead_letter` one (`{"path", "error"}`).
    """

    def __init__(self, paths):
        super().__init__()
        self.patterns = input_patterns(paths)

    def expand(self, pbegin):
        matched = (pbegin
                   | "Patterns" >> beam.Create(self.patterns)
                   | "Match" >> beam.ParDo(_Match()).with_outputs(DEAD_LETTER, main="files"))
        # Without a reshuffle every file of a pattern stays in one bundle, and one worker does them all.
        files = matched.files | "Spread" >> beam.Reshuffle()
        return {"files": files, DEAD_LETTER: matched[DEAD_LETTER]}


def read_bytes(path):
    """The bytes of a file on any Beam filesystem (no decompression by extension)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_photo(path, max_side=None):
    """Decodes a photo as `facemtl analyze` does; errors name the path.

    Raises:
        ImageError: unreadable, truncated, not an image, too large.
    """
    if is_local(path):
        return load_image(path, max_side=max_side)
    try:
        data = read_bytes(path)
    except Exception as exc:  # BeamIOError, a vanished object...
        raise ImageError(f"{path}: cannot be read ({exc})") from exc
    try:
        return load_image(data, max_side=max_side)
    except ImageError as exc:
        raise ImageError(str(exc).replace(f"<{len(data)} bytes>", path)) from exc


class local_copy:
    """A local file with the contents of `path` (itself, when local): OpenCV reads videos from files."""

    def __init__(self, path):
        self.path, self.tmp = path, None

    def __enter__(self):
        if is_local(self.path):
            return self.path
        fd, self.tmp = tempfile.mkstemp(suffix=os.path.splitext(self.path)[1])
        with os.fdopen(fd, "wb") as f:
            f.write(read_bytes(self.path))
        return self.tmp

    def __exit__(self, *exc):
        if self.tmp:
            os.remove(self.tmp)


def write_atomically(path, data):
    """Writes `data` to `path` on any Beam filesystem, so that no reader ever sees half a file.

    Local files are written, fsynced and renamed; elsewhere a temporary object
    is written whole, then renamed (object stores copy it into place).
    """
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_bytes_atomically(path, data)
        return
    tmp = temporary_name(path)  # `scheme://bucket/dir/.tmp-...-name`: the same hidden name as on local disks
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def record_key(record):
    """The sort key of an output record: its path, then its frame."""
    return record["path"], record.get("frame", -1)


def shard_name(prefix, index, count, suffix):
    return f"{prefix}-{index:05d}-of-{count:05d}{suffix}"


def single_shard(prefix):
    """The one file `WriteShards(prefix, 1)` writes (reports, dead letters)."""
    return shard_name(prefix, 0, 1, ".jsonl")


def parquet_bytes(records):
    """Records as a Parquet file: path, frame, height, width, and the faces as a JSON string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "path": pa.array([r["path"] for r in records], pa.string()),
        "frame": pa.array([r.get("frame") for r in records], pa.int64()),
        "height": pa.array([r["size"][0] for r in records], pa.int32()),
        "width": pa.array([r["size"][1] for r in records], pa.int32()),
        "faces": pa.array([json.dumps(r["faces"]) for r in records], pa.string()),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


class _WriteShard(beam.DoFn):
    def __init__(self, prefix, count, parquet):
        self.prefix, self.count, self.parquet = prefix, count, parquet

    def process(self, element):
        index, records = element
        records = sorted((r for r in records if r is not None), key=lambda r: (record_key(r), json.dumps(r)))
        text = "".join(json.dumps(r) + "\n" for r in records)
        write_atomically(shard_name(self.prefix, index, self.count, ".jsonl"), text.encode("utf-8"))
        if self.parquet:
            write_atomically(shard_name(self.prefix, index, self.count, ".parquet"), parquet_bytes(records))
        yield index


class WriteShards(beam.PTransform):
    """Records -> `PREFIX-SSSSS-of-NNNNN.jsonl` (and `.parquet`): one JSON line each, sorted by path and frame.

    Every shard is written, an empty one too, so a rerun replaces all of the
    previous run's. A shard is held in one worker's memory while it is
    sorted: give about one shard per 100,000 photos.

    Args:
        prefix: the output prefix (a local path or URL).
        num_shards: how many files.
        parquet: also write each shard as Parquet (`parquet_bytes`).
    """

    def __init__(self, prefix, num_shards=1, parquet=False):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be positive. Received: num_shards={num_shards}")
        self.prefix, self.num_shards, self.parquet = prefix, num_shards, parquet

    def expand(self, records):
        n = self.num_shards
        keyed = records | "Key" >> beam.Map(
            lambda r: (zlib.crc32(json.dumps(record_key(r)).encode("utf-8")) % n, r))
        every = records.pipeline | "EveryShard" >> beam.Create([(i, None) for i in range(n)])
        return ((keyed, every) | "Join" >> beam.Flatten() | "ByShard" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteShard(self.prefix, n, self.parquet)))


def remove_other_shards(prefix, num_shards, parquet=False):
    """Deletes the files an earlier run left under `prefix` that this one did not write; returns their paths.

    Those are shards of another count, and Parquet shards when this run wrote none.
    """
    stale = []
    for suffix in (".jsonl", ".parquet"):
        pattern = f"{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]{suffix}"
        for m in FileSystems.match([pattern])[0].metadata_list:
            if not m.path.endswith(f"-of-{num_shards:05d}{suffix}") or (suffix == ".parquet" and not parquet):
                stale.append(m.path)
    if stale:
        FileSystems.delete(stale)
    return stale
