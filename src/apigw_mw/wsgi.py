"""The WSGI adapter: :class:`WSGIGatewayMiddleware`."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from http import HTTPStatus
from time import perf_counter
from typing import Any

from .gateway import Gateway
from .pipeline import BodyTooLarge, ClientDisconnect, ResponseHead
from .request import Headers, Request
from .responses import Deny, GatewayResponses
from .routes import Stage

__all__ = ["WSGIGatewayMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_TOO_LARGE = Deny("REQUEST_TOO_LARGE")
_REASONS = {s.value: s.phrase for s in HTTPStatus}


def _status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Unknown')}"


class _Body:
    """Reads a WSGI request body for a policy, within the size limit."""

    __slots__ = ("environ", "length", "limit")

    def __init__(self, environ: Environ, length: int | None, limit: int | None) -> None:
        self.environ = environ
        self.length = length
        self.limit = limit

    def read_sync(self) -> bytes:
        stream = self.environ.get("wsgi.input")
        if stream is None:
            return b""
        limit = self.limit
        if self.length is not None:
            remaining = self.length
            chunks: list[bytes] = []
            while remaining > 0:
                chunk = stream.read(min(remaining, 65536))
                if not chunk:
                    raise ClientDisconnect
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        if not self.environ.get("wsgi.input_terminated"):
            # Without a length, reading is only safe when the server marks the end.
            return b""
        chunks = []
        size = 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if limit is not None and size > limit:
                raise BodyTooLarge
            chunks.append(chunk)

    async def read_async(self) -> bytes:  # pragma: no cover - WSGI bodies are read blocking
        raise RuntimeError("a WSGI body is read by the sync driver")


class _LimitedInput:
    """Counts a body without length as the app reads it; past the limit it reads as ended."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self.limit = limit
        self.size = 0
        self.exceeded = False

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.limit:
            self.exceeded = True
            return b""
        return data

    def read(self, size: int = -1) -> bytes:
        if self.exceeded:
            return b""
        return self._count(self._stream.read(size) if size != -1 else self._stream.read())

    def readline(self, size: int = -1) -> bytes:
        if self.exceeded:
            return b""
        return self._count(self._stream.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class WSGIGatewayMiddleware:
    """API Gateway's request policies as WSGI middleware; the twin of
    :class:`GatewayMiddleware`, taking the same options and the same policy objects.

    ``integration_timeout`` is accepted for symmetry but has no effect: a WSGI call cannot be
    interrupted.

    Example (Flask)::

        from flask import Flask
        from apigw_mw import Cors, WSGIGatewayMiddleware

        app = Flask(__name__)
        app.wsgi_app = WSGIGatewayMiddleware(
            app.wsgi_app, policies=[Cors(allow_origins=["https://app.example.com"])]
        )

    The app reads the context with ``get_context(flask.request)`` or from
    ``environ["apigw.context"]``.
    """

    def __init__(
        self,
        app: WSGIApp,
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
            mode="sync",
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        gw = self.gateway
        content_length = environ.get("CONTENT_LENGTH") or None
        raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        path = _decoded_path(environ.get("PATH_INFO", ""))
        request = Request(
            method=environ.get("REQUEST_METHOD", "GET").upper(),
            path=path or "/",
            raw_path=(
                raw_path.partition("?")[0] if raw_path else environ.get("PATH_INFO", "/")
            ).encode("latin-1", "replace"),
            query_string=environ.get("QUERY_STRING", "").encode("latin-1", "replace"),
            scheme=environ.get("wsgi.url_scheme", "http"),
            peer=environ.get("REMOTE_ADDR") or None,
            raw=environ,
            raw_headers=partial(_environ_headers, environ),
            proxies=gw.proxies,
            body_reader=_Body(environ, _int_or_none(content_length), gw.max_body_size),
        )
        supplied = environ.get("HTTP_X_AMZN_REQUESTID")
        request_id = gw.request_id(supplied.encode("latin-1") if supplied else None)
        ctx = gw.context(request, request_id, environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        plan, decision = gw.route(request, ctx, gw.route_path(request.path))
        if plan.request_hooks:
            gw.request_hooks(plan, request, ctx)
        if decision is None and content_length is not None:
            decision = gw.too_large(content_length.encode("latin-1", "replace"))
        if decision is None and plan.phases:
            try:
                decision = gw.pipeline.run_sync(plan, request, ctx)
            except ClientDisconnect:
                decision = Deny("DEFAULT_4XX", "Bad Request")
        if decision is not None:
            answer = self._answer(decision, request, ctx, plan, start_response)
            if plan.complete_hooks:
                return _Observed(answer, gw, plan, request, ctx)
            return answer

        body = request.body
        limited: _LimitedInput | None = None
        if body is not None:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        elif (
            content_length is None
            and gw.max_body_size is not None
            and environ.get("wsgi.input_terminated")
            and "wsgi.input" in environ
        ):
            limited = _LimitedInput(environ["wsgi.input"], gw.max_body_size)
            environ["wsgi.input"] = limited
        # The context refers to the environ (through its request view): the environ lets go
        # of it when the request ends, so that no reference cycle is left for the garbage
        # collector. A request ends when the server closes the response iterable, or when
        # the app returns a list (nothing of the app's runs after that) or raises.
        environ["apigw.context"] = ctx
        rid = ("x-amzn-RequestId", request_id)
        hooks = plan.response_hooks

        app_start = perf_counter()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if limited is not None and limited.exceeded:
                return _discard
            code = int(status[:3])
            ctx.status = code
            ctx.integration_latency = int((perf_counter() - app_start) * 1000)
            headers = [*headers, rid]
            if hooks:
                head = ResponseHead(
                    code, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
                )
                gw.on_response(plan, request, ctx, head)
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers]
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        try:
            result = self.app(environ, start)
        except BaseException:
            if plan.complete_hooks:  # the request ended without a response iterable
                gw.complete_hooks(plan, request, ctx)
            environ.pop("apigw.context", None)
            raise
        if limited is not None and limited.exceeded:
            _close_iterable(result)
            result = self._answer(_TOO_LARGE, request, ctx, plan, start_response)
        if plan.complete_hooks:
            return _Observed(result, gw, plan, request, ctx, environ)
        if type(result) is list:
            # The common case first; ``del`` in a ``try`` costs less than ``pop`` (a method
            # call) or ``contextlib.suppress``.
            try:  # noqa: SIM105
                del environ["apigw.context"]
            except KeyError:  # the app took it away
                pass
            return result
        kind = type(result)
        wrapper = environ.get("wsgi.file_wrapper")
        if kind is tuple or (wrapper is not None and kind is wrapper):
            # A file wrapper is left as it is, so that the server can still send the file
            # with sendfile(); sending a file runs nothing of the app's.
            environ.pop("apigw.context", None)
            return result
        return _Closing(result, environ)

    def _answer(
        self,
        decision: Any,
        request: Request,
        ctx: Any,
        plan: Any,
        start_response: StartResponse,
    ) -> list[bytes]:
        status, headers, body = self.gateway.gateway_response(decision, request, ctx, plan)
        start_response(
            _status_line(status),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
        )
        return [body]


class _Closing:
    """Wraps the app's response iterable: once the server closes it, the environ lets go of
    the context."""

    __slots__ = ("_environ", "_result")

    def __init__(self, result: Iterable[bytes], environ: Environ) -> None:
        self._result = result
        self._environ = environ

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            _close_iterable(self._result)
        finally:
            self._environ.pop("apigw.context", None)


class _Observed:
    """Wraps the response iterable: counts bytes and runs ``on_complete`` hooks on close
    (then the environ, when given, lets go of the context)."""

    def __init__(
        self,
        result: Iterable[bytes],
        gw: Gateway,
        plan: Any,
        request: Request,
        ctx: Any,
        environ: Environ | None = None,
    ) -> None:
        self._result = result
        self._gw = gw
        self._plan = plan
        self._request = request
        self._ctx = ctx
        self._environ = environ
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        ctx = self._ctx
        ctx.response_length = 0  # counted here, gateway answers included
        for chunk in self._result:
            ctx.response_length += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            _close_iterable(self._result)
        finally:
            if not self._done:
                self._done = True
                try:
                    self._gw.complete_hooks(self._plan, self._request, self._ctx)
                finally:
                    if self._environ is not None:
                        self._environ.pop("apigw.context", None)


def _close_iterable(result: Iterable[bytes]) -> None:
    """Call the response iterable's ``close``, as a WSGI server must, if it has one."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _discard(data: bytes) -> None:
    return None


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def _decoded_path(path_info: str) -> str:
    """PEP 3333 hands PATH_INFO as Latin-1 decoded bytes; re-decode them as UTF-8."""
    try:
        return path_info.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return path_info


def _environ_headers(environ: Environ) -> Headers:
    """:class:`Headers` from a WSGI environ's ``HTTP_*`` keys."""
    items: list[tuple[str, str]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
            if name == "x-api-key" and "," in value:
                # Servers join repeated headers with ", "; a repeated key must stay visible.
                items.extend((name, v.strip()) for v in value.split(","))
            else:
                items.append((name, value))
    if environ.get("CONTENT_TYPE"):
        items.append(("content-type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        items.append(("content-length", environ["CONTENT_LENGTH"]))
    return Headers(items)
