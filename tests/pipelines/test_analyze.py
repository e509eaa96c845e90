"""`facemtl analyze --runner beam`: the same lines as `facemtl analyze`, dead letters, retries, real photos."""

import glob
import json
import os
import random
import re

import pytest

from facemtl.pipelines.analyze import analyze_collection
from tests.helpers import SHARED_DATA, analyze_here, assert_same_answers, read_shards, run_cli_here

pytestmark = pytest.mark.slow


def pipeline_answers(prefix):
    records, _ = read_shards(prefix)
    dead, _ = read_shards(f"{prefix}-dead-letter")
    return {(r["path"], r.get("frame")): r for r in records + dead}


def test_the_pipeline_writes_what_analyze_writes(collection, tmp_path):
    counts = analyze_collection([str(collection)], str(tmp_path / "out" / "answers"), num_shards=3, every=2,
                                beam_args=["--direct_num_workers=2"])
    got = pipeline_answers(tmp_path / "out" / "answers")
    want = analyze_here([str(collection)], every=2)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_same_answers(got[key], want[key])
    frames = [k for k in want if k[1] is not None]
    assert [k[1] for k in sorted(frames)] == [0, 2, 4]
    assert counts == {"photos": 4, "frames": 3, "unreadable": 2, "ignored": 1,
                      "faces": sum(len(r.get("faces", [])) for r in want.values())}
    assert counts["faces"] >= 6  # the astronaut in each photo and frame


def test_bad_files_go_to_the_dead_letter_file_and_the_summary(collection, tmp_path):
    out = tmp_path / "run" / "faces"
    r = run_cli_here("analyze", collection, "--runner", "beam", "--out", out, "--direct_num_workers", "2",
                     "--parquet", "--num-shards", "2")
    assert r.returncode == 1, r.stderr  # as `facemtl analyze`: some files could not be read
    dead = [json.loads(line) for line in open(f"{out}-dead-letter-00000-of-00001.jsonl")]
    assert {os.path.basename(d["path"]) for d in dead} == {"truncated.jpg", "empty.png"}
    assert all(d["error"].startswith(d["path"] + ": ") for d in dead)
    assert re.search(r"analysed \d+ photo\(s\)/frame\(s\) in [0-9.]+ s on beam .* 2 unreadable file\(s\), 1 file\(s\) "
                     r"in folders ignored .*of-00002\.jsonl and \.parquet, unreadable files in .*dead-letter", r.stderr)
    assert len(glob.glob(f"{out}-*-of-00002.parquet")) == 2
    records, _ = read_shards(out)
    assert records and all("embedding" not in f for r in records for f in r["faces"])
    r = run_cli_here("analyze", collection, "--runner", "beam", "--annotate", tmp_path / "pics", "--out", out)
    assert r.returncode == 2 and "--annotate is not available with --runner beam" in r.stderr
    r = run_cli_here("analyze", collection, "--runner", "beam")
    assert r.returncode == 2 and "give --out PREFIX" in r.stderr


def test_a_worker_failing_once_loses_and_duplicates_nothing(collection, tmp_path, monkeypatch):
    """Beam's bundle-based local runner retries a failed bundle, as Dataflow and Flink do."""
    import facemtl.pipelines.analyze as pipeline

    photos = [str(collection / "astronaut.jpg"), str(collection / "trip")]
    clean = tmp_path / "clean" / "out"
    analyze_collection(photos, str(clean), num_shards=2, runner="BundleBasedDirectRunner")
    failed = []
    real = pipeline.read_photo

    def fails_once(path, max_side=None):
        if path.endswith("mirror.png") and not failed:
            failed.append(path)
            raise RuntimeError("worker lost")  # not the file's fault: the bundle is retried
        return real(path, max_side)

    monkeypatch.setattr(pipeline, "read_photo", fails_once)
    retried = tmp_path / "retried" / "out"
    counts = analyze_collection(photos, str(retried), num_shards=2, runner="BundleBasedDirectRunner")
    assert failed  # the failure happened, and the run still ended
    assert counts["photos"] == 4 and counts["unreadable"] == 2  # committed counts: the failed attempt is not counted
    for name in ("out-00000-of-00002.jsonl", "out-00001-of-00002.jsonl", "out-dead-letter-00000-of-00001.jsonl"):
        assert (retried.parent / name).read_bytes() == (clean.parent / name).read_bytes()


def shared_photos(n=200, seed=0):
    """`n` real photos: CelebA in-the-wild scenes, LFW and ORL faces (fixed sample)."""
    pools = [sorted(glob.glob(os.path.join(SHARED_DATA, "celeba_subset", "img_celeba", "*.jpg"))),
             sorted(glob.glob(os.path.join(SHARED_DATA, "lfw_subset", "test", "*", "*.jpg"))),
             sorted(glob.glob(os.path.join(SHARED_DATA, "orl", "att_faces", "s*", "*.pgm")))]
    rng = random.Random(seed)
    return rng.sample(pools[0], 100) + rng.sample(pools[1], 50) + rng.sample(pools[2], 50)


@pytest.mark.shared_data
def test_same_answers_as_analyze_on_200_real_photos(tmp_path):
    photos = shared_photos()
    analyze_collection(photos, str(tmp_path / "answers"), num_shards=4, beam_args=["--direct_num_workers=2"])
    got = pipeline_answers(tmp_path / "answers")
    want = analyze_here(photos)
    assert sorted(got) == sorted(want) and len(want) == 200
    assert sum(len(r.get("faces", [])) for r in want.values()) >= 180
    for key in want:
        assert_same_answers(got[key], want[key], age=0.1, prob=1e-4)
