"""Observability: tracing (no-op and SDK), access logs and metrics, against the bare app and
against opentelemetry-instrumentation-asgi in the same run."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from apigw_mw import AccessLog, GatewayMiddleware, Metrics, RouteTable, Tracing
from bench_core import starlette_app
from harness import Call, Scenario

GROUP = "observe"
HEADERS = [
    (b"user-agent", b"python-httpx/0.28.1"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
]


class _Discard(logging.Handler):
    """A handler that formats nothing and writes nothing: the cost of the log call itself."""

    def emit(self, record: logging.LogRecord) -> None:
        return None


async def _no_op_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that costs next to nothing: what wraps it is all that is measured."""
    await send({"type": "http.response.start", "status": 200, "headers": _NO_OP_HEADERS})
    await send({"type": "http.response.body", "body": b"{}"})


_NO_OP_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]


def _access_logger() -> logging.Logger:
    logger = logging.getLogger("bench.observe.access")
    logger.handlers[:] = [_Discard()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def scenarios() -> list[Scenario]:
    bare = starlette_app()
    # A request as a typical HTTP client sends it (the harness adds Host).
    get = [Call("GET", "/pets/1", headers=HEADERS)]
    routes = RouteTable(["GET /pets/{petId}"])
    # A real SDK provider with no span processor: spans are built and dropped on end.
    sdk = TracerProvider()
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def gw(*policies: Any) -> GatewayMiddleware:
        return GatewayMiddleware(bare, policies=[routes, *policies])

    base = "observe: gateway, routes only"
    # The tracing budget is a share of what opentelemetry-instrumentation-asgi adds. The
    # harness divides by a scenario's whole cost, so the check compares both middlewares
    # around an app that costs next to nothing (0.5 to 1 us, shown on its own row: the check
    # is lenient by under 1%). Around the Starlette app both add more (their code and the
    # app's compete for the CPU caches), the gateway's tracing a little more in proportion:
    # the first rows show that figure.
    no_op = "observe: no-op ASGI app"
    no_op_base = "observe: gateway, routes only, no-op app"
    otel_alone = "observe: otel-instrumentation-asgi, SDK, no-op app"
    return [
        Scenario("observe: bare app", "asgi", bare, get, group=GROUP),
        Scenario(base, "asgi", gw(), get, baseline="observe: bare app", group=GROUP),
        Scenario(
            "observe: + Tracing, no SDK (no-op provider)",
            "asgi",
            gw(Tracing()),
            get,
            baseline=base,
            group=GROUP,
            budget=0.1,
            budget_kind="added",
            budget_ref="observe: bare app",
        ),
        Scenario(
            "observe: + Tracing, SDK, no exporter",
            "asgi",
            gw(Tracing(sdk)),
            get,
            baseline=base,
            group=GROUP,
        ),
        Scenario(
            "observe: + Tracing, SDK, X-Ray header",
            "asgi",
            gw(Tracing(sdk)),
            [
                Call(
                    "GET",
                    "/pets/1",
                    headers=[
                        *HEADERS,
                        (
                            b"x-amzn-trace-id",
                            b"Root=1-5759e988-bd862e3fe1be46a994272793;"
                            b"Parent=53995c3f42cd8ad8;Sampled=1",
                        ),
                    ],
                )
            ],
            baseline=base,
            group=GROUP,
        ),
        Scenario(
            "observe: otel-instrumentation-asgi, SDK",
            "asgi",
            OpenTelemetryMiddleware(bare, tracer_provider=sdk),
            get,
            baseline="observe: bare app",
            group=GROUP,
        ),
        Scenario(no_op, "asgi", _no_op_app, get, group=GROUP),
        Scenario(
            no_op_base,
            "asgi",
            GatewayMiddleware(_no_op_app, policies=[routes]),
            get,
            baseline=no_op,
            group=GROUP,
        ),
        Scenario(
            "observe: + Tracing, SDK, no-op app",
            "asgi",
            GatewayMiddleware(_no_op_app, policies=[routes, Tracing(sdk)]),
            get,
            baseline=no_op_base,
            group=GROUP,
            budget=0.25,
            budget_kind="added",
            budget_ref=otel_alone,
        ),
        Scenario(
            otel_alone,
            "asgi",
            OpenTelemetryMiddleware(_no_op_app, tracer_provider=sdk),
            get,
            baseline=no_op,
            group=GROUP,
        ),
        Scenario(
            "observe: + AccessLog (discarding handler)",
            "asgi",
            gw(AccessLog(logger=_access_logger())),
            get,
            baseline=base,
            group=GROUP,
            budget=1.0,
            budget_kind="added",
            budget_ref="observe: bare app",
        ),
        Scenario(
            "observe: + Metrics, SDK",
            "asgi",
            gw(Metrics(meters)),
            get,
            baseline=base,
            group=GROUP,
        ),
    ]
