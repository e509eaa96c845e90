"""Where galleries live: one interface over the embedded store and Milvus, chosen by a URI.

| `--store` / `store=` | store |
|---|---|
| a folder (default `$FACEMTL_GALLERIES`, `$FACEMTL_HOME/galleries` or `~/.facemtl/galleries`) | embedded: SQLite + HNSW index, no server (`local.py`) |
| `milvus://host:19530[/database]`, `milvus+https://host[:port][/database]` | a Milvus server or cluster (`milvus.py`) |
| `milvus-lite:PATH` | Milvus Lite in a local folder (one process at a time) |

A store is opened once per process and kept (`open_store`): the server and
long-running Python code reuse one connection or client.
"""

from __future__ import annotations

import os
import threading
import urllib.parse

from facemtl.errors import GalleryError
from facemtl.recognition.stores.local import LocalStore
from facemtl.recognition.stores.milvus import MilvusStore

__all__ = ["LocalStore", "GalleryError", "default_store", "open_store"]

_OPEN = {}
_OPEN_LOCK = threading.Lock()


def default_store():
    """`$FACEMTL_GALLERIES`, else `$FACEMTL_HOME/galleries` when `FACEMTL_HOME` is set, else `~/.facemtl/galleries`."""
    if os.environ.get("FACEMTL_GALLERIES"):
        return os.environ["FACEMTL_GALLERIES"]
    if os.environ.get("FACEMTL_HOME"):
        return os.path.join(os.environ["FACEMTL_HOME"], "galleries")
    return os.path.join(os.path.expanduser("~"), ".facemtl", "galleries")


def open_store(uri=None):
    """The store named by `uri` (see the module docstring), opened once per process.

    Args:
        uri: a folder path or a `milvus://`, `milvus+https://` or `milvus-lite:` URI;
            `None` for `default_store()`. A Milvus token comes from `$FACEMTL_MILVUS_TOKEN`.

    Raises:
        GalleryError: an unknown scheme, or a Milvus store without pymilvus or out of reach.
    """
    uri = str(uri or default_store())
    key = uri if "://" in uri or uri.startswith("milvus-lite:") else os.path.abspath(uri)
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = _connect(uri)
        return _OPEN[key]


def _connect(uri):
    if uri.startswith("milvus-lite:"):
        path = os.path.abspath(os.path.expanduser(uri[len("milvus-lite:"):]))
        if not path.endswith(".db"):
            raise GalleryError(f"A Milvus Lite store is a path ending in .db. Received: {uri!r}")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return MilvusStore(path, display=uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("milvus", "milvus+http", "milvus+https"):
        if not parsed.hostname:
            raise GalleryError(f"A Milvus URI names a host: milvus://HOST:19530[/database]. Received: {uri!r}")
        scheme = "https" if parsed.scheme == "milvus+https" else "http"
        port = parsed.port or (443 if scheme == "https" else 19530)
        return MilvusStore(f"{scheme}://{parsed.hostname}:{port}", token=os.environ.get("FACEMTL_MILVUS_TOKEN"),
                           db_name=parsed.path.strip("/") or None, display=uri)
    if "://" in uri:
        raise GalleryError(f"Unknown gallery store {uri!r}: use a folder, milvus://HOST:PORT, milvus+https://HOST "
                         "or milvus-lite:PATH.db")
    return LocalStore(uri)


def close_stores():
    """Closes every store opened by `open_store` (tests, and processes that hand a Milvus Lite folder on)."""
    with _OPEN_LOCK:
        for store in _OPEN.values():
            store.close()
        _OPEN.clear()
