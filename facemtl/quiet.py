"""Keeps the native libraries' log lines (TensorFlow, absl, oneDNN, LiteRT) off the user's terminal.

TensorFlow 2.21 and LiteRT write their start-up lines from C++ straight to file
descriptor 2, before and regardless of `TF_CPP_MIN_LOG_LEVEL`. The `facemtl`
command therefore points descriptor 2 at a log file and gives Python's
`sys.stderr` (facemtl's own messages, progress, errors and tracebacks) a copy of
the terminal's descriptor. `--verbose` leaves everything as it is.

Example:
    >>> path = route_native_logs()   # first thing in a command-line entry point
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

# The native log is rotated when a command starts and finds it larger than this.
MAX_LOG_BYTES = 4 << 20
VERBOSE_HELP = "also show TensorFlow's, absl's, oneDNN's and LiteRT's own log lines (hidden by default)"
# Modules whose Python warnings are library chatter, not facemtl's answers.
_LIBRARIES = r"(keras|tensorflow|tf_keras|absl|google|ai_edge_litert|mtcnn|h5py)(\..*)?$"


def native_log_path():
    """`$FACEMTL_NATIVE_LOG`, else `facemtl-native-<uid>.log` in the temporary folder."""
    return os.environ.get("FACEMTL_NATIVE_LOG") or os.path.join(tempfile.gettempdir(),
                                                                 f"facemtl-native-{os.getuid()}.log")


def _not_beam_chatter(record):
    """False for a record Apache Beam logged on the root logger."""
    return f"{os.sep}apache_beam{os.sep}" not in record.pathname


def route_native_logs(verbose=False):
    """Sends what native code writes to stderr into `native_log_path()`; Python's stderr keeps the terminal.

    The log is bounded: a command that finds it over `MAX_LOG_BYTES` moves it
    to `<log>.1` (replacing the older copy) and starts a new one.

    Call it once, at the start of a process (the CLI's entry point), before
    TensorFlow is imported. Library warnings and absl/TensorFlow Python logs
    below ERROR are silenced too.

    Returns:
        The log file's path, or `None` when `verbose` (nothing changed).
    """
    if verbose:
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", module=_LIBRARIES)
    for name in ("absl", "tensorflow", "keras", "h5py", "apache_beam"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Apache Beam warns on the root logger itself (optional GCP clients missing, no memory metrics): those records
    # are dropped; facemtl's own loggers (skipped files...) keep the root's level.
    logging.getLogger().addFilter(_not_beam_chatter)
    path = native_log_path()
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > MAX_LOG_BYTES:  # bounded: one older copy kept beside it
            os.replace(path, path + ".1")
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:  # no writable temporary folder: keep the chatter rather than lose messages
        return None
    os.dup2(log, 2)
    os.close(log)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = io.TextIOWrapper(os.fdopen(terminal, "wb", buffering=0), encoding=encoding,
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    return path
