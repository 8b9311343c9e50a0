"""The ``limits`` window strategies on Throttle: both adapters, memory and real Redis."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    ConfigurationError,
    MemoryStore,
    RedisStore,
    RouteTable,
    Throttle,
    TokenBucket,
)
from apigw_mw.traffic import Store

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
BOB = "Zb7Qm2Lp9Xv4Nc6Rt1Ws8Ky3Hd5Jf0Gk"
WINDOWS = ["fixed-window", "moving-window", "sliding-window-counter"]
#: Three requests an hour: no test run crosses a window's end by chance.
PER_HOUR = TokenBucket(rate=3 / 3600, burst=3)


@pytest.fixture(params=["memory", "redis"])
def window_store(request: pytest.FixtureRequest) -> Store:
    """A fresh store of each kind (window strategies keep ``limits``' own clock)."""
    if request.param == "memory":
        return MemoryStore()
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return RedisStore(url, prefix=prefix)


# A step: ("METHOD /path", headers, client ip, status)
CASES = [
    pytest.param(
        lambda s, w: [Throttle(PER_HOUR, key="stage", strategy=w, storage=s)],
        [
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /b", None, "10.0.0.2", 200),
            ("GET /a", None, "10.0.0.3", 200),
            ("GET /a", None, "10.0.0.1", 429),
            ("GET /b", None, "10.0.0.4", 429),
        ],
        id="burst-per-window-then-refused",
    ),
    pytest.param(
        lambda s, w: [Throttle(PER_HOUR, key="source_ip", strategy=w, storage=s)],
        [
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 429),
            ("GET /a", None, "10.0.0.2", 200),
        ],
        id="one-window-per-client",
    ),
    pytest.param(
        lambda s, w: [
            RouteTable(["GET /a", "GET /b"]),
            Throttle(
                PER_HOUR,
                strategy=w,
                storage=s,
                route_limits={"GET /b": TokenBucket(rate=1 / 3600, burst=1)},
            ),
        ],
        [
            ("GET /b", None, "10.0.0.1", 200),
            ("GET /b", None, "10.0.0.1", 429),
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 429),
        ],
        id="route-limit-replaces-default",
    ),
    pytest.param(
        lambda s, w: [
            Throttle(TokenBucket(rate=1 / 3600, burst=1), key="api_key", strategy=w, storage=s),
            ApiKeyAuth(ApiKeys([ApiKey(ALICE), ApiKey(BOB)]), storage=s),
        ],
        [
            ("GET /a", {"x-api-key": ALICE}, "10.0.0.1", 200),
            ("GET /a", {"x-api-key": ALICE}, "10.0.0.2", 429),
            ("GET /a", {"x-api-key": BOB}, "10.0.0.1", 200),
            ("GET /a", {"x-api-key": "x" * 19}, "10.0.0.1", 403),
        ],
        id="per-api-key-listed-before-the-key-check",
    ),
    pytest.param(
        lambda s, w: [
            Throttle(
                PER_HOUR,
                key=lambda r: r.headers.get("x-tenant"),
                strategy=w,
                storage=s,
            )
        ],
        [
            ("GET /a", {"x-tenant": "t1"}, "10.0.0.1", 200),
            ("GET /a", {"x-tenant": "t1"}, "10.0.0.1", 200),
            ("GET /a", {"x-tenant": "t1"}, "10.0.0.1", 200),
            ("GET /a", {"x-tenant": "t1"}, "10.0.0.1", 429),
            ("GET /a", {"x-tenant": "t2"}, "10.0.0.1", 200),
            ("GET /a", None, "10.0.0.1", 200),
        ],
        id="callable-key-none-skips",
    ),
]


@pytest.mark.parametrize("strategy", WINDOWS)
@pytest.mark.parametrize(("policies", "steps"), CASES)
def test_window_strategies(make_client, window_store, strategy, policies, steps) -> None:
    client = make_client(policies(window_store, strategy))
    for i, (route, headers, client_ip, status) in enumerate(steps):
        method, path = route.split(" ")
        r = client.request(method, path, headers=headers, client_ip=client_ip)
        where = f"step {i}: {route} from {client_ip}"
        assert r.status_code == status, where
        if status == 200:
            assert len(r.seen) == 1, where
            assert "retry-after" not in r.headers, where
            continue
        assert r.seen == [], where
        if status == 429:
            assert r.json() == {"message": "Too Many Requests"}, where
            assert r.headers["x-amzn-errortype"] == "TooManyRequestsException", where
            assert 1 <= int(r.headers["retry-after"]) <= 3600, where


@pytest.mark.parametrize("strategy", WINDOWS)
def test_window_headers(make_client, window_store, strategy) -> None:
    client = make_client(
        [Throttle(PER_HOUR, key="stage", strategy=strategy, storage=window_store, headers=True)]
    )
    first = client.get("/a")
    assert first.headers["ratelimit-policy"] == '"stage";q=3;w=3600'
    assert first.headers["ratelimit"].startswith('"stage";r=2;t=')
    client.get("/a")
    client.get("/a")
    refused = client.get("/a")
    assert refused.status_code == 429
    assert refused.headers["ratelimit"] == (f'"stage";r=0;t={refused.headers["retry-after"]}')


def test_window_and_bucket_policies_share_a_store(make_client, window_store) -> None:
    # The token bucket keeps its own bucket; the window counts on its own.
    client = make_client(
        [
            Throttle(TokenBucket(rate=0.001, burst=2), key="stage", storage=window_store),
            Throttle(PER_HOUR, key="source_ip", strategy="fixed-window", storage=window_store),
        ]
    )
    assert [client.get("/a", client_ip="10.0.0.1").status_code for _ in range(2)] == [200, 200]
    assert client.get("/a", client_ip="10.0.0.2").status_code == 429


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("mode", "status"), [("allow", 200), ("deny", 500)])
def test_window_storage_outage_follows_on_storage_error(make_client, mode, status) -> None:
    store = RedisStore(f"redis://127.0.0.1:{_free_port()}/0", retry_interval=5, timeout=0.2)
    client = make_client(
        [
            Throttle(
                PER_HOUR,
                strategy="moving-window",
                storage=store,
                on_storage_error=mode,
            )
        ]
    )
    results = [client.get("/a") for _ in range(3)]
    assert [r.status_code for r in results] == [status] * 3
    assert [len(r.seen) for r in results] == [1 if mode == "allow" else 0] * 3
    assert store.errors == 3


class _OwnStore(Store):
    pass


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(
            lambda: Throttle(PER_HOUR, strategy="leaky-bucket"),
            "Throttle.strategy",
            id="unknown-strategy",
        ),
        pytest.param(
            lambda: Throttle(TokenBucket(rate=2, burst=1), strategy="fixed-window"),
            "Throttle.bucket",
            id="half-second-window",
        ),
        pytest.param(
            lambda: Throttle(TokenBucket(rate=3, burst=2), strategy="moving-window"),
            "Throttle.bucket",
            id="fractional-window",
        ),
        pytest.param(
            lambda: Throttle(
                PER_HOUR,
                strategy="fixed-window",
                route_limits={"GET /b": TokenBucket(rate=10, burst=1)},
            ),
            "Throttle.route_limits.GET /b",
            id="route-limit-window",
        ),
    ],
)
def test_strategy_configuration_errors(build: Any, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert info.value.field == field


@pytest.mark.parametrize(
    ("storage", "field"),
    [
        pytest.param("memcached://127.0.0.1:11211", "Throttle.strategy", id="memcached"),
        pytest.param("mongodb://127.0.0.1:27017", "Throttle.storage", id="mongodb"),
        pytest.param(_OwnStore(), "Throttle.strategy", id="own-store"),
    ],
)
def test_window_storage_refused(make_client, storage, field) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_client([Throttle(PER_HOUR, strategy="fixed-window", storage=storage)])
    assert info.value.field == field
