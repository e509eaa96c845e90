"""Photo collections bigger than one machine: `analyze`, `align` and gallery enrolment on Apache Beam.

The same commands as in one process (`facemtl analyze --runner beam ...`), on
Beam's local runner or on Flink, Spark and Dataflow with Beam's own options.
Each pipeline calls the code its one-process command uses (`FaceAnalyzer`,
`main_face_crop`, `Embedder`, `Gallery.enroll_new`): there is no second copy
of the detect/align/answer logic. See docs/pipelines.md.

Modules: `runner` (pipeline options, running, counters), `io` (matching
inputs, reading photos on any Beam filesystem, deterministic sharded output),
`analyze`, `align`, `enroll` (one pipeline each).

Apache Beam is optional: `pip install "facemtl[beam]"`.
"""

from __future__ import annotations

from facemtl.errors import FacemtlError

INSTALL_HINT = 'pip install "facemtl[beam]"'
# `--runner local` (the default) runs a command in this process; anything else is Beam.
LOCAL = "local"


def require_beam():
    """Imports Apache Beam, or says in one line what to install."""
    try:
        import apache_beam  # noqa: F401
    except ImportError as exc:
        raise FacemtlError(f"--runner beam needs Apache Beam, which is not installed: {INSTALL_HINT}") from exc
