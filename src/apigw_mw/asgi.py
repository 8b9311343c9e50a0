"""The ASGI adapter: :class:`GatewayMiddleware`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from time import perf_counter
from typing import Any

from .gateway import Gateway
from .pipeline import BodyTooLarge, ClientDisconnect, ResponseHead, drive_async
from .request import Request
from .responses import Deny, GatewayResponses
from .routes import Stage

__all__ = ["GatewayMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TIMEOUT = Deny("INTEGRATION_TIMEOUT")
_TOO_LARGE = Deny("REQUEST_TOO_LARGE")


class _Body:
    """Reads an ASGI request body for a policy, within the size limit."""

    __slots__ = ("limit", "receive")

    def __init__(self, receive: Receive, limit: int | None) -> None:
        self.receive = receive
        self.limit = limit

    def read_sync(self) -> bytes:  # pragma: no cover - ASGI bodies are read with await
        raise RuntimeError("an ASGI body is read by the async driver")

    async def read_async(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        limit = self.limit
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "http.disconnect":
                raise ClientDisconnect
            if kind != "http.request":
                continue
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class GatewayMiddleware:
    """API Gateway's request policies as pure ASGI middleware.

    Args:
        app: the ASGI app to protect.
        policies: policies (any order: they run in the gateway's phase order) and
            gateway-wide settings objects (:class:`Stage`, :class:`GatewayResponses`,
            :class:`RouteTable`).
        stage: the :class:`Stage` (name, variables, ARN identifiers, base path).
        responses: customised :class:`GatewayResponses`.
        storage: default ``limits`` storage URI for policies that keep shared state.
        trusted_proxies: addresses/CIDRs whose ``X-Forwarded-For`` hops are believed.
        max_body_size: largest request body in bytes (413 above it); ``None`` for no limit.
        integration_timeout: seconds the app may take to start its response (504 after);
            ``None`` for no limit.
        strict_routes: answer requests that match no declared route with 403
            ``Missing Authentication Token``, as API Gateway does.

    Example::

        from fastapi import FastAPI
        from apigw_mw import Cors, GatewayMiddleware, Stage

        app = FastAPI()
        app.add_middleware(
            GatewayMiddleware,
            policies=[Cors(allow_origins=["https://app.example.com"])],
            stage=Stage("prod", variables={"color": "blue"}),
        )

    HTTP requests go through the policies; WebSocket and lifespan scopes pass through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: Iterable[Any] = (),
        stage: Stage | None = None,
        responses: GatewayResponses | None = None,
        storage: str = "memory://",
        trusted_proxies: Sequence[str] = (),
        max_body_size: int | None = 10 * 1024 * 1024,
        integration_timeout: float | None = 29.0,
        strict_routes: bool = False,
    ) -> None:
        self.app = app
        self.gateway = Gateway(
            policies=policies,
            stage=stage,
            responses=responses,
            storage=storage,
            trusted_proxies=trusted_proxies,
            max_body_size=max_body_size,
            integration_timeout=integration_timeout,
            strict_routes=strict_routes,
            mode="async",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gw = self.gateway
        raw_headers = scope.get("headers") or ()
        supplied_id = content_length = user_agent = None
        chunked = False
        for name, value in raw_headers:
            if name == b"content-length":
                content_length = value
            elif name == b"x-amzn-requestid":
                supplied_id = value
            elif name == b"user-agent":
                user_agent = value
            elif name == b"transfer-encoding":
                chunked = True
        path = scope["path"]
        root_path = scope.get("root_path")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        client = scope.get("client")
        request = Request(
            method=scope["method"],
            path=path,
            raw_path=scope.get("raw_path") or path.encode("utf-8", "surrogateescape"),
            query_string=scope.get("query_string", b""),
            scheme=scope.get("scheme", "http"),
            peer=client[0] if client else None,
            raw=scope,
            raw_headers=raw_headers,
            proxies=gw.proxies,
            body_reader=_Body(receive, gw.max_body_size),
        )
        request_id = gw.request_id(supplied_id)
        ctx = gw.context(
            request,
            request_id,
            "HTTP/" + scope.get("http_version", "1.1"),
            user_agent.decode("latin-1") if user_agent is not None else None,
        )
        plan, decision = gw.route(request, ctx, gw.route_path(path))
        if plan.request_hooks:
            gw.request_hooks(plan, request, ctx)
        if decision is None and content_length is not None:
            decision = gw.too_large(content_length)
        if decision is None and plan.phases:
            try:
                decision = await drive_async(gw.pipeline.flow(plan, request, ctx))
            except ClientDisconnect:
                if plan.complete_hooks:
                    gw.complete_hooks(plan, request, ctx)
                return
        if decision is not None:
            status, headers, body = gw.gateway_response(decision, request, ctx, plan)
            try:
                await _respond(send, status, headers, body)
            finally:
                if plan.complete_hooks:
                    gw.complete_hooks(plan, request, ctx)
            return

        buffered = request.body
        limited: _Limited | None = None
        if buffered is not None:
            receive = _replay(buffered, receive)
        elif chunked and gw.max_body_size is not None:
            limited = _Limited(receive, gw.max_body_size)
            receive = limited.receive
        rid = request_id.encode("latin-1")
        hooks = plan.response_hooks
        counting = bool(plan.complete_hooks)
        started = False
        cut = False  # the gateway answers instead of the app (timeout, body over the limit)
        app_start = perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if cut or (limited is not None and limited.exceeded):
                return
            kind = message["type"]
            if kind == "http.response.start":
                if started:
                    return
                started = True
                headers = list(message.get("headers") or ())
                headers.append((b"x-amzn-requestid", rid))
                status = message["status"]
                ctx.status = status
                ctx.integration_latency = int((perf_counter() - app_start) * 1000)
                if hooks:
                    head = ResponseHead(status, headers)
                    gw.on_response(plan, request, ctx, head)
                    headers = head.headers
                message = {**message, "headers": headers}
            elif counting and kind == "http.response.body":
                ctx.response_length = (ctx.response_length or 0) + len(message.get("body", b""))
            await send(message)

        scope = dict(scope)
        scope["apigw.context"] = ctx
        state = scope.get("state")
        scope["state"] = {**state, "apigw": ctx} if state else {"apigw": ctx}

        timeout = gw.integration_timeout
        handle = None
        task = None
        if timeout is not None:
            try:
                task = asyncio.current_task()
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not running on asyncio (trio): no timeout
                task = None
            if task is not None:
                current = task

                def fire() -> None:
                    nonlocal cut
                    if not started:
                        cut = True
                        current.cancel()

                handle = loop.call_later(timeout, fire)
        answer: Deny | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if not cut:
                raise
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            answer = _TIMEOUT
        except Exception:
            if limited is None or not limited.exceeded or started:
                raise
        finally:
            if handle is not None:
                handle.cancel()
            if answer is None and limited is not None and limited.exceeded and not started:
                answer = _TOO_LARGE
            if answer is not None:
                status, headers, body = gw.gateway_response(answer, request, ctx, plan)
                await _respond(send, status, headers, body)
            if counting:
                gw.complete_hooks(plan, request, ctx)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body to the app, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Limited:
    """Counts a streamed (chunked) body as the app reads it and cuts it at the limit.

    Past the limit the app sees the client disconnect, and the gateway answers 413.
    """

    __slots__ = ("_receive", "exceeded", "limit", "size")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.size = 0
        self.exceeded = False

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.exceeded = True
                return {"type": "http.disconnect"}
        return message
