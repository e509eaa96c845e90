"""`facemtl align --runner beam`: the crops `facemtl align` writes, and its report."""

import json

import pytest

from facemtl.faces.align_folder import align_folder
from facemtl.faces.detect import get_detector
from facemtl.pipelines.align import align_collection
from tests.helpers import run_cli_here

pytestmark = pytest.mark.slow


def test_the_pipeline_writes_the_crops_align_folder_writes(collection, tmp_path):
    counts = align_collection(str(collection), str(tmp_path / "crops"), beam_args=["--direct_num_workers=2"])
    report = align_folder(str(collection), str(tmp_path / "local"), get_detector("blazeface"), progress=False)
    got = {p.relative_to(tmp_path / "crops"): p.read_bytes() for p in (tmp_path / "crops").rglob("*.png")}
    want = {p.relative_to(tmp_path / "local"): p.read_bytes() for p in (tmp_path / "local").rglob("*.png")}
    assert got == want and len(got) == report.aligned == counts["aligned"] == 3
    lines = [json.loads(line) for line in open(tmp_path / "crops-align-report-00000-of-00001.jsonl")]
    by_status = {}
    for line in lines:
        by_status.setdefault(line["status"], set()).add(line["path"])
    assert by_status["no face"] == set(report.no_face)
    assert by_status["several faces (largest kept)"] == set(report.several_faces)
    # align_folder lists readme.txt as unreadable; a pipeline's folder walk leaves it out by name, counted
    assert by_status["unreadable"] == set(report.unreadable) - {str(collection / "readme.txt")}
    assert counts["ignored"] == 1 and counts["unreadable"] == 3  # truncated, empty, and the video
    # A rerun redoes nothing: every crop is there already.
    r = run_cli_here("align", collection, tmp_path / "crops", "--runner", "beam")
    assert r.returncode == 0 and "0 aligned, 3 already cached" in r.stderr, r.stderr
