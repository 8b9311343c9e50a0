from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator

import pytest

from apigw_mw import MemoryStore, RedisStore

# 2024-03-14 12:00:00 UTC, a Thursday.
START = 1_710_417_600.0


class FakeClock:
    """A clock tests move by hand (epoch seconds)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _flush(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"apigw-mw-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    _flush(redis_url, prefix)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> MemoryStore | RedisStore:
    """The same tests against the in-memory store and real Redis, both on the fake clock."""
    if request.param == "memory":
        return MemoryStore(clock=clock)
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return RedisStore(url, prefix=prefix, clock=clock)


def need_binaries(purpose: str, *names: str) -> None:
    """Skip loudly when a server binary the tests start themselves is missing; under CI
    (CI=true) fail instead."""
    missing = [b for b in names if shutil.which(b) is None]
    if not missing:
        return
    message = f"{' and '.join(missing)} not installed: {purpose}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    sys.stderr.write(f"\n*** SKIPPING: {message} ***\n")
    pytest.skip(message)
