"""Token buckets, quotas and windows on Redis found through a real Sentinel
(``redis+sentinel://``): the shared semantics tables, one script per phase on the primary,
state shared by separate gateways, and the connections to the Sentinel."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from apigw_mw import (
    RedisStore,
    Throttle,
    TokenBucket,
)
from tests.helpers import gateway_client

from .conftest import FakeClock, need_binaries
from .shared_redis import (
    check_limits_hold_across_gateways,
    command_calls,
    every_level,
    new_prefix,
    scripts_for_three_requests,
    stop_servers,
    store_maker,
    wait_until,
)

# The shared tables run here again through Sentinel, through the ``store`` fixture below.
from .test_semantics import (  # noqa: F401
    test_headers_on_throttle,
    test_no_headers_unless_asked,
    test_quota_header_values_and_admin,
    test_semantics,
)

redis = pytest.importorskip("redis")

SERVICE = "mymaster"
#: Three requests an hour: no test run crosses a window's end by chance.
PER_HOUR = TokenBucket(rate=3 / 3600, burst=3)


def _free_port(taken: tuple[int, ...] = ()) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


class RedisSentinel:
    """A Redis primary, its replica and one Sentinel monitoring them as ``mymaster``, on
    free 127.0.0.1 ports, started and stopped by the tests."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.replica_port = _free_port((self.port,))
        self.sentinel_port = _free_port((self.port, self.replica_port))
        self.dir = tempfile.TemporaryDirectory(prefix="apigw-mw-sentinel-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}"
        # Kept open for the module: the servers' client counts include them, steadily.
        self.primary = redis.Redis(host="127.0.0.1", port=self.port)
        self.replica = redis.Redis(host="127.0.0.1", port=self.replica_port)
        self.sentinel = redis.Redis(host="127.0.0.1", port=self.sentinel_port)

    def _server(self, *args: str) -> None:
        self.procs.append(
            subprocess.Popen(
                ["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )

    def start(self) -> None:
        # No delay before the replica's first full copy (Redis waits five seconds for more).
        primary = ("--repl-diskless-sync-delay", "0")
        replica = ("--replicaof", "127.0.0.1", str(self.port))
        for port, extra in ((self.port, primary), (self.replica_port, replica)):
            node_dir = os.path.join(self.dir.name, str(port))
            os.mkdir(node_dir)
            self._server(
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", node_dir,
                "--save", "",
                "--appendonly", "no",
                *extra,
            )  # fmt: skip
        wait_until(self.primary.ping, "primary")
        # The Sentinel learns of the replica from the primary when it first asks it.
        wait_until(
            lambda: self.replica.info("replication")["master_link_status"] == "up", "replica"
        )
        # Sentinel rewrites its configuration file, so it lives in the temporary directory.
        conf = os.path.join(self.dir.name, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {self.sentinel_port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir.name}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 2000\n"
            )
        self._server(conf, "--sentinel")
        ask, address = self.sentinel.execute_command, (b"127.0.0.1", self.port)
        wait_until(lambda: ask("SENTINEL get-master-addr-by-name", SERVICE) == address, "Sentinel")
        wait_until(lambda: ask("SENTINEL replicas", SERVICE), "Sentinel")

    calls = staticmethod(command_calls)

    def scripts_run(self) -> int:
        """Scripts the primary has run so far."""
        return self.calls(self.primary, "evalsha", "eval")

    @staticmethod
    def clients(node: Any) -> int:
        return int(node.info("clients")["connected_clients"])

    def stop(self) -> None:
        for client in (self.primary, self.replica, self.sentinel):
            client.close()
        stop_servers(self.procs)
        self.dir.cleanup()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[RedisSentinel]:
    need_binaries("the Redis Sentinel tests start their own", "redis-server")
    made = RedisSentinel()
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def make_store(sentinel: RedisSentinel, prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """Stores on the Sentinel's primary under this test's prefix, closed afterwards."""
    yield from store_maker(sentinel.url, prefix)


@pytest.fixture
def store(make_store: Callable[..., RedisStore], clock: FakeClock) -> RedisStore:
    """The shared semantics tables' store, here the Sentinel's primary on the fake clock."""
    return make_store(clock=clock)


def test_one_script_per_phase_on_the_primary(make_client, sentinel, make_store, prefix) -> None:
    store = make_store()
    client = make_client(every_level(store))
    on_replica = sentinel.calls(sentinel.replica, "evalsha", "eval")
    # Two phases a request, one script each, all on the primary the Sentinel names.
    assert scripts_for_three_requests(client, sentinel.scripts_run) == 6
    assert sentinel.calls(sentinel.replica, "evalsha", "eval") == on_replica
    # Three throttles, the plan's throttle, its route limit and the quota.
    assert len(list(sentinel.primary.scan_iter(match=prefix + "*", count=500))) == 6
    assert store.errors == 0


def test_limits_hold_across_gateways(make_client, make_store) -> None:
    check_limits_hold_across_gateways(make_client, make_store)


def test_window_counts_are_read_on_the_primary(make_client, sentinel, make_store) -> None:
    # A replica may lag behind the hit just made on the primary: the window's count and
    # expiry behind the headers and Retry-After are read where it was made.
    store = make_store()
    client = make_client(
        [Throttle(PER_HOUR, key="stage", strategy="fixed-window", storage=store, headers=True)]
    )
    reads = sentinel.calls(sentinel.replica, "get", "ttl")
    assert client.get("/a").headers["ratelimit"].startswith('"stage";r=2;t=')
    client.get("/a")
    client.get("/a")
    refused = client.get("/a")
    assert refused.status_code == 429
    assert 3590 <= int(refused.headers["retry-after"]) <= 3600
    assert refused.headers["ratelimit"] == f'"stage";r=0;t={refused.headers["retry-after"]}'
    assert sentinel.calls(sentinel.replica, "get", "ttl") == reads


def test_sentinel_that_does_not_answer_fails_fast(make_client, make_store) -> None:
    # It accepts connections (the kernel does) and never replies.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        store = make_store(f"redis+sentinel://127.0.0.1:{port}/{SERVICE}", timeout=0.2)
        client = make_client([Throttle(TokenBucket(1, 1), storage=store)])
        started = time.monotonic()
        assert client.get("/a").status_code == 200  # on_storage_error="allow"
        # The store's timeout, not redis-py's default of five seconds.
        assert time.monotonic() - started < 1.5
        assert store.errors == 1
    finally:
        silent.close()


def _settles(count: Callable[[], int], expected: int) -> bool:
    """Whether ``count`` reaches ``expected`` within two seconds (a server notices a closed
    connection a moment later)."""
    deadline = time.monotonic() + 2
    while count() != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_event_loops_close_their_sentinel_connections(sentinel, make_store) -> None:
    # The ASGI client here runs each request in an event loop of its own.
    on_sentinel = sentinel.clients(sentinel.sentinel)
    on_primary = sentinel.clients(sentinel.primary)
    client = gateway_client("asgi", [Throttle(TokenBucket(1, 100), storage=make_store())])
    assert [client.get("/a").status_code for _ in range(5)] == [200] * 5
    assert _settles(lambda: sentinel.clients(sentinel.sentinel), on_sentinel)
    assert _settles(lambda: sentinel.clients(sentinel.primary), on_primary)


def test_close_lets_go_of_the_connections(sentinel, make_store) -> None:
    on_sentinel = sentinel.clients(sentinel.sentinel)
    on_primary = sentinel.clients(sentinel.primary)
    store = make_store()
    client = gateway_client("wsgi", [Throttle(TokenBucket(1, 2), storage=store)])
    assert client.get("/a").status_code == 200
    assert sentinel.clients(sentinel.sentinel) == on_sentinel + 1
    assert sentinel.clients(sentinel.primary) == on_primary + 1
    store.close()
    assert _settles(lambda: sentinel.clients(sentinel.sentinel), on_sentinel)
    assert _settles(lambda: sentinel.clients(sentinel.primary), on_primary)
    # The store connects again when next used, and the bucket is where it was.
    assert [client.get("/a").status_code for _ in range(2)] == [200, 429]
    assert store.errors == 0


@pytest.mark.slow
def test_decisions_follow_a_failover() -> None:
    # Sentinel promotes the replica at once, but turns the old primary into a replica only
    # when it next checks on it (about ten seconds): until then the store's connections keep
    # deciding there; the old primary's first refusal to write moves them to the new one.
    need_binaries("the Redis Sentinel tests start their own", "redis-server")
    own = RedisSentinel()
    own.start()
    store = RedisStore(own.url, prefix=new_prefix(), timeout=0.5, retry_interval=0.2)
    try:
        client = gateway_client(
            "wsgi", [Throttle(TokenBucket(rate=0.001, burst=3), key="stage", storage=store)]
        )
        assert [client.get("/a").status_code for _ in range(2)] == [200, 200]
        ask = own.sentinel.execute_command
        wait_until(lambda: ask("SENTINEL FAILOVER", SERVICE), "failover")
        wait_until(lambda: own.replica.info("replication")["role"] == "master", "promotion")
        old = own.primary
        deadline = time.monotonic() + 30
        while old.info("replication")["role"] == "master":
            assert time.monotonic() < deadline, "Sentinel never turned the old primary"
            time.sleep(0.1)
        # The old primary's refusal may cost one decision (allowed, as on_storage_error
        # says, for retry_interval); then the store decides on the new primary, where the
        # bucket moved with the data: one token left, then refusals.
        decided = []
        while len(decided) < 3:
            errors = store.errors
            status = client.get("/a").status_code
            if store.errors == errors:
                decided.append(status)
            else:
                time.sleep(0.25)
            assert time.monotonic() < deadline
        assert decided == [200, 429, 429]
        assert store.errors <= 1
        assert own.calls(own.replica, "evalsha", "eval") >= 3
    finally:
        store.close()
        own.stop()
