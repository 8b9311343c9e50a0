"""Checks that every Redis deployment (one server, Cluster, Sentinel) must pass: one script
per phase, and limits and quotas shared by separate gateways."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    Quota,
    RedisStore,
    Throttle,
    TokenBucket,
    UsageAdmin,
    UsagePlan,
)

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


# -- servers the tests start ------------------------------------------------------------------


def wait_until(ready: Callable[[], object], what: str) -> None:
    """Poll ``ready`` (Redis errors count as not yet) for up to 20 s."""
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test {what} did not come up")
        time.sleep(0.05)


def stop_servers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the servers, killing any that has not exited 10 s later."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def command_calls(node: Any, *commands: str) -> int:
    """How many times the server behind client ``node`` has run these commands so far."""
    stats = node.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in commands)


def new_prefix() -> str:
    """A key prefix of one test's own."""
    return f"apigw-mw-test:{uuid.uuid4().hex[:12]}:"


def store_maker(url: str, prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """For a fixture: makes stores on ``url`` (or another URI) under ``prefix``, and closes
    them when the test is done."""
    made: list[RedisStore] = []

    def make(uri: str = url, **options: Any) -> RedisStore:
        store = RedisStore(uri, prefix=prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def every_level(store: RedisStore) -> list[Any]:
    """A route, a client and a key throttle, and a key whose plan has a throttle, a route
    limit and a quota: two phases of three levels each."""
    plan = UsagePlan(
        "basic",
        throttle=TokenBucket(rate=1, burst=100),
        quota=Quota(1000),
        route_limits={"GET /pets": TokenBucket(rate=1, burst=50)},
    )
    return [
        Throttle(TokenBucket(rate=1, burst=100), storage=store),
        Throttle(TokenBucket(rate=1, burst=100), key="source_ip", storage=store),
        Throttle(TokenBucket(rate=1, burst=100), key="api_key", storage=store),
        ApiKeyAuth(ApiKeys([ApiKey(ALICE, plan=plan)]), storage=store, routes=["GET /pets"]),
    ]


def scripts_for_three_requests(client: Any, scripts_run: Callable[[], int]) -> int:
    """Scripts run (as ``scripts_run`` counts them) for three admitted keyed requests."""
    assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 200  # warm up
    before = scripts_run()
    for _ in range(3):
        assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 200
    return scripts_run() - before


def check_limits_hold_across_gateways(
    make_client: Callable[..., Any], make_store: Callable[[], RedisStore]
) -> None:
    """Two gateways with stores of their own (two processes, two hosts) share a quota, and
    ``UsageAdmin`` reads and resets it."""
    plan = UsagePlan("tight", quota=Quota(3), route_limits={"GET /pets": TokenBucket(0.01, 5)})
    keys = ApiKeys([ApiKey(ALICE, id="k-alice", plan=plan)])
    first, second = (
        make_client([ApiKeyAuth(keys, storage=make_store(), routes=["GET /pets"])])
        for _ in range(2)
    )
    alice = {"x-api-key": ALICE}
    statuses = [c.get("/pets", headers=alice).status_code for c in (first, second, first)]
    assert statuses == [200, 200, 200]
    r = second.get("/pets", headers=alice)
    assert r.status_code == 429
    assert r.json() == {"message": "Limit Exceeded"}
    assert r.seen == []

    admin = UsageAdmin(make_store())
    alice_key = keys.get("k-alice")
    assert alice_key is not None
    assert admin.used(alice_key) == 3
    admin.reset(alice_key)
    assert admin.used(alice_key) == 0
    assert first.get("/pets", headers=alice).status_code == 200
    assert second.get("/pets", headers=alice).status_code == 200
