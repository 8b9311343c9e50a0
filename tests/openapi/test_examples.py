"""The API Gateway developer guide's example definitions, every route through both adapters.

The definitions are in ``data/`` (see ``data/SOURCES.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apigw_mw import ApiKey, ApiKeys, Stage, from_openapi
from apigw_mw.auth.jwt import LocalIssuer
from tests.iam.signing import AKID, REGION, SECRET, sign

DATA = Path(__file__).parent / "data"
KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
MISSING = {"message": "Missing Authentication Token"}


def spec(name: str) -> Path:
    return DATA / name


# -- request validation (Swagger 2.0, two validators, API keys) -------------------------------

GOOD_PET = {"type": "dog", "name": "Rex", "price": 100}


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "message"),
    [
        pytest.param("GET", "/validation?q1=cat", {"x-api-key": KEY}, None, 200, None, id="get ok"),
        pytest.param("GET", "/validation?q1=cat", {}, None, 403, "Forbidden", id="get without key"),
        pytest.param(
            "GET",
            "/validation?q1=",
            {"x-api-key": KEY},
            None,
            400,
            "Missing required request parameters: [q1]",
            id="get blank q1",
        ),
        pytest.param(
            "POST",
            "/validation",
            {"x-api-key": KEY, "h1": "v"},
            GOOD_PET,
            200,
            None,
            id="post ok",
        ),
        pytest.param(
            "POST",
            "/validation",
            {"x-api-key": KEY},
            GOOD_PET,
            400,
            "Missing required request parameters: [h1]",
            id="post without h1",
        ),
        pytest.param(
            "POST",
            "/validation",
            {"x-api-key": KEY, "h1": "v"},
            {**GOOD_PET, "price": 501},
            400,
            "Invalid request body",
            id="post price over 500",
        ),
        pytest.param(
            "POST",
            "/validation",
            {"x-api-key": KEY, "h1": "v"},
            {**GOOD_PET, "type": "cow"},
            400,
            "Invalid request body",
            id="post type not in enum",
        ),
        pytest.param(
            "PUT",
            "/validation",
            {"x-api-key": KEY},
            None,
            403,
            MISSING["message"],
            id="undeclared method",
        ),
    ],
)
def test_request_validation_example(make_client, method, path, headers, body, status, message):
    client = make_client(
        from_openapi(spec("request-validation.json"), api_keys=ApiKeys([ApiKey(KEY)]))
    )
    content = None if body is None else json.dumps(body).encode()
    if content is not None:
        headers = {**headers, "content-type": "application/json"}
    r = client.request(method, path, headers=headers, content=content)
    assert r.status_code == status, r.text
    if message is None:
        assert len(r.seen) == 1
    else:
        assert r.json() == {"message": message}
        assert r.seen == []


# -- the HTTP API pet store (OpenAPI 3.0, CORS, no validator) ----------------------------------

ORIGIN = {"origin": "https://www.example.com"}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        pytest.param("GET", "/pets?type=dog&page=2", ORIGIN, 200, id="GET /pets"),
        # No request validator is declared: API Gateway does not validate the body.
        pytest.param(
            "POST", "/pets", {**ORIGIN, "content-type": "application/json"}, 200, id="POST /pets"
        ),
        pytest.param("GET", "/pets/7", ORIGIN, 200, id="GET /pets/{petId}"),
        pytest.param("DELETE", "/pets/7", ORIGIN, 403, id="undeclared route"),
    ],
)
def test_petstore_http_api(make_client, tmp_path, fmt, method, path, headers, status):
    source: Any = spec("petstore-http-api.json")
    if fmt == "yaml":
        import yaml

        source = tmp_path / "petstore.yaml"
        source.write_text(yaml.safe_dump(json.loads(spec("petstore-http-api.json").read_text())))
    client = make_client(from_openapi(source))
    r = client.request(method, path, headers=headers, content=b'{"type": "unicorn"}')
    assert r.status_code == status
    assert r.headers["access-control-allow-origin"] == "*"  # error responses too
    assert len(r.seen) == (1 if status == 200 else 0)


def test_petstore_preflight_is_answered_by_the_gateway(make_client):
    client = make_client(from_openapi(spec("petstore-http-api.json")))
    r = client.options(
        "/pets/7",
        headers={
            **ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key, content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-methods"] == "GET, OPTIONS, POST"
    assert r.seen == []


# -- gateway responses (Swagger 2.0) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/pets", 200, id="GET /pets"),
        pytest.param("/pets/7", 200, id="GET /pets/{petId}"),
        pytest.param("/nowhere?q=abc", 404, id="customised missing token"),
    ],
)
def test_gateway_responses_example(make_client, path, status):
    policies = from_openapi(
        spec("gateway-responses.json"), stage=Stage("prod", variables={"a": "blue"})
    )
    client = make_client(policies)
    r = client.get(path, headers={"accept": "application/json"})
    assert r.status_code == status
    if status == 200:
        assert len(r.seen) == 1
        return
    assert r.seen == []
    assert r.json() == {
        "message": "Missing Authentication Token",
        "type": "MISSING_AUTHENTICATION_TOKEN",
        "stage": "prod",
        "resourcePath": "",
        "stageVariables.a": "blue",
        "statusCode": "'404'",
    }
    assert r.headers["access-control-allow-origin"] == "a.b.c"
    assert r.headers["x-request-query"] == "abc"
    assert r.headers["x-request-header"] == "application/json"


def test_default_4xx_and_invalid_api_key_customisation_are_compiled():
    policies = from_openapi(spec("gateway-responses.json"))
    from apigw_mw import GatewayResponses

    responses = next(p for p in policies if isinstance(p, GatewayResponses))
    assert responses._compiled["INVALID_API_KEY"].status == 429
    assert (b"access-control-allow-origin", b"domain.com") in responses._compiled[
        "THROTTLED"
    ].static_headers  # DEFAULT_4XX headers reach every 4xx type


# -- authorizers -------------------------------------------------------------------------------


def request_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    token = (event.get("headers") or {}).get("Authorization") or event.get("authorizationToken")
    if token in (None, "", "fail"):
        raise Exception("Unauthorized")
    effect = "Allow" if str(token).endswith("allow") else "Deny"
    return {
        "principalId": "user|a1",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
            ],
        },
        "context": {"tier": "gold"},
    }


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"authorization": "allow"}, 200, id="allowed"),
        pytest.param({"authorization": "deny"}, 403, id="denied"),
        pytest.param({"authorization": "fail"}, 401, id="unauthorized"),
        pytest.param({}, 401, id="no identity source"),
    ],
)
def test_lambda_request_authorizer_example(make_client, headers, status):
    policies = from_openapi(
        spec("authtype-lambda-request.json"), authorizers={"myAuthorizer": request_handler}
    )
    r = make_client(policies).get("/protected-by-lambda-authorizer", headers=headers)
    assert r.status_code == status
    if status == 200:
        assert r.json()["context"]["authorizer"]["tier"] == "gold"
    else:
        assert r.seen == []


def token_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return request_handler({**event, "headers": {}}, context)


def header_query_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ok = event["headers"].get("HeaderAuth1") == "h" and (
        event["queryStringParameters"].get("QueryString1") == "q"
    )
    return request_handler({**event, "headers": {"Authorization": "allow" if ok else "x"}}, context)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        pytest.param("/http", {"authorization": "x-allow"}, 200, id="token allowed"),
        pytest.param("/http", {"authorization": "x-deny"}, 403, id="token denied"),
        pytest.param("/http", {"authorization": "allow"}, 401, id="token fails the expression"),
        pytest.param("/http", {}, 401, id="token missing"),
        pytest.param("/request?QueryString1=q", {"HeaderAuth1": "h"}, 200, id="request allowed"),
        pytest.param("/request?QueryString1=z", {"HeaderAuth1": "h"}, 403, id="request denied"),
        pytest.param("/request", {"HeaderAuth1": "h"}, 401, id="request source missing"),
    ],
)
def test_lambda_authorizers_example(make_client, path, headers, status):
    policies = from_openapi(
        spec("lambda-authorizers.json"),
        authorizers={
            "test-authorizer": token_handler,
            "request_authorizer_header_query": header_query_handler,
        },
    )
    r = make_client(policies).get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


@pytest.mark.parametrize(
    ("path", "signed", "status"),
    [
        pytest.param("/operation1", True, 200, id="operation1 signed"),
        pytest.param("/operation2", True, 200, id="operation2 signed"),
        pytest.param("/operation1", False, 403, id="operation1 unsigned"),
    ],
)
def test_sigv4_authtype_example(make_client, path, signed, status):
    policies = from_openapi(
        spec("authtype-sigv4.json"),
        authorizers={"sigv4Reference": {"credentials": {AKID: SECRET}, "region": REGION}},
    )
    client = make_client(policies)
    headers: list[tuple[str, str]] = []
    if signed:
        path, headers = sign("GET", path)[:2]
    r = client.get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


JWT_ISSUER = "https://cognito-idp.region.amazonaws.com/userPoolId"


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        pytest.param("/jwt", {"scope": "pets/read"}, 200, id="jwt with scope"),
        pytest.param("/jwt", {}, 403, id="jwt without scope"),
        pytest.param("/jwt", None, 401, id="jwt missing"),
        pytest.param("/oidc", {}, 200, id="openIdConnectUrl issuer"),
        pytest.param("/oidc", {"audience": "other"}, 401, id="wrong audience"),
        pytest.param("/lambda", "allow", 200, id="simple response allowed"),
        pytest.param("/lambda", "no", 403, id="simple response refused"),
    ],
)
def test_http_api_authorizers_example(make_client, path, token, status):
    issuer = LocalIssuer(JWT_ISSUER)

    def simple(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"isAuthorized": event["headers"].get("authorization") == "allow"}

    policies = from_openapi(
        spec("http-api-authorizers.json"),
        authorizers={
            "jwt-authorizer-oauth": {"jwks": issuer.jwks()},
            "jwt-authorizer-autofind": {"jwks": issuer.jwks()},
            "lambda-authorizer": simple,
        },
    )
    headers = {}
    if isinstance(token, dict):
        claims = {"audience": "audience1", **token}
        headers["authorization"] = "Bearer " + issuer.token(**claims)
    elif isinstance(token, str):
        headers["authorization"] = token
    r = make_client(policies).get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)


POOL_ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"


@pytest.mark.parametrize(
    ("path", "claims", "status"),
    [
        pytest.param("/", {"token_use": "id", "aud": "client1"}, 200, id="id token"),
        pytest.param(
            "/scoped",
            {
                "token_use": "access",
                "client_id": "client1",
                "scope": "http://my.resource.com/file.read",
            },
            200,
            id="access token with scope",
        ),
        pytest.param(
            "/scoped", {"token_use": "id", "aud": "client1"}, 401, id="id token where scopes"
        ),
        pytest.param("/", None, 401, id="no token"),
    ],
)
def test_cognito_example(make_client, path, claims, status):
    issuer = LocalIssuer(POOL_ISSUER)
    policies = from_openapi(
        spec("cognito-user-pool.json"),
        authorizers={
            "MyUserPool": {
                "region": "eu-west-1",
                "user_pool_id": "eu-west-1_AbCdEf123",
                "app_client_ids": ["client1"],
                "jwks": issuer.jwks(),
            }
        },
    )
    headers = {}
    if claims is not None:
        claims = dict(claims)
        headers["authorization"] = issuer.token(audience=claims.pop("aud", None), **claims)
    r = make_client(policies).get(path, headers=headers)
    assert r.status_code == status, r.text
    assert len(r.seen) == (1 if status == 200 else 0)
