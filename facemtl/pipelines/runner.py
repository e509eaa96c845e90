"""Beam's pipeline options from a facemtl command line, running a pipeline, and its counters."""

from __future__ import annotations

import logging

from facemtl.pipelines import LOCAL, require_beam

# The counters' namespace (`facemtl analyze --runner beam` prints them; Dataflow's UI shows them).
NAMESPACE = "facemtl"
# `--runner beam`: Beam's local runner for batch jobs. Beam's `DirectRunner` first tries to download and start the
# Prism runner (a Go binary) on every run, which fails offline; `FnApiRunner` is what it falls back to.
LOCAL_BEAM_RUNNER = "FnApiRunner"


def _beam_actions():
    """Beam's own command-line options (every `PipelineOptions` subclass), by option string."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)  # the same walk as PipelineOptions.get_all_options
    return parser._option_string_actions


def split_beam_args(argv, ours):
    """Splits a command line into facemtl's arguments and Beam's pipeline options.

    An option that facemtl does not have and Beam does (`--direct_num_workers 2`,
    `--flink_master=host:8081`, `--project p`...) goes to Beam with its value,
    written either way; everything else stays facemtl's (a typo is then reported
    by facemtl's own parser).

    Args:
        argv: the command line (without the program name).
        ours: facemtl's option strings.

    Returns:
        `(facemtl_argv, beam_argv)`.

    Example:
        >>> split_beam_args(["analyze", "x/", "--direct_num_workers", "2"], {"--out"})
        (['analyze', 'x/'], ['--direct_num_workers', '2'])
    """
    require_beam()
    actions = _beam_actions()
    mine, beam, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token.startswith("--") and name not in ours and name in actions:
            beam.append(token)
            if "=" not in token and actions[name].nargs != 0 and i + 1 < len(argv):
                beam.append(argv[i + 1])
                i += 1
        else:
            mine.append(token)
        i += 1
    return mine, beam


def pipeline_options(runner="beam", beam_args=()):
    """Beam `PipelineOptions` for facemtl's `--runner` value and Beam's own arguments.

    Args:
        runner: `"beam"` (Beam's local runner, in this process; with
            `--direct_num_workers N` it runs N worker threads) or a Beam runner
            name (`DirectRunner`, `PrismRunner`, `FlinkRunner`, `SparkRunner`,
            `DataflowRunner`...), passed to Beam unchanged.
        beam_args: Beam's command-line options, e.g. `["--direct_num_workers=2"]`.

    Returns:
        `apache_beam.options.pipeline_options.PipelineOptions`.
    """
    require_beam()
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    if runner == LOCAL:
        raise ValueError(f"runner 'local' runs in this process, without Beam. Received: runner={runner!r}")
    options = PipelineOptions(list(beam_args), runner=LOCAL_BEAM_RUNNER if runner == "beam" else runner)
    direct = options.view_as(DirectOptions)
    given = " ".join(beam_args)
    if direct.direct_num_workers != 1 and "--direct_running_mode" not in given:
        # Threads share the worker's one model; processes would each load their own (measured slower on 2 cores).
        direct.direct_running_mode = "multi_threading"
    return options


def run_pipeline(pipeline):
    """Runs a built pipeline to its end; returns the `facemtl` counters as `{name: value}`."""
    from apache_beam.metrics.metric import MetricsFilter

    # Beam logs every stage at INFO; a user wants facemtl's summary.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + (value or 0)
    return counters


def counter(name):
    """A `facemtl` counter (photos, faces, unreadable...)."""
    from apache_beam.metrics import Metrics

    return Metrics.counter(NAMESPACE, name)
