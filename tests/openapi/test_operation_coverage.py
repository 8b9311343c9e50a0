"""An operation's settings apply on every request whose most specific operation it is.

Which operation is the most specific is decided among the definition's own operations: the
routes the gateway declares for CORS preflights, or that other policies declare beside the
definition's, never take a request away from an operation's API key, authorizer or
validator.
"""

from __future__ import annotations

from typing import Any

import pytest

from apigw_mw import (
    ApiKey,
    ApiKeys,
    ConfigurationError,
    RouteTable,
    Stage,
    Throttle,
    TokenBucket,
    from_openapi,
)

KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
ORIGIN = "https://app.example.com"


def token_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = event.get("authorizationToken")
    if token in (None, "", "fail"):
        raise Exception("Unauthorized")
    return {
        "principalId": "user",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow" if token == "allow" else "Deny",
                    "Resource": event["methodArn"],
                }
            ],
        },
    }


def greedy_with_cors() -> dict[str, Any]:
    """HTTP API CORS, and one catch-all operation that needs a key, a token and a body."""
    return {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "x-amazon-apigateway-cors": {
            "allowOrigins": [ORIGIN],
            "allowMethods": ["GET", "POST", "DELETE"],
            "allowHeaders": ["x-api-key", "authorization", "content-type"],
        },
        "x-amazon-apigateway-request-validators": {
            "all": {"validateRequestBody": True, "validateRequestParameters": True}
        },
        "components": {
            "securitySchemes": {
                "api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"},
                "tok": {
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "x-amazon-apigateway-authtype": "custom",
                    "x-amazon-apigateway-authorizer": {
                        "type": "token",
                        "authorizerResultTtlInSeconds": 0,
                    },
                },
            },
            "schemas": {"Thing": {"type": "object", "required": ["name"]}},
        },
        "paths": {
            "/{proxy+}": {
                "x-amazon-apigateway-any-method": {
                    "security": [{"api_key": [], "tok": []}],
                    "x-amazon-apigateway-request-validator": "all",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}
                        }
                    },
                }
            }
        },
    }


FULL = {"x-api-key": KEY, "authorization": "allow"}
PREFLIGHT = {"origin": ORIGIN, "access-control-request-method": "POST"}
GOOD = b'{"name": "x"}'


@pytest.mark.parametrize(
    ("method", "headers", "body", "status"),
    [
        pytest.param("OPTIONS", {}, None, 401, id="plain OPTIONS without token"),
        pytest.param("OPTIONS", {"authorization": "allow"}, None, 403, id="plain OPTIONS no key"),
        pytest.param("OPTIONS", {"x-api-key": KEY}, None, 401, id="plain OPTIONS key only"),
        pytest.param(
            "OPTIONS", {"x-api-key": KEY, "authorization": "deny"}, None, 403, id="OPTIONS denied"
        ),
        pytest.param("OPTIONS", FULL, b"{}", 400, id="plain OPTIONS body validated"),
        pytest.param("OPTIONS", FULL, GOOD, 200, id="plain OPTIONS with everything"),
        pytest.param("OPTIONS", {"origin": ORIGIN}, None, 401, id="OPTIONS with origin only"),
        pytest.param("OPTIONS", PREFLIGHT, None, 204, id="preflight answered by CORS"),
        pytest.param("GET", {"authorization": "allow"}, None, 403, id="GET no key"),
        pytest.param("POST", FULL, GOOD, 200, id="POST with everything"),
        pytest.param("DELETE", {}, None, 401, id="DELETE without token"),
    ],
)
def test_cors_routes_do_not_take_requests_from_a_greedy_operation(
    make_client, method, headers, body, status
):
    policies = from_openapi(
        greedy_with_cors(),
        api_keys=ApiKeys([ApiKey(KEY)]),
        authorizers={"tok": token_handler},
    )
    h = dict(headers)
    if body is not None:
        h["content-type"] = "application/json"
    r = make_client(policies).request(method, "/secret", headers=h, content=body)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)
    if status == 204:
        assert r.headers["access-control-allow-origin"] == ORIGIN


def test_preflights_for_every_path_are_answered_before_the_authorizer(make_client):
    api = greedy_with_cors()
    api["paths"]["/health"] = {"get": {"responses": {"200": {"description": "ok"}}}}
    policies = from_openapi(
        api, api_keys=ApiKeys([ApiKey(KEY)]), authorizers={"tok": token_handler}
    )
    client = make_client(policies)
    for path in ("/", "/health", "/a/b/c"):
        r = client.options(path, headers=PREFLIGHT)
        assert (r.status_code, r.seen) == (204, []), path
        assert r.headers["access-control-allow-origin"] == ORIGIN


def pets_api() -> dict[str, Any]:
    """``GET /pets/{petId}`` needs a key and a non-blank ``petId``; ``GET /pets`` needs nothing."""
    return {
        "openapi": "3.0.1",
        "info": {"title": "t", "version": "1"},
        "x-amazon-apigateway-request-validators": {
            "params": {"validateRequestBody": False, "validateRequestParameters": True}
        },
        "components": {
            "securitySchemes": {"api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}}
        },
        "paths": {
            "/pets": {"get": {"responses": {"200": {"description": "ok"}}}},
            "/pets/{petId}": {
                "get": {
                    "security": [{"api_key": []}],
                    "x-amazon-apigateway-request-validator": "params",
                    "parameters": [
                        {"name": "petId", "in": "path", "required": True},
                        {"name": "q", "in": "query", "required": True},
                    ],
                }
            },
        },
    }


def _with_special_throttle(**options: Any) -> list[Any]:
    """The definition's policies beside a throttle on a route more specific than its own."""
    return [
        *from_openapi(pets_api(), api_keys=ApiKeys([ApiKey(KEY)]), **options),
        Throttle(TokenBucket(rate=1000, burst=1000), routes=["GET /pets/special"]),
    ]


@pytest.mark.parametrize(
    ("path", "headers", "status", "message"),
    [
        pytest.param("/pets/special?q=1", {}, 403, "Forbidden", id="special needs the key"),
        pytest.param("/pets/special?q=1", {"x-api-key": KEY}, 200, None, id="special with key"),
        pytest.param(
            "/pets/special",
            {"x-api-key": KEY},
            400,
            "Missing required request parameters: [q]",
            id="special is validated",
        ),
        pytest.param("/pets/7?q=1", {}, 403, "Forbidden", id="other pets need the key"),
        pytest.param("/pets/7?q=1", {"x-api-key": KEY}, 200, None, id="other pets with key"),
        pytest.param("/pets", {}, 200, None, id="GET /pets needs nothing"),
    ],
)
def test_a_more_specific_route_of_another_policy_keeps_the_operation_settings(
    make_client, path, headers, status, message
):
    r = make_client(_with_special_throttle()).get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)
    if message is not None:
        assert r.json() == {"message": message}
    if status == 200 and path.startswith("/pets/special"):
        # The context still names the most specific declared route.
        assert r.seen[0].context.route_key == "GET /pets/special"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/v1/pets/special?q=1", {}, 403, id="under the base path: key needed"),
        pytest.param("/v1/pets/special?q=1", {"x-api-key": KEY}, 200, id="with key"),
        pytest.param("/v1/pets/special", {"x-api-key": KEY}, 400, id="validated"),
        pytest.param("/v1/pets", {}, 200, id="GET /pets needs nothing"),
    ],
)
def test_operations_are_matched_below_the_stage_base_path(make_client, path, headers, status):
    policies = _with_special_throttle(stage=Stage("prod", base_path="/v1"))
    r = make_client(policies).get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


def test_one_policy_list_behind_two_stages(make_client):
    """The policies of one call bind to each gateway's own stage and base path."""
    policies = _with_special_throttle()
    plain = make_client(policies)
    based = make_client(policies, stage=Stage("prod", base_path="/v1"))
    assert plain.get("/pets/special?q=1").status_code == 403
    assert plain.get("/pets/special?q=1", headers={"x-api-key": KEY}).status_code == 200
    assert based.get("/v1/pets/special?q=1").status_code == 403
    assert based.get("/v1/pets/special?q=1", headers={"x-api-key": KEY}).status_code == 200
    assert based.get("/v1/pets/special", headers={"x-api-key": KEY}).status_code == 400


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/pets/special", {}, 403, id="special needs the key"),
        pytest.param("/pets/special", {"x-api-key": KEY}, 200, id="special with key"),
        pytest.param("/pets/7", {}, 403, id="other pets need the key"),
    ],
)
def test_api_key_covers_a_route_another_policy_declares(make_client, path, headers, status):
    api = pets_api()
    del api["paths"]["/pets/{petId}"]["get"]["x-amazon-apigateway-request-validator"]
    policies = [
        *from_openapi(api, api_keys=ApiKeys([ApiKey(KEY)])),
        Throttle(TokenBucket(rate=1000, burst=1000), routes=["GET /pets/special"]),
    ]
    r = make_client(policies).get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/nowhere", {}, 403, id="plain OPTIONS, undeclared path"),
        pytest.param("/pets", {"origin": ORIGIN}, 403, id="plain OPTIONS, only GET declared"),
        pytest.param("/nowhere", PREFLIGHT, 204, id="preflight, undeclared path"),
        pytest.param("/pets", PREFLIGHT, 204, id="preflight, only GET declared"),
    ],
)
def test_options_without_an_operation_under_strict_routes(make_client, path, headers, status):
    api = pets_api()
    api["x-amazon-apigateway-cors"] = {"allowOrigins": [ORIGIN], "allowMethods": ["GET", "POST"]}
    r = make_client(from_openapi(api, api_keys=ApiKeys([ApiKey(KEY)]))).options(
        path, headers=headers
    )
    assert r.status_code == status, r.text
    assert r.seen == []
    if status == 403:
        assert r.json() == {"message": "Missing Authentication Token"}
    else:
        assert r.headers["access-control-allow-origin"] == ORIGIN


def test_templates_that_differ_only_in_parameter_names_are_refused():
    api = pets_api()
    api["paths"]["/pets/{id}"] = {"get": {"responses": {}}}
    with pytest.raises(ConfigurationError) as info:
        from_openapi(api, api_keys=ApiKeys([ApiKey(KEY)]))
    assert info.value.field == "spec#/paths/~1pets~1{id}/get"
    assert "GET /pets/{id} is the same route as GET /pets/{petId}" in info.value.message


BESIDE = [
    pytest.param([RouteTable(["OPTIONS /", "OPTIONS /{proxy+}"])], id="OPTIONS routes declared"),
    pytest.param(
        [Throttle(TokenBucket(rate=1000, burst=1000), routes=["OPTIONS /{proxy+}", "GET /secret"])],
        id="a throttle on more specific routes",
    ),
]


@pytest.mark.parametrize("beside", BESIDE)
@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("OPTIONS", {"authorization": "allow"}, 403, id="OPTIONS no key"),
        pytest.param("OPTIONS", {"x-api-key": KEY}, 401, id="OPTIONS no token"),
        pytest.param("OPTIONS", FULL, 200, id="OPTIONS with both"),
        pytest.param("GET", {"authorization": "allow"}, 403, id="GET no key"),
        pytest.param("GET", FULL, 200, id="GET with both"),
        pytest.param("OPTIONS", PREFLIGHT, 204, id="preflight"),
    ],
)
def test_routes_declared_beside_the_definition_keep_its_coverage(
    make_client, beside, method, headers, status
):
    api = greedy_with_cors()
    del api["paths"]["/{proxy+}"]["x-amazon-apigateway-any-method"]["requestBody"]
    policies = from_openapi(
        api, api_keys=ApiKeys([ApiKey(KEY)]), authorizers={"tok": token_handler}
    )
    r = make_client([*policies, *beside]).request(method, "/secret", headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)
