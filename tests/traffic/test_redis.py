"""Shared state in real Redis: round trips, key store, many processes, outages."""

from __future__ import annotations

import io
import logging
import multiprocessing
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    Quota,
    RedisKeyStore,
    RedisStore,
    Throttle,
    TokenBucket,
    UsageAdmin,
    UsagePlan,
    WSGIGatewayMiddleware,
)
from apigw_mw.auth.api_keys import generate_api_key

ALICE = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


# -- a counting proxy -------------------------------------------------------------------------


def _commands(data: bytes) -> list[str]:
    """Command names in a chunk of RESP the client sent."""
    names = []
    stream = io.BytesIO(data)
    while True:
        line = stream.readline()
        if not line:
            return names
        assert line.startswith(b"*"), line
        parts = []
        for _ in range(int(line[1:])):
            size = int(stream.readline()[1:])
            parts.append(stream.read(size + 2)[:-2])
        names.append(parts[0].decode().upper())


class CountingProxy:
    """Forwards 127.0.0.1:port to Redis and records each round trip the clients make.

    A round trip is what a client sends before it next hears from the server.
    """

    HANDSHAKE = frozenset({"HELLO", "CLIENT", "SELECT", "AUTH", "PING"})

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.turns: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            state = {"index": None}
            threading.Thread(
                target=self._pump_up, args=(client, upstream, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_down, args=(upstream, client, state), daemon=True
            ).start()

    def _pump_up(self, src: socket.socket, dst: socket.socket, state: dict[str, Any]) -> None:
        while data := _recv(src):
            with self._lock:
                if state["index"] is None:
                    state["index"] = len(self.turns)
                    self.turns.append(b"")
                self.turns[state["index"]] += data
            dst.sendall(data)
        dst.close()

    def _pump_down(self, src: socket.socket, dst: socket.socket, state: dict[str, Any]) -> None:
        while data := _recv(src):
            with self._lock:
                state["index"] = None
            dst.sendall(data)
        dst.close()

    def round_trips(self) -> list[list[str]]:
        """The commands of each round trip, connection handshakes left out."""
        with self._lock:
            turns = [_commands(t) for t in self.turns]
        return [t for t in turns if not set(t) <= self.HANDSHAKE]

    def reset(self) -> None:
        with self._lock:
            self.turns.clear()

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def proxy(redis_url: str) -> Iterator[CountingProxy]:
    from redis.connection import parse_url

    parsed = parse_url(redis_url)
    p = CountingProxy((parsed.get("host", "127.0.0.1"), int(parsed.get("port", 6379))))
    yield p
    p.close()


def test_one_round_trip_per_phase(make_client, proxy, redis_prefix) -> None:
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_prefix)
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
    assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 200  # warm up
    proxy.reset()
    for _ in range(3):
        assert client.get("/pets", headers={"x-api-key": ALICE}).status_code == 200
    # Two phases (route + client throttles; key throttle + plan + route limit + quota):
    # two round trips of one script each, per request.
    assert proxy.round_trips() == [["EVALSHA"]] * 6
    proxy.reset()
    assert client.get("/other").status_code == 200
    assert proxy.round_trips() == [["EVALSHA"]]


def test_script_is_loaded_again_after_script_flush(redis_url, redis_prefix) -> None:
    import redis

    store = RedisStore(redis_url, prefix=redis_prefix)
    client = WSGIGatewayMiddleware(_ok, policies=[Throttle(TokenBucket(1, 2), storage=store)])
    assert _call(client) == 200
    redis.Redis.from_url(redis_url).script_flush()
    assert _call(client) == 200
    assert _call(client) == 429
    assert store.errors == 0


# -- the key store ------------------------------------------------------------------------------


def test_redis_key_store(make_client, redis_url, redis_prefix) -> None:
    import redis

    basic = UsagePlan("basic", quota=Quota(2))
    keys = RedisKeyStore(redis_url, plans={"basic": basic}, prefix=redis_prefix, cache_ttl=0)
    value = generate_api_key()
    key = keys.add(value, id="k-carol", name="carol", plan="basic")
    assert key.id == "k-carol"
    assert key.plan is basic
    client = make_client([ApiKeyAuth(keys, storage=RedisStore(redis_url, prefix=redis_prefix))])
    ok = client.get("/pets", headers={"x-api-key": value})
    assert ok.status_code == 200
    assert ok.json()["context"]["apiKeyId"] == "k-carol"
    assert client.get("/pets", headers={"x-api-key": value}).status_code == 200
    assert client.get("/pets", headers={"x-api-key": value}).json() == {"message": "Limit Exceeded"}
    assert keys.disable("k-carol")
    assert client.get("/pets", headers={"x-api-key": value}).status_code == 403
    assert keys.enable("k-carol")
    assert client.get("/pets", headers={"x-api-key": value}).status_code == 429
    assert keys.delete("k-carol")
    assert keys.get("k-carol") is None
    assert client.get("/pets", headers={"x-api-key": value}).status_code == 403
    assert not keys.disable("k-carol")
    # Only the hash was ever written.
    raw = redis.Redis.from_url(redis_url)
    keys.add(value, id="k-carol")
    dump = b"".join(
        k + b"".join(raw.hgetall(k).values()) if raw.type(k) == b"hash" else k + raw.get(k)
        for k in raw.scan_iter(match=redis_prefix + "*")
        if raw.type(k) in (b"hash", b"string")
    )
    assert value.encode() not in dump
    raw.close()


def test_redis_key_store_cache_is_the_revocation_delay(redis_url, redis_prefix) -> None:
    keys = RedisKeyStore(redis_url, prefix=redis_prefix, cache_ttl=0.3)
    other = RedisKeyStore(redis_url, prefix=redis_prefix, cache_ttl=0)
    key = keys.add(ALICE, id="k-alice")
    assert keys.lookup(key.key_hash) is not None
    other.delete("k-alice")  # another process deletes it
    assert keys.lookup(key.key_hash) is not None  # still cached here
    time.sleep(0.35)
    assert keys.lookup(key.key_hash) is None


def test_cached_keys_through_the_gateway(make_client, redis_url, redis_prefix) -> None:
    basic = UsagePlan("basic", quota=Quota(100))
    keys = RedisKeyStore(redis_url, plans={"basic": basic}, prefix=redis_prefix, cache_ttl=0.3)
    admin = RedisKeyStore(redis_url, plans={"basic": basic}, prefix=redis_prefix, cache_ttl=0)
    value = generate_api_key()
    admin.add(value, id="k-dave", plan="basic")
    client = make_client([ApiKeyAuth(keys, storage=RedisStore(redis_url, prefix=redis_prefix))])
    first = client.get("/pets", headers={"x-api-key": value})
    assert first.status_code == 200
    assert first.json()["context"]["apiKeyId"] == "k-dave"
    assert first.seen[0].context.extra["usagePlan"] == "basic"
    admin.disable("k-dave")  # another process revokes the key
    cached = client.get("/pets", headers={"x-api-key": value})
    assert cached.status_code == 200  # within the revocation delay
    assert cached.json()["context"]["apiKeyId"] == "k-dave"
    time.sleep(0.35)
    assert client.get("/pets", headers={"x-api-key": value}).status_code == 403
    assert UsageAdmin(RedisStore(redis_url, prefix=redis_prefix)).used(keys.get("k-dave")) == 2


def test_redis_key_store_rejects_taken_id(redis_url, redis_prefix) -> None:
    from apigw_mw import ConfigurationError

    keys = RedisKeyStore(redis_url, prefix=redis_prefix)
    keys.add(ALICE, id="k-1")
    keys.add(ALICE, id="k-1")  # the same key again is fine
    with pytest.raises(ConfigurationError) as info:
        keys.add(generate_api_key(), id="k-1")
    assert info.value.field == "id"
    with pytest.raises(ConfigurationError):
        keys.add(generate_api_key(), plan="gold")


# -- many processes, one bucket ---------------------------------------------------------------


def _ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "0")])
    return [b""]


def _call(app: Any, ip: str = "127.0.0.1") -> int:
    status = []
    env = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/hammer",
        "REMOTE_ADDR": ip,
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
    }
    for _ in app(env, lambda s, h, e=None: status.append(int(s[:3]))):
        pass
    return status[0]


def _hammer(
    url: str, prefix: str, rate: float, burst: int, go: Any, seconds: float, out: Any
) -> None:
    store = RedisStore(url, prefix=prefix)
    app = WSGIGatewayMiddleware(
        _ok, policies=[Throttle(TokenBucket(rate=rate, burst=burst), key="stage", storage=store)]
    )
    store.clients.sync().ping()  # connect before the start
    out.put("ready")
    go.wait()
    admitted = refused = 0
    # The server decides each request somewhere between our send and its reply: keep both
    # ends of the first and of the last request.
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
    out.put((sent_first, answered_first, sent_last, answered_last, admitted, refused, store.errors))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_processes_share_one_bucket_exactly(redis_url, redis_prefix) -> None:
    rate, burst, seconds, workers = 20.0, 10, 1.5, 3
    # fork: the workers start at once with everything imported (each builds its own client).
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(redis_url, redis_prefix, rate, burst, go, seconds, out))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    assert [out.get(timeout=60) for _ in procs] == ["ready"] * workers
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    # The span between the first and the last decision lies between these two.
    longest = max(r[3] for r in results) - min(r[0] for r in results)
    shortest = max(r[2] for r in results) - min(r[1] for r in results)
    admitted = sum(r[4] for r in results)
    refused = sum(r[5] for r in results)
    assert all(r[6] == 0 for r in results)
    assert refused > admitted  # the bucket was saturated the whole time
    low, high = burst + rate * shortest, burst + rate * longest
    assert high - low < 0.5  # the span is known to a few milliseconds
    assert low - 1 <= admitted <= high + 1, (admitted, low, high)


# -- an outage ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(_free_port())
    server.start()
    yield server
    server.stop()


def test_outage_follows_on_storage_error_and_recovers(make_client, own_redis, caplog) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    store = RedisStore(url, retry_interval=0.2, timeout=0.2)
    bucket = TokenBucket(rate=0.001, burst=2)
    lenient = make_client([Throttle(bucket, key="stage", storage=store, name="lenient")])
    strict = make_client(
        [Throttle(bucket, key="stage", storage=store, name="strict", on_storage_error="deny")]
    )
    assert [lenient.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert [strict.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    own_redis.stop()
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
    assert f"127.0.0.1:{own_redis.port}" in warnings[0].getMessage()
    own_redis.start()  # an empty Redis: the buckets start full again
    time.sleep(0.25)
    assert [lenient.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert [strict.get("/a").status_code for _ in range(3)] == [200, 200, 429]
    assert store.errors == 6


def test_unreachable_redis_fails_fast(make_client) -> None:
    store = RedisStore(f"redis://127.0.0.1:{_free_port()}/0", retry_interval=5)
    client = make_client([Throttle(TokenBucket(1, 1), storage=store)])
    started = time.monotonic()
    statuses = [client.get("/a").status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert time.monotonic() - started < 2
    assert store.errors == 20
