"""Raw drivers for the tests that need exact control of ASGI messages or the WSGI environ.

The ``make_client`` fixture covers ordinary requests; these cover what a test client hides:
a body in several messages, a client that disconnects, a response streamed in parts, a
root path, a WSGI input without ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from apigw_mw import get_context


@dataclass
class AsgiResult:
    """Every message the gateway sent to the server."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def starts(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "http.response.start"]

    @property
    def status(self) -> int:
        (start,) = self.starts
        return int(start["status"])

    @property
    def headers(self) -> dict[str, str]:
        (start,) = self.starts
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}

    @property
    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    def json(self) -> Any:
        return json.loads(self.body)


def scope(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
    root_path: str = "",
    raw_path: bytes | None = None,
    query_string: bytes = b"",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    http_version: str = "1.1",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "root_path": root_path,
        "query_string": query_string,
        "headers": list(headers),
        "client": client,
        "server": ("testserver", 80),
    }


async def call(
    app: Any,
    scope_: dict[str, Any],
    chunks: Iterable[bytes] = (b"",),
    *,
    disconnect: bool = False,
) -> AsgiResult:
    """Send ``chunks`` as ``http.request`` messages (then ``http.disconnect`` if asked)."""
    chunk_list = list(chunks)
    queue: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunk_list) - 1}
        for i, c in enumerate(chunk_list)
    ]
    if disconnect:
        queue[-1]["more_body"] = True
        queue.append({"type": "http.disconnect"})
    result = AsgiResult()
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        result.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope_, receive, send)
    return result


def run(app: Any, scope_: dict[str, Any], chunks: Iterable[bytes] = (b"",), **kw: Any) -> Any:
    return asyncio.run(call(app, scope_, chunks, **kw))


class EchoApp:
    """A raw ASGI app that reads the whole body and answers it with what it saw."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.calls.append({"path": scope["path"], "disconnected": True})
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctx = get_context(scope)
        self.calls.append(
            {
                "path": scope["path"],
                "body": body,
                "route_key": ctx.route_key,
                "resource_path": ctx.resource_path,
                "path_parameters": dict(ctx.path_parameters),
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- WSGI ---------------------------------------------------------------------------------


def environ(
    method: str = "GET",
    path: str = "/",
    *,
    body: bytes = b"",
    content_length: str | None = None,
    terminated: bool = False,
    script_name: str = "",
    headers: dict[str, str] | None = None,
    remote_addr: str = "127.0.0.1",
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote_addr,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if content_length is not None:
        env["CONTENT_LENGTH"] = content_length
    if terminated:
        env["wsgi.input_terminated"] = True
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


@dataclass
class WsgiResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call_wsgi(app: Any, env: dict[str, Any]) -> WsgiResult:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"] = int(status.split(" ", 1)[0])
        captured["headers"] = {k.lower(): v for k, v in headers}
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return WsgiResult(captured["status"], captured["headers"], body)


class WsgiEcho:
    """A WSGI app that reads the body the way a framework does and echoes it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        body = stream.read(int(length)) if length else stream.read()
        ctx = get_context(environ)
        self.calls.append({"path": environ["PATH_INFO"], "body": body, "route_key": ctx.route_key})
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
