from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apigw_mw import Allow, BasePolicy, Deny, Phase


class Traces:
    """A tracer provider exporting to memory (OpenTelemetry's globals are left alone: they
    can be set only once per process)."""

    def __init__(self, **provider_options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(**provider_options)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def server_spans(self) -> list[Any]:
        from opentelemetry.trace import SpanKind

        return [s for s in self.spans() if s.kind is SpanKind.SERVER]


@pytest.fixture
def traces() -> Iterator[Traces]:
    t = Traces()
    yield t
    t.provider.shutdown()


@pytest.fixture
def metric_reader() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


class DenyWhen(BasePolicy):
    """Refuses requests carrying ``x-deny: <RESPONSE_TYPE>`` with that gateway response."""

    phase = Phase.VALIDATE

    def flow(self, request: Any, context: Any) -> Any:
        kind = request.headers.get("x-deny")
        if kind:
            return Deny(kind)
        return None


class Learn(BasePolicy):
    """Admits every request as a caller with an API key, a principal and a token."""

    phase = Phase.AUTHORIZE

    def flow(self, request: Any, context: Any) -> Any:
        context.extra["cacheStatus"] = request.headers.get("x-cache", "miss")
        return Allow(
            authorizer={"principalId": "user-7", "token": "eyJsecret.token.value"},
            identity={
                "api_key": "k" * 30,
                "api_key_id": "key-id-1",
                "caller": "caller-1",
                "user": "user-7",
            },
        )
