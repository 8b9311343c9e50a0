"""Scopes other than HTTP pass through the ASGI adapter untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apigw_mw import Cors, GatewayMiddleware, RouteTable
from tests.core.policies import Refuse


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Any, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((dict(scope), receive, send))
        message = await receive()
        await send({"type": f"{scope['type']}.echo", "got": message["type"]})


@pytest.mark.parametrize(
    ("scope", "first"),
    [
        pytest.param(
            {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""},
            {"type": "websocket.connect"},
            id="websocket",
        ),
        pytest.param({"type": "lifespan"}, {"type": "lifespan.startup"}, id="lifespan"),
    ],
)
def test_non_http_scopes_pass_through(scope, first):
    app = Recorder()
    policies = [
        RouteTable(["GET /x"], strict=True),
        Refuse("ACCESS_DENIED"),
        Cors(allow_origins=["*"]),
    ]
    gw = GatewayMiddleware(app, policies=policies)
    sent: list[Any] = []

    async def receive() -> Any:
        return first

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(gw(scope, receive, send))
    ((seen_scope, seen_receive, seen_send),) = app.calls
    assert seen_scope == scope  # nothing added
    assert seen_receive is receive
    assert seen_send is send
    assert sent == [{"type": f"{scope['type']}.echo", "got": first["type"]}]
