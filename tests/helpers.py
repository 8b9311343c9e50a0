"""One harness for every policy test: the same table runs through both adapters.

``gateway_client(kind, policies=..., **options)`` mounts the gateway in front of a small
echo app (a Starlette app under ASGI, a plain WSGI callable under WSGI) and returns a
client. Each response carries ``.seen``: the requests that reached the app, so a test can
assert that a refused request never did.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client as WerkzeugClient

from apigw_mw import GatewayMiddleware, WSGIGatewayMiddleware, get_context

ADAPTERS = ("asgi", "wsgi")


@dataclass
class Seen:
    """A request as the app saw it."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    context: Any


@dataclass
class Result:
    status_code: int
    headers: httpx.Headers
    content: bytes
    seen: list[Seen] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode()


def _context_summary(ctx: Any) -> dict[str, Any]:
    return {
        "requestId": ctx.request_id,
        "routeKey": ctx.route_key,
        "resourcePath": ctx.resource_path,
        "stage": ctx.stage,
        "stageVariables": dict(ctx.stage_variables),
        "pathParameters": dict(ctx.path_parameters),
        "sourceIp": ctx.identity.source_ip,
        "apiKeyId": ctx.identity.api_key_id,
        "authorizer": {k: v for k, v in ctx.authorizer.items() if _jsonable(v)},
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class GatewayClient:
    """Drives one gateway (ASGI or WSGI) in front of an echo app."""

    def __init__(self, kind: str, policies: Iterable[Any] = (), **options: Any) -> None:
        self.kind = kind
        self.seen: list[Seen] = []
        app_status = options.pop("app_status", 200)
        app_headers = options.pop("app_headers", {})
        if kind == "asgi":

            async def echo(request: StarletteRequest) -> JSONResponse:
                body = await request.body()
                ctx = get_context(request)
                self.seen.append(
                    Seen(request.method, request.url.path, body, dict(request.headers), ctx)
                )
                return JSONResponse(
                    {"body": body.decode("latin-1"), "context": _context_summary(ctx)},
                    status_code=app_status,
                    headers=app_headers,
                )

            app = Starlette(
                routes=[
                    Route(
                        "/{path:path}",
                        echo,
                        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"],
                    )
                ]
            )
            self.middleware: Any = GatewayMiddleware(app, policies=policies, **options)
            self._client: Any = httpx.Client(
                transport=_AsgiTransport(self.middleware), base_url="http://testserver"
            )
        else:

            def wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length) if length else b""
                ctx = get_context(environ)
                headers = {
                    k[5:].replace("_", "-").lower(): v
                    for k, v in environ.items()
                    if k.startswith("HTTP_")
                }
                self.seen.append(
                    Seen(environ["REQUEST_METHOD"], environ["PATH_INFO"], body, headers, ctx)
                )
                payload = json.dumps(
                    {"body": body.decode("latin-1"), "context": _context_summary(ctx)}
                ).encode()
                start_response(
                    f"{app_status} X",
                    [
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(payload))),
                        *app_headers.items(),
                    ],
                )
                return [payload]

            self.middleware = WSGIGatewayMiddleware(wsgi_echo, policies=policies, **options)
            self._client = WerkzeugClient(self.middleware)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        content: bytes | None = None,
        json_body: Any = None,
        client_ip: str = "127.0.0.1",
    ) -> Result:
        before = len(self.seen)
        if json_body is not None:
            content = json.dumps(json_body).encode()
            headers = [*(_pairs(headers)), ("content-type", "application/json")]
        if self.kind == "asgi":
            self._client._transport.client_ip = client_ip
            r = self._client.request(method, path, headers=headers, content=content)
            result = Result(r.status_code, r.headers, r.content)
        else:
            path_part, _, query = path.partition("?")
            resp = self._client.open(
                path_part,
                method=method,
                headers=_pairs(headers),
                data=content,
                query_string=query or None,
                environ_base={"REMOTE_ADDR": client_ip},
                buffered=True,  # read and close the response iterable, as a server does
            )
            result = Result(
                resp.status_code,
                httpx.Headers([(k, v) for k, v in resp.headers.items()]),
                resp.get_data(),
            )
        result.seen = self.seen[before:]
        return result

    def get(self, path: str, **kw: Any) -> Result:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Result:
        return self.request("POST", path, **kw)

    def options(self, path: str, **kw: Any) -> Result:
        return self.request("OPTIONS", path, **kw)


def _pairs(headers: dict[str, str] | list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


class _AsgiTransport(httpx.BaseTransport):
    """A minimal synchronous ASGI transport with a settable client address."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client_ip = "127.0.0.1"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        import anyio

        return anyio.run(self._handle, request)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        raw_path, _, query = request.url.raw_path.partition(b"?")
        from urllib.parse import unquote

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "root_path": "",
            "query_string": query,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": (self.client_ip, 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await anyio.sleep_forever()
            return {"type": "http.disconnect"}  # pragma: no cover

        import anyio

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return httpx.Response(status, headers=headers, content=b"".join(chunks))


def gateway_client(kind: str, policies: Iterable[Any] = (), **options: Any) -> GatewayClient:
    """A client for the gateway mounted as ``kind`` (``"asgi"`` or ``"wsgi"``)."""
    return GatewayClient(kind, policies, **options)
