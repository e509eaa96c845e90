"""Writing small files so that a crash never leaves a half-written one in place of a good one."""

from __future__ import annotations

import json
import os
import uuid


def write_json_atomically(path, data, indent=None):
    """Writes `data` as JSON to a temporary file beside `path`, then renames it over `path`.

    A crash or an error mid-write leaves the previous file as it was (and no
    temporary file behind).
    """
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
