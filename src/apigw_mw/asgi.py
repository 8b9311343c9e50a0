"""The ASGI adapter: :class:`GatewayMiddleware`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from functools import partial
from time import perf_counter
from typing import Any

from .context import RequestContext, new_request_id
from .gateway import Gateway
from .pipeline import BodyTooLarge, ClientDisconnect, ResponseHead
from .request import Request
from .responses import Deny, GatewayResponses, Respond
from .routes import Stage

__all__ = ["GatewayMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TIMEOUT = Deny("INTEGRATION_TIMEOUT")
_GATEWAY_HEADERS = frozenset((b"content-length", b"x-amzn-requestid", b"transfer-encoding"))
_get_running_loop = asyncio.get_running_loop
if sys.version_info < (3, 12) and isinstance(getattr(asyncio.tasks, "_current_tasks", None), dict):
    # Before 3.12 ``asyncio.current_task`` is Python code around this dictionary.
    _running_tasks: dict[Any, Any] = getattr(asyncio.tasks, "_current_tasks")  # noqa: B009

    def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
        return _running_tasks.get(loop)

else:

    def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
        return asyncio.current_task(loop)


_PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2", "2.0": "HTTP/2", "3": "HTTP/3"}
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
        message = await self.receive()
        # The common case: the whole body in one message.
        if message["type"] == "http.request" and not message.get("more_body", False):
            body: bytes = message.get("body", b"")
            if self.limit is not None and len(body) > self.limit:
                raise BodyTooLarge
            return body
        return await self._read_rest(message)

    async def _read_rest(self, message: Message) -> bytes:
        """The rest of a body sent in several messages; ``message`` is the first one."""
        chunks: list[bytes] = []
        size = 0
        limit = self.limit
        first = True
        while True:
            if not first:
                message = await self.receive()
            first = False
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
        self._watchdog: _Watchdog | None = None
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
        supplied_id = content_length = None
        chunked = False
        wanted = _GATEWAY_HEADERS
        for name, value in raw_headers:
            if name in wanted:  # one hash lookup per header; the three are rare
                if name == b"content-length":
                    content_length = value
                elif name == b"x-amzn-requestid":
                    supplied_id = value
                else:
                    chunked = True
        path = scope["path"]
        root_path = scope.get("root_path")
        if root_path and path.startswith(root_path):
            rest = path[len(root_path) :]
            if not rest:
                path = "/"
            elif rest[0] == "/":
                path = rest
        version = scope.get("http_version", "1.1")
        protocol = _PROTOCOLS.get(version) or "HTTP/1.1"
        if version != "1.1" and content_length is None and not chunked and version[:1] in "23":
            chunked = True  # HTTP/2 and HTTP/3 stream a body without Transfer-Encoding
        decision: Deny | Respond | None
        if gw.empty:
            # No policy and no route: only the request id, the size limit and the context.
            ex = ctx = _Exchange._new(
                new_request_id() if supplied_id is None else gw.request_id(supplied_id),
                scope["method"],
                path,
                protocol,
                gw.stage,
                partial(self._request, scope, receive, path),
            )
            plan = gw.pipeline._global_plan
            if content_length is not None:
                decision = gw.too_large(content_length)
                if decision is not None:
                    status, headers, body = gw.gateway_response(decision, None, ctx, plan)
                    await _respond(send, status, headers, body)
                    return
            ex._attach(gw, plan, send)
        else:
            request = self._request(scope, receive, path)
            ex = ctx = _Exchange._new(
                gw.request_id(supplied_id), request.method, path, protocol, gw.stage, request
            )
            plan, decision = gw.route(request, ctx, gw.route_path(path))
            if plan.request_hooks:
                gw.request_hooks(plan, request, ctx)
            if decision is None and content_length is not None:
                decision = gw.too_large(content_length)
            if decision is None and plan.phases:
                try:
                    decision = await gw.pipeline.run_async(plan, request, ctx)
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
            ex._attach(gw, plan, send)
            buffered = request.body
            if buffered is not None:
                receive = _replay(buffered, receive)
                chunked = False
        if chunked and gw.max_body_size is not None:
            ex._limited = _Limited(receive, gw.max_body_size)
            receive = ex._limited.receive

        # Scopes are per request: adding keys is how ASGI middleware hands data downstream.
        scope["apigw.context"] = ctx
        state = scope.get("state")
        if state is None:
            scope["state"] = {"apigw": ctx}
        else:
            state["apigw"] = ctx

        watchdog = None
        if gw.integration_timeout is not None:
            try:
                loop = _get_running_loop()
            except RuntimeError:  # not running on asyncio (trio): no timeout
                loop = None
            task = ex._task = None if loop is None else _current_task(loop)
            if task is not None:
                watchdog = self._watchdog
                if watchdog is None or watchdog.loop is not loop:
                    watchdog = self._watchdog = _Watchdog(task.get_loop(), gw.integration_timeout)
                watchdog.watched[ex] = watchdog.loop.time() + watchdog.timeout
                if watchdog.handle is None:
                    watchdog.start()
        answer: Deny | None = None
        try:
            await self.app(scope, receive, ex._send_wrapped)
        except asyncio.CancelledError:
            if not ex._cut:
                raise
            uncancel = getattr(ex._task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            answer = _TIMEOUT
        except Exception:
            limited = ex._limited
            if limited is None or not limited.exceeded or ex._started:
                raise
        finally:
            if watchdog is not None:
                watchdog.watched.pop(ex, None)
            limited = ex._limited
            if answer is None and limited is not None and limited.exceeded and not ex._started:
                answer = _TOO_LARGE
            if answer is not None:
                status, headers, body = gw.gateway_response(answer, ctx._req(), ctx, plan)
                await _respond(send, status, headers, body)
            if plan.complete_hooks:
                gw.complete_hooks(plan, ctx._req(), ctx)

    def _request(self, scope: Scope, receive: Receive, path: str) -> Request:
        gw = self.gateway
        return Request._from_scope(scope, path, gw.proxies, _Body(receive, gw.max_body_size))


class _Exchange(RequestContext):
    """The request's context, doubling as the state of its call to the app: one object a
    request instead of two. ``_send_wrapped`` wraps the server's ``send``."""

    # Class-level defaults: a request sets only what differs.
    _started = False
    _cut = False  # the gateway answers instead of the app (timeout, body too large)
    _limited: _Limited | None = None
    _task: asyncio.Task[Any] | None = None

    def _attach(self, gw: Gateway, plan: Any, send: Send) -> None:
        self._gw = gw
        self._plan = plan
        self._server_send = send
        self._app_start = perf_counter()

    def _send_wrapped(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the server's awaitable: no coroutine of our own
        # per message.
        if self._cut:
            return _nothing()
        kind = message["type"]
        if kind == "http.response.start":
            limited = self._limited
            if self._started or (limited is not None and limited.exceeded):
                return _nothing()
            self._started = True
            status = message["status"]
            headers = [
                *(message.get("headers") or ()),
                (b"x-amzn-requestid", self.request_id.encode("latin-1")),
            ]
            self.status = status
            self.integration_latency = int((perf_counter() - self._app_start) * 1000)
            plan = self._plan
            if plan.response_hooks:
                head = ResponseHead(status, headers)
                self._gw.on_response(plan, self._req(), self, head)
                headers = head.headers
            message["headers"] = headers
        elif kind == "http.response.body":
            if not self._started:
                return _nothing()
            if self._plan.complete_hooks:
                self.response_length = (self.response_length or 0) + len(message.get("body", b""))
        return self._server_send(message)

    def _expire(self) -> None:
        """Called by the watchdog once the deadline passed without a response start."""
        task = self._task
        if not self._started and task is not None:
            self._cut = True
            task.cancel()


class _Watchdog:
    """One timer per event loop enforces every in-flight request's integration timeout.

    A timer per request costs more than the rest of the gateway's per-request work; a
    shared tick, at a tenth of the timeout (at most every 0.5 s), is precise enough.
    """

    __slots__ = ("handle", "loop", "tick", "timeout", "watched")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.tick = min(timeout / 10, 0.5)
        self.watched: dict[_Exchange, float] = {}
        self.handle: asyncio.TimerHandle | None = None

    def watch(self, ex: _Exchange) -> None:
        self.watched[ex] = self.loop.time() + self.timeout
        if self.handle is None:
            self.start()

    def start(self) -> None:
        self.handle = self.loop.call_later(self.tick, self._check)

    def forget(self, ex: _Exchange) -> None:
        self.watched.pop(ex, None)

    def _check(self) -> None:
        now = self.loop.time()
        watched = self.watched
        expired = [ex for ex, deadline in watched.items() if deadline <= now or ex._started]
        for ex in expired:
            del watched[ex]
            if not ex._started:
                ex._expire()
        self.handle = self.loop.call_later(self.tick, self._check) if watched else None


async def _nothing() -> None:
    return None


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
