"""Tracing: one server span per request, X-Ray and W3C propagation, through both adapters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from werkzeug.test import Client as WerkzeugClient

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    BasePolicy,
    ConfigurationError,
    GatewayMiddleware,
    MemoryStore,
    Phase,
    Quota,
    RouteTable,
    Stage,
    Throttle,
    TokenBucket,
    Tracing,
    UsagePlan,
    WSGIGatewayMiddleware,
    get_context,
)
from apigw_mw.observe.tracing import OFF
from tests.helpers import _AsgiTransport

from .conftest import DenyWhen, Learn, Traces

ROOT = "1-5759e988-bd862e3fe1be46a994272793"
TRACE = 0x5759E988BD862E3FE1BE46A994272793
PARENT = 0x53995C3F42CD8AD8
TP_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
TP_PARENT = 0xB7AD6B7169203331
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ROUTES = RouteTable(["GET /pets/{petId}"])


def xray_header(response: Any) -> dict[str, str]:
    value = response.headers["x-amzn-trace-id"]
    return dict(part.split("=", 1) for part in value.split(";"))


def test_one_server_span_per_request(make_client: Any, traces: Traces) -> None:
    client = make_client([Tracing(traces.provider), ROUTES], stage=Stage("prod"))
    r = client.get("/pets/42", headers={"user-agent": "pets-cli/1.0"})
    assert r.status_code == 200
    [span] = traces.spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET /pets/{petId}"
    assert span.parent is None
    attrs = dict(span.attributes)
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/pets/42"
    assert attrs["url.scheme"] == "http"
    assert attrs["http.route"] == "/pets/{petId}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user_agent.original"] == "pets-cli/1.0"
    assert attrs["apigw.request_id"] == r.headers["x-amzn-requestid"]
    assert span.status.status_code is StatusCode.UNSET
    # The response names the span in X-Ray's form; the app sees $context.xrayTraceId.
    xray = xray_header(r)
    trace_hex = f"{span.context.trace_id:032x}"
    assert xray == {
        "Root": f"1-{trace_hex[:8]}-{trace_hex[8:]}",
        "Parent": f"{span.context.span_id:016x}",
        "Sampled": "1",
    }
    assert r.seen[0].context.lookup(("xrayTraceId",)) == xray["Root"]


INCOMING = [
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1"},
        ALWAYS_OFF,
        (TRACE, PARENT, True),
        id="xray-sampled-1-overrides-local-sampler",
    ),
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=0"},
        ALWAYS_ON,
        (TRACE, PARENT, False),
        id="xray-sampled-0-overrides-local-sampler",
    ),
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=?"},
        ALWAYS_ON,
        (TRACE, PARENT, True),
        id="xray-sampled-?-local-sampler-records",
    ),
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8"},
        ALWAYS_OFF,
        (TRACE, PARENT, False),
        id="xray-no-sampled-local-sampler-drops",
    ),
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT}"},
        ALWAYS_ON,
        (TRACE, None, True),
        id="xray-root-only-starts-root-span-in-trace",
    ),
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT};Sampled=0"},
        ALWAYS_ON,
        (TRACE, None, False),
        id="xray-root-only-sampled-0",
    ),
    pytest.param(
        {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"},
        ALWAYS_OFF,
        (TP_TRACE, TP_PARENT, True),
        id="traceparent-sampled",
    ),
    pytest.param(
        {"traceparent": TRACEPARENT, "x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8"},
        ALWAYS_ON,
        (TP_TRACE, TP_PARENT, True),
        id="traceparent-preferred-by-default",
    ),
    pytest.param(
        {"traceparent": "garbage", "x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8"},
        ALWAYS_ON,
        (TRACE, PARENT, True),
        id="bad-traceparent-falls-back-to-xray",
    ),
    pytest.param(
        {"x-amzn-trace-id": f"Root={ROOT}", "traceparent": TRACEPARENT},
        ALWAYS_ON,
        (TP_TRACE, TP_PARENT, True),
        id="a-parent-beats-a-root-only-header",
    ),
]


@pytest.mark.parametrize(("headers", "root_sampler", "expected"), INCOMING)
def test_incoming_trace_headers(
    make_client: Any,
    headers: dict[str, str],
    root_sampler: Any,
    expected: tuple[int, int | None, bool],
) -> None:
    traces = Traces(sampler=ParentBased(root_sampler))
    client = make_client([Tracing(traces.provider), ROUTES])
    r = client.get("/pets/1", headers=headers)
    assert r.status_code == 200
    assert len(r.seen) == 1
    trace_id, parent_id, sampled = expected
    xray = xray_header(r)
    assert xray["Root"] == f"1-{trace_id >> 96:08x}-{trace_id & (2**96 - 1):024x}"
    assert xray["Sampled"] == ("1" if sampled else "0")
    spans = traces.spans()
    if not sampled:
        assert spans == []
        return
    [span] = spans
    assert span.context.trace_id == trace_id
    assert xray["Parent"] == f"{span.context.span_id:016x}"
    if parent_id is None:
        assert span.parent is None
    else:
        assert span.parent.span_id == parent_id
        assert span.parent.is_remote
    if "tracestate" in headers:
        assert dict(span.context.trace_state) == {"vendor": "abc", "other": "1"}


def test_xray_preferred_when_listed_first(make_client: Any, traces: Traces) -> None:
    client = make_client([Tracing(traces.provider, propagators=("xray", "tracecontext")), ROUTES])
    r = client.get(
        "/pets/1",
        headers={
            "traceparent": TRACEPARENT,
            "x-amzn-trace-id": f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1",
        },
    )
    [span] = traces.spans()
    assert (span.context.trace_id, span.parent.span_id) == (TRACE, PARENT)
    assert xray_header(r)["Root"] == ROOT


BAD_HEADERS = [
    pytest.param([("x-amzn-trace-id", "Root=1-zzzz;Parent=1")], id="xray-malformed"),
    pytest.param([("x-amzn-trace-id", f"Root={ROOT};Sampled=yes")], id="xray-bad-sampled"),
    pytest.param(
        [("x-amzn-trace-id", f"Root={ROOT};Parent=53995c3f42cd8ad8;X=" + "a" * 4000)],
        id="xray-oversized",
    ),
    pytest.param(
        [
            ("x-amzn-trace-id", f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1"),
            ("x-amzn-trace-id", f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1"),
        ],
        id="xray-duplicated",
    ),
    pytest.param([("traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01")], id="tp-zero-trace"),
    pytest.param([("traceparent", TRACEPARENT + "-" + "a" * 600)], id="tp-oversized"),
    pytest.param([("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)], id="tp-duplicated"),
    pytest.param([("traceparent", TRACEPARENT.upper())], id="tp-upper-case"),
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_malformed_trace_headers_start_a_new_trace(
    make_client: Any, traces: Traces, headers: list[tuple[str, str]]
) -> None:
    client = make_client([Tracing(traces.provider), ROUTES])
    r = client.get("/pets/1", headers=headers)
    assert r.status_code == 200
    assert len(r.seen) == 1
    [span] = traces.spans()
    assert span.parent is None
    assert span.context.trace_id not in (TRACE, TP_TRACE)
    assert xray_header(r)["Root"] != ROOT


def test_bad_tracestate_is_dropped_but_traceparent_kept(make_client: Any, traces: Traces) -> None:
    client = make_client([Tracing(traces.provider), ROUTES])
    client.get("/pets/1", headers={"traceparent": TRACEPARENT, "tracestate": "BAD KEY=1"})
    [span] = traces.spans()
    assert span.parent.span_id == TP_PARENT
    assert dict(span.context.trace_state) == {}


def test_denial_is_recorded_as_status_and_event(make_client: Any, traces: Traces) -> None:
    client = make_client([Tracing(traces.provider), DenyWhen(), ROUTES])
    r = client.get("/pets/1", headers={"x-deny": "THROTTLED"})
    assert r.status_code == 429
    assert r.seen == []
    assert "x-amzn-trace-id" in r.headers  # gateway responses carry it too
    [span] = traces.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "THROTTLED: Too Many Requests"
    attrs = dict(span.attributes)
    assert attrs["http.response.status_code"] == 429
    assert attrs["apigw.response_type"] == "THROTTLED"
    assert attrs["apigw.throttle"] == "throttled"
    assert attrs["error.type"] == "THROTTLED"
    [event] = span.events
    assert event.name == "apigw.denied"
    assert dict(event.attributes) == {
        "apigw.response_type": "THROTTLED",
        "http.response.status_code": 429,
        "message": "Too Many Requests",
    }


def test_caller_identity_and_cache_on_span(make_client: Any, traces: Traces) -> None:
    client = make_client([Tracing(traces.provider), Learn(), ROUTES])
    client.get("/pets/1", headers={"x-cache": "hit"})
    [span] = traces.spans()
    attrs = dict(span.attributes)
    assert attrs["apigw.api_key_id"] == "key-id-1"
    assert attrs["apigw.principal_id"] == "user-7"
    assert attrs["apigw.cache_hit"] is True
    assert "k" * 30 not in str(attrs)  # the API key value itself is never recorded
    assert "eyJsecret" not in str(attrs)


def test_policy_spans_are_children_with_their_own_times(make_client: Any, traces: Traces) -> None:
    client = make_client([Tracing(traces.provider, policy_spans=True), Learn(), DenyWhen(), ROUTES])
    r = client.get("/pets/1", headers={"x-deny": "INVALID_API_KEY"})
    assert r.status_code == 403
    [server] = traces.server_spans()
    children = sorted(
        (s for s in traces.spans() if s.kind is SpanKind.INTERNAL), key=lambda s: s.start_time
    )
    assert [c.name for c in children] == ["Learn", "DenyWhen"]
    for child in children:
        assert child.parent.span_id == server.context.span_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    assert dict(children[0].attributes) == {
        "apigw.policy.phase": "AUTHORIZE",
        "apigw.policy.decision": "allow",
    }
    assert children[1].attributes["apigw.policy.decision"] == "deny"
    assert children[1].attributes["apigw.response_type"] == "INVALID_API_KEY"
    assert children[1].status.status_code is StatusCode.ERROR


def test_app_5xx_is_an_error_and_4xx_is_not(make_client: Any, traces: Traces) -> None:
    make_client([Tracing(traces.provider), ROUTES], app_status=503).get("/pets/1")
    make_client([Tracing(traces.provider), ROUTES], app_status=404).get("/pets/1")
    failed, missing = traces.spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "503"
    assert missing.status.status_code is StatusCode.UNSET
    assert "error.type" not in missing.attributes


def test_no_op_provider_costs_nothing_and_adds_nothing(make_client: Any) -> None:
    tracing = Tracing(NoOpTracerProvider())
    client = make_client([tracing, ROUTES])
    r = client.get("/pets/1", headers={"x-amzn-trace-id": f"Root={ROOT};Sampled=1"})
    assert r.status_code == 200
    assert "x-amzn-trace-id" not in r.headers
    assert r.seen[0].context.lookup(("xrayTraceId",)) is None
    # The bound policy has no hooks at all: the pipeline drops it.
    assert OFF not in client.middleware.gateway.pipeline.policies
    # Alone, it leaves the gateway on its fast path, as if no policy were given.
    assert make_client([Tracing(NoOpTracerProvider())]).middleware.gateway.empty


def test_unconfigured_global_provider_is_the_no_op_one(make_client: Any) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    client = make_client([Tracing(), ROUTES])
    assert "x-amzn-trace-id" not in client.get("/pets/1").headers


def test_existing_server_span_is_annotated_not_duplicated(make_client: Any, traces: Traces) -> None:
    """A framework instrumentation outside the gateway already opened the server span."""
    client = make_client([Tracing(traces.provider), ROUTES])
    tracer = traces.provider.get_tracer("framework")
    with tracer.start_as_current_span("framework span", kind=SpanKind.SERVER) as outer:
        r = client.get("/pets/1")
    [span] = traces.spans()
    assert span is not None
    assert span.context.span_id == outer.get_span_context().span_id
    assert span.name == "framework span"
    assert span.attributes["apigw.request_id"] == r.headers["x-amzn-requestid"]
    assert span.attributes["http.route"] == "/pets/{petId}"
    assert xray_header(r)["Parent"] == f"{span.context.span_id:016x}"


def test_otel_asgi_middleware_outside_the_gateway(traces: Traces) -> None:
    app = Starlette(routes=[Route("/pets/{petId}", lambda request: PlainTextResponse("ok"))])
    gateway = GatewayMiddleware(app, policies=[Tracing(traces.provider), ROUTES])
    outer = OpenTelemetryMiddleware(gateway, tracer_provider=traces.provider)
    with httpx.Client(transport=_AsgiTransport(outer), base_url="http://testserver") as client:
        r = client.get("/pets/1")
    assert r.status_code == 200
    [server] = traces.server_spans()
    assert server.attributes["apigw.request_id"] == r.headers["x-amzn-requestid"]


class _FailingExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        raise RuntimeError("collector down")


class _FailingProcessor(SpanProcessor):
    def __init__(self, where: str) -> None:
        self.where = where

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.where == "start":
            raise RuntimeError("processor broken at start")

    def on_end(self, span: Any) -> None:
        if self.where == "end":
            raise RuntimeError("processor broken at end")


@pytest.mark.parametrize(
    "processor",
    [
        pytest.param(SimpleSpanProcessor(_FailingExporter()), id="exporter-raises"),
        pytest.param(_FailingProcessor("start"), id="processor-raises-on-start"),
        pytest.param(_FailingProcessor("end"), id="processor-raises-on-end"),
    ],
)
def test_failing_exporter_does_not_affect_the_request(
    make_client: Any, processor: SpanProcessor, caplog: pytest.LogCaptureFixture
) -> None:
    traces = Traces()
    traces.provider.add_span_processor(processor)
    client = make_client([Tracing(traces.provider), ROUTES])
    for _ in range(2):  # and the next request starts clean
        r = client.get("/pets/1")
        assert r.status_code == 200
        assert len(r.seen) == 1
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_unknown_propagator_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Tracing(propagators=("tracecontext", "b3"))
    assert info.value.field == "Tracing.propagators[1]"
    with pytest.raises(ConfigurationError) as info:
        Tracing(tracer_provider="not a provider")  # type: ignore[arg-type]
    assert info.value.field == "Tracing.tracer_provider"


# -- the span lives as long as the response, and is current while the app runs --------------


def _streaming_apps(traces: Traces, marks: dict[str, Any]) -> tuple[Any, Any]:
    tracer = traces.provider.get_tracer("app")

    async def stream(request: Any) -> StreamingResponse:
        marks["current"] = trace.get_current_span().get_span_context().span_id
        with tracer.start_as_current_span("handler"):
            pass

        async def body() -> Any:
            for i in range(3):
                yield f"chunk{i}".encode()
            marks["last_chunk"] = time.time_ns()

        return StreamingResponse(body())

    def wsgi_stream(environ: dict[str, Any], start_response: Any) -> Any:
        marks["current"] = trace.get_current_span().get_span_context().span_id
        with tracer.start_as_current_span("handler"):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            for i in range(3):
                yield f"chunk{i}".encode()
            marks["last_chunk"] = time.time_ns()

        return body()

    asgi_app = Starlette(routes=[Route("/pets/{petId}", stream)])
    return asgi_app, wsgi_stream


def test_span_ends_after_streamed_body_and_is_current_in_app(adapter: str, traces: Traces) -> None:
    marks: dict[str, Any] = {}
    asgi_app, wsgi_app = _streaming_apps(traces, marks)
    policies = [Tracing(traces.provider), ROUTES]
    if adapter == "asgi":
        app = GatewayMiddleware(asgi_app, policies=policies)
        with httpx.Client(transport=_AsgiTransport(app), base_url="http://t") as client:
            body = client.get("/pets/1").content
    else:
        wsgi = WSGIGatewayMiddleware(wsgi_app, policies=policies)
        resp = WerkzeugClient(wsgi).get("/pets/1", buffered=True)
        body = resp.get_data()
    assert body == b"chunk0chunk1chunk2"
    [server] = traces.server_spans()
    [handler] = [s for s in traces.spans() if s.name == "handler"]
    assert marks["current"] == server.context.span_id
    assert handler.parent.span_id == server.context.span_id
    assert server.end_time >= marks["last_chunk"]


# -- one trace across a real client and a real server ------------------------------------


@pytest.fixture
def served(adapter: str, traces: Traces) -> Iterator[str]:
    """The gateway with tracing, served on 127.0.0.1 by uvicorn (ASGI) or wsgiref (WSGI)."""
    policies = [Tracing(traces.provider), ROUTES]
    if adapter == "asgi":
        app = Starlette(routes=[Route("/pets/{petId}", lambda r: PlainTextResponse("ok"))])
        config = uvicorn.Config(
            GatewayMiddleware(app, policies=policies),
            host="127.0.0.1",
            port=0,
            lifespan="off",
            log_level="warning",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(10)
    else:

        def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            assert get_context(environ).request_id
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        httpd = make_server(
            "127.0.0.1", 0, WSGIGatewayMiddleware(wsgi_app, policies=policies), handler_class=Quiet
        )
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_port}"
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_one_trace_across_instrumented_client_and_server(served: str, traces: Traces) -> None:
    with httpx.Client(base_url=served) as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=traces.provider)
        r = client.get("/pets/7")
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while not traces.server_spans():  # the server ends its span once the body is sent
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [server] = traces.server_spans()
    [client_span] = [s for s in traces.spans() if s.kind is SpanKind.CLIENT]
    assert server.context.trace_id == client_span.context.trace_id
    assert server.parent.span_id == client_span.context.span_id
    assert server.attributes["http.route"] == "/pets/{petId}"
    xray = xray_header(r)
    assert xray["Parent"] == f"{server.context.span_id:016x}"


def test_xray_round_trip_through_real_server(served: str, traces: Traces) -> None:
    """A caller's X-Ray header comes back naming the same trace and the server's span."""
    sent = f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1"
    with httpx.Client(base_url=served) as client:
        r = client.get("/pets/7", headers={"X-Amzn-Trace-Id": sent})
    deadline = time.monotonic() + 5
    while not traces.server_spans():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [server] = traces.server_spans()
    assert server.parent.span_id == PARENT
    assert r.headers["x-amzn-trace-id"] == (
        f"Root={ROOT};Parent={server.context.span_id:016x};Sampled=1"
    )


class _AttributeSampler(Sampler):
    """A sampler that decides on attributes (drops health checks)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.seen.append(dict(attributes or {}))
        keep = (attributes or {}).get("url.path") != "/health"
        return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "DropHealthChecks"


def test_custom_sampler_sees_attributes_at_span_start(make_client: Any) -> None:
    sampler = _AttributeSampler()
    traces = Traces(sampler=sampler)
    client = make_client(
        [Tracing(traces.provider), RouteTable(["GET /health", "GET /pets/{petId}"])]
    )
    client.get("/health")
    client.get("/pets/1")
    assert [s.attributes["url.path"] for s in traces.spans()] == ["/pets/1"]
    assert sampler.seen[1]["http.route"] == "/pets/{petId}"
    assert sampler.seen[1]["http.request.method"] == "GET"


def test_mixed_case_header_names_from_a_lax_asgi_server(traces: Traces) -> None:
    """ASGI asks servers for lower-case header names; the trace headers and the user agent
    are found when a server sends them as the client wrote them."""
    import asyncio

    app = Starlette(routes=[Route("/pets/{petId}", lambda r: PlainTextResponse("ok"))])
    gateway = GatewayMiddleware(app, policies=[Tracing(traces.provider), ROUTES])
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/pets/1",
        "raw_path": b"/pets/1",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"Host", b"t"),
            (b"User-Agent", b"lax-client/2"),
            (b"X-Amzn-Trace-Id", f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1".encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("t", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(gateway(scope, receive, send))
    assert sent[0]["status"] == 200
    [span] = traces.spans()
    assert (span.context.trace_id, span.parent.span_id) == (TRACE, PARENT)
    assert span.attributes["user_agent.original"] == "lax-client/2"


# -- routes= ----------------------------------------------------------------------------------

PETS_ONLY = ["GET /pets/{petId}"]
OTHER_ROUTES = RouteTable(["POST /pets/{petId}", "GET /owners/{ownerId}"])


@pytest.mark.parametrize(
    ("method", "path", "traced"),
    [
        pytest.param("GET", "/pets/1", True, id="its-route"),
        pytest.param("POST", "/pets/1", False, id="same-path-other-method"),
        pytest.param("GET", "/owners/1", False, id="another-declared-route"),
        pytest.param("GET", "/nowhere", False, id="no-declared-route"),
    ],
)
def test_route_limited_tracing_traces_only_its_routes(
    make_client: Any, traces: Traces, method: str, path: str, traced: bool
) -> None:
    client = make_client([Tracing(traces.provider, routes=PETS_ONLY), OTHER_ROUTES])
    r = client.request(method, path)
    assert r.status_code == 200
    assert len(r.seen) == 1
    assert ("x-amzn-trace-id" in r.headers) is traced
    assert (r.seen[0].context.lookup(("xrayTraceId",)) is not None) is traced
    if traced:
        [span] = traces.spans()
        assert span.name == "GET /pets/{petId}"
    else:
        assert traces.spans() == []


def test_route_limited_tracing_with_policy_spans_records_only_its_routes(
    make_client: Any, traces: Traces
) -> None:
    tracing = Tracing(traces.provider, policy_spans=True, routes=PETS_ONLY)
    client = make_client([tracing, Learn(), OTHER_ROUTES])
    client.get("/owners/1")
    assert traces.spans() == []
    client.get("/pets/1")
    assert sorted(s.name for s in traces.spans()) == ["GET /pets/{petId}", "Learn"]


@pytest.mark.parametrize(
    "provider",
    [
        pytest.param(NoOpTracerProvider(), id="no-op-provider"),
        pytest.param(None, id="unconfigured-global-provider"),
    ],
)
def test_route_limited_tracing_without_sdk_is_inert(make_client: Any, provider: Any) -> None:
    client = make_client([Tracing(provider, routes=PETS_ONLY)], strict_routes=True)
    r = client.get("/pets/1", headers={"x-amzn-trace-id": f"Root={ROOT};Sampled=1"})
    # Its routes still count as declared, as they do with an SDK ...
    assert r.status_code == 200
    assert client.get("/owners/1").status_code == 403
    # ... but it does nothing: no header, no context value, no hook for the pipeline to run.
    assert "x-amzn-trace-id" not in r.headers
    assert r.seen[0].context.lookup(("xrayTraceId",)) is None
    [bound] = client.middleware.gateway.pipeline.policies
    assert bound.routes == tuple(PETS_ONLY)
    assert (bound.on_request, bound.on_response, bound.on_complete) == (None, None, None)


def test_bad_routes_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Tracing(routes=["GET pets"])
    assert info.value.field == "Tracing.routes"


# -- the throttle decision on every request ---------------------------------------------------

KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


def _keys(quota: int) -> ApiKeys:
    plan = UsagePlan("basic", throttle=TokenBucket(rate=100, burst=100), quota=Quota(quota))
    return ApiKeys([ApiKey(KEY, id="k-alice", plan=plan)])


@pytest.mark.parametrize(
    ("policies", "requests", "statuses", "decisions"),
    [
        pytest.param(
            lambda: [Throttle(TokenBucket(rate=0.001, burst=1), storage=MemoryStore())],
            2,
            [200, 429],
            ["allowed", "throttled"],
            id="route-throttle",
        ),
        pytest.param(
            lambda: [
                Throttle(TokenBucket(rate=0.001, burst=1), key="source_ip", storage=MemoryStore())
            ],
            2,
            [200, 429],
            ["allowed", "throttled"],
            id="per-client-throttle",
        ),
        pytest.param(
            lambda: [ApiKeyAuth(_keys(quota=1), storage=MemoryStore())],
            2,
            [200, 429],
            ["allowed", "quota_exceeded"],
            id="usage-plan-and-quota",
        ),
        pytest.param(
            lambda: [
                Throttle(TokenBucket(rate=1000, burst=1000), storage=MemoryStore()),
                ApiKeyAuth(_keys(quota=1), storage=MemoryStore()),
            ],
            2,
            [200, 429],
            ["allowed", "quota_exceeded"],
            id="throttle-admits-plan-refuses",
        ),
        pytest.param(
            lambda: [
                Throttle(
                    TokenBucket(rate=0.001, burst=1),
                    key="source_ip",
                    strategy="fixed-window",
                    storage=MemoryStore(),
                )
            ],
            2,
            [200, 429],
            ["allowed", "throttled"],
            id="window-strategy",
        ),
        pytest.param(list, 1, [200], [None], id="no-traffic-policy"),
    ],
)
def test_throttle_decision_is_on_every_span(
    make_client: Any,
    traces: Traces,
    policies: Any,
    requests: int,
    statuses: list[int],
    decisions: list[str | None],
) -> None:
    client = make_client([Tracing(traces.provider), *policies(), ROUTES])
    got = [client.get("/pets/1", headers={"x-api-key": KEY}).status_code for _ in range(requests)]
    assert got == statuses
    spans = traces.server_spans()
    assert [s.attributes.get("apigw.throttle") for s in spans] == decisions


def test_throttle_decision_on_an_admitted_request_later_denied(
    make_client: Any, traces: Traces
) -> None:
    """The throttle admitted the request; the validator refused it: both are on the span."""
    client = make_client(
        [Tracing(traces.provider), Throttle(TokenBucket(rate=100, burst=100)), DenyWhen(), ROUTES]
    )
    r = client.get("/pets/1", headers={"x-deny": "BAD_REQUEST_BODY"})
    assert r.status_code == 400
    [span] = traces.spans()
    assert span.attributes["apigw.throttle"] == "allowed"
    assert span.attributes["apigw.response_type"] == "BAD_REQUEST_BODY"


# -- policy spans are named after the public policies ----------------------------------------


class Named(BasePolicy):
    """A policy naming its own span."""

    phase = Phase.VALIDATE
    span_name = "tenant check"


def test_policy_spans_are_named_after_the_public_policies(make_client: Any, traces: Traces) -> None:
    client = make_client(
        [
            Tracing(traces.provider, policy_spans=True),
            ApiKeyAuth(_keys(quota=100), storage=MemoryStore()),
            Throttle(TokenBucket(rate=100, burst=100), storage=MemoryStore()),
            Named(),
            ROUTES,
        ]
    )
    assert client.get("/pets/1", headers={"x-api-key": KEY}).status_code == 200
    children = sorted(
        (s for s in traces.spans() if s.kind is SpanKind.INTERNAL), key=lambda s: s.start_time
    )
    # In the gateway's phase order, whatever the list's order.
    assert [c.name for c in children] == ["Throttle", "ApiKeyAuth", "tenant check"]
    assert [c.attributes["apigw.policy.phase"] for c in children] == [
        "THROTTLE",
        "API_KEY",
        "VALIDATE",
    ]
