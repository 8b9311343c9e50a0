"""Token buckets and quotas in real memcached: semantics, round trips, races, outages."""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    ConfigurationError,
    MemcachedStore,
    MemoryStore,
    Quota,
    StorageError,
    Throttle,
    TokenBucket,
    UsageAdmin,
    UsagePlan,
    WSGIGatewayMiddleware,
)
from apigw_mw.traffic.memcached import parse_memcached_uri, parse_reply
from apigw_mw.traffic.storage import DAY, MONTH, WEEK, Level, QuotaLevel, get_store

from .conftest import FakeClock

# The shared tables run here again on memcached, through the ``store`` fixture below.
from .test_redis import CountingProxy, _call, _free_port, _ok
from .test_semantics import (  # noqa: F401
    test_headers_on_throttle,
    test_no_headers_unless_asked,
    test_quota_header_values_and_admin,
    test_semantics,
)

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


# -- a memcached of the tests' own ---------------------------------------------------------


class MemcachedServer:
    """``memcached`` on a free 127.0.0.1 port, started and stopped by the tests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"memcached://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["memcached", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses to run as root without it
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"memcached exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("memcached did not start")

    def stop(self) -> None:
        if self.proc is not None:
            # SIGKILL: a crash, and at once (on SIGTERM memcached waits about a second for
            # its open connections).
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    def command(self, request: bytes) -> bytes:
        """Send raw text protocol and return what the server answers within a moment."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(request)
            time.sleep(0.02)
            return sock.recv(65536)


def _need_memcached() -> None:
    if shutil.which("memcached") is not None:
        return
    message = "the memcached binary is not installed (apt-get install memcached)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    sys.stderr.write(f"\n*** SKIPPING: {message} ***\n")
    pytest.skip(message)


@pytest.fixture(scope="module")
def memcached() -> Iterator[MemcachedServer]:
    """One memcached for the module (each test writes under its own prefix)."""
    _need_memcached()
    server = MemcachedServer(_free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_memcached() -> Iterator[MemcachedServer]:
    """A memcached of this test alone, to stop and start."""
    _need_memcached()
    server = MemcachedServer(_free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mc_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def store(memcached: MemcachedServer, mc_prefix: str, clock: FakeClock) -> Iterator[MemcachedStore]:
    """The shared semantics tables' store, here memcached on the fake clock."""
    made = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    yield made
    made.close()


# -- decisions agree with the in-memory store ------------------------------------------------


def test_same_decisions_as_memory_store(memcached, mc_prefix, clock) -> None:
    mc = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    mem = MemoryStore(clock=clock)
    rng = random.Random(7)
    buckets = [
        Level("{s:x}:a", 2.0, 3, "a"),
        Level("{s:x}:b", 0.5, 1, "b"),
        Level("{s:x}:c", 10.0, 20, "c"),
    ]
    quotas = [
        QuotaLevel("{s:x}:q1", 7, DAY, 0, "q1"),
        QuotaLevel("{s:x}:q2", 30, WEEK, 1, "q2"),
        QuotaLevel("{s:x}:q3", 12, MONTH, 0, "q3"),
    ]
    admitted = 0
    for _ in range(300):
        clock.advance(rng.choice([0, 0, 0.1, 0.25, 0.5, 1, 3, 3600]))
        levels = rng.sample(buckets, rng.randint(0, 3))
        if levels and rng.random() < 0.2:
            levels.append(levels[0])  # one bucket twice in a phase
        qs = rng.sample(quotas, rng.randint(0, 2))
        if not levels and not qs:
            continue
        expected = mem.check_sync(levels, qs)
        assert mc.check_sync(levels, qs) == expected
        admitted += expected[1]
    assert 30 < admitted < 270  # both answers were exercised
    for q in quotas:
        assert mc.quota_used(q.key, q.kind, q.offset) == mem.quota_used(q.key, q.kind, q.offset)
    assert mc.retries == 0
    mc.close()


# -- round trips ------------------------------------------------------------------------------


def _memcached_commands(data: bytes) -> list[str]:
    """Command names in a chunk of text protocol a client sent (data blocks skipped)."""
    names = []
    pos = 0
    while pos < len(data):
        eol = data.index(b"\r\n", pos)
        words = data[pos:eol].split()
        pos = eol + 2
        names.append(words[0].decode().upper())
        if words[0] in (b"set", b"add", b"cas", b"replace", b"append", b"prepend"):
            pos += int(words[4]) + 2
    return names


class MemcachedProxy(CountingProxy):
    def round_trips(self) -> list[list[str]]:
        with self._lock:
            turns = list(self.turns)
        return [_memcached_commands(t) for t in turns]


@pytest.fixture
def proxy(memcached: MemcachedServer) -> Iterator[MemcachedProxy]:
    p = MemcachedProxy(("127.0.0.1", memcached.port))
    yield p
    p.close()


def test_two_round_trips_per_phase(make_client, proxy, mc_prefix) -> None:
    store = MemcachedStore(f"memcached://127.0.0.1:{proxy.port}", prefix=mc_prefix)
    plan = UsagePlan(
        "basic",
        throttle=TokenBucket(rate=100, burst=100),
        quota=Quota(1000),
        route_limits={"GET /pets": TokenBucket(rate=50, burst=50)},
    )
    client = make_client(
        [
            Throttle(TokenBucket(rate=100, burst=100), storage=store),
            Throttle(TokenBucket(rate=100, burst=100), key="source_ip", storage=store),
            Throttle(TokenBucket(rate=100, burst=100), key="api_key", storage=store),
            ApiKeyAuth(ApiKeys([ApiKey(ALICE, plan=plan)]), storage=store, routes=["GET /pets"]),
        ]
    )
    first = client.get("/pets", headers={"x-api-key": ALICE})
    assert first.status_code == 200
    # The first request finds no key: ``add`` creates them.
    assert proxy.round_trips() == [["GETS"], ["ADD"] * 2, ["GETS"], ["ADD"] * 4]
    proxy.reset()
    for _ in range(3):
        assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 200
    # Two phases (route + client throttles; key throttle + plan + route limit + quota):
    # per phase one read of every key, then one batch of writes.
    assert proxy.round_trips() == [["GETS"], ["CAS"] * 2, ["GETS"], ["CAS"] * 4] * 3
    proxy.reset()
    assert client.get("/other").status_code == 200
    # One phase: the route's own bucket is new (``add``), the client's is not (``cas``).
    assert proxy.round_trips() == [["GETS"], ["ADD", "CAS"]]
    assert store.retries == 0
    assert store.errors == 0
    store.close()


def test_refused_phase_is_one_round_trip_and_writes_nothing(make_client, proxy, mc_prefix) -> None:
    store = MemcachedStore(f"memcached://127.0.0.1:{proxy.port}", prefix=mc_prefix)
    client = make_client(
        [
            Throttle(TokenBucket(rate=0.001, burst=5), key="stage", storage=store),
            Throttle(TokenBucket(rate=0.001, burst=1), key="source_ip", storage=store),
        ]
    )
    assert client.get("/a").status_code == 200
    proxy.reset()
    refused = client.get("/a")
    assert refused.status_code == 429
    assert refused.seen == []
    assert proxy.round_trips() == [["GETS"]]
    # The stage bucket kept its four tokens: four other clients get through.
    assert [client.get("/a", client_ip=f"10.0.0.{i}").status_code for i in range(5)] == [
        200,
        200,
        200,
        200,
        429,
    ]
    store.close()


# -- races ------------------------------------------------------------------------------------


def _perform(store: MemcachedStore, ask: Any) -> Any:
    return [store.servers[s].exchange_sync(request, expect) for s, request, expect in ask]


def test_lost_race_gives_back_and_decides_again(memcached, mc_prefix, clock) -> None:
    """A phase's write to one key loses to another process: the writes that won are given
    back, then the phase is decided again on what is there now."""
    store = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    rival = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    stage = Level("{s:p}:stage", 1.0, 3, "stage")
    client = Level("{s:p}:client", 1.0, 3, "client")
    quota = QuotaLevel("{s:p}:quota", 10, DAY, 0, "quota")
    assert store.check_sync([stage, client], [quota])[1]  # one of each used; keys exist
    flow = store._phase(store._plan([stage, client], [quota]), [stage, client], [quota], False)
    reads = next(flow)
    assert [_memcached_commands(r[1]) for r in reads] == [["GETS"]]
    writes = flow.send(_perform(store, reads))
    assert [_memcached_commands(w[1]) for w in writes] == [["CAS", "CAS", "CAS"]]
    # Between our read and our writes the rival takes a token from ``client``.
    assert rival.check_sync([client], [])[1]
    # Our ``stage`` and ``quota`` writes win, ``client``'s loses: the two are given back.
    give_back_reads = flow.send(_perform(store, writes))
    assert [_memcached_commands(r[1]) for r in give_back_reads] == [["GETS"]]
    give_back = flow.send(_perform(store, give_back_reads))
    assert [_memcached_commands(w[1]) for w in give_back] == [["CAS", "CAS"]]
    again = flow.send(_perform(store, give_back))
    assert again == reads  # the phase starts over from the read
    writes = flow.send(_perform(store, again))
    with pytest.raises(StopIteration) as done:
        flow.send(_perform(store, writes))
    assert done.value.value is None  # admitted
    assert store.retries == 1
    # Spent: two of stage, three of client (ours, the rival's, the first), two quota counts.
    # The given-back writes left no trace.
    assert store.quota_used(quota.key, DAY, 0) == 2
    assert store.check_sync([stage], [])[1]
    assert not store.check_sync([stage], [])[1]
    assert not store.check_sync([client], [])[1]
    rival.close()
    store.close()


def test_attempts_exhausted_follow_on_storage_error(memcached, mc_prefix, clock) -> None:
    """A decision that keeps losing its races fails as an outage does (here a rival writes
    the key just before each of our writes)."""
    store = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock, attempts=2)
    rival = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    bucket = Level("{s:r}:b", 1000.0, 1000, "b")
    assert store.check_sync([bucket], [])[1]
    flow = store._phase(store._plan([bucket], []), [bucket], [], False)

    def drive() -> None:
        ask = next(flow)
        while True:
            if isinstance(ask, float):
                ask = flow.send(None)
                continue
            if ask[0][1].startswith(b"cas"):
                assert rival.check_sync([bucket], [])[1]  # the rival writes first
            ask = flow.send(_perform(store, ask))

    with pytest.raises(StorageError, match="2 attempts lost"):
        drive()
    assert store.retries == 1
    rival.close()
    store.close()


def test_decision_out_of_attempts_answers_on_storage_error(memcached, mc_prefix) -> None:
    """Through the gateway: with ``attempts=1``, a rival's write between our read and our
    write makes the decision fail, answered by ``on_storage_error`` and counted."""
    store = MemcachedStore(memcached.url, prefix=mc_prefix, attempts=1)
    rival = MemcachedStore(memcached.url, prefix=mc_prefix)
    app = WSGIGatewayMiddleware(
        _ok,
        policies=[
            Throttle(TokenBucket(100, 100), key="stage", storage=store, on_storage_error="deny")
        ],
    )
    assert _call(app) == 200
    level = Level("{s:$default}:t:stage:", 100, 100, "stage")
    server = store.servers[0]
    exchange = server.exchange_sync

    def rival_writes_first(request: bytes, expect: int) -> Any:
        if request.startswith(b"cas"):
            assert rival.check_sync([level], [])[1]  # a real write by another client
        return exchange(request, expect)

    server.exchange_sync = rival_writes_first  # type: ignore[method-assign]
    try:
        assert _call(app) == 500
    finally:
        del server.exchange_sync
    assert store.errors == 1
    assert _call(app) == 200  # a lost race is no outage: no cool-down follows
    rival.close()
    store.close()


# -- many processes, one bucket -----------------------------------------------------------------


def _hammer(
    url: str, prefix: str, rate: float, burst: int, go: Any, seconds: float, out: Any
) -> None:
    store = MemcachedStore(url, prefix=prefix)
    app = WSGIGatewayMiddleware(
        _ok, policies=[Throttle(TokenBucket(rate=rate, burst=burst), key="stage", storage=store)]
    )
    store.quota_used("warm-up", DAY, 0)  # connect before the start
    out.put("ready")
    go.wait()
    admitted = refused = 0
    # Each request is decided between its send and its answer: keep both ends of the first
    # and of the last.
    sent_first = time.time()
    status = _call(app)
    answered_first = time.time()
    end = sent_first + seconds
    while True:
        if status == 200:
            admitted += 1
        else:
            refused += 1
        if time.time() >= end:
            break
        sent_last = time.time()
        status = _call(app)
        answered_last = time.time()
    out.put(
        (
            sent_first,
            answered_first,
            sent_last,
            answered_last,
            admitted,
            refused,
            store.errors,
            store.retries,
        )
    )


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_processes_share_one_bucket_exactly(memcached, mc_prefix) -> None:
    rate, burst, seconds, workers = 20.0, 10, 1.5, 3
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(memcached.url, mc_prefix, rate, burst, go, seconds, out))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    assert [out.get(timeout=60) for _ in procs] == ["ready"] * workers
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    longest = max(r[3] for r in results) - min(r[0] for r in results)
    shortest = max(r[2] for r in results) - min(r[1] for r in results)
    admitted = sum(r[4] for r in results)
    refused = sum(r[5] for r in results)
    assert all(r[6] == 0 for r in results)  # no decision ran out of attempts
    assert refused > admitted  # the bucket was saturated the whole time
    low, high = burst + rate * shortest, burst + rate * longest
    assert high - low < 0.5
    # The host clocks are one here; each decision reads it between its read and its write.
    assert low - 1 <= admitted <= high + 1, (admitted, low, high, [r[7] for r in results])


def _child(store: MemcachedStore, n: int, out: Any) -> None:
    level = Level("{s:f}:child-" + str(n), 0.001, 5, "child")
    out.put(([store.check_sync([level], [])[1] for _ in range(8)], store.errors))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_children_open_their_own_connections(memcached, mc_prefix) -> None:
    """A store used before a fork (gunicorn ``--preload``): the children do not share the
    parent's idle connection."""
    store = MemcachedStore(memcached.url, prefix=mc_prefix)
    parent = Level("{s:f}:parent", 0.001, 3, "parent")
    assert store.check_sync([parent], [])[1]  # leaves an idle connection in the pool
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(store, n, out)) for n in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert results == [([True] * 5 + [False] * 3, 0)] * 3
    assert [store.check_sync([parent], [])[1] for _ in range(3)] == [True, True, False]
    assert store.errors == 0
    store.close()


def test_asyncio_tasks_share_one_bucket_exactly(memcached, mc_prefix, clock) -> None:
    """Many concurrent decisions on one event loop (the ASGI path) on one bucket, on a clock
    that stands still: exactly the burst is admitted. Decisions of one process on the same
    keys take turns, so they never lose races to each other."""
    store = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    level = Level("{s:h}:stage", 1.0, 25, "stage")
    other = Level("{s:h}:other", 1.0, 1000, "other")

    async def run() -> list[bool]:
        async def one(i: int) -> bool:
            return (await store.check_async([level] if i % 2 else [other, level], []))[1]

        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(run())
    assert results.count(True) == 25
    assert store.errors == 0
    assert store.retries == 0
    store.close()


def test_threads_share_one_bucket_exactly(memcached, mc_prefix, clock) -> None:
    store = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    app = WSGIGatewayMiddleware(
        _ok, policies=[Throttle(TokenBucket(rate=1, burst=37), key="stage", storage=store)]
    )
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker() -> None:
        start.wait()
        mine = [_call(app) for _ in range(25)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 37  # the clock stood still: exactly the burst
    assert store.errors == 0
    assert store.retries == 0
    store.close()


# -- keys, expiry, servers --------------------------------------------------------------------


def test_keys_are_escaped_or_hashed(memcached, mc_prefix) -> None:
    store = MemcachedStore(memcached.url, prefix="p:")
    assert store.memcached_key("{s:prod}:t:route:GET /pets") == b"p:{s:prod}:t:route:GET%20/pets"
    assert store.memcached_key("a%20b") == b"p:a%2520b"  # '%' itself is escaped
    assert store.memcached_key("caf\u00e9\n") == b"p:caf%C3%A9%0A"
    long = store.memcached_key("x" * 300)
    assert long.startswith(b"p:%%")
    assert len(long) == 2 + 2 + 64
    assert store.memcached_key("y" * 248) == b"p:" + b"y" * 248  # 250 bytes: kept
    # Keys any client may choose (a callable's value) work, whatever their characters.
    real = MemcachedStore(memcached.url, prefix=mc_prefix)
    weird = Level("{s:x}:t:c|tenant 1\r\nflush_all", 1.0, 1, "t")
    assert real.check_sync([weird], [])[1]
    assert not real.check_sync([weird], [])[1]
    assert real.check_sync([Level("{s:x}:t:c|" + "z" * 400, 1.0, 1, "t")], [])[1]
    store.close()
    real.close()


def test_keys_expire_when_the_bucket_is_full_again(memcached, mc_prefix) -> None:
    store = MemcachedStore(memcached.url, prefix=mc_prefix)
    quick = Level("{s:e}:quick", 1.0, 1, "quick")  # full again in a second
    slow = Level("{s:e}:slow", 1 / (40 * 86400), 1, "slow")  # in 40 days
    assert store.check_sync([quick, slow], [QuotaLevel("{s:e}:q", 5, DAY, 0, "q")])[1]
    meta = memcached.command(
        b"mg %s t\r\nmg %s t\r\nmg %s t\r\n"
        % (
            store.memcached_key(quick.key),
            store.memcached_key(slow.key),
            store.memcached_key("{s:e}:q"),
        )
    ).split(b"\r\n")
    ttls = [int(line.split(b" t")[1]) for line in meta if line.startswith(b"HD")]
    now = time.time()
    day_end = (now // 86400 + 1) * 86400
    assert 2 <= ttls[0] <= 3  # a second to refill, plus two for memcached's coarse clock
    assert 40 * 86400 - 5 <= ttls[1] <= 40 * 86400 + 5  # over 30 days: sent as a Unix time
    assert abs(ttls[2] - (day_end - now + 3600)) <= 5  # an hour after the period ends
    assert not store.check_sync([slow], [])[1]  # the 40-day key did not expire at once
    # A bucket refilling over decades: the expiry is the latest memcached can hold.
    glacial = Level("{s:e}:glacial", 1e-9, 1, "glacial")
    assert store.check_sync([glacial], [])[1]
    assert not store.check_sync([glacial], [])[1]
    store.close()


def test_keys_of_a_phase_share_a_server(make_client, mc_prefix) -> None:
    _need_memcached()
    servers = [MemcachedServer(_free_port()) for _ in range(2)]
    for s in servers:
        s.start()
    try:
        uri = "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
        store = MemcachedStore(uri, prefix=mc_prefix)
        tags = {store.server_of("{k:" + str(i) + "}:p:gold") for i in range(40)}
        assert tags == {0, 1}  # keys spread over both servers
        for i in range(10):
            levels = [
                Level("{k:" + str(i) + "}:p:gold", 1, 1, "p"),
                Level("{k:" + str(i) + "}:r:gold:GET /a", 1, 1, "r"),
            ]
            quota = QuotaLevel("{k:" + str(i) + "}:q:gold", 3, DAY, 0, "q")
            assert len({store.server_of(x.key) for x in [*levels, quota]}) == 1
            assert store.check_sync(levels, [quota])[1]
        plan = UsagePlan("gold", throttle=TokenBucket(1, 1), quota=Quota(5))
        client = make_client(
            [ApiKeyAuth(ApiKeys([ApiKey(ALICE, plan=plan)]), storage=uri, headers=True)]
        )
        assert client.get("/a", headers={"x-api-key": ALICE}).status_code == 200
        refused = client.get("/a", headers={"x-api-key": ALICE})
        assert refused.status_code == 429
        assert refused.seen == []
        store.close()
    finally:
        for s in servers:
            s.stop()


def test_quota_admin(memcached, mc_prefix, clock) -> None:
    store = MemcachedStore(memcached.url, prefix=mc_prefix, clock=clock)
    alice = ApiKey(ALICE, id="k-alice", plan=UsagePlan("gold", quota=Quota(3, period="WEEK")))
    app = WSGIGatewayMiddleware(_ok, policies=[ApiKeyAuth(ApiKeys([alice]), storage=store)])
    admin = UsageAdmin(store)
    assert admin.used(alice) == 0

    def call() -> int:
        status: list[int] = []
        env = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/a",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_X_API_KEY": ALICE,
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
        }
        for _ in app(env, lambda s, h, e=None: status.append(int(s[:3]))):
            pass
        return status[0]

    assert [call() for _ in range(4)] == [200, 200, 200, 429]
    assert admin.used(alice) == 3
    assert admin.remaining(alice) == 0
    admin.reset(alice)
    assert admin.used(alice) == 0
    assert call() == 200
    clock.advance(7 * 86400)  # next week: a new period, whatever is stored
    assert admin.used(alice) == 0
    store.close()


def test_one_store_per_uri(memcached) -> None:
    store = get_store(memcached.url)
    assert isinstance(store, MemcachedStore)
    assert get_store(memcached.url) is store
    assert get_store(memcached.url + "/") is not store  # another spelling, another store
    assert store.describe() == f"memcached store {memcached.url}"


def test_value_written_by_someone_else_is_overwritten(memcached, mc_prefix) -> None:
    store = MemcachedStore(memcached.url, prefix=mc_prefix)
    level = Level("{s:o}:b", 1.0, 1, "b")
    quota = QuotaLevel("{s:o}:q", 2, DAY, 0, "q")
    key, qkey = store.memcached_key(level.key), store.memcached_key(quota.key)
    assert memcached.command(b"set %s 0 60 3\r\nabc\r\nset %s 0 60 1\r\n?\r\n" % (key, qkey)) == (
        b"STORED\r\nSTORED\r\n"
    )
    assert store.check_sync([level], [quota])[1]  # read as a full bucket and an unused quota
    assert not store.check_sync([level], [])[1]
    assert store.quota_used(quota.key, DAY, 0) == 1
    store.close()


# -- outages --------------------------------------------------------------------------------------


def test_outage_follows_on_storage_error_and_recovers(make_client, own_memcached, caplog) -> None:
    store = MemcachedStore(own_memcached.url, retry_interval=0.2, timeout=0.2)
    bucket = TokenBucket(rate=0.001, burst=2)
    lenient = make_client([Throttle(bucket, key="stage", storage=store, name="lenient")])
    strict = make_client(
        [Throttle(bucket, key="stage", storage=store, name="strict", on_storage_error="deny")]
    )
    assert [lenient.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert [strict.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    own_memcached.stop()
    with caplog.at_level(logging.WARNING, logger="apigw_mw.traffic"):
        during = [lenient.get("/a").status_code for _ in range(3)]
        refused = [strict.get("/a") for _ in range(3)]
    assert during == [200, 200, 200]
    assert [r.status_code for r in refused] == [500, 500, 500]
    assert refused[0].json() == {"message": "Internal server error"}
    assert refused[0].seen == []
    assert store.errors == 6
    warnings = [r for r in caplog.records if r.name == "apigw_mw.traffic"]
    assert len(warnings) == 1  # logged once per interval, counted every time
    assert f"127.0.0.1:{own_memcached.port}" in warnings[0].getMessage()
    own_memcached.start()  # an empty memcached: the buckets start full again
    time.sleep(0.25)
    assert [lenient.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert [strict.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert store.errors == 6
    store.close()


def test_unreachable_memcached_fails_fast(make_client) -> None:
    store = MemcachedStore(f"memcached://127.0.0.1:{_free_port()}", retry_interval=5)
    client = make_client([Throttle(TokenBucket(1, 1), storage=store)])
    started = time.monotonic()
    statuses = [client.get("/a").status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert time.monotonic() - started < 2
    assert store.errors == 20


def test_quota_admin_during_an_outage_raises() -> None:
    store = MemcachedStore(f"memcached://127.0.0.1:{_free_port()}")
    alice = ApiKey(ALICE, plan=UsagePlan("p", quota=Quota(3)))
    with pytest.raises(StorageError):
        UsageAdmin(store).used(alice)
    with pytest.raises(StorageError):
        UsageAdmin(store).reset(alice)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"uri": "redis://127.0.0.1:6379"}, "uri", id="other-scheme"),
        pytest.param({"uri": "memcached://"}, "uri", id="no-server"),
        pytest.param({"uri": "memcached://127.0.0.1:0"}, "uri", id="port-zero"),
        pytest.param({"uri": "memcached://127.0.0.1:99999"}, "uri", id="port-too-big"),
        pytest.param({"uri": "memcached://127.0.0.1:abc"}, "uri", id="port-not-a-number"),
        pytest.param({"uri": "memcached://a:1:2"}, "uri", id="two-ports"),
        pytest.param({"uri": "memcached://u:secret@127.0.0.1"}, "uri", id="credentials"),
        pytest.param({"uri": "memcached://127.0.0.1?timeout=1"}, "uri", id="query"),
        pytest.param({"uri": "memcached://h1:1,h1:1"}, "uri", id="server-twice"),
        pytest.param({"uri": "memcached://[::1"}, "uri", id="open-bracket"),
        pytest.param({"uri": 11211}, "uri", id="not-a-string"),
        pytest.param({"prefix": "a b"}, "prefix", id="prefix-space"),
        pytest.param({"prefix": "x" * 101}, "prefix", id="prefix-long"),
        pytest.param({"prefix": "caf\u00e9"}, "prefix", id="prefix-non-ascii"),
        pytest.param({"timeout": 0}, "timeout", id="timeout-zero"),
        pytest.param({"timeout": -1}, "timeout", id="timeout-negative"),
        pytest.param({"retry_interval": "1"}, "retry_interval", id="retry-interval"),
        pytest.param({"log_interval": True}, "log_interval", id="log-interval"),
        pytest.param({"attempts": 0}, "attempts", id="attempts-zero"),
        pytest.param({"attempts": 2.0}, "attempts", id="attempts-float"),
        pytest.param({"clock": 5}, "clock", id="clock"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], field: str) -> None:
    kwargs = {"uri": "memcached://127.0.0.1:11211", **kwargs}
    with pytest.raises(ConfigurationError) as info:
        MemcachedStore(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(
            lambda c: c([Throttle(TokenBucket(1, 1), storage="memcached://cache:port")]),
            "Throttle.storage",
            id="throttle",
        ),
        pytest.param(
            lambda c: c([Throttle(TokenBucket(1, 1))], storage="memcached://"),
            "Throttle.storage",
            id="gateway-default",
        ),
        pytest.param(
            lambda c: c(
                [ApiKeyAuth(ApiKeys([ApiKey(ALICE)]), storage="memcached://a@cache:11211")]
            ),
            "ApiKeyAuth.storage",
            id="api-key-auth",
        ),
        pytest.param(
            lambda c: UsageAdmin("memcached://cache:11211?x=1"),
            "UsageAdmin.storage",
            id="usage-admin",
        ),
        pytest.param(
            lambda c: c(
                [
                    Throttle(
                        TokenBucket(1, 60),
                        strategy="fixed-window",
                        storage="memcached://127.0.0.1:11211",
                    )
                ]
            ),
            "Throttle.strategy",
            id="window-strategy",
        ),
    ],
)
def test_bad_storage_is_refused_at_start_up(make_client, build: Any, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(make_client)
    assert info.value.field == field
    if field == "Throttle.strategy":
        assert "memcached" in info.value.message


def test_uri_forms() -> None:
    assert parse_memcached_uri("memcached://cache") == [("cache", 11211)]
    assert parse_memcached_uri("async+memcached://a:1, b:2/") == [("a", 1), ("b", 2)]
    assert parse_memcached_uri("memcached://[::1]:11212") == [("::1", 11212)]
    assert parse_memcached_uri("memcached:///run/memcached.sock") == ["/run/memcached.sock"]


def test_unix_socket(tmp_path, mc_prefix) -> None:
    _need_memcached()
    path = tmp_path / "mc.sock"
    command = ["memcached", "-s", str(path)]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        store = MemcachedStore(f"memcached://{path}", prefix=mc_prefix)
        level = Level("{s:u}:b", 1.0, 1, "b")
        assert store.check_sync([level], [])[1]
        assert not asyncio.run(store.check_async([level], []))[1]
        store.close()
    finally:
        proc.terminate()
        proc.wait(10)


# -- the reply parser -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expect", "answer"),
    [
        pytest.param(b"END\r\n", -1, {}, id="nothing"),
        pytest.param(b"VALUE k 0 3 7\r\n1.5\r\nEND\r\n", -1, {b"k": (b"1.5", 7)}, id="one"),
        pytest.param(b"VALUE k 0 4 7\r\na\r\nb\r\nEND\r\n", -1, {b"k": (b"a\r\nb", 7)}, id="crlf"),
        pytest.param(b"VALUE k 0 3 7\r\n1.5", -1, None, id="partial-value"),
        pytest.param(b"VALUE k 0 3 7\r\n1.5\r\nEN", -1, None, id="partial-end"),
        pytest.param(b"STORED\r\nEXISTS\r\n", 2, [b"STORED", b"EXISTS"], id="lines"),
        pytest.param(b"STORED\r\n", 2, None, id="partial-lines"),
    ],
)
def test_reply_parser(data: bytes, expect: int, answer: Any) -> None:
    assert parse_reply(data, expect) == answer


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        pytest.param(b"SERVER_ERROR out of memory\r\n", -1, id="server-error"),
        pytest.param(b"ERROR\r\n", 1, id="error"),
        pytest.param(b"CLIENT_ERROR bad data chunk\r\nERROR\r\n", 2, id="client-error"),
        pytest.param(b"END\r\nEND\r\n", -1, id="bytes-after-end"),
        pytest.param(b"VALUE k 0 x 7\r\n", -1, id="bad-length"),
        pytest.param(b"VALUE k 0 1 7\r\nabc\r\nEND\r\n", -1, id="bad-framing"),
        pytest.param(b"STORED\r\nSTORED\r\n", 1, id="extra-line"),
    ],
)
def test_reply_parser_refuses_what_was_not_asked(data: bytes, expect: int) -> None:
    from apigw_mw.traffic.memcached import ProtocolError

    with pytest.raises(ProtocolError):
        parse_reply(data, expect)
