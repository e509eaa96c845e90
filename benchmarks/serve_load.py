"""Load test of `facemtl serve`: throughput, latency percentiles, errors and memory, on 127.0.0.1 only.

Starts the server (the release model unless `--model`) as a child process, then,
for each workload and concurrency (1, 8, 32 clients, each on a keep-alive
connection, sending one request after another), sends at most `--requests`
requests or for at most `--seconds`, whichever ends first:

- `crops`: `POST /v1/models/<name>:predict` with one 150x150 JPEG face crop as
  `{"b64": ...}` (what TF Serving clients send);
- `photos`: `POST /v1/analyze` with a 512x512 JPEG photo (MTCNN, align, model).

It then sends `--memory-requests` (10,000) crop requests at concurrency 8 and
reports the server's resident memory before and after. With `--compare-batching`
the crop workload is also run on a second server with batching off
(`--max-batch-size 1 --max-wait-ms 0`): the gain of dynamic batching.

    python benchmarks/serve_load.py [--model DIR] [--compare-batching]

Results: runs/benchmarks/serve_load.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from _runs import write_results


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start(model, extra, log_path):
    port = free_port()
    args = [sys.executable, "-m", "facemtl", "serve", "--port", str(port), "--log-level", "warning", *extra]
    if model:
        args += ["--model", model]
    process = subprocess.Popen(args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited; see {log_path}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            ready = conn.getresponse()
            body = json.loads(ready.read())
            conn.close()
            if ready.status == 200:
                return process, port, body["model"]
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not become ready in 300 s")


def load(port, method, path, body, headers, concurrency, max_requests, max_seconds):
    """Closed-loop clients; returns throughput, latency percentiles (ms) and the error count."""
    latencies, errors, lock = [], [], threading.Lock()
    sent = [0]
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        start_gate.wait()
        while True:
            with lock:
                if sent[0] >= max_requests or time.perf_counter() > stop_at[0]:
                    break
                sent[0] += 1
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors.append(1)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + max_seconds
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": len(errors)}


def workloads(name):
    from PIL import Image
    from skimage import data

    photo = data.astronaut()
    crop = np.asarray(Image.fromarray(photo[50:190, 170:280]).resize((150, 150)))

    def jpeg(array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    crop_body = json.dumps({"instances": [{"b64": base64.b64encode(jpeg(crop)).decode()}]}).encode()
    return {
        "crops": ("POST", f"/v1/models/{name}:predict", crop_body, {"Content-Type": "application/json"}),
        "photos": ("POST", "/v1/analyze", jpeg(photo), {"Content-Type": "image/jpeg"}),
    }


def run_server(label, model, extra, args, out_dir, kinds, memory):
    process, port, name = start(model, extra, os.path.join(out_dir, f"server-{label}.log"))
    results = {"server_args": extra, "workloads": {}}
    try:
        work = workloads(name)
        for kind in kinds:
            method, path, body, headers = work[kind]
            load(port, method, path, body, headers, 2, 10, 30)  # warm-up: graphs traced, batch shapes seen
            rows = []
            for concurrency in args.concurrency:
                limit = args.requests if kind == "crops" else args.photo_requests
                row = load(port, method, path, body, headers, concurrency, limit, args.seconds)
                rows.append(row)
                print(f"{label:>10} {kind:>6} c={concurrency:<3} {row['throughput_rps']:>7.1f} req/s  p50 "
                      f"{row['p50_ms']:>7.1f}  p95 {row['p95_ms']:>7.1f}  p99 {row['p99_ms']:>7.1f} ms  "
                      f"errors {row['errors']}", flush=True)
            results["workloads"][kind] = rows
        if memory:
            method, path, body, headers = work["crops"]
            before = rss_mb(process.pid)
            row = load(port, method, path, body, headers, 8, args.memory_requests, 3600)
            after = rss_mb(process.pid)
            results["memory"] = {"requests": row["requests"], "errors": row["errors"], "rss_before_mb": round(before, 1),
                                 "rss_after_mb": round(after, 1), "growth_mb": round(after - before, 1)}
            print(f"{label:>10} memory: {row['requests']} crop requests, RSS {before:.0f} -> {after:.0f} MB, "
                  f"errors {row['errors']}", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the release model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="most crop requests per concurrency level")
    parser.add_argument("--photo-requests", type=int, default=200, help="most photo requests per level")
    parser.add_argument("--seconds", type=float, default=20, help="most seconds per level")
    parser.add_argument("--memory-requests", type=int, default=10000)
    parser.add_argument("--compare-batching", action="store_true")
    parser.add_argument("--max-wait-ms", type=float, help="the batched server's batching wait (default: serve's)")
    parser.add_argument("--only", nargs="+", choices=["crops", "photos"], default=["crops", "photos"])
    parser.add_argument("--out", default="runs/benchmarks/serve_load.json")
    args = parser.parse_args()
    out_dir = os.path.dirname(args.out) or "."
    os.makedirs(out_dir, exist_ok=True)
    results = {"command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
               "batched": run_server("batched", args.model,
                                     [] if args.max_wait_ms is None else ["--max-wait-ms", str(args.max_wait_ms)],
                                     args, out_dir, args.only, args.memory_requests > 0)}
    if args.compare_batching:
        results["batch_of_one"] = run_server("unbatched", args.model, ["--max-batch-size", "1", "--max-wait-ms", "0"],
                                             args, out_dir, ["crops"], False)
        gain = {}
        for a, b in zip(results["batched"]["workloads"]["crops"], results["batch_of_one"]["workloads"]["crops"]):
            gain[str(a["concurrency"])] = round(a["throughput_rps"] / b["throughput_rps"], 2)
        results["batching_gain_crops"] = gain
        print(f"dynamic batching gain (crops/s, batched / batch of one) by concurrency: {gain}")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
