"""Request metrics through the OpenTelemetry metrics API, mapped to API Gateway's CloudWatch
metrics in the docs (``Count``, ``4XXError``, ``5XXError``, ``Latency``,
``IntegrationLatency``, ``CacheHitCount``, ``CacheMissCount``)."""

from __future__ import annotations

import copy
from time import perf_counter
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from .._version import __version__
from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, GatewaySettings, Phase, Policy
from .tracing import OFF

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["Metrics"]

_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
# The HTTP semantic conventions' advice for http.server.request.duration, in seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def _histogram(meter: Any, name: str, description: str) -> Any:
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=_BUCKETS
        )
    except TypeError:  # an API older than 1.23 has no bucket advice
        return meter.create_histogram(name, unit="s", description=description)


class Metrics(BasePolicy):
    """Request metrics through the OpenTelemetry metrics API.

    Args:
        meter_provider: the provider to record with; ``None`` uses the global one. The API's
            no-op provider is noticed at start-up and the policy then costs nothing.

    Instruments:

    - ``http.server.request.duration`` (histogram, seconds; attributes
      ``http.request.method``, ``http.route``, ``http.response.status_code``,
      ``url.scheme``, ``apigw.stage``, ``error.type``): every request. Its count is
      CloudWatch's ``Count``; by status class ``4XXError`` and ``5XXError``; its values
      ``Latency``.
    - ``apigw.integration.duration`` (histogram, seconds): time until the app started its
      response (CloudWatch's ``IntegrationLatency``), for requests that reached the app.
    - ``apigw.denials`` (counter; ``apigw.response_type``): gateway responses by type.
    - ``apigw.cache.hits`` / ``apigw.cache.misses`` (counters): ``CacheHitCount`` and
      ``CacheMissCount``, from the cache policy's ``context.extra["cacheStatus"]``.

    Example::

        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        provider = MeterProvider([PeriodicExportingMetricReader(OTLPMetricExporter())])
        app = GatewayMiddleware(app, policies=[Metrics(provider)])
    """

    phase = Phase.OBSERVE

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        super().__init__()
        if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
            raise ConfigurationError("Metrics.meter_provider", "must be a MeterProvider")
        self.meter_provider = meter_provider
        self._stage = ""
        self._duration: Any = None
        self._integration: Any = None
        self._denials: Any = None
        self._hits: Any = None
        self._misses: Any = None

    def __repr__(self) -> str:
        return "Metrics()"

    def bind(self, settings: GatewaySettings) -> Policy:
        provider = self.meter_provider
        meter = (
            metrics.get_meter("apigw_mw", __version__)
            if provider is None
            else provider.get_meter("apigw_mw", __version__)
        )
        if isinstance(meter, metrics.NoOpMeter):
            return OFF
        bound = copy.copy(self)
        bound._stage = settings.stage.name
        bound._duration = _histogram(
            meter, "http.server.request.duration", "Duration of HTTP server requests."
        )
        bound._integration = _histogram(
            meter,
            "apigw.integration.duration",
            "Time from the gateway calling the app to the app starting its response.",
        )
        bound._denials = meter.create_counter(
            "apigw.denials", unit="{response}", description="Gateway responses, by type."
        )
        bound._hits = meter.create_counter(
            "apigw.cache.hits", unit="{request}", description="Requests answered from the cache."
        )
        bound._misses = meter.create_counter(
            "apigw.cache.misses",
            unit="{request}",
            description="Cacheable requests the cache could not answer.",
        )
        return bound

    def on_complete(self, request: Request, context: RequestContext) -> None:
        elapsed = perf_counter() - context.start
        method = context.http_method
        attrs: dict[str, Any] = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "url.scheme": request.scheme,
            "apigw.stage": self._stage,
        }
        route = context.resource_path
        if route is not None:
            attrs["http.route"] = route
        status = context.status
        if status is not None:
            attrs["http.response.status_code"] = status
        error = context.error
        if error is not None:
            attrs["error.type"] = error.response_type
        elif status is None:
            attrs["error.type"] = "no_response"
        elif status >= 500:
            attrs["error.type"] = str(status)
        self._duration.record(elapsed, attrs)
        latency = context.integration_latency
        if latency is not None:
            self._integration.record(latency / 1000, attrs)
        if error is not None:
            self._denials.add(
                1,
                {
                    "apigw.response_type": error.response_type,
                    "http.response.status_code": error.status,
                    "http.request.method": attrs["http.request.method"],
                    "apigw.stage": self._stage,
                    **({"http.route": route} if route is not None else {}),
                },
            )
        cache = context.extra.get("cacheStatus")
        if cache == "hit":
            self._hits.add(1, {"apigw.stage": self._stage, **_route(route)})
        elif cache == "miss":
            self._misses.add(1, {"apigw.stage": self._stage, **_route(route)})


def _route(route: str | None) -> dict[str, str]:
    return {"http.route": route} if route is not None else {}
