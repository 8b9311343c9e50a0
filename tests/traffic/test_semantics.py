"""Token buckets, levels and quotas: one table, both adapters, memory and real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    Quota,
    RouteTable,
    Throttle,
    TokenBucket,
    UsagePlan,
)

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
BOB = "Zb7Qm2Lp9Xv4Nc6Rt1Ws8Ky3Hd5Jf0Gk"
A = {"x-api-key": ALICE}
B = {"x-api-key": BOB}

# A step: (seconds to advance first, "METHOD /path", headers, client ip, status, Retry-After)
Step = tuple[float, str, "dict[str, str] | None", str, int, "str | None"]


def keyed(plan: UsagePlan, **kw: Any) -> Callable[[Any], list[Any]]:
    def make(store: Any) -> list[Any]:
        keys = ApiKeys([ApiKey(ALICE, id="k-alice", plan=plan), ApiKey(BOB, id="k-bob", plan=plan)])
        return [ApiKeyAuth(keys, storage=store, **kw)]

    return make


#: A 429 QUOTA_EXCEEDED in a step's status column (a plain 429 is THROTTLED).
QUOTA = -429


def ip(n: int) -> str:
    return f"10.0.0.{n}"


CASES = [
    pytest.param(
        lambda s: [Throttle(TokenBucket(rate=1, burst=3), key="stage", storage=s)],
        [
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 429, "1"),
            (0.5, "GET /a", None, ip(1), 429, "1"),
            (0.5, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 429, "1"),
        ],
        id="full-bucket-admits-burst-then-rate",
    ),
    pytest.param(
        lambda s: [Throttle(TokenBucket(rate=0.25, burst=1), key="stage", storage=s)],
        [
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 429, "4"),
            (2.5, "GET /a", None, ip(1), 429, "2"),
            (1.5, "GET /a", None, ip(1), 200, None),
        ],
        id="fractional-rate-retry-after-from-bucket",
    ),
    pytest.param(
        lambda s: [Throttle(TokenBucket(rate=1, burst=1), key="stage", storage=s)],
        [
            (0, "GET /a", None, ip(1), 200, None),
            (3600, "GET /a", None, ip(1), 200, None),
            (0, "GET /b", None, ip(2), 429, "1"),
        ],
        id="bucket-never-exceeds-burst-after-idle",
    ),
    pytest.param(
        lambda s: [
            RouteTable(["GET /a", "GET /b"]),
            Throttle(TokenBucket(rate=1, burst=1), storage=s),
        ],
        [
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /b", None, ip(1), 200, None),
            (0, "GET /a", None, ip(2), 429, "1"),
            (0, "GET /b", None, ip(3), 429, "1"),
        ],
        id="route-key-one-bucket-per-route",
    ),
    pytest.param(
        lambda s: [
            RouteTable(["GET /a", "GET /b"]),
            Throttle(
                TokenBucket(rate=1, burst=1),
                route_limits={"GET /b": TokenBucket(rate=1, burst=3)},
                storage=s,
            ),
        ],
        [
            (0, "GET /b", None, ip(1), 200, None),
            (0, "GET /b", None, ip(1), 200, None),
            (0, "GET /b", None, ip(1), 200, None),
            (0, "GET /b", None, ip(1), 429, "1"),
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 429, "1"),
        ],
        id="route-limit-replaces-default",
    ),
    pytest.param(
        lambda s: [
            Throttle(
                TokenBucket(rate=1, burst=2), key="source_ip", routes=["POST /login"], storage=s
            )
        ],
        [
            (0, "POST /login", None, ip(1), 200, None),
            (0, "POST /login", None, ip(1), 200, None),
            (0, "POST /login", None, ip(1), 429, "1"),
            (0, "POST /login", None, ip(2), 200, None),
            (0, "GET /other", None, ip(1), 200, None),
        ],
        id="per-client-on-its-routes-only",
    ),
    pytest.param(
        lambda s: [
            Throttle(
                TokenBucket(rate=1, burst=1),
                key=lambda r: r.headers.get("x-tenant"),
                storage=s,
            )
        ],
        [
            (0, "GET /a", {"x-tenant": "t1"}, ip(1), 200, None),
            (0, "GET /a", {"x-tenant": "t1"}, ip(2), 429, "1"),
            (0, "GET /a", {"x-tenant": "t2"}, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 200, None),
            (0, "GET /a", None, ip(1), 200, None),
        ],
        id="callable-key-none-skips",
    ),
    pytest.param(
        lambda s: [
            Throttle(TokenBucket(rate=1, burst=3), key="stage", storage=s),
            Throttle(TokenBucket(rate=1, burst=1), key="source_ip", storage=s),
        ],
        [
            (0, "GET /a", None, ip(1), 200, None),
            # ip(1) refused at its own level: the stage bucket keeps its two tokens.
            (0, "GET /a", None, ip(1), 429, "1"),
            (0, "GET /a", None, ip(1), 429, "1"),
            (0, "GET /a", None, ip(2), 200, None),
            (0, "GET /a", None, ip(3), 200, None),
            (0, "GET /a", None, ip(4), 429, "1"),
        ],
        id="refused-request-consumes-no-other-level",
    ),
    pytest.param(
        keyed(UsagePlan("p", throttle=TokenBucket(rate=1, burst=2), quota=Quota(100))),
        [
            (0, "GET /a", A, ip(1), 200, None),
            (0, "GET /a", A, ip(1), 200, None),
            (0, "GET /a", A, ip(1), 429, "1"),
            (0, "GET /a", B, ip(1), 200, None),
        ],
        id="plan-throttle-per-key",
    ),
    pytest.param(
        keyed(UsagePlan("p", quota=Quota(2, period="DAY"))),
        [
            (0, "GET /a", A, ip(1), 200, None),
            (0, "GET /a", A, ip(1), 200, None),
            # 12:00 UTC: the day's quota returns at midnight, 12 hours on.
            (0, "GET /a", A, ip(1), QUOTA, "43200"),
            (0, "GET /a", B, ip(1), 200, None),
            (43199, "GET /a", A, ip(1), QUOTA, "1"),
            (1, "GET /a", A, ip(1), 200, None),
        ],
        id="quota-per-utc-day",
    ),
    pytest.param(
        keyed(UsagePlan("p", throttle=TokenBucket(rate=1, burst=1), quota=Quota(2))),
        [
            (0, "GET /a", A, ip(1), 200, None),
            (0, "GET /a", A, ip(1), 429, "1"),
            (0, "GET /a", A, ip(1), 429, "1"),
            (1, "GET /a", A, ip(1), 200, None),
            (1, "GET /a", A, ip(1), QUOTA, "43198"),
        ],
        id="throttled-request-uses-no-quota",
    ),
    pytest.param(
        keyed(
            UsagePlan(
                "p",
                throttle=TokenBucket(rate=1, burst=5),
                route_limits={"POST /orders": TokenBucket(rate=1, burst=1)},
            ),
            routes=["GET /pets", "POST /orders"],
        ),
        [
            (0, "POST /orders", A, ip(1), 200, None),
            (0, "POST /orders", A, ip(1), 429, "1"),
            (0, "GET /pets", A, ip(1), 200, None),
            (0, "POST /orders", B, ip(1), 200, None),
        ],
        id="plan-route-limit-per-key",
    ),
    pytest.param(
        lambda s: [
            Throttle(TokenBucket(rate=1, burst=1), key="api_key", storage=s),
            ApiKeyAuth(ApiKeys([ApiKey(ALICE), ApiKey(BOB)]), storage=s),
        ],
        [
            (0, "GET /a", A, ip(1), 200, None),
            (0, "GET /a", A, ip(2), 429, "1"),
            (0, "GET /a", B, ip(1), 200, None),
        ],
        id="api-key-throttle-listed-before-key-check",
    ),
    pytest.param(
        lambda s: [
            Throttle(TokenBucket(rate=1, burst=1), key="stage", storage=s),
            ApiKeyAuth(
                ApiKeys([ApiKey(ALICE, plan=UsagePlan("p", quota=Quota(5)))]),
                storage=s,
            ),
        ],
        [
            (0, "GET /a", {"x-api-key": "x" * 19}, ip(1), 403, None),
            # The key check comes after the throttle: a bad key still spent a stage token.
            (0, "GET /a", A, ip(1), 429, "1"),
            (1, "GET /a", A, ip(1), 200, None),
        ],
        id="throttle-phase-runs-before-key-phase",
    ),
]


@pytest.mark.parametrize(("policies", "steps"), CASES)
def test_semantics(make_client, store, clock, policies, steps: list[Step]) -> None:
    client = make_client(policies(store))
    for i, (advance, route, headers, client_ip, status, retry_after) in enumerate(steps):
        clock.advance(advance)
        method, path = route.split(" ")
        r = client.request(method, path, headers=headers, client_ip=client_ip)
        where = f"step {i}: {route} from {client_ip}"
        quota = status == QUOTA
        assert r.status_code == (429 if quota else status), where
        assert r.headers.get("retry-after") == retry_after, where
        if status == 200:
            assert len(r.seen) == 1, where
        else:
            assert r.seen == [], where
        if quota:
            assert r.json() == {"message": "Limit Exceeded"}, where
            assert r.headers["x-amzn-errortype"] == "LimitExceededException", where
        elif status == 429:
            assert r.json() == {"message": "Too Many Requests"}, where
            assert r.headers["x-amzn-errortype"] == "TooManyRequestsException", where


def test_quota_header_values_and_admin(make_client, store, clock) -> None:
    from apigw_mw import UsageAdmin

    plan = UsagePlan("gold", throttle=TokenBucket(rate=2, burst=4), quota=Quota(3))
    alice = ApiKey(ALICE, id="k-alice", plan=plan)
    client = make_client([ApiKeyAuth(ApiKeys([alice]), storage=store, headers=True)])
    r = client.get("/a", headers=A)
    assert r.status_code == 200
    assert r.headers["ratelimit-policy"] == '"plan-gold";q=4;w=2, "quota-gold";q=3;w=86400'
    assert r.headers["ratelimit"] == '"plan-gold";r=3;t=1, "quota-gold";r=2;t=43200'
    assert r.json()["context"]["apiKeyId"] == "k-alice"
    assert r.seen[0].context.extra["usagePlan"] == "gold"
    admin = UsageAdmin(store)
    assert admin.remaining(alice) == 2
    assert admin.used(alice) == 1
    client.get("/a", headers=A)
    client.get("/a", headers=A)
    r = client.get("/a", headers=A)
    assert r.status_code == 429
    assert r.json() == {"message": "Limit Exceeded"}
    assert admin.remaining(alice) == 0
    admin.reset(alice)
    assert admin.remaining(alice) == 3
    clock.advance(10)
    assert client.get("/a", headers=A).status_code == 200


def test_headers_on_throttle(make_client, store, clock) -> None:
    client = make_client(
        [
            Throttle(
                TokenBucket(rate=0.5, burst=2), key="stage", storage=store, headers=True, name="api"
            )
        ]
    )
    first = client.get("/a")
    assert first.headers["ratelimit-policy"] == '"api";q=2;w=4'
    assert first.headers["ratelimit"] == '"api";r=1;t=2'
    client.get("/a")
    refused = client.get("/a")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["ratelimit"] == '"api";r=0;t=4'


def test_no_headers_unless_asked(make_client, store) -> None:
    client = make_client([Throttle(TokenBucket(rate=1, burst=1), key="stage", storage=store)])
    assert "ratelimit" not in client.get("/a").headers
    refused = client.get("/a")
    assert "ratelimit" not in refused.headers
    assert refused.headers["retry-after"] == "1"
