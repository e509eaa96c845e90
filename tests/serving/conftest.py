"""A live `facemtl serve` process on a free local port, shared by the serving tests."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

API_KEY = "test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port, process, store):
        self.port = port
        self.process = process
        self.store = store
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method, path, body=None, headers=None, timeout=120):
        """`(status, parsed JSON or raw bytes, headers)`; `body` may be bytes or a JSON-able object."""
        headers = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.getheader("content-type", "").startswith("application/json"):
            data = json.loads(data)
        return response.status, data, dict(response.getheaders())


    def raw_request(self, method, path, headers, chunks=()):
        """Sends the headers, then `chunks` in chunked encoding (none: only the headers); `(status, JSON)`.

        With a big Content-Length and no body this is a client waiting for the
        server's verdict before sending, so an early 413 cannot race the upload.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            for chunk in chunks:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if chunks:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


def start_server(tmp_path, *extra):
    port = free_port()
    store = tmp_path / "galleries"
    log = open(tmp_path / f"server-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "facemtl", "serve", "--port", str(port), "--store", str(store),
         "--api-key", API_KEY, "--max-body-mb", "2", "--log-level", "warning", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    server = Server(port, process, store)
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"facemtl serve exited: {(tmp_path / f'server-{port}.log').read_text()}")
        try:
            if server.request("GET", "/readyz", timeout=5)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("facemtl serve did not become ready in 180 s")


def stop_server(server):
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=60)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`facemtl serve` with the release model, an API key and a 2 MB body limit."""
    srv = start_server(tmp_path_factory.mktemp("serve"))
    yield srv
    stop_server(srv)
