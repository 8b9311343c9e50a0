"""CORS with HTTP API semantics, through both adapters."""

from __future__ import annotations

from typing import Any

import pytest

from apigw_mw import ConfigurationError, Cors, Phase, RouteTable
from tests.core.policies import Refuse

APP = "https://app.example.com"


def preflight(
    origin: str = APP, method: str = "POST", headers: str | None = None
) -> dict[str, str]:
    h = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        h["access-control-request-headers"] = headers
    return h


FULL = Cors(
    allow_origins=[APP, "https://*.example.org"],
    allow_methods=["GET", "POST"],
    allow_headers=["Authorization", "content-type"],
    expose_headers=["x-total"],
    max_age=600,
    allow_credentials=True,
)


@pytest.mark.parametrize(
    ("cors", "headers", "expected"),
    [
        pytest.param(
            FULL,
            preflight(headers="authorization, Content-Type"),
            {
                "access-control-allow-origin": APP,
                "access-control-allow-methods": "GET, POST",
                "access-control-allow-headers": "authorization, content-type",
                "access-control-max-age": "600",
                "access-control-allow-credentials": "true",
                "vary": "Origin",
            },
            id="allowed",
        ),
        pytest.param(
            FULL,
            preflight(origin="https://api.eu.example.org"),
            {"access-control-allow-origin": "https://api.eu.example.org"},
            id="wildcard-subdomain",
        ),
        pytest.param(
            FULL,
            preflight(origin="https://example.org"),
            {"access-control-allow-origin": None, "vary": "Origin"},
            id="wildcard-needs-a-subdomain",
        ),
        pytest.param(
            FULL,
            preflight(origin="https://evil.example"),
            {"access-control-allow-origin": None, "access-control-allow-methods": None},
            id="disallowed-origin",
        ),
        pytest.param(
            FULL,
            preflight(origin="https://app.example.com.evil.example"),
            {"access-control-allow-origin": None},
            id="origin-suffix-attack",
        ),
        pytest.param(
            FULL,
            preflight(method="DELETE"),
            {"access-control-allow-origin": None, "access-control-allow-methods": None},
            id="disallowed-method",
        ),
        pytest.param(
            FULL,
            preflight(headers="x-secret"),
            {"access-control-allow-origin": None},
            id="disallowed-header",
        ),
        pytest.param(
            Cors(allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]),
            preflight(origin="https://anyone.example", method="PATCH", headers="x-a"),
            {
                "access-control-allow-origin": "*",
                "access-control-allow-methods": "*",
                "vary": None,
                "access-control-allow-credentials": None,
            },
            id="any-origin",
        ),
        pytest.param(
            Cors(allow_origins=["*"], allow_methods=["GET"]),
            preflight(origin="https://anyone.example", method="DELETE"),
            {"access-control-allow-origin": None, "access-control-allow-methods": None},
            id="any-origin-disallowed-method",
        ),
    ],
)
def test_preflight_answered_by_the_gateway(make_client, cors, headers, expected):
    r = make_client([cors]).options("/pets", headers=headers)
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["x-amzn-requestid"]
    for name, value in expected.items():
        assert r.headers.get(name) == value, name
    assert r.seen == []


def test_preflight_runs_before_any_authorizer(make_client):
    log: list[str] = []
    deny = Refuse("UNAUTHORIZED", Phase.AUTHORIZE, log=log)
    client = make_client([deny, Cors(allow_origins=[APP], allow_methods=["POST"])])
    r = client.options("/pets", headers=preflight())
    assert r.status_code == 204
    assert log == []
    # The actual request is still refused, with CORS headers on the refusal.
    r = client.post("/pets", headers={"origin": APP})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["vary"] == "Origin"


def test_plain_options_reaches_the_app(make_client):
    r = make_client([Cors(allow_origins=[APP])]).options("/pets", headers={"origin": APP})
    assert r.status_code == 200
    assert len(r.seen) == 1
    assert r.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize(
    ("origin", "acao"),
    [
        pytest.param(APP, APP, id="allowed"),
        pytest.param("https://evil.example", None, id="disallowed"),
        pytest.param(None, None, id="no-origin"),
    ],
)
def test_cors_headers_on_app_responses_replace_the_apps_own(make_client, origin, acao):
    client = make_client(
        [Cors(allow_origins=[APP], expose_headers=["x-total"])],
        app_headers={
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": "DELETE",
            "Vary": "Accept-Encoding",
        },
    )
    r = client.get("/pets", headers={"origin": origin} if origin else None)
    assert r.status_code == 200
    assert r.headers.get("access-control-allow-origin") == acao
    assert r.headers.get_list("access-control-allow-origin") == ([acao] if acao else [])
    assert "access-control-allow-methods" not in r.headers
    assert r.headers.get("access-control-expose-headers") == ("x-total" if acao else None)
    if origin:
        assert r.headers["vary"] == "Accept-Encoding, Origin"
    else:
        assert r.headers["vary"] == "Accept-Encoding"


@pytest.mark.parametrize(
    "policies",
    [
        pytest.param([Refuse("THROTTLED", Phase.THROTTLE)], id="denial"),
        pytest.param([RouteTable(["GET /pets"], strict=True)], id="missing-token"),
    ],
)
def test_cors_headers_on_gateway_error_responses(make_client, policies):
    client = make_client([*policies, Cors(allow_origins=[APP], allow_credentials=True)])
    r = client.get("/cats", headers={"origin": APP})
    assert r.status_code in (429, 403)
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["vary"] == "Origin"


def test_cors_headers_on_body_too_large(make_client):
    client = make_client([Cors(allow_origins=["*"])], max_body_size=1)
    r = client.post("/pets", content=b"too big", headers={"origin": APP})
    assert r.status_code == 413
    assert r.headers["access-control-allow-origin"] == "*"


def test_preflight_to_a_route_without_options_under_strict_routes(make_client):
    # HTTP APIs answer preflights for every route, even with no OPTIONS route declared.
    client = make_client(
        [RouteTable(["GET /pets"], strict=True), Cors(allow_origins=[APP], allow_methods=["GET"])]
    )
    r = client.options("/pets", headers=preflight(method="GET"))
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP
    # Anything else that matches no route is still refused.
    r = client.options("/pets", headers={"origin": APP})
    assert r.status_code == 403
    assert r.headers["access-control-allow-origin"] == APP
    assert r.seen == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param(
            {"allow_origins": ["*"], "allow_credentials": True},
            "Cors.allow_credentials",
            id="credentials-with-any-origin",
        ),
        pytest.param({"allow_origins": ["app.example.com"]}, "Cors.allow_origins", id="no-scheme"),
        pytest.param({"allow_origins": ["https://a.example/x"]}, "Cors.allow_origins", id="path"),
        pytest.param({"allow_origins": [""]}, "Cors.allow_origins", id="empty"),
        pytest.param({"allow_methods": ["GET POST"]}, "Cors.allow_methods", id="bad-method"),
        pytest.param({"allow_headers": ["x y"]}, "Cors.allow_headers", id="bad-header"),
        pytest.param({"expose_headers": ["x:y"]}, "Cors.expose_headers", id="bad-expose"),
        pytest.param({"max_age": -1}, "Cors.max_age", id="negative-max-age"),
        pytest.param({"max_age": "600"}, "Cors.max_age", id="string-max-age"),
    ],
)
def test_bad_cors_configuration(kwargs, field):
    with pytest.raises(ConfigurationError) as err:
        Cors(**kwargs)
    assert err.value.field == field


def test_route_limited_cors_answers_the_preflights_of_its_routes(make_client: Any) -> None:
    cors = Cors(allow_origins=["https://a.example"], routes=["GET /pets", "POST /pets/{id}"])
    client = make_client([cors])
    preflight = {"origin": "https://a.example", "access-control-request-method": "POST"}
    for path in ("/pets", "/pets/7"):
        r = client.options(path, headers=preflight)
        assert r.status_code == 204, path
        assert r.headers["access-control-allow-origin"] == "https://a.example"
        assert r.seen == []
    # Other paths are not this policy's: the app answers their OPTIONS.
    r = client.options("/orders", headers=preflight)
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
