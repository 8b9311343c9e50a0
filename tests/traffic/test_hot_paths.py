"""The traffic policies' kept work: storage keys, reused effects, and the memory store's
short paths agreeing with its general one."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    MemoryStore,
    Quota,
    RouteTable,
    Throttle,
    TokenBucket,
    UsagePlan,
    WSGIGatewayMiddleware,
)
from apigw_mw.responses import Deny
from apigw_mw.traffic import bucket
from apigw_mw.traffic.storage import BucketSpec, Hits, Level, QuotaLevel, single_hit

from .conftest import FakeClock
from .test_redis import _ok

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
B = TokenBucket(rate=1, burst=5)


class _Owner:
    deny_on_error = False
    headers = False
    header_slot = "slot"


def test_storage_keys_are_those_of_earlier_releases(make_client, clock: FakeClock) -> None:
    # Redis keeps counters under these names across deployments: renaming one would hand
    # every client a fresh bucket.
    store = MemoryStore(clock=clock)
    plan = UsagePlan("gold", throttle=B, quota=Quota(10), route_limits={"POST /orders": B})
    keys = ApiKeys([ApiKey(ALICE, id="k-alice", plan=plan)])
    client = make_client(
        [
            RouteTable(["GET /a", "POST /orders"]),
            Throttle(B, key="stage", storage=store),
            Throttle(B, storage=store),
            Throttle(B, key="source_ip", storage=store),
            Throttle(B, key=lambda r: "tenant", storage=store, name="tenants"),
            Throttle(B, route_limits={"GET /a": B}, storage=store, name="rl"),
            Throttle(B, key="api_key", storage=store),
            ApiKeyAuth(keys, storage=store),
        ]
    )
    a = {"x-api-key": ALICE}
    for method, path in (("GET", "/a"), ("POST", "/orders"), ("GET", "/zzz")):
        assert client.request(method, path, headers=a, client_ip="10.0.0.1").status_code == 200
    assert set(store._buckets) == {
        "{s:$default}:t:stage:",
        "{s:$default}:t:route:GET /a",
        "{s:$default}:t:route:POST /orders",
        "{s:$default}:t:route:$default",
        "{s:$default}:t:source_ip:|10.0.0.1",
        "{s:$default}:t:tenants:|tenant",
        "{s:$default}:t:rl:GET /a",
        "{s:$default}:t:rl:POST /orders",
        "{s:$default}:t:rl:$default",
        "{k:k-alice}:t:api_key:|k-alice",
        "{k:k-alice}:p:gold",
        "{k:k-alice}:r:gold:POST /orders",
    }
    assert set(store._quotas) == {"{k:k-alice}:q:gold"}
    assert store._quotas["{k:k-alice}:q:gold"][1] == 3


def test_single_hit_is_the_general_constructor() -> None:
    store = MemoryStore()
    spec = BucketSpec(2.0, 3, "n")
    for headers in (False, True):

        class Owner(_Owner):
            pass

        Owner.headers = headers
        fast = single_hit(store, "k", spec, Owner)
        slow = Hits(store, (Level.of("k", spec),), (), Owner, None)
        for slot in Hits.__slots__:
            mine, theirs = getattr(fast, slot), getattr(slow, slot)
            if slot == "levels":
                assert [(lv.key, lv.spec, lv.interval, lv.cap) for lv in mine] == [
                    (lv.key, lv.spec, lv.interval, lv.cap) for lv in theirs
                ]
            elif slot == "one":
                assert (mine is None) == (theirs is None)
                assert mine is None or mine is fast.levels[0]
            else:
                assert mine == theirs, slot


def _verdict(outcome: Deny | None) -> tuple[str, str | None] | None:
    if outcome is None:
        return None
    return outcome.response_type, outcome.headers.get("Retry-After")


@pytest.mark.parametrize("cap", [2_000_000, 3], ids=["uncapped", "capped"])
@pytest.mark.parametrize("seed", range(6))
def test_short_paths_decide_as_the_general_path(seed: int, cap: int) -> None:
    """The memory store's kept effects (one bucket; up to two buckets and a quota) against
    the same effects built per request, which take the general path: same answers, same
    state (buckets in least-recently-used order), on a random walk of the clock, with and
    without the hard cap in play."""
    rng = random.Random(seed)
    clock = FakeClock()
    fast = MemoryStore(clock=clock, max_buckets=cap)
    slow = MemoryStore(clock=clock, max_buckets=cap)
    shapes: list[tuple[list[Level], list[QuotaLevel]]] = []
    for _ in range(8):
        levels = [
            Level(f"b{rng.randrange(4)}", rng.choice([0.5, 1.0, 3.0]), rng.randint(1, 4), "n")
            for _ in range(rng.randint(0, 2))
        ]
        quotas = [
            QuotaLevel(f"q{rng.randrange(2)}", rng.randint(1, 6), rng.randrange(3), 0, "q")
            for _ in range(rng.randint(0 if levels else 1, 1))
        ]
        shapes.append((levels, quotas))
    kept = [Hits(fast, levels, quotas, _Owner, None) for levels, quotas in shapes]
    for step in range(600):
        clock.advance(rng.choice([0.0, 0.0, 0.1, 0.4, 1.0, 3600.0 if step % 97 == 0 else 0.2]))
        i = rng.randrange(len(shapes))
        levels, quotas = shapes[i]
        mine = fast.run_many_sync([kept[i]])[0]
        # A context makes the effect one of this request's: never compiled; without ``one``
        # a single bucket takes the general path too.
        general = Hits(slow, levels, quotas, _Owner, object())
        general.one = None
        theirs = slow.run_many_sync([general])[0]
        assert _verdict(mine) == _verdict(theirs), (seed, step, i)
        assert list(fast._buckets.items()) == list(slow._buckets.items()), (seed, step)
        assert fast._quotas == slow._quotas, (seed, step)


def test_refusal_at_any_level_consumes_nothing(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    roomy, tight = Level("roomy", 1.0, 10, "r"), Level("tight", 1.0, 1, "t")
    quota = QuotaLevel("q", 2, 0, 0, "q")
    both = Hits(store, (roomy, tight), (quota,), _Owner, None)
    assert store.run_many_sync([both]) == [None]
    before = (dict(store._buckets), {k: list(v) for k, v in store._quotas.items()})
    refused = store.run_many_sync([both])[0]
    assert refused is not None
    assert refused.response_type == "THROTTLED"
    assert (dict(store._buckets), store._quotas) == before
    clock.advance(1.0)
    assert store.run_many_sync([both]) == [None]  # the quota's second request
    clock.advance(1.0)
    exhausted = store.run_many_sync([both])[0]
    assert exhausted is not None
    assert exhausted.response_type == "QUOTA_EXCEEDED"
    assert store._buckets["roomy"] == pytest.approx(clock.now - 1.0 + 1.0)  # untouched
    assert store._quotas["q"][1] == 2


def test_threads_share_a_plan_exactly(clock: FakeClock) -> None:
    # The kept plan effect (two buckets and a quota) decided from eight threads at once.
    store = MemoryStore(clock=clock)
    plan = UsagePlan(
        "p",
        throttle=TokenBucket(rate=1, burst=1000),
        quota=Quota(37),
        route_limits={"GET /hammer": TokenBucket(rate=1, burst=1000)},
    )
    app = WSGIGatewayMiddleware(
        _ok, policies=[ApiKeyAuth(ApiKeys([ApiKey(ALICE, plan=plan)]), storage=store)]
    )
    import io

    def call() -> int:
        status: list[int] = []
        env = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/hammer",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_X_API_KEY": ALICE,
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
        }
        for _ in app(env, lambda s, h, e=None: status.append(int(s[:3]))):
            pass
        return status[0]

    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = [call() for _ in range(25)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 37
    assert results.count(429) == 8 * 25 - 37
    assert store._quotas["{k:" + ApiKey(ALICE).id + "}:q:p"][1] == 37


def test_client_effects_kept_are_bounded(
    make_client, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The buckets live in the store: starting the per-client cache afresh changes nothing.
    monkeypatch.setattr(bucket, "_CLIENT_CACHE", 4)
    store = MemoryStore(clock=clock)
    throttle = Throttle(TokenBucket(rate=1, burst=2), key="source_ip", storage=store)
    bound: list[Any] = []
    bind = throttle.bind
    monkeypatch.setattr(throttle, "bind", lambda settings: bound.append(bind(settings)) or bound[0])
    client = make_client([throttle])
    ips = [f"10.0.0.{i}" for i in range(10)]
    for ip in ips * 2:
        assert client.get("/a", client_ip=ip).status_code == 200
    for ip in ips:
        assert client.get("/a", client_ip=ip).status_code == 429
    assert len(bound[0]._by_client) <= 4


def test_a_key_moved_to_another_plan_gets_its_limits(make_client, clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    small = UsagePlan("small", throttle=TokenBucket(rate=1, burst=1))
    large = UsagePlan("large", throttle=TokenBucket(rate=1, burst=3))
    alice = ApiKey(ALICE, id="k-alice", plan=small)
    client = make_client([ApiKeyAuth(ApiKeys([alice]), storage=store)])
    a = {"x-api-key": ALICE}
    assert [client.get("/a", headers=a).status_code for _ in range(2)] == [200, 429]
    alice.plan = large
    assert [client.get("/a", headers=a).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert "{k:k-alice}:p:large" in store._buckets


def test_hard_cap_forgets_the_least_recently_used(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_buckets=10)
    kept = [Hits(store, (Level(f"k{i}", 0.001, 5, "t"),), (), _Owner, None) for i in range(12)]
    for i in range(10):
        assert store.run_many_sync([kept[i]]) == [None]
    assert store.run_many_sync([kept[0]]) == [None]  # k0 used again: k1 is the oldest now
    assert store.run_many_sync([kept[10]]) == [None]
    assert list(store._buckets) == [f"k{i}" for i in (2, 3, 4, 5, 6, 7, 8, 9, 0, 10)]
    assert store.run_many_sync([kept[11]]) == [None]
    assert "k2" not in store._buckets
    assert len(store) == 10
