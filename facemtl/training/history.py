"""The run folder's `history.csv`: read it whole, or cut it back to the epochs a backup holds."""

from __future__ import annotations

import csv
import os

from facemtl.files import write_text_atomically


def truncate_history(path, epochs):
    """Keeps the CSV rows of the first `epochs` epochs (the ones the backup holds)."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
                        and int(line.split(",", 1)[0]) < epochs]
    write_text_atomically(path, "".join(kept))


def read_history(path):
    """The whole run's per-epoch logs (a resumed run's `fit` only returns its own part)."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # CSVLogger writes "NA" for a value an epoch did not log.
    return {k: [float(r[k]) if r[k] not in ("", "NA") else float("nan") for r in rows]
            for k in (rows[0] if rows else {}) if k != "epoch"}
