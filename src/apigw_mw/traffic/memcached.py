"""Token buckets and quotas in memcached, decided with compare-and-set.

memcached runs no scripts, so a phase is decided in two steps, each one round trip:

1. one ``gets`` reads every bucket and quota key of the phase with its CAS token;
2. the host decides on its own clock, with the arithmetic every store shares
   (:func:`~apigw_mw.traffic.storage.decide_levels`), and when the request is admitted
   writes every new value in one pipelined batch: ``cas`` for a key that was read, ``add``
   for one that was absent. A refused request writes nothing.

A write that loses a race (another process wrote the key since the read) starts the phase
again from the read, up to ``attempts`` times, then the decision fails and follows the
policy's ``on_storage_error``. When some writes of a batch won and another lost, the winners
are given back first (their tokens and quota counts returned with ``cas``): until then,
other requests see those levels slightly fuller than they are, the one place where this
store is not exact.

The client is this module's own, over memcached's text protocol: one sans-I/O core (the
phase as a generator of exchanges, the reply parser), driven by blocking sockets under the
WSGI adapter and by asyncio streams under the ASGI adapter (one pool per event loop, closed
when the loop shuts down). With several servers, keys are placed by rendezvous hashing of
their hash tag (``{s:<stage>}``, ``{k:<key id>}``), so every key of a phase lives on one
server and a phase stays two round trips.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import select
import socket
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final, TypeVar

from ..exceptions import ConfigurationError, StorageError
from .storage import (
    Hits,
    Level,
    QuotaLevel,
    Raw,
    _close_on_shutdown,
    _ServerStore,
    decide_levels,
    period_bounds,
)

__all__ = ["MemcachedStore", "parse_memcached_uri"]

_DEFAULT_PORT: Final = 11211
_MAX_KEY: Final = 250  # memcached's longest key, in bytes
_RELATIVE_TTL: Final = 30 * 86400  # longer expiry times are read as Unix timestamps
_LATEST: Final = 2**31 - 1  # the latest Unix time memcached's expiry field holds
_MAX_IDLE: Final = 64  # idle connections kept per server (per event loop under asyncio)
# Decisions of one process on the same keys take turns (locks striped by key, taken in
# order): they would only make each other lose compare-and-set races.
_STRIPES: Final = 64
_VALUES: Final = -1  # an exchange answered by a block of VALUE lines ending in END
_STORED: Final = b"STORED"
# Replies of a storage command that lost its race: the key changed (EXISTS), vanished
# (NOT_FOUND) or appeared (NOT_STORED, for ``add``).
_LOST: Final = frozenset({b"EXISTS", b"NOT_FOUND", b"NOT_STORED"})

Address = tuple[str, int] | str  # (host, port), or the path of a Unix socket
# What the phase asks its driver: exchanges ``(server, request, expect)`` performed in order,
# each answered by its parsed reply, or a pause in seconds (answered by ``None``).
# ``expect`` is ``_VALUES`` or the number of one-line replies.
Exchange = tuple[int, bytes, int]
Found = dict[bytes, tuple[bytes, int]]  # memcached key -> (value, CAS token)
T = TypeVar("T")


class ProtocolError(Exception):
    """memcached answered something this client did not ask for (or an error line)."""


# -- the URI ----------------------------------------------------------------------------------


def parse_memcached_uri(uri: str, field: str = "uri") -> list[Address]:
    """The servers of a ``memcached://`` URI, as ``limits`` writes them.

    ``memcached://host:11211``, ``memcached://host1:11211,host2:11211`` (keys spread over
    the servers), ``memcached://[::1]:11211``, ``memcached:///run/memcached.sock`` (a Unix
    socket); ``async+memcached://`` is read the same. Raises :class:`ConfigurationError`
    naming ``field``.

    >>> parse_memcached_uri("memcached://cache1,cache2:11212")
    [('cache1', 11211), ('cache2', 11212)]
    """
    if not isinstance(uri, str):
        raise ConfigurationError(field, f"{uri!r} is not a memcached:// URI")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower().removeprefix("async+") != "memcached":
        raise ConfigurationError(field, f"{uri!r} is not a memcached:// URI")
    if "?" in rest or "#" in rest:
        raise ConfigurationError(
            field,
            f"{uri!r}: memcached URIs take no options; pass them to MemcachedStore(...) "
            "(timeout=, prefix=, attempts=)",
        )
    if "@" in rest:
        raise ConfigurationError(
            field, "memcached's text protocol has no authentication: give the URI no credentials"
        )
    if rest.startswith("/"):
        if len(rest) < 2 or "," in rest:
            raise ConfigurationError(field, f"{uri!r}: give one Unix socket path")
        return [rest]
    rest = rest.removesuffix("/")
    if not rest:
        raise ConfigurationError(field, f"{uri!r} names no server")
    servers: list[Address] = []
    for part in rest.split(","):
        servers.append(_host_port(part.strip(), uri, field))
    if len(set(servers)) != len(servers):
        raise ConfigurationError(field, f"{uri!r} names a server twice")
    return servers


def _host_port(part: str, uri: str, field: str) -> tuple[str, int]:
    if part.startswith("["):  # [IPv6]:port
        host, bracket, tail = part[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigurationError(field, f"{uri!r}: {part!r} is not [address]:port")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = part.partition(":")
    if not host or any(c.isspace() or c in "/[]" for c in host) or ":" in port_text:
        raise ConfigurationError(field, f"{uri!r}: {part!r} is not host:port")
    if not port_text:
        return host, _DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(field, f"{uri!r}: port {port_text!r} is not 1 to 65535")
    return host, int(port_text)


# -- the text protocol, without I/O -----------------------------------------------------------


def parse_reply(buf: bytes, expect: int) -> Found | list[bytes] | None:
    """The reply held by ``buf``, or ``None`` while it is incomplete.

    ``expect`` is ``_VALUES`` for the answer to ``gets`` (key -> (value, CAS token)), or
    the number of one-line replies to a batch of storage or ``delete`` commands. An error
    line (``ERROR``, ``CLIENT_ERROR ...``, ``SERVER_ERROR ...``) or bytes past the reply
    raise :class:`ProtocolError`.
    """
    if expect != _VALUES:
        if buf.count(b"\r\n") < expect:
            return None
        lines = buf.split(b"\r\n")
        if len(lines) != expect + 1 or lines[-1]:
            raise ProtocolError(f"unexpected reply {buf[:200]!r}")
        for line in lines[:-1]:
            if line.endswith(b"ERROR") or line.startswith((b"CLIENT_ERROR", b"SERVER_ERROR")):
                raise ProtocolError(line.decode("ascii", "replace"))
        return lines[:-1]
    found: Found = {}
    pos = 0
    size = len(buf)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if eol == pos + 3 and buf[pos:eol] == b"END":
            if eol + 2 != size:
                raise ProtocolError(f"bytes after END: {buf[eol + 2 : eol + 200]!r}")
            return found
        head = buf[pos:eol].split(b" ")
        if len(head) != 5 or head[0] != b"VALUE":
            raise ProtocolError(buf[pos:eol][:200].decode("ascii", "replace"))
        try:
            length = int(head[3])
            token = int(head[4])
        except ValueError as exc:
            raise ProtocolError(f"bad VALUE line {buf[pos:eol][:200]!r}") from exc
        start = eol + 2
        end = start + length
        if size < end + 2:
            return None
        if buf[end : end + 2] != b"\r\n":
            raise ProtocolError("a value is not followed by CRLF")
        found[head[1]] = (buf[start:end], token)
        pos = end + 2


def _expiry(seconds: float) -> int:
    """memcached's expiry field for a lifetime of ``seconds`` (at least one second).

    Lifetimes over 30 days must be sent as a Unix time, which the server compares with its
    own clock: the host's real clock gives it (not the store's, which tests may move).
    """
    ttl = max(1, math.ceil(seconds))
    if ttl <= _RELATIVE_TTL:
        return ttl
    # memcached reads the field as a signed 32-bit int: a later time would overflow into the
    # past and expire the key at once (a bucket that takes years to refill).
    return min(int(time.time()) + ttl, _LATEST)


def _store_command(key: bytes, value: bytes, ttl: float, token: int | None) -> bytes:
    if token is None:
        return b"add %s 0 %d %d\r\n%s\r\n" % (key, _expiry(ttl), len(value), value)
    return b"cas %s 0 %d %d %d\r\n%s\r\n" % (key, _expiry(ttl), len(value), token, value)


def _token(item: tuple[bytes, int] | None) -> int | None:
    return None if item is None else item[1]


def _tat(item: tuple[bytes, int] | None) -> float | None:
    if item is None:
        return None
    try:
        value = float(item[0])
    except ValueError:
        return None  # not ours: read as a full bucket, and written over with its CAS token
    return value if math.isfinite(value) else None


def _count(item: tuple[bytes, int] | None) -> tuple[int, int] | None:
    if item is None:
        return None
    period, _, count = item[0].partition(b":")
    try:
        return int(period), int(count)
    except ValueError:
        return None


class _Plan:
    """A phase's keys as memcached sees them, its read request, and the stripes of the
    process's key locks it takes (kept per effect)."""

    __slots__ = ("keys", "reads", "stripes")

    def __init__(self, keys: dict[str, tuple[bytes, int]]) -> None:
        self.keys = keys  # level or quota key -> (memcached key, server index)
        self.reads = _reads(list(keys.values()))
        self.stripes = sorted({zlib.crc32(mkey) % _STRIPES for mkey, _ in keys.values()})


def _reads(keys: Sequence[tuple[bytes, int]]) -> list[Exchange]:
    """One ``gets`` per server for these (memcached key, server) pairs."""
    by_server: dict[int, list[bytes]] = {}
    for mkey, server in keys:
        names = by_server.setdefault(server, [])
        if mkey not in names:
            names.append(mkey)
    return [(s, b"gets " + b" ".join(names) + b"\r\n", _VALUES) for s, names in by_server.items()]


# -- connections ------------------------------------------------------------------------------


class _Server:
    """One memcached server: a pool of blocking sockets, and asyncio connections."""

    def __init__(self, address: Address, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self.idle: list[socket.socket] = []
        self.lock = threading.Lock()

    def __str__(self) -> str:
        if isinstance(self.address, str):
            return self.address
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # Blocking ---------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(self.address)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _take(self) -> socket.socket:
        while True:
            with self.lock:
                sock = self.idle.pop() if self.idle else None
            if sock is None:
                return self._connect()
            # An idle connection the server closed (a restart) reads as ready: drop it
            # before sending, rather than fail a decision on it.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return sock  # nothing to read: the connection is sound
            sock.close()

    def exchange_sync(self, request: bytes, expect: int) -> Any:
        sock = self._take()
        try:
            sock.sendall(request)
            buf = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("memcached closed the connection")
                buf += chunk
                reply = parse_reply(buf, expect)
                if reply is not None:
                    break
        except BaseException:
            sock.close()
            raise
        with self.lock:
            if len(self.idle) < _MAX_IDLE:
                self.idle.append(sock)
                return reply
        sock.close()
        return reply

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for sock in idle:
            sock.close()

    # asyncio ----------------------------------------------------------------------------

    async def _aconnect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.address, str):
            return await asyncio.open_unix_connection(self.address)
        host, port = self.address
        return await asyncio.open_connection(host, port)

    async def exchange_async(self, idle: list[Any], request: bytes, expect: int) -> Any:
        conn = None
        while idle:
            conn = idle.pop()
            if not conn[0].at_eof() and not conn[1].is_closing():
                break
            conn[1].close()
            conn = None
        if conn is None:
            conn = await self._aconnect()
        reader, writer = conn
        try:
            writer.write(request)
            buf = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionResetError("memcached closed the connection")
                buf += chunk
                reply = parse_reply(buf, expect)
                if reply is not None:
                    break
        except BaseException:
            writer.close()
            raise
        if len(idle) < _MAX_IDLE:
            idle.append(conn)
        else:
            writer.close()
        return reply


class _LoopConnections:
    """The idle asyncio connections of one event loop, one list per server, and the loop's
    key locks (made when first needed)."""

    def __init__(self, servers: int) -> None:
        self.idle: list[list[Any]] = [[] for _ in range(servers)]
        self.locks: list[asyncio.Lock | None] = [None] * _STRIPES

    def lock(self, stripe: int) -> asyncio.Lock:
        lock = self.locks[stripe]
        if lock is None:
            lock = self.locks[stripe] = asyncio.Lock()
        return lock

    async def aclose(self) -> None:
        for conns in self.idle:
            while conns:
                conns.pop()[1].close()


if sys.version_info >= (3, 11):

    async def _bounded(step: Any, seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            return await step

else:  # pragma: no cover - Python 3.10

    async def _bounded(step: Any, seconds: float) -> Any:
        return await asyncio.wait_for(step, seconds)


def _close_sockets(servers: list[_Server]) -> None:
    for server in servers:
        server.close()


# A forked child (gunicorn's workers, after ``--preload``) must not talk over its parent's
# connections: the replies would go to whichever process reads first.
_live: weakref.WeakSet[MemcachedStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_live):
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the store --------------------------------------------------------------------------------


class MemcachedStore(_ServerStore):
    """Token buckets and quotas in memcached, shared by every process and host using it.

    Each phase costs two round trips when it admits (a ``gets`` of all its keys, then one
    pipelined batch of ``cas``/``add``), one when it refuses; a lost compare-and-set race
    costs a new attempt. Each host decides on its own clock: keep hosts on NTP.

    Args:
        uri: ``memcached://host:11211``, several servers as
            ``memcached://host1:11211,host2:11211``, or ``memcached:///path/to.sock``.
        prefix: prepended to every key this store writes (printable ASCII, no spaces).
        timeout: connect and read timeout in seconds (under asyncio, for each whole
            exchange).
        attempts: how many times a phase is decided again after losing a race before the
            decision fails (and follows ``on_storage_error``).
        retry_interval: after a failure, decisions skip memcached for this many seconds
            (and follow ``on_storage_error``) before trying again.
        log_interval: an outage is logged at most once per this many seconds.
        clock: returns epoch seconds (``time.time``); tests pass a controllable clock.

    Attributes:
        errors: decisions that failed (server unreachable, or ``attempts`` races lost).
        retries: decisions started again after a lost race.

    Example::

        store = MemcachedStore("memcached://cache1:11211,cache2:11211", prefix="shop:")
        policies = [Throttle(TokenBucket(rate=100, burst=200), storage=store)]
    """

    def __init__(
        self,
        uri: str,
        *,
        prefix: str = "apigw-mw:",
        timeout: float = 0.5,
        attempts: int = 8,
        retry_interval: float = 1.0,
        log_interval: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        addresses = parse_memcached_uri(uri)
        if (
            not isinstance(prefix, str)
            or len(prefix) > 100
            or not prefix.isascii()
            or not all(c.isprintable() and not c.isspace() for c in prefix)
        ):
            raise ConfigurationError(
                "prefix", "must be at most 100 printable ASCII characters without spaces"
            )
        self._options(timeout, retry_interval, log_interval, clock)
        if timeout == 0:
            raise ConfigurationError("timeout", "must be more than 0 seconds")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError("attempts", "must be an int of at least 1")
        self.uri = uri
        self.prefix = prefix
        self.timeout = timeout
        self.attempts = attempts
        self.clock = clock if clock is not None else time.time
        self.retries = 0
        self.servers = [_Server(a, timeout) for a in addresses]
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        # Rendezvous hashing: each server's seed, mixed with a key's hash tag.
        self._seeds = [zlib.crc32(str(s).encode()) for s in self.servers]
        self._errors: tuple[type[BaseException], ...] = (
            OSError,
            ProtocolError,
            asyncio.TimeoutError,
        )
        self._loops: weakref.WeakKeyDictionary[Any, tuple[_LoopConnections, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[Any, _LoopConnections] | None = None
        # Idle blocking sockets are closed when the store is (or at exit).
        self._finalizer = weakref.finalize(self, _close_sockets, self.servers)
        _live.add(self)

    def _forked(self) -> None:
        """In a forked child: drop the parent's connections (closing only this process's
        copies) and locks, which another thread may have held at the fork."""
        for server in self.servers:
            server.lock = threading.Lock()
            server.close()
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self._state_lock = threading.Lock()
        self._loops = weakref.WeakKeyDictionary()
        self._last = None

    server_name = "memcached"

    def describe(self) -> str:
        return f"memcached store {self.uri}"

    def close(self) -> None:
        """Close the idle blocking connections (asyncio ones close with their loop)."""
        for server in self.servers:
            server.close()

    # Keys ---------------------------------------------------------------------------------

    def memcached_key(self, key: str) -> bytes:
        """The memcached key of a bucket or quota key: the prefix, then the key with spaces,
        control characters, ``%`` and non-ASCII escaped (``%20``); a key that would pass
        memcached's 250 bytes becomes ``%%`` and its SHA-256 (escaping never writes
        ``%%``, so two keys never share a name)."""
        if key.isascii() and key.isprintable() and " " not in key and "%" not in key:
            raw = key.encode()
        else:
            raw = b"".join(
                bytes((c,)) if 0x20 < c < 0x7F and c != 0x25 else b"%%%02X" % c
                for c in key.encode()
            )
        out = self.prefix.encode() + raw
        if len(out) > _MAX_KEY:
            out = self.prefix.encode() + b"%%" + hashlib.sha256(key.encode()).hexdigest().encode()
        return out

    def server_of(self, key: str) -> int:
        """The index of the server holding ``key``: chosen by its hash tag (the text between
        the first ``{`` and the next ``}``, else the whole key), so the keys of one phase
        share a server."""
        if len(self.servers) == 1:
            return 0
        tag = key
        open_ = key.find("{")
        if open_ >= 0:
            close = key.find("}", open_ + 1)
            if close > open_ + 1:
                tag = key[open_ + 1 : close]
        data = tag.encode()
        scores = [zlib.crc32(data, seed) for seed in self._seeds]
        return scores.index(max(scores))

    def _plan(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> _Plan:
        keys: dict[str, tuple[bytes, int]] = {}
        for lv in levels:
            if lv.key not in keys:
                keys[lv.key] = (self.memcached_key(lv.key), self.server_of(lv.key))
        for q in quotas:
            if q.key not in keys:
                keys[q.key] = (self.memcached_key(q.key), self.server_of(q.key))
        return _Plan(keys)

    def _prepared(
        self, effect: Hits | None, levels: Sequence[Level], quotas: Sequence[QuotaLevel]
    ) -> _Plan:
        if effect is None or effect.ctx is not None:  # built for this request only
            return self._plan(levels, quotas)
        cmd = effect.cmd  # an effect reused for every request: its plan is kept
        if cmd is None or cmd[0] is not self:
            cmd = effect.cmd = (self, self._plan(levels, quotas))
        return cmd[1]  # type: ignore[no-any-return]

    # The phase, as a generator of exchanges -------------------------------------------------

    def _phase(
        self,
        plan: _Plan,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Generator[list[Exchange] | float, Any, Raw | None]:
        keys = plan.keys
        for attempt in range(self.attempts):
            if attempt:
                with self._state_lock:
                    self.retries += 1
                if attempt > 1:  # spread out workers that keep colliding
                    yield random.random() * 0.0002 * attempt
            found: Found = {}
            for reply in (yield plan.reads):
                found.update(reply)
            now = self.clock()
            tats: dict[str, float] = {}
            counts: dict[str, tuple[int, int]] = {}
            for lv in levels:
                tat = _tat(found.get(keys[lv.key][0]))
                if tat is not None:
                    tats[lv.key] = tat
            for q in quotas:
                held = _count(found.get(keys[q.key][0]))
                if held is not None:
                    counts[q.key] = held
            raw, pending, counted = decide_levels(now, levels, quotas, tats, counts)
            if not raw[1]:
                return raw  # refused: nothing written
            # Every new value in one batch per server. What each write took is kept, to be
            # given back if another write of the batch loses: the seconds a bucket's ``tat``
            # moved on; the period (first day) a quota counted in, and when it ends.
            batches: dict[int, list[bytes]] = {}
            order: dict[int, list[str]] = {}
            moved: dict[str, float] = {}
            periods: dict[str, tuple[int, float]] = {}
            for key, tat in pending.items():
                mkey, server = keys[key]
                item = found.get(mkey)
                batches.setdefault(server, []).append(
                    _store_command(mkey, repr(tat).encode(), tat - now + 2, _token(item))
                )
                order.setdefault(server, []).append(key)
                moved[key] = tat - max(tats.get(key, now), now)
            if counted:
                ends = {q.key: q.bounds(now)[1] for q in quotas}
                for key, (start, count) in counted.items():
                    mkey, server = keys[key]
                    item = found.get(mkey)
                    end = ends[key]
                    batches.setdefault(server, []).append(
                        _store_command(
                            mkey, b"%d:%d" % (start, count), end - now + 3600, _token(item)
                        )
                    )
                    order.setdefault(server, []).append(key)
                    periods[key] = (start, end)
            replies = yield [(s, b"".join(c), len(c)) for s, c in batches.items()]
            won: list[str] = []
            lost = False
            for server, lines in zip(batches, replies):
                for key, line in zip(order[server], lines):
                    if line == _STORED:
                        won.append(key)
                    elif line in _LOST:
                        lost = True
                    else:
                        raise ProtocolError(line.decode("ascii", "replace"))
            if not lost:
                return raw if detail else None
            if won:
                yield from self._give_back(
                    plan,
                    {k: moved[k] for k in won if k in moved},
                    {k: periods[k] for k in won if k in periods},
                )
        raise StorageError(
            f"{self.attempts} attempts lost their compare-and-set races (contention)"
        )

    def _give_back(
        self,
        plan: _Plan,
        moved: dict[str, float],
        periods: dict[str, tuple[int, float]],
    ) -> Generator[list[Exchange] | float, Any, None]:
        """Return what the won writes of a failed batch took: ``moved`` holds the seconds
        each bucket's ``tat`` moved on, ``periods`` the period (first day, end) each quota
        counted in. Each is taken off the value found now, whatever others wrote since."""
        keys = plan.keys
        todo = [*moved, *periods]
        for _ in range(self.attempts):
            found: Found = {}
            for reply in (yield _reads([keys[k] for k in todo])):
                found.update(reply)
            now = self.clock()
            batches: dict[int, list[bytes]] = {}
            order: dict[int, list[str]] = {}
            for key in todo:
                mkey, server = keys[key]
                item = found.get(mkey)
                if item is None:
                    continue  # expired: a full bucket, or a period over
                if key in moved:
                    tat = _tat(item)
                    if tat is None:
                        continue
                    back = tat - moved[key]
                    command = _store_command(mkey, repr(back).encode(), back - now + 2, item[1])
                else:
                    start, end = periods[key]
                    held = _count(item)
                    if held is None or held[0] != start:
                        continue  # a new period: nothing left to return
                    value = b"%d:%d" % (start, max(0, held[1] - 1))
                    command = _store_command(mkey, value, end - now + 3600, item[1])
                batches.setdefault(server, []).append(command)
                order.setdefault(server, []).append(key)
            if not batches:
                return
            replies = yield [(s, b"".join(c), len(c)) for s, c in batches.items()]
            todo = [
                key
                for server, lines in zip(batches, replies)
                for key, line in zip(order[server], lines)
                if line != _STORED
            ]
            if not todo:
                return
        # Still racing after every attempt: those tokens stay spent (stricter, never looser).

    # Drivers ----------------------------------------------------------------------------------

    def _drive_sync(self, stripes: list[int], flow: Generator[Any, Any, T]) -> T:
        if self._down_until > -math.inf:
            self._gate()
        locks = self._locks
        for i in stripes:
            locks[i].acquire()
        try:
            if self._down_until > -math.inf:
                self._gate()  # the decision before ours found the server down
            servers = self.servers
            ask = next(flow)
            while True:
                if isinstance(ask, float):
                    time.sleep(ask)
                    ask = flow.send(None)
                    continue
                answer = [servers[s].exchange_sync(request, expect) for s, request, expect in ask]
                ask = flow.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result
        except self._errors as exc:
            raise self._down(exc) from exc
        finally:
            for i in stripes:
                locks[i].release()

    async def _connections(self) -> _LoopConnections:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            return last[1]
        entry = self._loops.get(loop)
        if entry is None:
            conns = _LoopConnections(len(self.servers))
            # Close the loop's connections when it shuts down: asyncio runs the ``finally``
            # of every open async generator then (``shutdown_asyncgens``).
            closer = _close_on_shutdown(conns)
            await closer.__anext__()
            entry = self._loops[loop] = (conns, closer)
        self._last = (loop, entry[0])
        return entry[0]

    async def _drive_async(self, stripes: list[int], flow: Generator[Any, Any, T]) -> T:
        if self._down_until > -math.inf:
            self._gate()
        servers = self.servers
        timeout = self.timeout
        conns = await self._connections()
        held: list[asyncio.Lock] = []
        try:
            for i in stripes:
                lock = conns.lock(i)
                await lock.acquire()
                held.append(lock)
            if self._down_until > -math.inf:
                self._gate()  # the decision before ours found the server down
            idle = conns.idle
            ask = next(flow)
            while True:
                if isinstance(ask, float):
                    await asyncio.sleep(ask)
                    ask = flow.send(None)
                    continue
                answer = [
                    await _bounded(servers[s].exchange_async(idle[s], request, expect), timeout)
                    for s, request, expect in ask
                ]
                ask = flow.send(answer)
        except StopIteration as stop:
            result: T = stop.value
            return result
        except self._errors as exc:
            raise self._down(exc) from exc
        finally:
            for lock in held:
                lock.release()

    # The store protocol -----------------------------------------------------------------------

    def decide_sync(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        plan = self._prepared(effect, levels, quotas)
        return self._drive_sync(plan.stripes, self._phase(plan, levels, quotas, detail))

    async def decide_async(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        plan = self._prepared(effect, levels, quotas)
        flow = self._phase(plan, levels, quotas, detail)
        return await self._drive_async(plan.stripes, flow)

    def _one(self, key: str, request: bytes, expect: int) -> Any:
        server = self.servers[self.server_of(key)]
        try:
            return server.exchange_sync(request, expect)
        except self._errors as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc

    def quota_used(self, key: str, kind: int, offset: int) -> int:
        mkey = self.memcached_key(key)
        found = self._one(key, b"gets " + mkey + b"\r\n", _VALUES)
        start, _ = period_bounds(int(self.clock() // 86400), kind, offset)
        held = _count(found.get(mkey))
        return held[1] if held is not None and held[0] == start else 0

    def quota_reset(self, key: str) -> None:
        [line] = self._one(key, b"delete " + self.memcached_key(key) + b"\r\n", 1)
        if line not in (b"DELETED", b"NOT_FOUND"):
            raise StorageError(f"memcached answered {line!r} to delete")
