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
