"""CognitoAuthorizer with Cognito-shaped ID and access tokens, through both adapters."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from apigw_mw import CognitoAuthorizer, ConfigurationError
from tests.auth.conftest import Issuer, Key

REGION = "eu-west-1"
POOL = "eu-west-1_AbCdEf123"
CLIENT = "4h1bq0example"
SCOPES = {"POST /pets": ["pets/write"], "DELETE /pets/{id}": ["pets/admin"]}


def pool_issuer(server: Issuer) -> str:
    return f"{server.url}/{POOL}"


def id_token(server: Issuer, key: Key, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "aaaa-bbbb",
        "cognito:groups": ["admins", "staff"],
        "email_verified": True,
        "iss": pool_issuer(server),
        "cognito:username": "alice",
        "aud": CLIENT,
        "event_id": str(uuid.uuid4()),
        "token_use": "id",
        "auth_time": now,
        "exp": now + 3600,
        "iat": now,
        "email": "alice@example.com",
    }
    claims.update(overrides)
    return key.sign({k: v for k, v in claims.items() if v is not None})


def access_token(server: Issuer, key: Key, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "aaaa-bbbb",
        "cognito:groups": ["admins"],
        "iss": pool_issuer(server),
        "client_id": CLIENT,
        "origin_jti": str(uuid.uuid4()),
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin pets/write",
        "auth_time": now,
        "exp": now + 3600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "username": "alice",
    }
    claims.update(overrides)
    return key.sign({k: v for k, v in claims.items() if v is not None})


def cognito(server: Issuer, **kw: Any) -> CognitoAuthorizer:
    kw.setdefault("app_client_ids", [CLIENT])
    kw.setdefault("scopes", SCOPES)
    return CognitoAuthorizer(region=REGION, user_pool_id=POOL, issuer=pool_issuer(server), **kw)


CASES = [
    pytest.param("GET", "/pets", id_token, {}, {}, 200, id="id-token-on-route-without-scopes"),
    pytest.param("POST", "/pets", access_token, {}, {}, 200, id="access-token-on-scoped-route"),
    pytest.param("GET", "/pets", access_token, {}, {}, 401, id="access-token-needs-id-token"),
    pytest.param("POST", "/pets", id_token, {}, {}, 401, id="id-token-on-scoped-route"),
    pytest.param("DELETE", "/pets/1", access_token, {}, {}, 401, id="missing-scope-is-401-not-403"),
    pytest.param("GET", "/pets", id_token, {"aud": "other"}, {}, 401, id="wrong-aud"),
    pytest.param("POST", "/pets", access_token, {"client_id": "x"}, {}, 401, id="wrong-client"),
    pytest.param("POST", "/pets", access_token, {"token_use": "id"}, {}, 401, id="wrong-token-use"),
    pytest.param("GET", "/pets", id_token, {"iss": "https://x"}, {}, 401, id="wrong-iss"),
    pytest.param("GET", "/pets", id_token, {"exp": int(time.time()) - 1}, {}, 401, id="expired"),
    pytest.param(
        "GET", "/pets", id_token, {"aud": "any"}, {"app_client_ids": ()}, 200, id="any-client"
    ),
    pytest.param(
        "GET", "/pets", access_token, {}, {"token_use": "access"}, 200, id="forced-access"
    ),
    pytest.param("GET", "/pets", id_token, {}, {"token_use": "access"}, 401, id="forced-access-id"),
    pytest.param("POST", "/pets", id_token, {}, {"token_use": "id"}, 401, id="forced-id-scopes"),
]


@pytest.mark.parametrize(("method", "path", "mint", "claims", "options", "status"), CASES)
def test_the_rest_cognito_rule(
    make_client, issuer, rsa_key, method, path, mint, claims, options, status
):
    client = make_client([cognito(issuer, **options)])
    r = client.request(method, path, headers={"Authorization": mint(issuer, rsa_key, **claims)})
    assert r.status_code == status, r.text
    if status == 401:
        assert r.json() == {"message": "Unauthorized"}
        assert r.seen == []
    else:
        assert len(r.seen) == 1


def test_groups_and_claims_reach_the_app(make_client, issuer, rsa_key):
    client = make_client([cognito(issuer)])
    r = client.get("/pets", headers={"Authorization": id_token(issuer, rsa_key)})
    assert r.status_code == 200
    auth = r.json()["context"]["authorizer"]
    assert auth["groups"] == ["admins", "staff"]
    assert auth["claims"]["cognito:username"] == "alice"
    assert auth["claims"]["cognito:groups"] == ["admins", "staff"]
    assert auth["principalId"] == "aaaa-bbbb"


def test_keys_come_from_the_pool_jwks_without_discovery(make_client, issuer, rsa_key):
    client = make_client([cognito(issuer)])
    assert client.get("/p", headers={"Authorization": id_token(issuer, rsa_key)}).status_code == 200
    assert issuer.hits[f"/{POOL}/.well-known/jwks.json"] == 1
    assert issuer.hits["/.well-known/openid-configuration"] == 0


def test_issuer_and_jwks_are_derived_from_region_and_pool():
    policy = CognitoAuthorizer(region=REGION, user_pool_id=POOL)
    assert policy.issuer == f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}"
    assert policy.jwks.jwks_uri == (
        f"https://cognito-idp.{REGION}.amazonaws.com/{POOL}/.well-known/jwks.json"
    )


def test_jwks_uri_override(make_client, issuer, rsa_key):
    policy = cognito(issuer, jwks_uri=f"{issuer.url}/jwks.json")
    r = make_client([policy]).get("/p", headers={"Authorization": id_token(issuer, rsa_key)})
    assert r.status_code == 200
    assert issuer.hits["/jwks.json"] == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"region": "europe"}, "region", id="bad-region"),
        pytest.param({"user_pool_id": "AbCdEf123"}, "user_pool_id", id="bad-pool"),
        pytest.param({"user_pool_id": "us-east-1_AbC"}, "user_pool_id", id="pool-other-region"),
        pytest.param({"token_use": "refresh"}, "token_use", id="bad-token-use"),
        pytest.param({"app_client_ids": [""]}, "app_client_ids", id="empty-client"),
        pytest.param({"algorithms": ["HS256"]}, "algorithms", id="hmac"),
    ],
)
def test_configuration_errors_name_the_field(kwargs, field):
    options: dict[str, Any] = {"region": REGION, "user_pool_id": POOL, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        CognitoAuthorizer(**options)
    assert info.value.field == field
