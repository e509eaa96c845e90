"""Inputs matched on Beam's filesystems; sharded output that reruns and retries write identically."""

import json
import os

import apache_beam as beam
import pytest

from facemtl.errors import FacemtlError, ImageError
from facemtl.pipelines.io import WriteShards, input_patterns, read_photo, remove_other_shards
from facemtl.pipelines.runner import pipeline_options, run_pipeline
from tests.helpers import read_shards


def write(records, prefix, shards, parquet=False):
    p = beam.Pipeline(options=pipeline_options("beam"))
    p | beam.Create(records) | WriteShards(str(prefix), shards, parquet)
    run_pipeline(p)


def test_shards_are_sorted_complete_and_byte_identical_on_a_rerun(tmp_path):
    records = [{"path": f"p{i % 7}.jpg", "size": [2, 3], "faces": [{"n": i}], **({"frame": i} if i % 2 else {})}
               for i in range(40)]
    write(records, tmp_path / "a" / "out", 3, parquet=True)
    got, files = read_shards(tmp_path / "a" / "out")
    assert [os.path.basename(f) for f in files] == [f"out-0000{i}-of-00003.jsonl" for i in range(3)]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, records))  # none lost, none twice
    for f in files:
        lines = [json.loads(line) for line in open(f)]
        assert lines == sorted(lines, key=lambda r: (r["path"], r.get("frame", -1), json.dumps(r)))
    first = {f: open(f, "rb").read() for f in files}
    write(list(reversed(records)), tmp_path / "a" / "out", 3, parquet=True)  # another order, another bundling
    assert {f: open(f, "rb").read() for f in files} == first
    import pyarrow.parquet as pq

    table = pq.read_table(str(tmp_path / "a" / "out-00000-of-00003.parquet"))
    assert table.column_names == ["path", "frame", "height", "width", "faces"]
    # An empty shard is written too, and a rerun with fewer shards leaves none of the old ones behind.
    write(records[:1], tmp_path / "a" / "out", 2)
    assert sorted(remove_other_shards(str(tmp_path / "a" / "out"), 2)) == sorted(
        [str(tmp_path / "a" / f"out-0000{i}-of-00003.{ext}") for i in range(3) for ext in ("jsonl", "parquet")])
    got, files = read_shards(tmp_path / "a" / "out")
    assert got == records[:1] and len(files) == 2 and not list((tmp_path / "a").glob(".tmp*"))


def test_inputs_folders_are_walked_files_and_globs_taken_as_named(tmp_path):
    (tmp_path / "f").mkdir()
    assert input_patterns([str(tmp_path / "f"), "gs://b/photos/", "x.jpg", "gs://b/*.png"]) == [
        (str(tmp_path / "f" / "**"), str(tmp_path / "f"), True), ("gs://b/photos/**", "gs://b/photos/", True),
        ("x.jpg", None, False), ("gs://b/*.png", None, False)]
    with pytest.raises(FacemtlError, match="camera:0: a camera cannot be read by a pipeline"):
        input_patterns(["camera:0"])


def test_a_photo_read_through_beam_names_its_path_in_errors(tmp_path, monkeypatch):
    import facemtl.pipelines.io as pio

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    monkeypatch.setattr(pio, "is_local", lambda path: False)  # read as bytes, as from gs:// or s3://
    with pytest.raises(ImageError, match=f"^{bad}: not a readable image"):
        read_photo(str(bad))
