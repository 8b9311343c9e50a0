"""The in-memory store: exact under threads, bounded in size."""

from __future__ import annotations

import threading

from apigw_mw import MemoryStore, Throttle, TokenBucket, WSGIGatewayMiddleware
from apigw_mw.traffic.storage import Level

from .conftest import FakeClock
from .test_redis import _call, _ok


def test_threads_share_one_bucket_exactly(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    app = WSGIGatewayMiddleware(
        _ok, policies=[Throttle(TokenBucket(rate=1, burst=37), key="stage", storage=store)]
    )
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = [_call(app) for _ in range(50)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 37  # the clock stood still: exactly the burst
    assert results.count(429) == 8 * 50 - 37


def test_full_buckets_are_forgotten(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    app = WSGIGatewayMiddleware(
        _ok, policies=[Throttle(TokenBucket(rate=10, burst=5), key="source_ip", storage=store)]
    )
    for i in range(1000):
        assert _call(app, f"10.0.{i // 250}.{i % 250}") == 200
    assert len(store) == 1000
    clock.advance(0.2)  # every bucket has refilled its one token: full again
    for i in range(10):
        assert _call(app, f"10.1.0.{i}") == 200
    # A few full buckets go with each decision; none of them could change an answer.
    assert len(store) < 1000
    for _ in range(400):
        _call(app, "10.2.0.1")
    assert len(store) == 11  # the draining ones stay: 10.1.0.0-9 and 10.2.0.1


def test_hard_cap_on_draining_buckets(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_buckets=100)
    for i in range(1000):
        _, admitted, _, _ = store.check_sync([Level(f"k{i}", 0.001, 1, "t")], [])
        assert admitted
    assert len(store) <= 101


def test_same_bucket_twice_in_one_batch_counts_twice(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    level = Level("same", 1.0, 3, "t")
    assert store.check_sync([level, level], [])[1] is True
    assert store.check_sync([level, level], [])[1] is False  # one token left, two asked
    assert store.check_sync([level], [])[1] is True
