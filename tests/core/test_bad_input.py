"""Bad input: never a 500 from the gateway, never an exception in the log.

Each case gets the matching gateway response, or passes through as the app would see it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from apigw_mw import (
    Allow,
    BasePolicy,
    ConfigurationError,
    Cors,
    GatewayMiddleware,
    Phase,
    RouteTable,
    Stage,
    WSGIGatewayMiddleware,
)
from tests.core import drive


class ReadsEverything(BasePolicy):
    """Touches every lazy part of the request: headers, query, source IP, body."""

    phase = Phase.VALIDATE

    def flow(self, request: Any, context: Any) -> Any:
        headers = request.headers.items_list()
        _ = dict(request.query), request.source_ip, context.identity.user_agent
        body = yield request.read_body()
        return Allow(authorizer={"headers": len(headers), "body": len(body)})


def _policies() -> list[Any]:
    return [
        RouteTable(["ANY /pets/{petId}", "ANY /files/{proxy+}"]),
        Cors(allow_origins=["https://*.example.com"]),
        ReadsEverything(),
    ]


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Any:
    """Asserts that nothing at WARNING or above was logged during the test."""
    caplog.set_level(logging.WARNING)
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route_key"),
    [
        pytest.param("//", None, id="double-slash"),
        pytest.param("//pets/1", None, id="leading-double-slash"),
        pytest.param("/pets//1", None, id="inner-double-slash"),
        pytest.param("/pets/1/", None, id="trailing-slash"),
        pytest.param("/pets/%2e%2e", "ANY /pets/{petId}", id="encoded-dot-dot"),
        pytest.param("/pets/a%2Fb", None, id="encoded-slash"),
        pytest.param("/files/a%2Fb", "ANY /files/{proxy+}", id="encoded-slash-greedy"),
        pytest.param("/pets/%ff%fe", "ANY /pets/{petId}", id="percent-encoded-non-utf8"),
        pytest.param("/pets/%00", "ANY /pets/{petId}", id="encoded-nul"),
        pytest.param("/pets/%", "ANY /pets/{petId}", id="lone-percent"),
        pytest.param("/pets/" + "a" * 8000, "ANY /pets/{petId}", id="very-long-segment"),
        pytest.param("/" + "a/" * 2000 + "b", None, id="very-many-segments"),
    ],
)
def test_absurd_paths_pass_through(make_client, quiet, path, route_key):
    r = make_client(_policies()).get(path)
    assert r.status_code == 200
    assert r.json()["context"]["routeKey"] == route_key
    assert len(r.seen) == 1


@pytest.mark.parametrize(
    ("path", "route_key"),
    [
        pytest.param("/pets/..", "ANY /pets/{petId}", id="dot-dot-as-segment"),
        pytest.param("/files/../../etc/passwd", "ANY /files/{proxy+}", id="dot-dot-traversal"),
        pytest.param("/pets/./1", None, id="dot-segment"),
    ],
)
def test_dot_segments_are_matched_as_the_app_sees_them(quiet, path, route_key):
    # Test clients normalise dot segments away; servers hand them over as received.
    asgi_app = drive.EchoApp()
    r = drive.run(GatewayMiddleware(asgi_app, policies=_policies()), drive.scope("GET", path))
    assert r.status == 200
    assert asgi_app.calls[0]["path"] == path
    assert asgi_app.calls[0]["route_key"] == route_key
    wsgi_app = drive.WsgiEcho()
    w = drive.call_wsgi(
        WSGIGatewayMiddleware(wsgi_app, policies=_policies()), drive.environ("GET", path)
    )
    assert w.status == 200
    assert wsgi_app.calls[0]["route_key"] == route_key


def test_absurd_paths_under_strict_routes_are_missing_token(make_client, quiet):
    client = make_client([RouteTable(["GET /pets/{petId}"], strict=True)])
    for path in ("//", "/pets//1", "/pets/a%2Fb", "/%ff"):
        r = client.get(path)
        assert r.status_code == 403, path
        assert r.json() == {"message": "Missing Authentication Token"}
        assert r.seen == []


# -- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("policies", [[], _policies()], ids=["no-policies", "policies"])
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-name", b"caf\xc3\xa9 \xff\xfe")], id="non-utf8-value"),
        pytest.param([(b"x-\xff", b"v")], id="non-utf8-name"),
        pytest.param([(b"user-agent", b"\xff\x00bot")], id="non-utf8-user-agent"),
        pytest.param([(b"x-amzn-requestid", b"\xff" * 36)], id="non-utf8-request-id"),
        pytest.param([(b"origin", b"https://\xff.example.com")], id="non-utf8-origin"),
        pytest.param([(b"x-forwarded-for", b"\xff, 1.2.3.4")], id="non-utf8-forwarded-for"),
        pytest.param([(b"x-big", b"v" * 20_000)], id="oversized-header"),
        pytest.param([(b"x-h%d" % i, b"v" * 100) for i in range(300)], id="many-headers"),
        pytest.param(
            [(b"x-amzn-requestid", b"3f1c0c7e-5a7b-4c1e-9d2a-0b6f2e8a9c11")] * 2
            + [(b"origin", b"https://a.example.com"), (b"origin", b"https://b.example.com")],
            id="duplicated-headers",
        ),
    ],
)
def test_odd_headers_pass_through_asgi(quiet, headers, policies):
    app = drive.EchoApp()
    gw = GatewayMiddleware(app, policies=policies, trusted_proxies=["127.0.0.1"])
    r = drive.run(gw, drive.scope("POST", "/pets/1", headers=headers), [b"body"])
    assert r.status == 200
    assert r.body == b"body"
    assert len(app.calls) == 1
    assert r.headers["x-amzn-requestid"].isascii()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"x-name": "caf\xc3\xa9 \xff"}, id="latin1-value"),
        pytest.param({"user-agent": "\xff\x00bot"}, id="odd-user-agent"),
        pytest.param({"x-amzn-requestid": "\xff" * 36}, id="odd-request-id"),
        pytest.param({"x-big": "v" * 20_000}, id="oversized-header"),
        pytest.param({"x-forwarded-for": "junk, , 1.2.3.4"}, id="odd-forwarded-for"),
    ],
)
def test_odd_headers_pass_through_wsgi(quiet, headers):
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=_policies(), trusted_proxies=["127.0.0.1"])
    env = drive.environ("POST", "/pets/1", body=b"body", content_length="4", headers=headers)
    r = drive.call_wsgi(gw, env)
    assert r.status == 200
    assert r.body == b"body"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("abc", id="letters"),
        pytest.param("-1", id="negative"),
        pytest.param("1_0", id="underscore"),
        pytest.param("+5", id="plus-sign"),
        pytest.param("5, 5", id="list"),
        pytest.param("0x10", id="hex"),
        pytest.param("\u0665", id="non-ascii-digit"),
    ],
)
@pytest.mark.parametrize("policies", [[], _policies()], ids=["no-policies", "policies"])
def test_malformed_content_length_is_a_bad_request(quiet, value, policies):
    asgi_app = drive.EchoApp()
    asgi = GatewayMiddleware(asgi_app, policies=policies)
    header = value.encode("utf-8")
    r = drive.run(asgi, drive.scope("POST", "/pets/1", headers=[(b"content-length", header)]))
    assert r.status == 400
    assert r.json() == {"message": "Bad Request"}
    assert asgi_app.calls == []

    wsgi_app = drive.WsgiEcho()
    wsgi = WSGIGatewayMiddleware(wsgi_app, policies=policies)
    env = drive.environ("POST", "/pets/1", body=b"12345", content_length=value)
    w = drive.call_wsgi(wsgi, env)
    assert w.status == 400
    assert w.json() == {"message": "Bad Request"}
    assert wsgi_app.calls == []


def test_http2_body_without_length_is_counted(quiet):
    # HTTP/2 and HTTP/3 carry no Transfer-Encoding: a body without Content-Length is streamed.
    app = drive.EchoApp()
    gw = GatewayMiddleware(app, max_body_size=5)
    r = drive.run(gw, drive.scope("POST", "/up", http_version="2"), [b"123", b"456"])
    assert r.status == 413


def test_missing_client_and_odd_scope_values(quiet):
    app = drive.EchoApp()
    gw = GatewayMiddleware(app, policies=_policies(), trusted_proxies=["10.0.0.0/8"])
    s = drive.scope("GET", "/pets/1", client=None, http_version="9.9")
    r = drive.run(gw, s)
    assert r.status == 200


# -- stages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"name": ""}, "stage.name", id="empty-name"),
        pytest.param({"name": "my stage"}, "stage.name", id="name-with-space"),
        pytest.param({"name": "prod!"}, "stage.name", id="name-punctuation"),
        pytest.param({"name": "s" * 129}, "stage.name", id="name-too-long"),
        pytest.param({"name": None}, "stage.name", id="name-none"),
        pytest.param({"variables": ["a"]}, "stage.variables", id="variables-not-mapping"),
        pytest.param({"variables": {"bad name": "x"}}, "stage.variables", id="var-name-space"),
        pytest.param({"variables": {"": "x"}}, "stage.variables", id="var-name-empty"),
        pytest.param({"variables": {"n" * 65: "x"}}, "stage.variables", id="var-name-too-long"),
        pytest.param({"variables": {"color": ""}}, "stage.variables.color", id="value-empty"),
        pytest.param({"variables": {"color": "a b"}}, "stage.variables.color", id="value-space"),
        pytest.param({"variables": {"color": "<b>"}}, "stage.variables.color", id="value-html"),
        pytest.param(
            {"variables": {"color": "v" * 513}}, "stage.variables.color", id="value-too-long"
        ),
        pytest.param({"variables": {"color": 1}}, "stage.variables.color", id="value-not-str"),
        pytest.param(
            {"variables": {"color": "blue\n"}}, "stage.variables.color", id="value-newline"
        ),
        pytest.param({"variables": {"a\n": "x"}}, "stage.variables", id="var-name-newline"),
        pytest.param({"name": "prod\n"}, "stage.name", id="name-newline"),
        pytest.param(
            {"account_id": "12345678901\u0665"}, "stage.account_id", id="account-id-digit"
        ),
        pytest.param(
            {"variables": {f"v{i}": "x" for i in range(101)}},
            "stage.variables",
            id="too-many-variables",
        ),
        pytest.param({"region": "mars-1"}, "stage.region", id="region"),
        pytest.param({"region": None}, "stage.region", id="region-none"),
        pytest.param({"account_id": "1234"}, "stage.account_id", id="account-id"),
        pytest.param({"account_id": 123456789012}, "stage.account_id", id="account-id-int"),
        pytest.param({"api_id": "ABC"}, "stage.api_id", id="api-id"),
        pytest.param({"api_id": None}, "stage.api_id", id="api-id-none"),
        pytest.param({"base_path": "v1"}, "stage.base_path", id="base-path-relative"),
        pytest.param({"base_path": "/v1//x"}, "stage.base_path", id="base-path-double-slash"),
        pytest.param({"base_path": "/v1?x"}, "stage.base_path", id="base-path-query"),
        pytest.param({"base_path": 1}, "stage.base_path", id="base-path-int"),
    ],
)
def test_invalid_stages(kwargs, field):
    with pytest.raises(ConfigurationError) as err:
        Stage(**kwargs)
    assert err.value.field == field


def test_valid_stage_limits():
    variables = {f"v{i}": "x" for i in range(99)}
    variables["url"] = "https://a.example:8443/p?q=1&r=2#frag,~.-_"
    stage = Stage("S" * 128, variables=variables)
    assert stage.variables["url"] == variables["url"]
    with pytest.raises(TypeError):
        stage.variables["v1"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        pytest.param({"stage": "prod"}, "stage", id="stage-not-a-stage"),
        pytest.param({"storage": "redis"}, "storage", id="storage-not-a-uri"),
        pytest.param({"max_body_size": -1}, "max_body_size", id="negative-body-size"),
        pytest.param({"max_body_size": "10"}, "max_body_size", id="string-body-size"),
        pytest.param({"policies": "Cors"}, "policies", id="policies-a-string"),
        pytest.param({"policies": [Stage("a"), Stage("b")]}, "policies[1]", id="two-stages"),
    ],
)
@pytest.mark.parametrize("adapter_cls", [GatewayMiddleware, WSGIGatewayMiddleware])
def test_bad_middleware_options(adapter_cls, options, field):
    with pytest.raises(ConfigurationError) as err:
        adapter_cls(drive.EchoApp(), **options)
    assert err.value.field == field
