"""The WSGI gateway in a real gunicorn (sync worker) on 127.0.0.1, with real HTTP requests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import apps
from tests.servers.net import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "error.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers=1",
            "--worker-class=sync",
            f"--bind=127.0.0.1:{port}",
            f"--error-logfile={log}",
            "--log-level=warning",
            "tests.servers.apps:wsgi",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(timeout=5)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "Error" not in text, text


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=5) as c:
        yield c


def test_request_through_the_gateway(client):
    r = client.get("/pets/1", headers={"origin": apps.ORIGIN})
    assert r.status_code == 200
    assert r.json()["routeKey"] == "GET /pets/{petId}"
    assert r.json()["sourceIp"] == "127.0.0.1"
    assert r.headers["x-amzn-requestid"]
    assert r.headers["access-control-allow-origin"] == apps.ORIGIN


def test_denial(client):
    r = client.get("/private", headers={"origin": apps.ORIGIN})
    assert r.status_code == 401
    assert r.json() == {"message": "Unauthorized"}
    assert r.headers["access-control-allow-origin"] == apps.ORIGIN


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_read_by_a_policy_and_replayed(client, chunked):
    data = bytes(range(256)) * 40
    content = iter([data[:5000], data[5000:]]) if chunked else data
    r = client.post("/upload", content=content)
    assert r.status_code == 200
    assert r.json()["length"] == len(data)
    assert r.json()["sha"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_over_the_limit(client, chunked):
    data = b"x" * 150_000
    content = iter([data[:80_000], data[80_000:]]) if chunked else data
    r = client.post("/upload", content=content)
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}


def test_malformed_content_length(server):
    import socket

    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n"
            b"Connection: close\r\n\r\n0123456789"
        )
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    # gunicorn refuses it itself, or the gateway answers 400: never a 500.
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), reply[:80]


def test_streamed_response(client):
    with client.stream("GET", "/events") as r:
        body = b"".join(r.iter_raw())
    assert r.status_code == 200
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
