"""Drive a real ASGI app with httpx's own ASGI transport."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


def call(app: Any, method: str, url: str, *, root_path: str = "", **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, root_path=root_path, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, url, **kw)

    return asyncio.run(go())
