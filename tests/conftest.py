from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import ADAPTERS, GatewayClient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once through the ASGI and once through the WSGI adapter."""
    return str(request.param)


@pytest.fixture
def make_client(adapter: str):  # type: ignore[no-untyped-def]
    def make(policies=(), **options):  # type: ignore[no-untyped-def]
        return GatewayClient(adapter, policies, **options)

    return make


def _redis_reachable(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return "the redis package is not installed"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis (REDIS_URL, default 127.0.0.1:6379).

    Unreachable Redis skips the test loudly; under CI (CI=true) it fails the test instead.
    """
    problem = _redis_reachable(REDIS_URL)
    if problem is not None:
        message = f"Redis at {REDIS_URL} is unreachable ({problem}); shared-state tests need it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        sys.stderr.write(f"\n*** SKIPPING: {message} ***\n")
        pytest.skip(message)
    return REDIS_URL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("APIGW_MW_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow variant: set APIGW_MW_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
