"""Request metrics through the OpenTelemetry metrics API, mapped to API Gateway's CloudWatch
metrics in the docs (``Count``, ``4XXError``, ``5XXError``, ``Latency``,
``IntegrationLatency``, ``CacheHitCount``, ``CacheMissCount``)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from .._version import __version__
from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, GatewaySettings, Phase, Policy
from .tracing import off

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["Metrics"]

_log = logging.getLogger("apigw_mw")


def _proxy_providers() -> tuple[type, ...]:
    """The API's stand-in for an unset global provider (a private class: none if a future
    API drops it, and an unset global provider then counts as configured)."""
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - depends on the installed API
        return ()
    return (_ProxyMeterProvider,)


_PROXY_PROVIDERS = _proxy_providers()
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
# Attribute sets kept per bound policy (the dicts are never changed once handed out).
_CACHE_SIZE = 1024
# (method, scheme, route, status, gateway response type, its status)
_Key = tuple[str, str, str | None, int | None, str | None, int | None]
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
        meter_provider: the provider to record with; ``None`` uses the global one
            (``opentelemetry.metrics.set_meter_provider``), looked up once, when the
            middleware is built: set it before that. With no provider configured, or the
            API's no-op one, the policy switches itself off and costs nothing per request.
        routes: the route patterns to measure (``["GET /pets/{petId}"]``); ``None`` (the
            default) measures every request, unmatched ones included.

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

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
            raise ConfigurationError("Metrics.meter_provider", "must be a MeterProvider")
        self.meter_provider = meter_provider
        self._stage = ""
        self._duration: Any = None
        self._integration: Any = None
        self._denials: Any = None
        self._hits: Any = None
        self._misses: Any = None
        self._attributes: dict[_Key, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        self._routes: dict[str | None, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return "Metrics()" if self.routes is None else f"Metrics(routes={list(self.routes)!r})"

    def bind(self, settings: GatewaySettings) -> Policy:
        provider = self.meter_provider
        if provider is None:
            provider = metrics.get_meter_provider()
            if isinstance(provider, _PROXY_PROVIDERS):
                # Unset, the global provider is the API's proxy: nothing records. Set the
                # global provider before the middleware is built, or pass one here.
                _log.info("Metrics are off: no OpenTelemetry meter provider is configured")
                return off(self.routes)
        meter = provider.get_meter("apigw_mw", __version__)
        if isinstance(meter, metrics.NoOpMeter):
            return off(self.routes)
        bound = copy.copy(self)
        bound._stage = settings.stage.name
        bound._attributes = {}
        bound._routes = {}
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
        if method not in _METHODS:
            method = "_OTHER"
        route = context.resource_path
        status = context.status
        error = context.error
        key = (
            method,
            request.scheme,
            route,
            status,
            None if error is None else error.response_type,
            None if error is None else error.status,
        )
        found = self._attributes.get(key)
        if found is None:
            found = self._attributes_for(key)
        attrs, denial = found
        self._duration.record(elapsed, attrs)
        latency = context.integration_latency
        if latency is not None:
            self._integration.record(latency / 1000, attrs)
        if denial is not None:
            self._denials.add(1, denial)
        # ``extra`` is built on first read: a request no policy shared anything for has none.
        fields = getattr(context, "__dict__", None)
        extra = context.extra if fields is None else fields.get("extra")
        cache = None if extra is None else extra.get("cacheStatus")
        if cache == "hit":
            self._hits.add(1, self._route_attributes(route))
        elif cache == "miss":
            self._misses.add(1, self._route_attributes(route))

    def _attributes_for(self, key: _Key) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The duration and denial attributes of one kind of request, kept for the next
        ones while the cache has room (every part of the key is bounded, but their product
        may be large)."""
        method, scheme, route, status, response_type, error_status = key
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scheme,
            "apigw.stage": self._stage,
        }
        if route is not None:
            attrs["http.route"] = route
        if status is not None:
            attrs["http.response.status_code"] = status
        denial: dict[str, Any] | None = None
        if response_type is not None:
            attrs["error.type"] = response_type
            denial = {
                "apigw.response_type": response_type,
                "http.response.status_code": error_status,
                "http.request.method": method,
                "apigw.stage": self._stage,
            }
            if route is not None:
                denial["http.route"] = route
        elif status is None:
            attrs["error.type"] = "no_response"
        elif status >= 500:
            attrs["error.type"] = str(status)
        found = (attrs, denial)
        if len(self._attributes) < _CACHE_SIZE:
            self._attributes[key] = found
        return found

    def _route_attributes(self, route: str | None) -> dict[str, Any]:
        attrs = self._routes.get(route)
        if attrs is None:
            attrs = {"apigw.stage": self._stage}
            if route is not None:
                attrs["http.route"] = route
            if len(self._routes) < _CACHE_SIZE:
                self._routes[route] = attrs
        return attrs
