"""API keys: who may call. Bad keys and bad configuration, both adapters."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from apigw_mw import (
    Allow,
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    BasePolicy,
    ConfigurationError,
    MemoryStore,
    Phase,
    Quota,
    Throttle,
    TokenBucket,
    UsagePlan,
)

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
BOB = "Zb7Qm2Lp9Xv4Nc6Rt1Ws8Ky3Hd5Jf0Gk"


def auth(**kw: Any) -> ApiKeyAuth:
    keys = ApiKeys(
        [
            ApiKey(ALICE, id="k-alice", name="alice"),
            ApiKey(BOB, id="k-bob", enabled=False),
            ApiKey("a" * 20, id="k-short"),
            ApiKey("b" * 128, id="k-long"),
        ]
    )
    return ApiKeyAuth(keys, storage=MemoryStore(), **kw)


@pytest.mark.parametrize(
    ("headers", "status", "key_id"),
    [
        pytest.param({"x-api-key": ALICE}, 200, "k-alice", id="valid"),
        pytest.param({"X-API-KEY": ALICE}, 200, "k-alice", id="header-name-any-case"),
        pytest.param({"x-api-key": "a" * 20}, 200, "k-short", id="20-chars"),
        pytest.param({"x-api-key": "b" * 128}, 200, "k-long", id="128-chars"),
        pytest.param(None, 403, None, id="missing"),
        pytest.param({"x-api-key": ""}, 403, None, id="empty"),
        pytest.param({"x-api-key": "Zz" * 15}, 403, None, id="unknown"),
        pytest.param({"x-api-key": BOB}, 403, None, id="disabled"),
        pytest.param({"x-api-key": "a" * 19}, 403, None, id="19-chars"),
        pytest.param({"x-api-key": "b" * 129}, 403, None, id="129-chars"),
        pytest.param({"x-api-key": ALICE[:10] + " " + ALICE[10:]}, 403, None, id="space"),
        pytest.param({"x-api-key": ALICE.lower()}, 403, None, id="case-matters"),
        pytest.param([("x-api-key", ALICE), ("x-api-key", ALICE)], 403, None, id="twice"),
        pytest.param([("x-api-key", ALICE), ("x-api-key", "a" * 20)], 403, None, id="two-keys"),
    ],
)
def test_key_check(make_client, headers, status, key_id) -> None:
    client = make_client([auth()])
    r = client.get("/pets", headers=headers)
    assert r.status_code == status
    if status == 403:
        assert r.json() == {"message": "Forbidden"}
        assert r.headers["x-amzn-errortype"] == "ForbiddenException"
        assert r.seen == []
    else:
        assert r.json()["context"]["apiKeyId"] == key_id


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"Fq3sY0cXk1wQ0pZl8mTn2b\xe9x", id="non-ascii"),
        pytest.param(b"Fq3sY0cXk1wQ0pZl8mTn2b\tx", id="tab"),
        pytest.param(b"Fq3sY0cXk1wQ0pZl8mTn2b\x7fx", id="delete-char"),
    ],
)
def test_bytes_outside_printable_ascii_are_forbidden(raw: bytes) -> None:
    import anyio

    from apigw_mw import GatewayMiddleware

    seen = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope)

    mw = GatewayMiddleware(app, policies=[auth()])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/pets",
        "headers": [(b"x-api-key", raw)],
        "client": ("127.0.0.1", 1),
    }
    anyio.run(mw, scope, receive, send)
    assert sent[0]["status"] == 403
    assert sent[1]["body"] == b'{"message":"Forbidden"}'
    assert seen == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"x-client-key": ALICE}, 200, id="own-header"),
        pytest.param({"X-Client-Key": ALICE}, 200, id="own-header-any-case"),
        pytest.param({"x-api-key": ALICE}, 403, id="default-header-not-read"),
        pytest.param([("x-client-key", ALICE), ("x-client-key", ALICE)], 403, id="twice"),
        pytest.param({"x-client-key": ALICE + "," + ALICE}, 403, id="joined-by-comma"),
    ],
)
def test_key_in_another_header(make_client, headers, status) -> None:
    client = make_client([auth(header="X-Client-Key")])
    r = client.get("/pets", headers=headers)
    assert r.status_code == status
    assert len(r.seen) == (1 if status == 200 else 0)


def test_asgi_header_names_in_capitals_are_read() -> None:
    import anyio

    from apigw_mw import GatewayMiddleware

    seen = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    mw = GatewayMiddleware(app, policies=[auth()])
    for headers, status in [
        ([(b"X-Api-Key", ALICE.encode())], 200),
        ([(b"X-Api-Key", ALICE.encode()), (b"x-api-key", ALICE.encode())], 403),
    ]:
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": "/pets", "headers": headers}
        anyio.run(mw, scope, receive, send)
        assert sent[0]["status"] == status
    assert len(seen) == 1


def test_wsgi_non_ascii_key_is_forbidden() -> None:
    from werkzeug.test import Client

    from apigw_mw import WSGIGatewayMiddleware

    seen = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen.append(environ)
        start_response("200 OK", [])
        return [b""]

    client = Client(WSGIGatewayMiddleware(app, policies=[auth()]))
    r = client.get("/pets", environ_base={"HTTP_X_API_KEY": "Fq3sY0cXk1wQ0pZl8mTn2b\xe9x"})
    assert r.status_code == 403
    assert seen == []


def test_routes_not_requiring_a_key_ignore_it(make_client) -> None:
    client = make_client([auth(routes=["GET /pets"])])
    assert client.get("/pets").status_code == 403
    r = client.get("/health", headers={"x-api-key": "junk"})
    assert r.status_code == 200
    assert r.json()["context"]["apiKeyId"] is None


class UsageKeyFrom(BasePolicy):
    """Stands in for a custom authorizer returning a usageIdentifierKey."""

    phase = Phase.AUTHORIZE

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def flow(self, request, context):  # type: ignore[no-untyped-def]
        value = request.headers.get("x-token")
        if value is None:
            return None
        if self.where == "authorizer":
            return Allow(authorizer={"usageIdentifierKey": value})
        context.extra["usageIdentifierKey"] = value
        return None


@pytest.mark.parametrize("where", ["authorizer", "extra"])
def test_key_source_authorizer(make_client, where) -> None:
    client = make_client([auth(source="AUTHORIZER"), UsageKeyFrom(where)])
    r = client.get("/pets", headers={"x-token": ALICE})
    assert r.status_code == 200
    assert r.json()["context"]["apiKeyId"] == "k-alice"
    # The header is not a key source then.
    assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 403
    assert client.get("/pets", headers={"x-token": BOB}).status_code == 403


class FailingKeys:
    def lookup(self, key_hash: str) -> ApiKey | None:
        raise ConnectionError("database is down")


class AsyncKeys:
    async def lookup(self, key_hash: str) -> ApiKey | None:
        if key_hash == ApiKey(ALICE).key_hash:
            return ApiKey.from_hash(key_hash, id="k-async")
        return None


def test_custom_async_key_store(make_client) -> None:
    client = make_client([ApiKeyAuth(AsyncKeys(), storage=MemoryStore())])
    r = client.get("/pets", headers={"x-api-key": ALICE})
    assert r.status_code == 200
    assert r.json()["context"]["apiKeyId"] == "k-async"
    assert client.get("/pets", headers={"x-api-key": BOB}).status_code == 403


def test_key_store_error_denies_by_default(make_client, caplog) -> None:
    client = make_client([ApiKeyAuth(FailingKeys(), storage=MemoryStore())])
    with caplog.at_level(logging.DEBUG):
        r = client.get("/pets", headers={"x-api-key": ALICE})
    assert r.status_code == 500
    assert r.headers["x-amzn-errortype"] == "InternalServerErrorException"
    assert r.seen == []
    assert "database is down" in caplog.text
    assert ALICE not in caplog.text


def test_key_store_error_allow(make_client) -> None:
    client = make_client(
        [ApiKeyAuth(FailingKeys(), storage=MemoryStore(), on_key_store_error="allow")]
    )
    r = client.get("/pets", headers={"x-api-key": ALICE})
    assert r.status_code == 200
    assert r.json()["context"]["apiKeyId"] is None


def test_key_value_is_not_kept_or_shown() -> None:
    key = ApiKey(ALICE, name="alice")
    assert ALICE not in repr(key)
    assert all(ALICE not in str(getattr(key, a)) for a in ApiKey.__slots__)
    assert key.matches(ALICE)
    assert not key.matches(BOB)
    assert not key.matches("é" * 30)
    # The derived id is a function of the value alone: the same in every process.
    assert ApiKey(ALICE).id == key.id
    assert ApiKey(BOB).id != key.id


# -- CSV import --------------------------------------------------------------------------------

GOOD_CSV = f"""Name,Key,Description,Enabled,UsagePlanIds
alice,{ALICE},first,TRUE,basic
bob,{BOB},,false,
"""


def test_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "keys.csv"
    path.write_text(GOOD_CSV)
    basic = UsagePlan("basic", quota=Quota(10))
    keys = ApiKeys.from_csv(path, plans={"basic": basic})
    assert len(keys) == 2
    alice = keys.lookup(ApiKey(ALICE).key_hash)
    assert alice is not None
    assert alice.name == "alice"
    assert alice.plan is basic
    assert alice.enabled
    bob = keys.lookup(ApiKey(BOB).key_hash)
    assert bob is not None
    assert not bob.enabled
    assert bob.plan is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(f"Name,Key\nalice,{ALICE}\nbob,short\n", 3, "20-128", id="short-key"),
        pytest.param(f"Name,Key\nbob,{'x' * 129}\n", 2, "20-128", id="long-key"),
        pytest.param(f"Key,Enabled\n{ALICE},maybe\n", 2, "true or false", id="bad-enabled"),
        pytest.param(f"Key,UsagePlanIds\n{ALICE},gold\n", 2, "unknown usage plan", id="plan"),
        pytest.param(f'Key,UsagePlanIds\n{ALICE},"basic,gold"\n', 2, "one usage plan", id="2p"),
        pytest.param(f"Key\n{ALICE}\n\n{ALICE}\n", 4, "twice", id="duplicate"),
        pytest.param("Name,Value\nalice,x\n", 1, "no Key column", id="no-key-column"),
        pytest.param("", 1, "empty", id="empty-file"),
    ],
)
def test_from_csv_bad_row(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "keys.csv"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        ApiKeys.from_csv(path, plans={"basic": UsagePlan("basic")})
    assert info.value.field == f"{path}:{line}"
    assert words in info.value.message
    assert ALICE not in str(info.value)


# -- configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(lambda: TokenBucket(rate=0, burst=1), "TokenBucket.rate", id="zero-rate"),
        pytest.param(lambda: TokenBucket(rate=-1, burst=1), "TokenBucket.rate", id="neg-rate"),
        pytest.param(
            lambda: TokenBucket(rate=float("inf"), burst=1), "TokenBucket.rate", id="inf-rate"
        ),
        pytest.param(lambda: TokenBucket(rate="5", burst=1), "TokenBucket.rate", id="str-rate"),
        pytest.param(lambda: TokenBucket(rate=1, burst=0), "TokenBucket.burst", id="burst-0"),
        pytest.param(lambda: TokenBucket(rate=1, burst=0.5), "TokenBucket.burst", id="burst-half"),
        pytest.param(lambda: TokenBucket(rate=1, burst=-3), "TokenBucket.burst", id="burst-neg"),
        pytest.param(lambda: Throttle(TokenBucket(1, 1), key="user"), "Throttle.key", id="key"),
        pytest.param(lambda: Throttle((1, 1)), "Throttle.bucket", id="not-a-bucket"),
        pytest.param(
            lambda: Throttle(TokenBucket(1, 1), on_storage_error="retry"),
            "Throttle.on_storage_error",
            id="on-storage-error",
        ),
        pytest.param(
            lambda: Throttle(
                TokenBucket(1, 1), routes=["GET /a"], route_limits={"GET /b": TokenBucket(1, 1)}
            ),
            "Throttle.route_limits.GET /b",
            id="route-limit-outside-routes",
        ),
        pytest.param(
            lambda: Throttle(TokenBucket(1, 1), route_limits={"/b": TokenBucket(1, 1)}),
            "Throttle.route_limits",
            id="route-limit-not-a-route",
        ),
        pytest.param(lambda: ApiKey("a" * 19), "ApiKey.value", id="key-19"),
        pytest.param(lambda: ApiKey("a" * 129), "ApiKey.value", id="key-129"),
        pytest.param(lambda: ApiKey("é" * 20), "ApiKey.value", id="key-non-ascii"),
        pytest.param(lambda: ApiKey(ALICE, id="{x}"), "ApiKey.id", id="key-id"),
        pytest.param(lambda: ApiKey(ALICE, plan="basic"), "ApiKey.plan", id="plan-name"),
        pytest.param(lambda: ApiKeys([ApiKey(ALICE), ApiKey(ALICE)]), "keys[1]", id="dup-key"),
        pytest.param(lambda: UsagePlan("a{b}"), "UsagePlan.name", id="plan-name-braces"),
        pytest.param(lambda: UsagePlan("p", quota=5), "UsagePlan(p).quota", id="plan-quota"),
        pytest.param(lambda: ApiKeyAuth(ApiKeys(), source="QUERY"), "ApiKeyAuth.source", id="src"),
        pytest.param(lambda: ApiKeyAuth(object()), "ApiKeyAuth.keys", id="keys"),
        pytest.param(
            lambda: ApiKeyAuth(ApiKeys(), on_key_store_error="retry"),
            "ApiKeyAuth.on_key_store_error",
            id="on-key-store-error",
        ),
    ],
)
def test_configuration_errors(build, field) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert info.value.field == field


@pytest.mark.parametrize("uri", ["mongodb://127.0.0.1:27017", "couchbase://127.0.0.1"])
def test_storage_without_scripting_is_refused(make_client, uri) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_client([Throttle(TokenBucket(1, 1))], storage=uri)
    assert info.value.field == "Throttle.storage"
