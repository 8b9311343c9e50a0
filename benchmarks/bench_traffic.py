"""Traffic: throttles, API keys, plans and quotas, in memory and on Redis.

- the whole traffic stack in memory (budget: it adds at most a quarter of the bare Starlette
  app's cost to the gateway that routes the request and runs a policy that decides nothing);
- the same two phases with flows that yield a no-op effect: what running them costs before
  any traffic work;
- a per-client throttle with a thousand and with a million live buckets (flat cost);
- one phase decided in Redis (one script) against a Redis ``PING`` (budget: 1.5x);
- slowapi and flask-limiter with one limit, beside the gateway with one limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    BasePolicy,
    GatewayMiddleware,
    MemoryStore,
    Phase,
    Quota,
    RedisStore,
    RouteTable,
    Throttle,
    TokenBucket,
    UsagePlan,
    WSGIGatewayMiddleware,
)
from apigw_mw.traffic.storage import Hits, Level, QuotaLevel
from harness import Call, Scenario

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NO_OP = "traffic: gateway, route table + no-op policy"
KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
HUGE = TokenBucket(rate=1e9, burst=10**9)


def starlette_app() -> Any:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/pets", hello), Route("/pets/{pet_id}", hello)])


def traffic_policies(storage: Any) -> list[Any]:
    plan = UsagePlan(
        "bench",
        throttle=HUGE,
        quota=Quota(10**9),
        route_limits={"GET /pets/{petId}": HUGE},
    )
    keys = ApiKeys([ApiKey(KEY, id="k-bench", plan=plan)])
    return [
        RouteTable(["GET /pets/{petId}"]),
        Throttle(HUGE, storage=storage),
        ApiKeyAuth(keys, storage=storage),
    ]


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _spread(n: int) -> Any:
    def call(i: int) -> Call:
        return Call("GET", "/pets/1", client=_ip((i * 7919) % n))

    return call


def _prefilled(n: int) -> MemoryStore:
    """A store holding ``n`` live (draining) per-client buckets of the throttle below."""
    store = MemoryStore()
    far = time.time() + 3600.0
    buckets = store._buckets
    for i in range(n):
        buckets["{s:$default}:t:source_ip:|" + _ip(i)] = far
    return store


PER_CLIENT = TokenBucket(rate=1.0, burst=10**9)


class _NoOp(BasePolicy):
    """Decides nothing: the gateway's cost of routing a request and running one policy."""

    phase = Phase.THROTTLE

    def flow(self, request: Any, context: Any) -> None:
        return None


class _NullBatcher:
    inline = True

    def run_many_sync(self, effects: list[Any]) -> list[Any]:
        return [None] * len(effects)

    async def run_many_async(self, effects: list[Any]) -> list[Any]:
        return [None] * len(effects)


class _NullEffect:
    batcher = _NullBatcher()


_NULL = _NullEffect()


def _null_flow(effect: Any) -> Generator[Any, Any, Any]:
    return (yield effect)


class _NullTraffic(BasePolicy):
    """Yields an effect that is admitted without any work: a phase's effect round trip."""

    def __init__(self, phase: Phase) -> None:
        super().__init__()
        self.phase = phase  # type: ignore[misc]

    def flow(self, request: Any, context: Any) -> Generator[Any, Any, Any]:
        return _null_flow(_NULL)


def null_traffic() -> list[Any]:
    """The traffic stack's shape (a route table, a throttle phase and an API-key phase)
    with flows that do no traffic work."""
    return [
        RouteTable(["GET /pets/{petId}"]),
        _NullTraffic(Phase.THROTTLE),
        _NullTraffic(Phase.API_KEY),
    ]


class _PingApp:
    """A bare ASGI app that makes one Redis round trip (PING) per request."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = await self.store.clients.aclient()
        await client.ping()
        await _ok(send)


def _phase_effect(store: RedisStore) -> Hits:
    """Two buckets and a quota, as one policy's effect: built once, as the policies do."""
    levels = (Level("b:route", 1e9, 10**9, "r"), Level("b:client", 1e9, 10**9, "c"))
    quotas = (QuotaLevel("q:key", 10**9, 0, 0, "q"),)
    return Hits(store, levels, quotas, _Owner, None)


class _PhaseApp:
    """A bare ASGI app that decides one phase in Redis per request: two buckets + a quota."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.effect = _phase_effect(store)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.store.run_many_async([self.effect])
        await _ok(send)


class _Owner:
    deny_on_error = True
    headers = False
    header_slot = ""


async def _ok(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _wsgi_ping(store: RedisStore) -> Any:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        store.clients.sync().ping()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


def _wsgi_phase(store: RedisStore) -> Any:
    effect = _phase_effect(store)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        store.run_many_sync([effect])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


def _redis_scenarios() -> list[Scenario]:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # pragma: no cover - no Redis: skip these
        print(f"bench_traffic: Redis at {REDIS_URL} unreachable ({exc}); skipping Redis rows")
        return []
    store = RedisStore(REDIS_URL, prefix="apigw-mw-bench:")
    bare = starlette_app()
    keyed = [Call("GET", "/pets/1", headers=[(b"x-api-key", KEY.encode())])]
    return [
        Scenario("redis asgi: PING", "asgi", _PingApp(store), group="traffic"),
        Scenario(
            "redis asgi: one phase (2 buckets + quota)",
            "asgi",
            _PhaseApp(store),
            baseline="redis asgi: PING",
            budget=1.5,
            group="traffic",
        ),
        Scenario("redis wsgi: PING", "wsgi", _wsgi_ping(store), group="traffic"),
        Scenario(
            "redis wsgi: one phase (2 buckets + quota)",
            "wsgi",
            _wsgi_phase(store),
            baseline="redis wsgi: PING",
            budget=1.5,
            group="traffic",
        ),
        Scenario(
            "redis asgi: gateway, 2 phases (all levels)",
            "asgi",
            GatewayMiddleware(bare, policies=traffic_policies(store)),
            keyed,
            baseline="traffic: starlette bare app",
            group="traffic",
        ),
    ]


def _slowapi() -> Any:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    limiter = Limiter(key_func=get_remote_address, storage_uri="memory://")

    @limiter.limit("1000000000/second")
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/pets/{pet_id}", hello)])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return app


def _flask(limited: bool) -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/pets/<pet_id>")
    def hello(pet_id: str) -> str:
        return "hello"

    if limited:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        Limiter(
            get_remote_address,
            app=app,
            default_limits=["1000000000/second"],
            storage_uri="memory://",
        )
    return app


def scenarios() -> list[Scenario]:
    bare = starlette_app()
    get = [Call("GET", "/pets/1")]
    keyed = [Call("GET", "/pets/1", headers=[(b"x-api-key", KEY.encode())])]
    memory = MemoryStore()
    out = [
        Scenario("traffic: starlette bare app", "asgi", bare, get, group="traffic"),
        Scenario(
            "traffic: gateway, no policies",
            "asgi",
            GatewayMiddleware(bare),
            keyed,
            baseline="traffic: starlette bare app",
            group="traffic",
        ),
        Scenario(
            NO_OP,
            "asgi",
            GatewayMiddleware(bare, policies=[RouteTable(["GET /pets/{petId}"]), _NoOp()]),
            keyed,
            baseline="traffic: starlette bare app",
            group="traffic",
        ),
        Scenario(
            "traffic: the two phases, no-op effects",
            "asgi",
            GatewayMiddleware(bare, policies=null_traffic()),
            keyed,
            baseline=NO_OP,
            group="traffic",
        ),
        Scenario(
            "traffic: throttle + key + plan + quota (memory)",
            "asgi",
            GatewayMiddleware(bare, policies=traffic_policies(memory)),
            keyed,
            baseline=NO_OP,
            budget=0.25,
            budget_kind="added",
            budget_ref="traffic: starlette bare app",
            group="traffic",
        ),
        Scenario(
            "traffic: per-client throttle, 1e3 live buckets",
            "asgi",
            GatewayMiddleware(
                bare,
                policies=[Throttle(PER_CLIENT, key="source_ip", storage=_prefilled(1_000))],
            ),
            _spread(1_000),
            baseline="traffic: starlette bare app",
            group="traffic",
        ),
        Scenario(
            "traffic: per-client throttle, 1e6 live buckets",
            "asgi",
            GatewayMiddleware(
                bare,
                policies=[Throttle(PER_CLIENT, key="source_ip", storage=_prefilled(1_000_000))],
            ),
            _spread(1_000_000),
            baseline="traffic: per-client throttle, 1e3 live buckets",
            budget=1.15,
            group="traffic",
        ),
        Scenario(
            "traffic: gateway, one Throttle (memory)",
            "asgi",
            GatewayMiddleware(
                bare, policies=[Throttle(PER_CLIENT, key="source_ip", storage=MemoryStore())]
            ),
            get,
            baseline="traffic: starlette bare app",
            group="traffic",
        ),
    ]
    try:
        out.append(
            Scenario(
                "traffic: slowapi, one limit",
                "asgi",
                _slowapi(),
                get,
                baseline="traffic: starlette bare app",
                group="traffic",
            )
        )
    except ImportError as exc:  # pragma: no cover
        print(f"bench_traffic: slowapi not installed ({exc})")
    try:
        flask_bare = _flask(False)
        out += [
            Scenario("traffic: flask bare app", "wsgi", flask_bare, get, group="traffic"),
            Scenario(
                "traffic: flask-limiter, one limit",
                "wsgi",
                _flask(True),
                get,
                baseline="traffic: flask bare app",
                group="traffic",
            ),
            Scenario(
                "traffic: flask + gateway, one Throttle (memory)",
                "wsgi",
                WSGIGatewayMiddleware(
                    flask_bare,
                    policies=[Throttle(PER_CLIENT, key="source_ip", storage=MemoryStore())],
                ),
                get,
                baseline="traffic: flask bare app",
                group="traffic",
            ),
        ]
    except ImportError as exc:  # pragma: no cover
        print(f"bench_traffic: flask-limiter not installed ({exc})")
    return out + _redis_scenarios()
