"""Token buckets and quotas on a real Redis Cluster (``redis+cluster://``): the shared
semantics tables, one script per phase (each phase's keys share a hash slot), and state
shared by separate gateways."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest

from apigw_mw import (
    RedisStore,
)

from .conftest import FakeClock, need_binaries
from .shared_redis import (
    ALICE,
    check_limits_hold_across_gateways,
    command_calls,
    every_level,
    new_prefix,
    scripts_for_three_requests,
    stop_servers,
    store_maker,
    wait_until,
)

# The shared tables run here again on the cluster, through the ``store`` fixture below.
from .test_semantics import (  # noqa: F401
    test_headers_on_throttle,
    test_no_headers_unless_asked,
    test_quota_header_values_and_admin,
    test_semantics,
)

redis = pytest.importorskip("redis")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_port(taken: list[int]) -> int:
    """A free port whose cluster-bus twin (the port + 10000) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            return port


class RedisCluster:
    """Three cluster-mode ``redis-server`` masters on free 127.0.0.1 ports, all slots
    assigned, started and stopped by the tests."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        for _ in range(3):
            self.ports.append(_node_port(self.ports))
        self.dir = tempfile.TemporaryDirectory(prefix="apigw-mw-cluster-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        for port in self.ports:
            node_dir = os.path.join(self.dir.name, str(port))
            os.mkdir(node_dir)
            self.procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", os.path.join(node_dir, "nodes.conf"),
                        "--dir", node_dir,
                        "--save", "",
                        "--appendonly", "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in self.ports:
            wait_until(redis.Redis(host="127.0.0.1", port=port).ping, "cluster node")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in self.ports:
            wait_until(lambda port=port: self._state(port) == "ok", "cluster")

    @staticmethod
    def _state(port: int) -> str:
        info = redis.Redis(host="127.0.0.1", port=port).execute_command("CLUSTER INFO")
        return str(info.get("cluster_state"))  # redis-py answers with a mapping

    def scripts_run(self) -> int:
        """Scripts run so far, summed over the nodes."""
        nodes = (redis.Redis(host="127.0.0.1", port=port) for port in self.ports)
        return sum(command_calls(node, "evalsha", "eval") for node in nodes)

    def stop(self) -> None:
        stop_servers(self.procs)
        self.dir.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    need_binaries("the Redis Cluster tests start their own", "redis-server", "redis-cli")
    made = RedisCluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def make_store(cluster: RedisCluster, prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """Stores on the cluster under this test's prefix, closed afterwards."""
    yield from store_maker(cluster.url, prefix)


@pytest.fixture
def store(make_store: Callable[..., RedisStore], clock: FakeClock) -> RedisStore:
    """The shared semantics tables' store, here the cluster on the fake clock."""
    return make_store(clock=clock)


def test_one_script_per_phase(make_client, cluster, make_store) -> None:
    client = make_client(every_level(make_store()))
    # The route and client throttles share the stage's hash slot, the key's throttle, plan,
    # route limit and quota the key's: one script for each phase, no CROSSSLOT refusal.
    assert scripts_for_three_requests(client, cluster.scripts_run) == 6


def test_limits_hold_across_gateways(make_client, make_store) -> None:
    check_limits_hold_across_gateways(make_client, make_store)


def test_keys_of_a_phase_share_one_slot(make_client, cluster, make_store, prefix) -> None:
    client = make_client(every_level(make_store()))
    assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 200
    nodes = [redis.Redis(host="127.0.0.1", port=p) for p in cluster.ports]
    keys = [k for node in nodes for k in node.scan_iter(match=prefix + "*", count=500)]
    slots = {int(nodes[0].execute_command("CLUSTER KEYSLOT", k)) for k in keys}
    # Three throttles, the plan's throttle, its route limit and the quota: six keys, in two
    # slots (the stage's and the key's).
    assert len(keys) == 6
    assert len(slots) == 2
