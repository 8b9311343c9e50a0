"""OpenTelemetry tracing: one server span per request, read from and written to X-Ray and W3C
trace headers.

Only the OpenTelemetry API is needed; the SDK and its exporters are the user's choice. With no
SDK configured the policy notices the API's no-op provider once and does nothing at all.
"""

from __future__ import annotations

import copy
import importlib
import logging
import re
import time
from collections.abc import Iterable
from time import perf_counter_ns
from typing import IO, TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from .._version import __version__
from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, GatewaySettings, Phase, Policy, ResponseHead
from ..responses import Deny, Respond
from ..traffic.bucket import WATCHED
from .xray import TraceHeader, parse_traceparent, parse_xray

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["Tracing", "console_tracer_provider"]

_SCOPE = "apigw_mw"
_STATE = "apigw.tracing"  # per-request state in ``context.extra``
_PROPAGATORS = ("tracecontext", "xray")
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_THROTTLE_TYPES = {"THROTTLED": "throttled", "QUOTA_EXCEEDED": "quota_exceeded"}
_XRAY_HEADER = b"x-amzn-trace-id"
_EMPTY = otel_context.Context()

_UNRESOLVED, _ON, _OFF = 0, 1, 2
_SERVER = SpanKind.SERVER
_SAMPLED_FLAGS = TraceFlags(TraceFlags.SAMPLED)
_DEFAULT_FLAGS = TraceFlags(TraceFlags.DEFAULT)
# The descriptions of the SDK's samplers, none of which reads span attributes.
_BLIND_SAMPLER = re.compile(
    r"(?:ParentBased|AlwaysOnSampler|AlwaysOffSampler|TraceIdRatioBased\{[0-9.e+-]+\}"
    r"|[{},:]|root|remoteParentSampled|remoteParentNotSampled|localParentSampled"
    r"|localParentNotSampled)+"
)
_current_context = otel_context.get_current
_span_in = trace.get_current_span
_in_context = trace.set_span_in_context
_attach = otel_context.attach
_detach = otel_context.detach
_log = logging.getLogger("apigw_mw")

# W3C tracestate list members (the grammar OpenTelemetry's TraceState accepts).
_TS_MEMBER = re.compile(
    r"\s*((?:[a-z][_0-9a-z\-*/]{0,255})|(?:[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}))"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])\s*"
)


class _FixedIds:
    """An id generator whose next trace id is the caller's X-Ray ``Root``."""

    def __init__(self, inner: Any, trace_id: int) -> None:
        self._inner = inner
        self._trace_id = trace_id

    def generate_trace_id(self) -> int:
        return self._trace_id or int(self._inner.generate_trace_id())

    def generate_span_id(self) -> int:
        return int(self._inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        if self._trace_id:
            return False  # an X-Ray trace id starts with a timestamp
        inner = getattr(self._inner, "is_trace_id_random", None)
        return bool(inner()) if inner is not None else False


class _FixedSampler:
    """A sampler that takes the caller's decision, or (``None``) asks the local sampler as
    for a new trace."""

    def __init__(self, inner: Any, sampled: bool | None) -> None:
        self._inner = inner
        self._sampled = sampled

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> Any:
        if self._sampled is None:
            return self._inner.should_sample(_EMPTY, trace_id, name, kind, attributes, links)
        sampling = importlib.import_module("opentelemetry.sdk.trace.sampling")
        if self._sampled:
            return sampling.SamplingResult(
                sampling.Decision.RECORD_AND_SAMPLE, attributes, trace_state
            )
        return sampling.SamplingResult(sampling.Decision.DROP, None, trace_state)

    def get_description(self) -> str:
        return f"CallerDecision{{{self._inner.get_description()}}}"


def _steered(tracer: Any, trace_id: int, sampled: bool | None) -> Any:
    """A copy of an SDK tracer that starts its next span inside trace ``trace_id`` (when not
    0) with the caller's sampling decision; ``None`` for tracers of another SDK.

    The tracing API cannot start a root span inside a known trace (an X-Ray ``Root``
    without ``Parent``) nor defer a remote parent's decision to the local sampler
    (``Sampled=?``). Used for those rare requests only; the shared tracer is never touched.
    """
    if not (hasattr(tracer, "id_generator") and hasattr(tracer, "sampler")):
        return None
    steered = copy.copy(tracer)
    steered.id_generator = _FixedIds(tracer.id_generator, trace_id)
    steered.sampler = _FixedSampler(tracer.sampler, sampled)
    return steered


class _Active:
    """One request's tracing state."""

    __slots__ = ("header", "late", "offset", "owned", "span", "token")

    def __init__(
        self, span: Any, owned: bool, token: Any, header: bytes, late: dict[str, Any] | None
    ) -> None:
        self.span = span
        self.owned = owned
        self.token = token
        self.header = header  # the X-Amzn-Trace-Id response header
        self.late = late  # start attributes recorded with the final ones
        self.offset = 0  # wall clock minus perf counter, for policy spans


class _Off(BasePolicy):
    """What a disabled observer binds to: a pure observer without hooks, which the pipeline
    leaves out of every plan, so it costs nothing per request."""

    phase = Phase.OBSERVE

    def __repr__(self) -> str:
        return "<observer disabled: no-op provider>"


OFF: Policy = _Off()


def off(routes: tuple[str, ...] | None) -> Policy:
    """The disabled observer for a policy applying to ``routes``.

    On every route it is :data:`OFF`, which the pipeline drops. A route-limited one keeps
    its routes, so that the routes it declares count as declared whether or not a provider
    is configured (``strict_routes``, the most specific route key), but it has no hook and
    no flow: no plan runs it.
    """
    if routes is None:
        return OFF
    return _Off(routes=routes)


class Tracing(BasePolicy):
    """One OpenTelemetry server span per request, with X-Ray and W3C trace propagation.

    Args:
        tracer_provider: the provider to trace with; ``None`` uses the global one
            (``opentelemetry.trace.set_tracer_provider``), looked up once, when the
            middleware is built: set it before that. With no provider configured (the API's
            no-op one) tracing switches itself off and costs nothing per request.
        propagators: the incoming trace headers to read, in order of preference:
            ``"tracecontext"`` (W3C ``traceparent``/``tracestate``) and ``"xray"``
            (``X-Amzn-Trace-Id``). The first header naming a parent span wins; an X-Ray
            ``Root`` without ``Parent`` is used only when no header names a parent.
        policy_spans: also record a child span per policy the request went through, named
            after the policy (``Throttle``, ``ApiKeyAuth``, or a policy's ``span_name``
            attribute when it has one).
        routes: the route patterns to trace (``["GET /pets/{petId}"]``); ``None`` (the
            default) traces every request, unmatched ones included.

    The span is current while the app runs, so framework and client instrumentation nest
    under it; it ends once the response has been sent in full. When a framework
    instrumentation outside the gateway already opened a server span, that span gets the
    gateway's attributes instead of a second one being opened. Responses carry
    ``X-Amzn-Trace-Id`` and ``$context.xrayTraceId`` is set.

    Example::

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        app = GatewayMiddleware(app, policies=[Tracing(provider), AccessLog(AccessLog.JSON)])
    """

    phase = Phase.OBSERVE

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        propagators: Iterable[str] = _PROPAGATORS,
        policy_spans: bool = False,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        if isinstance(propagators, str):
            propagators = (propagators,)
        names = tuple(propagators)
        for i, name in enumerate(names):
            if name not in _PROPAGATORS:
                raise ConfigurationError(
                    f"Tracing.propagators[{i}]",
                    f"{name!r} is not a known propagator (use 'tracecontext' or 'xray')",
                )
        if tracer_provider is not None and not callable(
            getattr(tracer_provider, "get_tracer", None)
        ):
            raise ConfigurationError("Tracing.tracer_provider", "must be a TracerProvider")
        self.tracer_provider = tracer_provider
        self.propagators = names
        self.policy_spans = bool(policy_spans)
        self._state = _UNRESOLVED
        self._tracer: Any = None
        self._late = False

    def __repr__(self) -> str:
        routes = "" if self.routes is None else f", routes={list(self.routes)!r}"
        return (
            f"Tracing(propagators={self.propagators!r}, policy_spans={self.policy_spans!r}{routes})"
        )

    def bind(self, settings: GatewaySettings) -> Policy:
        bound = copy.copy(self)
        if not bound._resolve():
            _log.info("Tracing is off: no OpenTelemetry tracer provider is configured")
            return off(self.routes)
        return bound

    def _resolve(self) -> bool:
        """Pick the tracer once; ``False`` (and no per-request work) for a no-op provider."""
        provider = self.tracer_provider
        if provider is None:
            # Unset, the global provider is the API's proxy: nothing records. Set the global
            # provider before the middleware is built (as OpenTelemetry asks of every
            # instrumentation), or pass one here.
            provider = trace.get_tracer_provider()
        tracer = None
        if not isinstance(provider, trace.ProxyTracerProvider):
            tracer = provider.get_tracer(_SCOPE, __version__)
        if tracer is None or isinstance(tracer, (trace.NoOpTracer, trace.ProxyTracer)):
            self._state = _OFF
            return False
        self._tracer = tracer
        # Samplers that never read attributes (the SDK's own) let the start attributes be
        # recorded together with the final ones: one attribute update instead of two.
        sampler = getattr(tracer, "sampler", None)
        self._late = sampler is not None and bool(
            _BLIND_SAMPLER.fullmatch(str(sampler.get_description()))
        )
        self._state = _ON
        return True

    # -- hooks ---------------------------------------------------------------------------

    def on_request(self, request: Request, context: RequestContext) -> None:
        if self._state != _ON:
            return
        # The current context is looked up once and handed to the SDK, which would
        # otherwise look it up again for the parent, the sampler and the new context.
        current_context = _current_context()
        current = _span_in(current_context)
        if current.is_recording() and getattr(current, "kind", None) is _SERVER:
            # A framework instrumentation outside the gateway opened the server span.
            span = current
            user_agent, _ = _headers(request)
            span.set_attributes(self._start_attributes(request, context, user_agent))
            owned, token, late = False, None, None
        else:
            span, late = self._start(request, context, current_context)
            owned, token = True, _attach(_in_context(span, current_context))
        sc = span.get_span_context()
        # bytes.hex() formats the ids in half the time of an integer format spec.
        hex_id = sc.trace_id.to_bytes(16, "big").hex()
        xray_id = f"1-{hex_id[:8]}-{hex_id[8:]}"
        parent_id = sc.span_id.to_bytes(8, "big").hex()
        header = f"Root={xray_id};Parent={parent_id};Sampled={'1' if sc.trace_flags & 1 else '0'}"
        active = _Active(span, owned, token, header.encode("ascii"), late)
        extra = context.extra
        extra[_STATE] = active
        extra["xrayTraceId"] = xray_id
        if span.is_recording():
            # Throttles and usage plans write their decision (``extra["throttle"]``) only
            # for a request someone records.
            setattr(context, WATCHED, extra)
            if self.policy_spans:
                active.offset = time.time_ns() - perf_counter_ns()
                if context.policy_trace is None:  # another observer may have asked already
                    context.policy_trace = []

    def on_response(self, request: Request, context: RequestContext, head: ResponseHead) -> None:
        if self._state != _ON:
            return
        active = context.extra.get(_STATE)
        if active is None:
            return
        headers = head.headers
        for name, _ in headers:
            if name == _XRAY_HEADER:  # the gateway's trace header replaces the app's
                headers[:] = [(n, v) for n, v in headers if n != _XRAY_HEADER]
                break
        headers.append((_XRAY_HEADER, active.header))

    def on_complete(self, request: Request, context: RequestContext) -> None:
        if self._state != _ON:
            return
        active = context.extra.pop(_STATE, None)
        if active is None:
            return
        span = active.span
        try:
            if span.is_recording():
                self._finish(span, context, active)
        finally:
            # Detach first: a failing span processor must not leave the span current.
            if active.token is not None:
                _detach(active.token)
            if active.owned:
                span.end()

    # -- span work -----------------------------------------------------------------------

    def _start_attributes(
        self, request: Request, context: RequestContext, user_agent: str | None
    ) -> dict[str, Any]:
        method = context.http_method
        route = context.resource_path
        if method in _METHODS:
            attrs: dict[str, Any] = {
                "http.request.method": method,
                "url.path": context.path,
                "url.scheme": request.scheme,
                "apigw.request_id": context.request_id,
            }
        else:
            attrs = {
                "http.request.method": "_OTHER",
                "http.request.method_original": method,
                "url.path": context.path,
                "url.scheme": request.scheme,
                "apigw.request_id": context.request_id,
            }
        if route is not None:
            attrs["http.route"] = route
        ip = request.source_ip
        if ip is not None:
            attrs["client.address"] = ip
        if user_agent:
            attrs["user_agent.original"] = user_agent
        return attrs

    def _start(
        self, request: Request, context: RequestContext, current: Any
    ) -> tuple[Any, dict[str, Any] | None]:
        """The server span, and the start attributes still to record (see ``_late``)."""
        user_agent, incoming = _headers(request)
        attrs = self._start_attributes(request, context, user_agent)
        route = context.resource_path
        method = attrs["http.request.method"]
        name = f"{method} {route}" if route is not None else method
        tracer = self._tracer
        found = self._incoming(incoming) if incoming is not None else None
        if found is None:
            if self._late:
                return tracer.start_span(name, context=current, kind=_SERVER), attrs
            return tracer.start_span(name, context=current, kind=_SERVER, attributes=attrs), None
        header, state = found
        if header.span_id:
            flags = _SAMPLED_FLAGS if header.sampled else _DEFAULT_FLAGS
            parent = _in_context(
                NonRecordingSpan(
                    SpanContext(
                        header.trace_id,
                        header.span_id,
                        is_remote=True,
                        trace_flags=flags,
                        trace_state=state,
                    )
                ),
                current,
            )
            if header.sampled is None:
                # Sampled=? or no Sampled: the local sampler decides, not the parent's flag.
                tracer = _steered(tracer, 0, None) or tracer
        else:
            # X-Ray Root without Parent: a root span inside the caller's trace.
            parent = _EMPTY
            tracer = _steered(tracer, header.trace_id, header.sampled) or tracer
        if self._late:
            return tracer.start_span(name, context=parent, kind=_SERVER), attrs
        span = tracer.start_span(name, context=parent, kind=_SERVER, attributes=attrs)
        return span, None

    def _incoming(
        self, headers: dict[str, list[str]]
    ) -> tuple[TraceHeader, TraceState | None] | None:
        fallback: tuple[TraceHeader, TraceState | None] | None = None
        for name in self.propagators:
            if name == "tracecontext":
                traceparent = headers.get("traceparent")
                if not traceparent:
                    continue
                header = parse_traceparent(traceparent)
                if header is None:
                    continue
                return header, _trace_state(headers.get("tracestate") or [])
            xray = headers.get("xray")
            if not xray:
                continue
            header = parse_xray(xray)
            if header is None:
                continue
            if header.span_id:
                return header, None
            if fallback is None:
                fallback = (header, None)
        return fallback

    def _finish(self, span: Any, context: RequestContext, active: _Active) -> None:
        status = context.status
        attrs: dict[str, Any] = active.late or {}
        if status is not None:
            attrs["http.response.status_code"] = status
        if not active.owned and context.resource_path is not None:
            attrs["http.route"] = context.resource_path
        # What policies learned; reading an untouched lazy field would build it for nothing.
        fields: Any = getattr(context, "__dict__", None) or {}
        identity = fields.get("identity")
        if identity is not None and identity.api_key_id is not None:
            attrs["apigw.api_key_id"] = identity.api_key_id
        authorizer = fields.get("authorizer")
        if authorizer:
            principal = authorizer.get("principalId")
            if isinstance(principal, (str, int)):
                attrs["apigw.principal_id"] = str(principal)
        extra = context.extra
        cache = extra.get("cacheStatus")
        if cache is not None:
            attrs["apigw.cache_hit"] = cache == "hit"
        throttle = extra.get("throttle")
        if isinstance(throttle, str):
            attrs["apigw.throttle"] = throttle
        error = context.error
        if error is not None:
            attrs["apigw.response_type"] = error.response_type
            attrs["error.type"] = error.response_type
            if error.response_type in _THROTTLE_TYPES:
                attrs["apigw.throttle"] = _THROTTLE_TYPES[error.response_type]
            span.add_event(
                "apigw.denied",
                {
                    "apigw.response_type": error.response_type,
                    "http.response.status_code": error.status,
                    "message": error.message if error.message is not None else "",
                },
            )
            span.set_status(Status(StatusCode.ERROR, f"{error.response_type}: {error.message}"))
        elif status is None:
            attrs["error.type"] = "no_response"
            span.set_status(Status(StatusCode.ERROR, "no response was sent"))
        elif status >= 500:
            attrs["error.type"] = str(status)
            span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attrs)
        if context.policy_trace:
            self._policy_spans(span, context.policy_trace, active.offset)

    def _policy_spans(
        self, span: Any, records: list[tuple[Any, int, int, Any]], offset: int
    ) -> None:
        parent = trace.set_span_in_context(span, _EMPTY)
        tracer = self._tracer
        for policy, start, end, decision in records:
            attrs: dict[str, Any] = {
                "apigw.policy.phase": Phase(policy.phase).name,
                "apigw.policy.decision": _decision_name(decision),
            }
            child = tracer.start_span(
                span_name(policy),
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=attrs,
                start_time=start + offset,
            )
            if isinstance(decision, Deny):
                child.set_attribute("apigw.response_type", decision.response_type)
                child.set_status(Status(StatusCode.ERROR, decision.response_type))
            child.end(end_time=end + offset)


_ASGI_NAMES = {
    b"traceparent": "traceparent",
    b"tracestate": "tracestate",
    b"x-amzn-trace-id": "xray",
}
_WSGI_NAMES = (
    ("HTTP_TRACEPARENT", "traceparent"),
    ("HTTP_TRACESTATE", "tracestate"),
    ("HTTP_X_AMZN_TRACE_ID", "xray"),
)


def _headers(request: Request) -> tuple[str | None, dict[str, list[str]] | None]:
    """The user agent and the trace headers (``None`` when there are none), found in one
    pass without building the full header mapping.

    Reads the ASGI scope's raw header list or the WSGI environ (where a server joins a
    repeated header with commas, which the trace header parsers reject). Trace headers map
    ``"traceparent"``, ``"tracestate"`` and ``"xray"`` to their values in order.
    """
    raw = request.raw
    user_agent: str | None = None
    found: dict[str, list[str]] | None = None
    if isinstance(raw, dict) and "wsgi.version" not in raw and "headers" in raw:
        for name, value in raw["headers"]:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
                continue
            key = _ASGI_NAMES.get(name)
            if key is None:
                if name.islower():
                    continue
                # ASGI asks for lower-case names; not every server obeys.
                lowered = name.lower()
                if lowered == b"user-agent":
                    user_agent = value.decode("latin-1")
                    continue
                key = _ASGI_NAMES.get(lowered)
                if key is None:
                    continue
            if found is None:
                found = {}
            found.setdefault(key, []).append(value.decode("latin-1"))
        return user_agent, found
    if isinstance(raw, dict):
        for env_key, key in _WSGI_NAMES:
            value = raw.get(env_key)
            if value is not None:
                if found is None:
                    found = {}
                found[key] = [value]
        return raw.get("HTTP_USER_AGENT"), found
    headers = request.headers  # another carrier: the parsed mapping
    for key, name in (
        ("traceparent", "traceparent"),
        ("tracestate", "tracestate"),
        ("xray", "x-amzn-trace-id"),
    ):
        values = headers.getlist(name)
        if values:
            if found is None:
                found = {}
            found[key] = values
    return headers.get("user-agent"), found


def span_name(policy: Any) -> str:
    """The name of a policy's child span: its ``span_name`` attribute when it has one, else
    the public policy it runs (a bound policy's ``spec``, a wrapper's ``inner``), else its
    class name without the private ``_Bound`` prefix."""
    for _ in range(4):  # wrappers of bound policies: a few levels at most
        name = getattr(policy, "span_name", None)
        if isinstance(name, str) and name:
            return name
        for attr in ("spec", "inner"):
            inner = getattr(policy, attr, None)
            if (
                inner is not None
                and inner is not policy
                and isinstance(getattr(inner, "phase", None), int)
            ):
                policy = inner
                break
        else:
            break
    name = type(policy).__name__
    return name.removeprefix("_Bound").lstrip("_") or name


def _decision_name(decision: Any) -> str:
    # The pipeline records what ended the request (Deny, Respond) or None: the request went on.
    if isinstance(decision, Deny):
        return "deny"
    if isinstance(decision, Respond):
        return "respond"
    return "allow"


def _trace_state(values: list[str]) -> TraceState | None:
    """A W3C ``tracestate`` from its header values; ``None`` when absent or malformed."""
    if not values:
        return None
    joined = ",".join(values)
    if len(joined) > 8192:
        return None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for member in joined.split(","):
        if not member.strip():
            continue
        m = _TS_MEMBER.fullmatch(member)
        if m is None or m.group(1) in seen:
            return None
        seen.add(m.group(1))
        pairs.append((m.group(1), m.group(2)))
    if not pairs or len(pairs) > 32:
        return None
    return TraceState(pairs)


def console_tracer_provider(out: IO[str] | None = None) -> trace.TracerProvider:
    """A tracer provider that prints one line per finished span (needs ``opentelemetry-sdk``).

    Meant for demos and debugging; spans are printed as they end, without batching.

    Example::

        tracing = Tracing(console_tracer_provider(), policy_spans=True)
        app = GatewayMiddleware(app, policies=[tracing, AccessLog(AccessLog.CLF)])
    """
    import sys

    sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
    export = importlib.import_module("opentelemetry.sdk.trace.export")
    stream = out if out is not None else sys.stderr

    def line(span: Any) -> str:
        sc = span.context
        parent = f"{span.parent.span_id:016x}" if span.parent is not None else "-"
        ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        attrs = " ".join(f"{k}={v}" for k, v in (span.attributes or {}).items())
        status = span.status.status_code.name
        return (
            f"span {span.name!r} trace={sc.trace_id:032x} span={sc.span_id:016x} "
            f"parent={parent} {ms:.2f}ms {status} {attrs}\n"
        )

    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(
        export.SimpleSpanProcessor(export.ConsoleSpanExporter(out=stream, formatter=line))
    )
    return provider  # type: ignore[no-any-return]
