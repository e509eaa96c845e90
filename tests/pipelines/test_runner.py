"""Beam's options from a facemtl command line, and `--runner` without Beam."""

import sys

import pytest

from facemtl.pipelines.runner import pipeline_options, split_beam_args
from tests.helpers import run_cli_here


def test_beam_options_go_to_beam_with_their_values_written_either_way():
    mine, beam = split_beam_args(
        ["analyze", "photos/", "--direct_num_workers", "2", "--out", "x", "--project=p", "--save_main_session",
         "--runner", "beam", "--no-such-option"], {"--out", "--runner"})
    assert mine == ["analyze", "photos/", "--out", "x", "--runner", "beam", "--no-such-option"]
    assert beam == ["--direct_num_workers", "2", "--project=p", "--save_main_session"]


def test_local_beam_runner_runs_workers_as_threads_unless_told():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    options = pipeline_options("beam", ["--direct_num_workers=2"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"  # no Prism download attempt
    assert options.view_as(DirectOptions).direct_running_mode == "multi_threading"
    options = pipeline_options("beam", ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert pipeline_options("FlinkRunner", ["--flink_master=h:8081"]).view_as(StandardOptions).runner == "FlinkRunner"
    with pytest.raises(ValueError, match="runner='local'"):
        pipeline_options("local")


def test_beam_options_without_a_beam_runner_are_refused():
    r = run_cli_here("analyze", "x.jpg", "--direct_num_workers", "2")
    assert r.returncode == 2 and "unrecognized arguments: --direct_num_workers 2" in r.stderr


def test_runner_beam_without_apache_beam_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    r = run_cli_here("analyze", "x.jpg", "--runner", "beam", "--out", "o")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        'facemtl: error: --runner beam needs Apache Beam, which is not installed: pip install "facemtl[beam]"']
