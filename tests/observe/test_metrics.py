"""Metrics through the OpenTelemetry metrics API, read back with an in-memory reader."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from apigw_mw import ConfigurationError, Metrics, RouteTable, Stage
from apigw_mw.observe import metrics as metrics_module
from apigw_mw.observe.tracing import OFF

from .conftest import DenyWhen, Learn

ROUTES = RouteTable(["GET /pets/{petId}"])


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def by_status(dps: list[Any]) -> dict[int, Any]:
    return {dp.attributes["http.response.status_code"]: dp for dp in dps}


def test_request_duration_by_method_route_status_and_stage(
    make_client: Any, metric_reader: Any
) -> None:
    provider, reader = metric_reader
    client = make_client([Metrics(provider), DenyWhen(), ROUTES], stage=Stage("prod"))
    for _ in range(3):
        assert client.get("/pets/1").status_code == 200
    assert client.get("/pets/2", headers={"x-deny": "THROTTLED"}).status_code == 429
    assert client.get("/other").status_code == 200
    got = points(reader)
    durations = got["http.server.request.duration"]
    routed = by_status([dp for dp in durations if "http.route" in dp.attributes])
    assert routed[200].count == 3  # CloudWatch Count for the route
    assert dict(routed[200].attributes) == {
        "http.request.method": "GET",
        "http.route": "/pets/{petId}",
        "http.response.status_code": 200,
        "url.scheme": "http",
        "apigw.stage": "prod",
    }
    assert routed[429].count == 1  # a 4XXError
    assert routed[429].attributes["error.type"] == "THROTTLED"
    assert all(0 < dp.sum < 5 for dp in durations)  # seconds
    [unrouted] = [dp for dp in durations if "http.route" not in dp.attributes]
    assert unrouted.count == 1
    # IntegrationLatency: only requests that reached the app.
    integration = got["apigw.integration.duration"]
    counts = {dp.attributes.get("http.route", "-"): dp.count for dp in integration}
    assert counts == {"/pets/{petId}": 3, "-": 1}  # the denied request never reached the app
    [denial] = got["apigw.denials"]
    assert denial.value == 1
    assert dict(denial.attributes) == {
        "apigw.response_type": "THROTTLED",
        "http.response.status_code": 429,
        "http.request.method": "GET",
        "apigw.stage": "prod",
        "http.route": "/pets/{petId}",
    }


def test_app_5xx_carries_error_type(make_client: Any, metric_reader: Any) -> None:
    provider, reader = metric_reader
    make_client([Metrics(provider), ROUTES], app_status=502).get("/pets/1")
    [dp] = points(reader)["http.server.request.duration"]
    assert dp.attributes["http.response.status_code"] == 502
    assert dp.attributes["error.type"] == "502"


def test_cache_hits_and_misses(make_client: Any, metric_reader: Any) -> None:
    provider, reader = metric_reader
    client = make_client([Metrics(provider), Learn(), ROUTES])
    for cache in ("hit", "hit", "miss"):
        client.get("/pets/1", headers={"x-cache": cache})
    got = points(reader)
    assert [dp.value for dp in got["apigw.cache.hits"]] == [2]
    assert [dp.value for dp in got["apigw.cache.misses"]] == [1]
    assert got["apigw.cache.hits"][0].attributes["http.route"] == "/pets/{petId}"


def test_no_op_meter_provider_costs_nothing(make_client: Any) -> None:
    client = make_client([Metrics(NoOpMeterProvider()), ROUTES])
    assert client.get("/pets/1").status_code == 200
    assert OFF not in client.middleware.gateway.pipeline.policies
    assert make_client([Metrics(NoOpMeterProvider())]).middleware.gateway.empty


def test_unconfigured_global_meter_provider_costs_nothing(make_client: Any) -> None:
    """The tests leave OpenTelemetry's globals unset: the global provider is the API's
    stand-in, and the policy takes itself out as for the no-op provider."""
    from opentelemetry import metrics

    assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    client = make_client([Metrics(), ROUTES])
    assert client.get("/pets/1").status_code == 200
    assert client.middleware.gateway.pipeline.policies == []


def test_bad_meter_provider_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Metrics("prometheus")  # type: ignore[arg-type]
    assert info.value.field == "Metrics.meter_provider"


def test_unknown_method_is_recorded_as_other(make_client: Any, metric_reader: Any) -> None:
    provider, reader = metric_reader
    client = make_client([Metrics(provider), ROUTES])
    r = client.request("PURGE", "/pets/1")
    [dp] = points(reader)["http.server.request.duration"]
    assert dp.attributes["http.request.method"] == "_OTHER"
    assert dp.attributes["http.response.status_code"] == r.status_code


def test_attributes_stay_right_past_the_attribute_cache(
    make_client: Any, metric_reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attribute sets are kept per kind of request up to a bound; past it they are built
    per request, and every point still carries its own."""
    monkeypatch.setattr(metrics_module, "_CACHE_SIZE", 2)
    provider, reader = metric_reader
    client = make_client([Metrics(provider), DenyWhen(), ROUTES])
    kinds = ["", "THROTTLED", "ACCESS_DENIED", "UNAUTHORIZED", "", "THROTTLED", "UNAUTHORIZED"]
    for kind in kinds:
        client.get("/pets/1", headers={"x-deny": kind} if kind else {})
    [bound] = [p for p in client.middleware.gateway.pipeline.policies if isinstance(p, Metrics)]
    assert len(bound._attributes) == 2
    got = points(reader)
    durations = {
        (dp.attributes["http.response.status_code"], dp.attributes.get("error.type")): dp.count
        for dp in got["http.server.request.duration"]
    }
    assert durations == {
        (200, None): 2,
        (429, "THROTTLED"): 2,
        (403, "ACCESS_DENIED"): 1,
        (401, "UNAUTHORIZED"): 2,
    }
    denials = {
        (dp.attributes["apigw.response_type"], dp.attributes["http.response.status_code"]): (
            dp.value
        )
        for dp in got["apigw.denials"]
    }
    assert denials == {("THROTTLED", 429): 2, ("ACCESS_DENIED", 403): 1, ("UNAUTHORIZED", 401): 2}


# -- routes= ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "measured"),
    [
        pytest.param("GET", "/pets/1", True, id="its-route"),
        pytest.param("POST", "/pets/1", False, id="same-path-other-method"),
        pytest.param("GET", "/owners/1", False, id="another-declared-route"),
        pytest.param("GET", "/nowhere", False, id="no-declared-route"),
    ],
)
def test_route_limited_metrics_measure_only_their_routes(
    make_client: Any, metric_reader: Any, method: str, path: str, measured: bool
) -> None:
    provider, reader = metric_reader
    policies = [
        Metrics(provider, routes=["GET /pets/{petId}"]),
        RouteTable(["POST /pets/{petId}", "GET /owners/{ownerId}"]),
    ]
    r = make_client(policies).request(method, path)
    assert r.status_code == 200
    durations = points(reader).get("http.server.request.duration", [])
    assert [dp.attributes.get("http.route") for dp in durations] == (
        ["/pets/{petId}"] if measured else []
    )


def test_route_limited_metrics_without_sdk_are_inert(make_client: Any) -> None:
    client = make_client([Metrics(NoOpMeterProvider(), routes=["GET /pets/{petId}"])])
    assert client.get("/pets/1").status_code == 200
    [bound] = client.middleware.gateway.pipeline.policies
    assert bound.routes == ("GET /pets/{petId}",)
    assert (bound.on_request, bound.on_response, bound.on_complete) == (None, None, None)


def test_bad_routes_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        Metrics(routes=["FETCH /pets"])
    assert info.value.field == "Metrics.routes"
