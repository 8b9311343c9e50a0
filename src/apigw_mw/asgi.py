"""The ASGI adapter: :class:`GatewayMiddleware`."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    MutableMapping,
    Sequence,
)
from functools import partial
from threading import get_ident as _get_ident
from time import perf_counter as _perf_counter
from typing import Any

from .context import RequestContext, _next_id, _once, new_request_id
from .effects import ReadBody
from .gateway import Gateway, logger
from .pipeline import (
    BODY,
    BODY_FIRST,
    BodyTooLarge,
    ClientDisconnect,
    Outcome,
    ResponseHead,
    _Pending,
    _Plan,
)
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
_get_running_loop = asyncio._get_running_loop  # None outside a running loop (trio)
_current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info < (3, 12) and isinstance(getattr(asyncio.tasks, "_current_tasks", None), dict):
    # Before 3.12 ``asyncio.current_task`` is Python code around this dictionary.
    _current_task = getattr(asyncio.tasks, "_current_tasks").get  # noqa: B009
else:
    _current_task = asyncio.current_task


_PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2", "2.0": "HTTP/2", "3": "HTTP/3"}
_TOO_LARGE = Deny("REQUEST_TOO_LARGE")
# Where the app's response stands: not started, started, or cut off by the gateway, which
# answers instead (integration timeout, streamed body over the limit).
_WAITING, _STARTED, _CUT = 0, 1, 2


class _Body:
    """Reads an ASGI request body for a policy, within the size limit."""

    __slots__ = ("limit", "receive")

    def __init__(self, receive: Receive, limit: int | None) -> None:
        self.receive = receive
        self.limit = limit

    def read_sync(self) -> bytes:  # pragma: no cover - ASGI bodies are read with await
        raise RuntimeError("an ASGI body is read by the async driver")

    def read_async(self) -> Coroutine[Any, Any, bytes]:
        return _read_body(self.receive, self.limit)


async def _read_body(receive: Receive, limit: int | None) -> bytes:
    """The whole request body from ``receive``, within ``limit`` bytes (else
    :class:`BodyTooLarge`); :class:`ClientDisconnect` when the client goes away."""
    message = await receive()
    body = _whole(message, limit)
    return body if body is not None else await _read_rest(message, receive, limit)


def _whole(message: Message, limit: int | None) -> bytes | None:
    """The body when ``message`` holds all of it (the common case), else ``None``;
    :class:`BodyTooLarge` past ``limit``."""
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if limit is not None and len(body) > limit:
            raise BodyTooLarge
        return body
    return None


async def _read_rest(message: Message, receive: Receive, limit: int | None) -> bytes:
    """The body of which ``message`` is the first message, read on within ``limit``."""
    chunks: list[bytes] = []
    size = 0
    first = True
    while True:
        if not first:
            message = await receive()
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


class _ScopeRequest(Request):
    """A request view of an ASGI scope, whose body reader is the server's ``receive``,
    wrapped with the size limit only when a policy reads the body."""

    __slots__ = ()
    _limit: int | None = None

    def _reader(self) -> _Body:
        return _Body(self._body_reader, self._limit)


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
        self.gateway = gw = Gateway(
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
        context_class = _Exchange._for_stage(gw.stage)
        context_class._gw = gw
        context_class._plan = gw.pipeline._global_plan
        context_class._request_class = type(
            "Request", (_ScopeRequest,), {"__slots__": (), "_limit": gw.max_body_size}
        )
        self._new_context: Callable[[], _Exchange] = partial(object.__new__, context_class)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gw = self.gateway
        supplied_id = content_length = None
        chunked = False
        wanted = _GATEWAY_HEADERS
        for name, value in scope.get("headers") or ():
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
        # The context, written field by field: its class carries the stage's fields, the
        # gateway and the defaults; the method and the request view are read when asked for.
        ex = ctx = self._new_context()
        if supplied_id is None:
            try:
                ex.request_id = _next_id()
            except ValueError:  # the id generator is busy in another thread
                ex.request_id = new_request_id()
        else:
            ex.request_id = gw.request_id(supplied_id)
        ex.start = _perf_counter()
        ex.path = path
        ex._scope = scope
        ex._receive = receive
        ex._server_send = send
        version = scope.get("http_version")
        if version != "1.1" and version is not None:
            ex.protocol = _PROTOCOLS.get(version) or "HTTP/1.1"
            if content_length is None and not chunked and version[:1] in "23":
                chunked = True  # HTTP/2 and HTTP/3 stream a body without Transfer-Encoding
        decision: Deny | Respond | None
        if gw.empty:
            # No policy and no route: only the request id, the size limit and the context.
            plan = ex._plan
            if content_length is not None:
                decision = gw.too_large(content_length)
                if decision is not None:
                    status, headers, body = gw.gateway_response(decision, None, ctx, plan)
                    await _respond(send, status, headers, body)
                    return
        else:
            request = ex._req()
            plan, decision = gw.route(
                request, ctx, path if gw.base_path is None else gw.route_path(path)
            )
            if plan.request_hooks:
                gw.request_hooks(plan, request, ctx)
            if decision is None and content_length is not None:
                decision = gw.too_large(content_length)
            if decision is None and plan.phases:
                pipeline = gw.pipeline
                try:
                    outcome: Outcome | _Pending
                    if plan.reads_first and (content_length is not None or chunked):
                        outcome = BODY_FIRST  # the first flow reads bodies: read it now
                    else:
                        outcome = pipeline.start(plan, request, ctx)
                    if type(outcome) is _Pending and (
                        outcome.effect is BODY or type(outcome.effect) is ReadBody
                    ):
                        # A flow waits for the body, or is about to read it: read it here,
                        # without the effect machinery, and run on.
                        # _read_body, without a coroutine of its own in the common case.
                        limit = gw.max_body_size
                        try:
                            message = await receive()
                            read = _whole(message, limit)
                            if read is None:
                                read = await _read_rest(message, receive, limit)
                        except BodyTooLarge:
                            outcome = pipeline.too_large(outcome)
                        else:
                            request._body = read
                            outcome = pipeline.resume(plan, request, ctx, outcome, read)
                    if type(outcome) is _Pending:
                        outcome = await pipeline.finish_async(plan, request, ctx, outcome)
                    decision = outcome  # type: ignore[assignment]
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
            ex._plan = plan
            buffered = request._body
            if buffered is not None:
                ex._replay_body = buffered
                receive = ex._replayed
                chunked = False
        if plan.complete_hooks:
            ex._app_start = _perf_counter()  # for the integration latency they read
        if chunked and gw.max_body_size is not None:
            ex._limited = _Limited(receive, gw.max_body_size, ex)
            receive = ex._limited.receive

        # Scopes are per request: adding keys is how ASGI middleware hands data downstream.
        # The context refers to the scope (and the server's callables, which may too): the
        # scope lets go of it when the request ends, so that no reference cycle is left for
        # the garbage collector.
        scope["apigw.context"] = ctx
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {"apigw": ctx}
        else:
            state["apigw"] = ctx

        watchdog = None
        if gw.integration_timeout is not None:
            # The running loop is the last request's when that loop runs in this thread
            # (a thread runs one loop at a time); asking asyncio costs a getpid() call.
            watchdog = self._watchdog
            if watchdog is None or not watchdog.fast or watchdog.loop._thread_id != _get_ident():
                watchdog = self._watchdog_here()
            if watchdog is not None:
                task = ex._task = _current_task(watchdog.loop)
                if task is None:
                    watchdog = None
                else:
                    watchdog.watched[ex] = watchdog.ticks
                    if watchdog.handle is None:
                        watchdog.start()
        answer: Deny | None = None
        try:
            await self.app(scope, receive, ex._send_observed if plan.observed else ex._send)
        except asyncio.CancelledError:
            if not ex._timed_out:
                raise
            uncancel = getattr(ex._task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            answer = _TIMEOUT
        except Exception:
            if ex._state != _CUT or ex._timed_out:
                raise  # unless the body limit cut the app off: then its error is expected
        finally:
            if watchdog is not None:
                watchdog.watched.pop(ex, None)
            if ex._state == _CUT or plan.complete_hooks:
                await self._finish(ex, answer)
            scope.pop("apigw.context", None)
            state.pop("apigw", None)

    def _watchdog_here(self) -> _Watchdog | None:
        """The watchdog of the running asyncio loop (made on first use), or ``None`` when
        not on asyncio (trio): no timeout then."""
        loop = _get_running_loop()
        if loop is None:
            return None
        watchdog = self._watchdog
        if watchdog is None or watchdog.loop is not loop:
            timeout = self.gateway.integration_timeout
            assert timeout is not None
            watchdog = self._watchdog = _Watchdog(loop, timeout)
        return watchdog

    async def _finish(self, ex: _Exchange, answer: Deny | None) -> None:
        """After the app: the gateway's own answer if it cut the app off, then the hooks."""
        gw = self.gateway
        if answer is None and ex._state == _CUT:
            # The app swallowed the cancellation, or the body went over the limit.
            answer = _TIMEOUT if ex._timed_out else _TOO_LARGE
        plan = ex._plan
        if answer is not None:
            status, headers, body = gw.gateway_response(answer, ex._req(), ex, plan)
            await _respond(send=ex._server_send, status=status, headers=headers, body=body)
        if plan.complete_hooks:
            gw.complete_hooks(plan, ex._req(), ex)


class _Exchange(RequestContext):
    """The request's context, doubling as the state of its call to the app: one object a
    request instead of two. ``_send`` and ``_send_observed`` wrap the server's ``send``.

    :meth:`GatewayMiddleware.__init__` makes a subclass per middleware that carries the
    stage's fields, the gateway (``_gw``) and the plan of requests outside every route
    (``_plan``) as class attributes.
    """

    # Class-level defaults: a request sets only what differs.
    _gw: Gateway
    _plan: _Plan
    _request: Request | None = None
    _request_class: type[_ScopeRequest]
    protocol = "HTTP/1.1"
    _scope: Scope
    _receive: Receive
    _server_send: Send
    _app_start = 0.0
    _state = _WAITING
    _timed_out = False
    _limited: _Limited | None = None
    _task: asyncio.Task[Any] | None = None
    _replay_body: bytes | None = None

    @_once
    def http_method(self) -> str:
        return str(self._scope["method"])

    def _req(self) -> Request:
        """The request view, built on first use."""
        request = self._request
        if request is None:
            request = self._request = self._request_class._from_scope(
                self._scope, self.path, self._gw.proxies, self._receive
            )
        return request

    # The app's ``send``: plain functions handing back the server's awaitable, no coroutine
    # of our own per message. ``_send`` for a plan no observer watches, ``_send_observed``
    # for the others (response hooks, latency and length).

    def _send(self, message: Message) -> Awaitable[None]:
        if self._state == _STARTED:
            if message["type"] != "http.response.start":
                return self._server_send(message)
        elif not self._state and message["type"] == "http.response.start":
            self._state = _STARTED
            self.status = message["status"]
            message["headers"] = [
                *(message.get("headers") or ()),
                (b"x-amzn-requestid", self.request_id.encode()),
            ]
            return self._server_send(message)
        return _nothing()

    def _send_observed(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            if self._state:
                return _nothing()
            self._state = _STARTED
            headers = [
                *(message.get("headers") or ()),
                (b"x-amzn-requestid", self.request_id.encode()),
            ]
            self.status = message["status"]
            plan = self._plan
            if plan.complete_hooks:
                self.integration_latency = int((_perf_counter() - self._app_start) * 1000)
            if plan.response_hooks:
                head = ResponseHead(self.status, headers)
                request = self._request or self._req()
                for policy in plan.response_hooks:
                    try:
                        policy.on_response(request, self, head)
                    except Exception:
                        logger.exception("on_response of %s failed", type(policy).__name__)
                headers = head.headers
            message["headers"] = headers
        elif self._state != _STARTED:
            return _nothing()
        elif message["type"] == "http.response.body" and self._plan.complete_hooks:
            self.response_length = (self.response_length or 0) + len(message.get("body", b""))
        return self._server_send(message)

    async def _replayed(self) -> Message:
        """The app's ``receive`` once the gateway has read the body: the body, then the
        server's ``receive``."""
        body = self._replay_body
        if body is not None:
            self._replay_body = None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()

    def _expire(self) -> None:
        """Called by the watchdog once the deadline passed without a response start."""
        task = self._task
        if self._state == _WAITING and task is not None:
            self._state = _CUT
            self._timed_out = True
            task.cancel()


class _Watchdog:
    """One timer per event loop enforces every in-flight request's integration timeout.

    A timer per request costs more than the rest of the gateway's per-request work; a
    shared tick, at a tenth of the timeout (at most every 0.5 s), is precise enough: a
    request is cut between ``timeout`` and ``timeout`` plus one tick after it started.
    Requests are stamped with the tick count, so registering one reads no clock.
    """

    __slots__ = (
        "__weakref__",
        "fast",
        "handle",
        "limit",
        "loop",
        "tick",
        "ticks",
        "timeout",
        "watched",
    )

    def __init__(self, loop: Any, timeout: float) -> None:
        self.loop = loop
        # asyncio's loops say which thread runs them: the adapter then finds the running
        # loop without asking asyncio. Not after a fork: the child runs loops of its own.
        self.fast = isinstance(getattr(loop, "_thread_id", None), int)
        _watchdogs.add(self)
        self.timeout = timeout
        self.tick = min(timeout / 10, 0.5)
        self.limit = math.ceil(timeout / self.tick - 1e-9)
        self.ticks = 0
        self.watched: dict[_Exchange, int] = {}
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.handle = self.loop.call_later(self.tick, self._check)

    def _check(self) -> None:
        self.ticks = now = self.ticks + 1
        # Stamped at tick ``t`` means started after tick ``t`` fired: ``now - t`` full ticks
        # have passed for sure once ``now - t > limit``.
        oldest = now - self.limit
        watched = self.watched
        expired = [ex for ex, t in watched.items() if t < oldest or ex._state]
        for ex in expired:
            del watched[ex]
            ex._expire()
        self.handle = self.loop.call_later(self.tick, self._check) if watched else None


_watchdogs: weakref.WeakSet[_Watchdog] = weakref.WeakSet()


def _after_fork() -> None:
    for watchdog in list(_watchdogs):
        watchdog.fast = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


async def _nothing() -> None:
    return None


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Limited:
    """Counts a streamed (chunked) body as the app reads it and cuts it at the limit.

    Past the limit the app sees the client disconnect, and the gateway answers 413.
    """

    __slots__ = ("_exchange", "_receive", "exceeded", "limit", "size")

    def __init__(self, receive: Receive, limit: int, exchange: _Exchange) -> None:
        self._receive = receive
        self.limit = limit
        self.size = 0
        self.exceeded = False
        self._exchange = exchange

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.exceeded = True
                if self._exchange._state == _WAITING:
                    self._exchange._state = _CUT  # the gateway answers 413 instead
                return {"type": "http.disconnect"}
        return message
