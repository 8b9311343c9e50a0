"""The ASGI gateway in a real uvicorn on 127.0.0.1, with real HTTP requests."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from tests.servers import apps
from tests.servers.net import free_port, wait_for_port


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        apps.asgi(max_body_size=100_000, integration_timeout=0.3),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        log_level="warning",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=5) as c:
        yield c


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_request_through_the_gateway(client, quiet):
    r = client.get("/pets/1", headers={"origin": apps.ORIGIN})
    assert r.status_code == 200
    assert r.json()["routeKey"] == "GET /pets/{petId}"
    assert r.json()["sourceIp"] == "127.0.0.1"
    assert r.headers["x-amzn-requestid"]
    assert r.headers["access-control-allow-origin"] == apps.ORIGIN


def test_denial(client, quiet):
    r = client.get("/private")
    assert r.status_code == 401
    assert r.json() == {"message": "Unauthorized"}


def test_chunked_upload_read_by_a_policy_and_replayed(client, quiet):
    parts = [bytes(range(256)) * 40, b"tail" * 100]
    r = client.post("/upload", content=iter(parts))  # an iterator is sent chunked
    assert r.status_code == 200
    data = b"".join(parts)
    assert r.json()["length"] == len(data)
    assert r.json()["sha"] == hashlib.sha256(data).hexdigest()


def test_chunked_upload_over_the_limit(client, quiet):
    r = client.post("/upload", content=iter([b"x" * 60_000, b"y" * 60_000]))
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}


def test_streamed_response_arrives_in_parts(client, quiet):
    with client.stream("GET", "/events") as r:
        chunks = list(r.iter_raw())
    assert r.status_code == 200
    assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_integration_timeout(client, quiet):
    started = time.monotonic()
    r = client.get("/slow")
    assert r.status_code == 504
    assert r.json() == {"message": "Endpoint request timed out"}
    assert time.monotonic() - started < 2


def test_client_disconnect_mid_body_is_quiet(server, client, quiet):
    port = int(server.rsplit(":", 1)[1])
    before = len(apps.calls)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
        time.sleep(0.05)
    time.sleep(0.2)
    assert client.get("/pets/2").status_code == 200  # the server is fine
    assert apps.calls[before:] == ["/pets/2"]  # the cut upload never reached the app


def test_odd_request_lines_and_headers(client, quiet, server):
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(
            b"GET /pets/%ff%2F..//x HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\xfe\r\n"
            b"X-Amzn-RequestId: \xff\r\nConnection: close\r\n\r\n"
        )
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"x-amzn-requestid" in reply.lower()
