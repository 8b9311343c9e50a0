"""Routes: templates, specificity, the route fields of the context, base paths, strictness."""

from __future__ import annotations

import pytest

from apigw_mw import (
    ConfigurationError,
    GatewayMiddleware,
    RouteTable,
    Stage,
    WSGIGatewayMiddleware,
)
from tests.core import drive
from tests.core.policies import Tag

ROUTES = [
    "GET /pets",
    "GET /pets/{petId}",
    "GET /pets/mine",
    "ANY /pets/{petId}/toys",
    "DELETE /pets/{petId}/toys",
    "ANY /files/{proxy+}",
    "GET /files/{proxy+}",
    "GET /files/readme",
    "ANY /",
]


@pytest.mark.parametrize(
    ("method", "path", "route_key", "params"),
    [
        pytest.param("GET", "/pets", "GET /pets", {}, id="static"),
        pytest.param("GET", "/pets/42", "GET /pets/{petId}", {"petId": "42"}, id="param"),
        pytest.param("GET", "/pets/mine", "GET /pets/mine", {}, id="static-over-param"),
        pytest.param(
            "POST", "/pets/7/toys", "ANY /pets/{petId}/toys", {"petId": "7"}, id="any-method"
        ),
        pytest.param(
            "DELETE",
            "/pets/7/toys",
            "DELETE /pets/{petId}/toys",
            {"petId": "7"},
            id="method-over-any",
        ),
        pytest.param(
            "POST", "/files/a/b/c.txt", "ANY /files/{proxy+}", {"proxy": "a/b/c.txt"}, id="greedy"
        ),
        pytest.param(
            "GET",
            "/files/a/b",
            "GET /files/{proxy+}",
            {"proxy": "a/b"},
            id="greedy-method-over-any",
        ),
        pytest.param("GET", "/files/readme", "GET /files/readme", {}, id="static-over-greedy"),
        pytest.param("PUT", "/", "ANY /", {}, id="root"),
        pytest.param(
            "GET", "/pets/caf%C3%A9", "GET /pets/{petId}", {"petId": "café"}, id="decoded-param"
        ),
        pytest.param("GET", "/files/", None, {}, id="greedy-needs-a-segment"),
        pytest.param("POST", "/pets", None, {}, id="method-mismatch-unmatched"),
        pytest.param("GET", "/pets/42/extra", None, {}, id="too-long-unmatched"),
        pytest.param("GET", "/nowhere", None, {}, id="unmatched"),
    ],
)
def test_route_key_and_path_parameters(make_client, method, path, route_key, params):
    client = make_client([RouteTable(ROUTES)])
    r = client.request(method, path)
    assert r.status_code == 200
    ctx = r.json()["context"]
    assert ctx["routeKey"] == route_key
    assert ctx["pathParameters"] == params
    assert ctx["resourcePath"] == (route_key.split(" ", 1)[1] if route_key else None)
    assert len(r.seen) == 1


def test_default_route_matches_everything_and_loses_to_any_other(make_client):
    client = make_client([RouteTable(["$default", "GET /pets"])])
    assert client.get("/pets").json()["context"]["routeKey"] == "GET /pets"
    assert client.post("/anything/at/all").json()["context"]["routeKey"] == "$default"


@pytest.mark.parametrize(
    ("path", "applied"),
    [
        pytest.param("/pets/1", ["pet", "any-pets", "everyone"], id="specific-and-greedy"),
        pytest.param("/pets/1/x", ["any-pets", "everyone"], id="greedy-only"),
        pytest.param("/orders", ["everyone"], id="no-pattern-matches"),
    ],
)
def test_policy_applies_when_any_of_its_patterns_matches(make_client, path, applied):
    policies = [
        Tag("pet", routes=["GET /pets/{petId}"]),
        Tag("any-pets", routes=["POST /nothing", "ANY /pets/{proxy+}"]),
        Tag("everyone"),
    ]
    r = make_client(policies).get(path)
    assert r.status_code == 200
    assert sorted(r.json()["context"]["authorizer"]) == sorted(applied)


def test_policy_routes_use_ordinary_matching_not_only_the_best_route(make_client):
    # A more specific route declared elsewhere does not take a policy's coverage away.
    client = make_client(
        [RouteTable(["GET /admin/users"]), Tag("admin", routes=["ANY /admin/{proxy+}"])]
    )
    r = client.get("/admin/users")
    assert r.json()["context"]["routeKey"] == "GET /admin/users"
    assert r.json()["context"]["authorizer"] == {"admin": True}


@pytest.mark.parametrize(
    ("path", "reaches_as", "route_key"),
    [
        pytest.param("/v1/pets/3", "/v1/pets/3", "GET /pets/{petId}", id="base-path-stripped"),
        pytest.param("/v1", "/v1", "ANY /", id="base-path-alone-is-root"),
        pytest.param("/v1x/pets/3", "/v1x/pets/3", None, id="prefix-without-slash-unmatched"),
        pytest.param("/pets/3", "/pets/3", None, id="outside-base-path-unmatched"),
    ],
)
def test_stage_base_path(make_client, path, reaches_as, route_key):
    client = make_client(
        [RouteTable(["GET /pets/{petId}", "ANY /"])], stage=Stage("prod", base_path="/v1/")
    )
    r = client.get(path)
    assert r.status_code == 200
    assert r.seen[0].path == reaches_as
    assert r.json()["context"]["routeKey"] == route_key


def test_outside_base_path_with_strict_routes_is_missing_token(make_client):
    client = make_client(
        [RouteTable(["GET /pets"], strict=True)], stage=Stage("prod", base_path="/v1")
    )
    assert client.get("/v1/pets").status_code == 200
    r = client.get("/pets")
    assert r.status_code == 403
    assert r.seen == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"strict_routes": True, "policies": [RouteTable(["GET /pets"])]}, id="option"),
        pytest.param({"policies": [RouteTable(["GET /pets"], strict=True)]}, id="route-table"),
        pytest.param(
            {"strict_routes": True, "policies": [Tag("t", routes=["GET /pets"])]},
            id="routes-from-policies",
        ),
    ],
)
def test_strict_routes_answer_missing_authentication_token(make_client, options):
    client = make_client(**options)
    assert client.get("/pets").status_code == 200
    r = client.get("/cats")
    assert r.status_code == 403
    assert r.json() == {"message": "Missing Authentication Token"}
    assert r.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert r.headers["x-amzn-requestid"]
    assert r.seen == []
    assert client.post("/pets").status_code == 403  # the method is part of the route


def test_route_table_strict_false_overrides_option(make_client):
    client = make_client([RouteTable(["GET /pets"], strict=False)], strict_routes=True)
    assert client.get("/cats").status_code == 200


def test_unmatched_request_reaches_app_with_global_policies_only(make_client):
    client = make_client([Tag("pets", routes=["GET /pets"]), Tag("all")])
    r = client.get("/cats")
    assert r.status_code == 200
    assert r.json()["context"]["authorizer"] == {"all": True}
    assert r.json()["context"]["routeKey"] is None


# -- root_path (ASGI) and SCRIPT_NAME (WSGI) ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "root_path", "route_key"),
    [
        pytest.param("/api/pets/5", "/api", "GET /pets/{petId}", id="stripped"),
        pytest.param("/api", "/api", "ANY /", id="root"),
        pytest.param("/apix/pets/5", "/api", None, id="not-a-path-prefix"),
        pytest.param("/pets/5", "", "GET /pets/{petId}", id="no-root-path"),
    ],
)
def test_asgi_root_path_is_stripped_before_matching(path, root_path, route_key):
    app = drive.EchoApp()
    gw = GatewayMiddleware(app, policies=[RouteTable(["GET /pets/{petId}", "ANY /"])])
    r = drive.run(gw, drive.scope("GET", path, root_path=root_path))
    assert r.status == 200
    assert app.calls[0]["route_key"] == route_key
    assert app.calls[0]["path"] == path  # the app's scope is untouched


def test_wsgi_script_name_is_not_part_of_the_route():
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=[RouteTable(["GET /pets/{petId}"])])
    r = drive.call_wsgi(gw, drive.environ("GET", "/pets/5", script_name="/api"))
    assert r.status == 200
    assert app.calls[0]["route_key"] == "GET /pets/{petId}"


# -- bad templates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        pytest.param("/pets", id="no-method"),
        pytest.param("FETCH /pets", id="unknown-method"),
        pytest.param("GET pets", id="relative-path"),
        pytest.param("GET /pets/{}", id="empty-param"),
        pytest.param("GET /pets/{id", id="unclosed-brace"),
        pytest.param("GET /pets/{id}.json", id="partial-segment-param"),
        pytest.param("GET /{proxy+}/more", id="greedy-not-last"),
        pytest.param("GET /a/{id}/{id}", id="repeated-param"),
        pytest.param("GET /a//b", id="empty-segment"),
        pytest.param("GET /a?x=1", id="query-in-template"),
        pytest.param(42, id="not-a-string"),
    ],
)
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda r: RouteTable([r]), id="route-table"),
        pytest.param(lambda r: Tag("t", routes=[r]), id="policy-routes"),
    ],
)
def test_bad_route_templates_are_configuration_errors(route, build):
    with pytest.raises(ConfigurationError) as err:
        build(route)
    assert "routes" in err.value.field


def test_route_methods_are_case_insensitive(make_client):
    client = make_client([RouteTable(["get /pets"])])
    assert client.get("/pets").json()["context"]["routeKey"] == "GET /pets"
