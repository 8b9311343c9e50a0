"""Drive a gateway with a hand-built ASGI scope or WSGI environ.

The shared client builds scopes from URLs; the cases here need what a URL cannot carry: the
ASGI TLS extension, raw request targets (spaces, UTF-8 bytes), folded or repeated headers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from apigw_mw import GatewayMiddleware, WSGIGatewayMiddleware, get_context


@dataclass
class Outcome:
    status: int
    headers: dict[str, str]
    body: bytes
    seen: list[Any] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Direct:
    """One gateway in front of a recording app, driven through ``kind`` ("asgi"/"wsgi")."""

    def __init__(self, kind: str, policies: Sequence[Any], **options: Any) -> None:
        self.kind = kind
        self.seen: list[Any] = []
        if kind == "asgi":

            async def app(scope: Any, receive: Any, send: Any) -> None:
                body = b""
                while True:
                    message = await receive()
                    body += message.get("body", b"")
                    if not message.get("more_body"):
                        break
                self.seen.append((get_context(scope), body))
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})

            self.app: Any = GatewayMiddleware(app, policies=policies, **options)
        else:

            def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length) if length else b""
                self.seen.append((get_context(environ), body))
                start_response("200 OK", [("Content-Length", "2")])
                return [b"ok"]

            self.app = WSGIGatewayMiddleware(wsgi_app, policies=policies, **options)

    def call(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        peer: str = "127.0.0.1",
        tls: dict[str, Any] | None = None,
        environ_extra: dict[str, Any] | None = None,
    ) -> Outcome:
        """Send one request; ``target`` is the raw request target (path and query)."""
        before = len(self.seen)
        path, _, query = target.partition(b"?")
        if self.kind == "asgi":
            out = anyio.run(self._asgi, method, path, query, headers, body, peer, tls)
        else:
            out = self._wsgi(method, path, query, headers, body, peer, environ_extra or {})
        out.seen = self.seen[before:]
        return out

    async def _asgi(
        self,
        method: str,
        path: bytes,
        query: bytes,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        peer: str,
        tls: dict[str, Any] | None,
    ) -> Outcome:
        from urllib.parse import unquote_to_bytes

        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if body:
            raw_headers.append((b"content-length", str(len(body)).encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https" if tls is not None else "http",
            "path": unquote_to_bytes(path).decode("utf-8", "replace"),
            "raw_path": path,
            "root_path": "",
            "query_string": query,
            "headers": raw_headers,
            "client": (peer, 51000),
            "server": ("127.0.0.1", 443),
        }
        if tls is not None:
            scope["extensions"] = {"tls": tls}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        status = 0
        out_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", []):
                    out_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return Outcome(status, out_headers, b"".join(chunks))

    def _wsgi(
        self,
        method: str,
        path: bytes,
        query: bytes,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        peer: str,
        extra: dict[str, Any],
    ) -> Outcome:
        from urllib.parse import unquote_to_bytes

        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "RAW_URI": path.decode("latin-1") + ("?" + query.decode("latin-1") if query else ""),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "443",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": peer,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if body:
            environ["CONTENT_LENGTH"] = str(len(body))
        for k, v in headers:
            key = k.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = v
                continue
            key = "HTTP_" + key
            # Servers join repeated headers with a comma (gunicorn, uWSGI).
            environ[key] = f"{environ[key]},{v}" if key in environ else v
        environ.update(extra)
        status = 0
        out_headers: dict[str, str] = {}

        def start_response(s: str, hs: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = int(s[:3])
            out_headers.update({k.lower(): v for k, v in hs})
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Outcome(status, out_headers, data)
