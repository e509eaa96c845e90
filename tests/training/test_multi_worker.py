"""Two worker processes on 127.0.0.1 (MultiWorkerMirroredStrategy, custom loop) vs one process."""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import QUICKSTART, REPO

pytestmark = pytest.mark.slow

# Same global batch, same data order, no dropout or augmentation randomness,
# BatchNormalization synchronised across workers: the runs must agree.
OVERRIDES = ["train.loop=custom", "train.epochs=2", "model.dropout=0.0", "data.augment.flip=false",
             "model.sync_batchnorm=true", "export.enabled=false"]
TOLERANCE = 2e-3  # relative, on every logged loss and metric


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_two_workers_match_one_process(tmp_path):
    from facemtl.config import load_recipe
    from facemtl.training.trainer import train

    # The one-process reference runs here (this process has TensorFlow started); the workers are real processes.
    single_dir = tmp_path / "single"
    train(load_recipe(QUICKSTART, smoke=True, overrides=[*OVERRIDES, f"output_dir={tmp_path / 'runs'}"]),
          run_dir=str(single_dir), log=lambda *_: None)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = ["--smoke", *(arg for o in OVERRIDES for arg in ("--set", o))]

    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    multi_dir = tmp_path / "multi"
    procs = []
    for index in range(2):
        worker_env = {**env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "facemtl", "train", QUICKSTART, *common, "--set", "train.strategy=multi_worker",
             "--run-dir", str(multi_dir), "--set", f"output_dir={tmp_path / 'runs'}"],
            cwd=REPO, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert "with 2 replica(s)" in outputs[0][0], outputs[0][0]

    a, b = _history(single_dir), _history(multi_dir)
    assert len(a) == len(b) == 2
    for row_a, row_b in zip(a, b):
        for key in row_a:
            np.testing.assert_allclose(float(row_b[key]), float(row_a[key]), rtol=TOLERANCE, atol=1e-4, err_msg=key)
    # Only the chief writes the run's files; no worker left a backup behind.
    assert (multi_dir / "summary.json").is_file() and not (multi_dir / "backup").exists()
