"""The apps the real-server tests serve: an ASGI and a WSGI app behind the gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from apigw_mw import (
    Allow,
    BasePolicy,
    Cors,
    GatewayMiddleware,
    Phase,
    RouteTable,
    Stage,
    WSGIGatewayMiddleware,
    get_context,
)

ORIGIN = "https://app.example.com"


class ReadsUploads(BasePolicy):
    """Reads every upload's body, as a validator would."""

    phase = Phase.VALIDATE

    def flow(self, request: Any, context: Any) -> Any:
        body = yield request.read_body()
        return Allow(authorizer={"length": len(body)})


class Refuse(BasePolicy):
    phase = Phase.AUTHORIZE

    def flow(self, request: Any, context: Any) -> Any:
        from apigw_mw import Deny

        return Deny("UNAUTHORIZED")


def policies() -> list[Any]:
    return [
        RouteTable(["GET /pets/{petId}", "GET /events", "GET /slow"]),
        Cors(allow_origins=[ORIGIN]),
        ReadsUploads(routes=["POST /upload"]),
        Refuse(routes=["GET /private"]),
    ]


calls: list[str] = []


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    path = scope["path"]
    calls.append(path)
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/slow":
        await asyncio.sleep(5)
    if path == "/events":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(3):
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
            )
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})
        return
    ctx = get_context(scope)
    payload = json.dumps(
        {
            "routeKey": ctx.route_key,
            "sourceIp": ctx.identity.source_ip,
            "length": len(body),
            "sha": __import__("hashlib").sha256(body).hexdigest(),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def asgi(**options: Any) -> GatewayMiddleware:
    return GatewayMiddleware(asgi_app, policies=policies(), stage=Stage("prod"), **options)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
    import hashlib

    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    body = stream.read(int(length)) if length else stream.read()
    if environ["PATH_INFO"] == "/events":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return (b"data: %d\n\n" % i for i in range(3))
    ctx = get_context(environ)
    payload = json.dumps(
        {
            "routeKey": ctx.route_key,
            "sourceIp": ctx.identity.source_ip,
            "length": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    )
    return [payload]


wsgi = WSGIGatewayMiddleware(
    _wsgi_app, policies=policies(), stage=Stage("prod"), max_body_size=100_000
)
