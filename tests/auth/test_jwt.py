"""JwtAuthorizer against a real OIDC issuer on 127.0.0.1, through both adapters."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest

from apigw_mw import ConfigurationError, GatewayMiddleware, JwtAuthorizer, Stage, get_context
from apigw_mw.auth import jwks as jwks_module
from apigw_mw.auth.jwks import JwksCache
from apigw_mw.auth.jwt import LocalIssuer
from tests.auth.conftest import Issuer, Key, b64, b64_json
from tests.helpers import gateway_client

AUD = "api://pets"


def authorizer(issuer: Issuer, **kw: Any) -> JwtAuthorizer:
    kw.setdefault("audience", [AUD, "api://other"])
    kw.setdefault("algorithms", ("RS256", "ES256"))
    return JwtAuthorizer(issuer=issuer.url, **kw)


def www(r: Any) -> str:
    return str(r.headers.get("www-authenticate", ""))


TokenMaker = Callable[[Issuer, Key, Key, Key], str]

OK_CASES = [
    pytest.param(lambda i, k, e, k2: "Bearer " + k.sign(i.claims()), id="rs256-bearer"),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims()), id="rs256-raw"),
    pytest.param(lambda i, k, e, k2: "bearer  " + k.sign(i.claims()), id="bearer-any-case"),
    pytest.param(lambda i, k, e, k2: "Bearer " + e.sign(i.claims()), id="es256"),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(aud=["x", "api://other"])), id="aud-list-one-matches"
    ),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(aud=None, client_id=AUD)), id="client-id-without-aud"
    ),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(), jku="{url}/evil", x5u="{url}/evil", x5c=["MIIB"]),
        id="jku-x5u-x5c-ignored",
    ),
]


@pytest.mark.parametrize("make", OK_CASES)
def test_valid_tokens_reach_the_app_with_claims(
    make_client, issuer, rsa_key, ec_key, rsa_key2, make
):
    client = make_client([authorizer(issuer)])
    r = client.get("/pets", headers={"Authorization": make(issuer, rsa_key, ec_key, rsa_key2)})
    assert r.status_code == 200, r.text
    auth = r.json()["context"]["authorizer"]
    assert auth["claims"]["sub"] == "user-1"
    assert auth["jwt"]["claims"] == auth["claims"]
    assert auth["principalId"] == "user-1"
    assert issuer.hits["/evil"] == 0
    assert len(r.seen) == 1


def _none_token(i: Issuer, k: Key) -> str:
    return f"{b64_json({'alg': 'none', 'kid': k.kid})}.{b64_json(i.claims())}."


def _none_signed(i: Issuer, k: Key) -> str:
    return f"{b64_json({'alg': 'none', 'kid': k.kid})}.{b64_json(i.claims())}.{b64(b'x')}"


def _hs256_with_public_key(i: Issuer, k: Key) -> str:
    import hashlib
    import hmac

    signing_input = f"{b64_json({'alg': 'HS256', 'kid': k.kid})}.{b64_json(i.claims())}"
    mac = hmac.new(k.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _truncated(i: Issuer, k: Key) -> str:
    return k.sign(i.claims())[:-12]


BAD_CASES = [
    pytest.param(lambda i, k, e, k2: "abc", "malformed", id="garbage"),
    pytest.param(lambda i, k, e, k2: "Bearer ", "malformed", id="bearer-nothing"),
    pytest.param(lambda i, k, e, k2: "a.b.c", "malformed", id="garbage-three-parts"),
    pytest.param(lambda i, k, e, k2: _truncated(i, k), "signature", id="truncated-signature"),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims()).rsplit(".", 1)[0], "malformed", id="two-parts"
    ),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(pad="x" * 9000)), "too large", id="oversized"),
    pytest.param(lambda i, k, e, k2: _none_token(i, k), "malformed", id="alg-none-unsigned"),
    pytest.param(lambda i, k, e, k2: _none_signed(i, k), "algorithm", id="alg-none"),
    pytest.param(
        lambda i, k, e, k2: _hs256_with_public_key(i, k), "algorithm", id="hs256-public-key"
    ),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(), alg="RS512"), "algorithm", id="alg-not-allowed"
    ),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(), alg="ES256"), "signature", id="es256-with-rsa-key"
    ),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(), kid=None), "no kid", id="no-kid"),
    pytest.param(
        lambda i, k, e, k2: k2.sign(i.claims(), kid="nope"), "not known", id="unknown-kid"
    ),
    pytest.param(
        lambda i, k, e, k2: k2.sign(i.claims(), kid=k.kid, jku="{url}/evil", x5c=["MIIB"]),
        "signature",
        id="forged-with-jku",
    ),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(), crit=["exp"]), "critical", id="crit"),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(iss=i.url + "/")), "issuer", id="wrong-iss"),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(iss=None)), "issuer", id="no-iss"),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(aud="api://x")), "audience", id="wrong-aud"),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(aud=None, client_id="x")),
        "audience",
        id="wrong-client-id",
    ),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(aud=None)), "audience", id="no-aud"),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(exp=int(time.time()) - 5)), "expired", id="expired"
    ),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(exp=None)), "exp", id="no-exp"),
    pytest.param(lambda i, k, e, k2: k.sign(i.claims(exp="soon")), "exp", id="exp-not-number"),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(nbf=int(time.time()) + 60)), "not valid yet", id="nbf"
    ),
    pytest.param(
        lambda i, k, e, k2: k.sign(i.claims(iat=int(time.time()) + 60)), "future", id="iat"
    ),
]


@pytest.mark.parametrize(("make", "description"), BAD_CASES)
def test_bad_tokens_are_401_and_never_reach_the_app(
    make_client, issuer, rsa_key, ec_key, rsa_key2, make, description
):
    client = make_client([authorizer(issuer)])
    token = make(issuer, rsa_key, ec_key, rsa_key2).replace("{url}", issuer.url)
    r = client.get("/pets", headers={"Authorization": token})
    assert r.status_code == 401
    assert r.json() == {"message": "Unauthorized"}
    assert 'error="invalid_token"' in www(r)
    assert description in www(r)
    assert r.seen == []
    assert issuer.hits["/evil"] == 0


def test_missing_token_is_401_with_a_bare_challenge(make_client, issuer):
    r = make_client([authorizer(issuer)]).get("/pets")
    assert r.status_code == 401
    assert r.json() == {"message": "Unauthorized"}
    assert www(r) == "Bearer"
    assert r.seen == []


def test_non_ascii_token_is_401(make_client, issuer, rsa_key):
    client = make_client([authorizer(issuer)])
    value = "Bearer " + rsa_key.sign(issuer.claims())[:-3] + "\xe9\xe9\xe9"
    header: Any = value.encode("latin-1") if client.kind == "asgi" else value
    r = client.get("/pets", headers=[("Authorization", header)])
    assert r.status_code == 401
    assert "malformed" in www(r)
    assert r.seen == []


def test_leeway_accepts_a_just_expired_token(make_client, issuer, rsa_key):
    token = rsa_key.sign(issuer.claims(exp=int(time.time()) - 5))
    assert (
        make_client([authorizer(issuer)]).get("/p", headers={"Authorization": token}).status_code
        == 401
    )
    ok = make_client([authorizer(issuer, leeway=30)]).get("/p", headers={"Authorization": token})
    assert ok.status_code == 200


def test_identity_source_in_the_query_string(make_client, issuer, rsa_key):
    client = make_client([authorizer(issuer, identity_source="$request.querystring.token")])
    token = rsa_key.sign(issuer.claims())
    assert client.get(f"/pets?token={token}").status_code == 200
    assert client.get("/pets", headers={"Authorization": token}).status_code == 401


# -- scopes -----------------------------------------------------------------------------------

SCOPES = {"POST /pets": ["pets/write", "pets/admin"], "GET /pets/{id}": ["pets/read"]}


@pytest.mark.parametrize(
    ("method", "path", "claims", "status"),
    [
        pytest.param("GET", "/pets", {}, 200, id="route-without-scopes"),
        pytest.param("POST", "/pets", {"scope": "openid pets/write"}, 200, id="scope-claim"),
        pytest.param("POST", "/pets", {"scp": ["pets/admin"]}, 200, id="scp-list"),
        pytest.param("POST", "/pets", {"scp": "other pets/admin"}, 200, id="scp-string"),
        pytest.param("POST", "/pets", {"scope": "pets/read"}, 403, id="wrong-scope"),
        pytest.param("POST", "/pets", {}, 403, id="no-scope"),
        pytest.param("GET", "/pets/7", {"scope": "pets/read"}, 200, id="templated-route"),
        pytest.param("GET", "/pets/7", {"scope": "pets/write"}, 403, id="templated-route-denied"),
    ],
)
def test_route_scopes(make_client, issuer, rsa_key, method, path, claims, status):
    client = make_client([authorizer(issuer, scopes=SCOPES)])
    token = rsa_key.sign(issuer.claims(**claims))
    r = client.request(method, path, headers={"Authorization": token})
    assert r.status_code == status
    if status == 403:
        assert r.json() == {"message": "Forbidden"}
        assert 'error="insufficient_scope"' in www(r)
        assert r.seen == []


def test_scopes_are_checked_on_every_request_with_a_cached_token(make_client, issuer, rsa_key):
    client = make_client([authorizer(issuer, scopes=SCOPES)])
    token = rsa_key.sign(issuer.claims(scope="pets/read"))
    assert client.get("/pets/1", headers={"Authorization": token}).status_code == 200
    assert client.post("/pets", headers={"Authorization": token}).status_code == 403
    assert client.get("/pets/1", headers={"Authorization": token}).status_code == 200


def test_routes_limit_where_the_authorizer_applies(make_client, issuer):
    client = make_client([authorizer(issuer, routes=["ANY /private/{proxy+}"])])
    assert client.get("/public").status_code == 200
    assert client.get("/private/x").status_code == 401


def test_scopes_respect_the_stage_base_path(make_client, issuer, rsa_key):
    client = make_client([authorizer(issuer, scopes=SCOPES)], stage=Stage("prod", base_path="/v1"))
    token = rsa_key.sign(issuer.claims(scope="pets/read"))
    assert client.post("/v1/pets", headers={"Authorization": token}).status_code == 403
    assert client.get("/v1/pets/3", headers={"Authorization": token}).status_code == 200


# -- the verified-token cache ---------------------------------------------------------------------


def test_a_verified_token_is_not_verified_again(make_client, issuer, rsa_key, monkeypatch):
    calls = []
    real = jwks_module.JwkKey.verify

    def counting(self: Any, *args: Any) -> bool:
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(jwks_module.JwkKey, "verify", counting)
    client = make_client([authorizer(issuer)])
    token = rsa_key.sign(issuer.claims())
    for _ in range(3):
        assert client.get("/pets", headers={"Authorization": token}).status_code == 200
    assert len(calls) == 1
    other = rsa_key.sign(issuer.claims(sub="user-2"))
    assert client.get("/pets", headers={"Authorization": other}).status_code == 200
    assert len(calls) == 2


def test_a_cached_token_stops_working_when_it_expires(make_client, issuer, rsa_key):
    client = make_client([authorizer(issuer)])
    token = rsa_key.sign(issuer.claims(exp=time.time() + 0.4))
    assert client.get("/pets", headers={"Authorization": token}).status_code == 200
    time.sleep(0.5)
    r = client.get("/pets", headers={"Authorization": token})
    assert r.status_code == 401
    assert "expired" in www(r)


def test_the_cache_is_bounded(make_client, issuer, rsa_key):
    policy = authorizer(issuer, cache_size=8)
    client = make_client([policy])
    for n in range(20):
        token = rsa_key.sign(issuer.claims(sub=f"u{n}"))
        assert client.get("/pets", headers={"Authorization": token}).status_code == 200
    assert len(policy._cache) <= 8


# -- the key set ------------------------------------------------------------------------------


def test_keys_are_found_through_discovery_once(make_client, issuer, rsa_key):
    client = make_client([authorizer(issuer)])
    for n in range(5):
        token = rsa_key.sign(issuer.claims(sub=f"u{n}"))
        assert client.get("/pets", headers={"Authorization": token}).status_code == 200
    assert issuer.hits["/.well-known/openid-configuration"] == 1
    assert issuer.jwks_hits == 1


def test_jwks_uri_skips_discovery(make_client, issuer, ec_key):
    client = make_client([authorizer(issuer, jwks_uri=issuer.url + "/jwks.json")])
    r = client.get("/pets", headers={"Authorization": ec_key.sign(issuer.claims())})
    assert r.status_code == 200
    assert issuer.hits["/.well-known/openid-configuration"] == 0


def test_key_rotation_costs_one_fetch_and_retires_old_tokens(
    make_client, issuer, rsa_key, rsa_key2
):
    issuer.keys = [rsa_key]
    keys = JwksCache(issuer=issuer.url, cooldown=0.2)
    client = make_client([authorizer(issuer, jwks=keys)])
    old = rsa_key.sign(issuer.claims())
    assert client.get("/pets", headers={"Authorization": old}).status_code == 200
    assert issuer.jwks_hits == 1
    issuer.keys = [rsa_key2]  # the issuer rotates: rsa-1 is gone
    time.sleep(0.25)
    new = rsa_key2.sign(issuer.claims())
    assert client.get("/pets", headers={"Authorization": new}).status_code == 200
    assert issuer.jwks_hits == 2
    r = client.get("/pets", headers={"Authorization": old})  # cached, but its kid left the set
    assert r.status_code == 401
    assert "not known" in www(r)
    assert issuer.jwks_hits == 2  # within the cooldown: no new fetch
    assert r.seen == []


def test_a_flood_of_bogus_kids_causes_no_fetch_storm(make_client, issuer, rsa_key, rsa_key2):
    client = make_client([authorizer(issuer)])
    for _ in range(30):
        token = rsa_key2.sign(issuer.claims(), kid=uuid.uuid4().hex)
        assert client.get("/pets", headers={"Authorization": token}).status_code == 401
    assert issuer.jwks_hits == 1
    assert (
        client.get("/p", headers={"Authorization": rsa_key.sign(issuer.claims())}).status_code
        == 200
    )
    assert issuer.jwks_hits == 1


@pytest.mark.parametrize(
    ("mode", "delay"),
    [
        pytest.param("slow", 0.6, id="timeout"),
        pytest.param("500", 0, id="http-500"),
        pytest.param("garbage", 0, id="invalid-json"),
        pytest.param("wrong-type", 0, id="wrong-key-type"),
    ],
)
def test_a_broken_key_set_is_401_not_500(make_client, issuer, rsa_key, mode, delay):
    issuer.mode, issuer.delay = mode, delay
    keys = JwksCache(issuer=issuer.url, timeout=0.2)
    client = make_client([authorizer(issuer, jwks=keys)])
    r = client.get("/pets", headers={"Authorization": rsa_key.sign(issuer.claims())})
    assert r.status_code == 401
    assert "keys are unavailable" in www(r)
    assert r.seen == []
    assert keys.last_error


def test_discovery_without_a_jwks_uri_is_401(make_client, rsa_key):
    server = Issuer()
    try:
        keys = JwksCache(jwks_uri=server.url + "/nowhere.json")
        client = make_client([authorizer(server, jwks=keys)])
        r = client.get("/pets", headers={"Authorization": rsa_key.sign(server.claims())})
        assert r.status_code == 401
        assert "HTTP 404" in str(keys.last_error)
    finally:
        server.close()


def test_last_good_keys_keep_serving_while_the_issuer_is_down(make_client, issuer, rsa_key):
    keys = JwksCache(issuer=issuer.url, max_age=0, cooldown=0)
    client = make_client([authorizer(issuer, jwks=keys)])
    assert (
        client.get("/p", headers={"Authorization": rsa_key.sign(issuer.claims())}).status_code
        == 200
    )
    issuer.mode = "500"
    fresh = rsa_key.sign(issuer.claims(sub="other"))
    assert client.get("/p", headers={"Authorization": fresh}).status_code == 200
    assert issuer.jwks_hits >= 2
    assert keys.last_error is not None
    assert "500" in keys.last_error


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [
        pytest.param(None, 3600, id="default-hour"),
        pytest.param("public, max-age=120", 120, id="max-age"),
        pytest.param("max-age=86400", 3600, id="capped-at-an-hour"),
        pytest.param("no-store", 10, id="no-store-floor-is-the-cooldown"),
    ],
)
def test_cache_control_is_honoured(issuer, cache_control, expected):
    issuer.cache_control = cache_control
    keys = JwksCache(issuer=issuer.url)
    assert keys.warm_up()
    ttl = keys.expires_at - time.monotonic()
    assert expected - 2 < ttl <= expected


def test_warm_up_fetches_when_the_middleware_is_built(issuer):
    gateway_client("wsgi", [authorizer(issuer, warm_up=True)])
    assert issuer.jwks_hits == 1


def test_concurrent_requests_share_one_fetch_under_asyncio(issuer, rsa_key):
    issuer.delay = 0.2

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = GatewayMiddleware(app, policies=[authorizer(issuer)])

    async def call(token: str) -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/pets",
            "headers": [(b"authorization", token.encode())],
            "query_string": b"",
            "client": ("127.0.0.1", 1),
        }
        await mw(scope, receive, send)
        return status

    async def main() -> list[int]:
        tokens = [rsa_key.sign(issuer.claims(sub=f"u{n}")) for n in range(20)]
        return await asyncio.gather(*(call(t) for t in tokens))

    statuses = asyncio.run(main())
    assert statuses == [200] * 20
    assert issuer.jwks_hits == 1


def test_concurrent_requests_share_one_fetch_in_threads(issuer, rsa_key):
    issuer.delay = 0.2
    client_policy = authorizer(issuer)
    clients = [gateway_client("wsgi", [client_policy]) for _ in range(8)]
    # One policy object, bound by each middleware: the key set is shared.
    barrier = threading.Barrier(8)

    def go(n: int) -> int:
        barrier.wait()
        token = rsa_key.sign(issuer.claims(sub=f"u{n}"))
        return clients[n].get("/pets", headers={"Authorization": token}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(go, range(8)))
    assert statuses == [200] * 8
    assert issuer.jwks_hits == 1


def test_the_event_loop_is_not_blocked_while_fetching(issuer, rsa_key):
    issuer.delay = 0.3
    ticks = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = GatewayMiddleware(app, policies=[authorizer(issuer)])

    async def ticker() -> None:
        for _ in range(10):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def request() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            return None

        token = rsa_key.sign(issuer.claims()).encode()
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "headers": [(b"authorization", token)],
        }
        await mw(scope, receive, send)

    async def main() -> None:
        await asyncio.gather(ticker(), request())

    asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.15


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"audience": []}, "audience", id="no-audience"),
        pytest.param({"audience": [""]}, "audience", id="empty-audience"),
        pytest.param({"algorithms": ["HS256"]}, "algorithms", id="hmac"),
        pytest.param({"algorithms": ["none"]}, "algorithms", id="none"),
        pytest.param({"algorithms": []}, "algorithms", id="no-algorithms"),
        pytest.param({"identity_source": "header.Authorization"}, "identity_source", id="source"),
        pytest.param({"scopes": {"GET pets": ["a"]}}, "scopes['GET pets']", id="bad-route"),
        pytest.param({"scopes": {"GET /pets": "pets/read"}}, "scopes['GET /pets']", id="str"),
        pytest.param({"leeway": -1}, "leeway", id="negative-leeway"),
        pytest.param({"cache_size": -1}, "cache_size", id="cache-size"),
        pytest.param({"jwks_uri": "ftp://x/jwks"}, "jwks_uri", id="jwks-uri-scheme"),
        pytest.param({"issuer": ""}, "issuer", id="empty-issuer"),
        pytest.param({"issuer": "not a url"}, "issuer", id="issuer-not-url-for-discovery"),
    ],
)
def test_configuration_errors_name_the_field(kwargs, field):
    options: dict[str, Any] = {"issuer": "https://id.example.com", "audience": ["a"], **kwargs}
    with pytest.raises(ConfigurationError) as info:
        JwtAuthorizer(**options)
    assert info.value.field == field


def test_local_issuer_mints_tokens_its_authorizer_accepts(make_client):
    local = LocalIssuer()
    client = make_client([local.authorizer(audience="demo", scopes={"POST /pets": ["pets/write"]})])
    assert (
        client.get("/pets", headers={"Authorization": "Bearer " + local.token()}).status_code == 200
    )
    assert client.post("/pets", headers={"Authorization": local.token()}).status_code == 403
    writer = local.token(scope="pets/write")
    assert client.post("/pets", headers={"Authorization": writer}).status_code == 200


def test_fastapi_app_reads_the_claims(issuer, rsa_key):
    app = FastAPI()

    @app.get("/me")
    def me(request: FastAPIRequest) -> dict[str, Any]:
        auth = get_context(request).authorizer
        return {"sub": auth["claims"]["sub"], "scopes": auth["jwt"]["scopes"]}

    app.add_middleware(GatewayMiddleware, policies=[authorizer(issuer)])
    token = rsa_key.sign(issuer.claims(scope="a b"))

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
            return ok, await client.get("/me")

    ok, missing = asyncio.run(main())
    assert ok.status_code == 200
    assert ok.json() == {"sub": "user-1", "scopes": ["a", "b"]}
    assert missing.status_code == 401


def test_warm_up_inside_a_running_loop_does_not_block_it(issuer):
    issuer.delay = 0.3

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def main() -> float:
        started = time.monotonic()
        policy = authorizer(issuer, warm_up=True)
        GatewayMiddleware(app, policies=[policy])
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)
        assert policy.jwks.keys
        return elapsed

    assert asyncio.run(main()) < 0.2
    assert issuer.jwks_hits == 1
