"""Where token buckets and quota counters live: in process memory or in Redis.

A store decides a whole phase at once. The policies of one phase (the route and per-client
:class:`~apigw_mw.Throttle`\\ s, or the API key's plan limits and quota) each yield a
:class:`Hits` effect naming the same store as ``batcher``; the pipeline hands them to the
store together, and the store checks every bucket and quota and commits them only if all have
capacity (all-or-nothing: a refused request consumes nothing at any level of its phase).

- :class:`MemoryStore`: one process; thread-safe; a bucket is forgotten once it is full
  again, so memory follows the number of *recently active* clients; an injectable clock.
- :class:`RedisStore`: any ``redis://``, ``rediss://``, ``redis+unix://``,
  ``redis+sentinel://``, ``redis+cluster://`` (and ``valkey`` twins) URI; the redis-py client
  is the one ``limits`` builds from the URI; one Lua script (one round trip) per phase, on the
  server's clock.

The token bucket is the single-timestamp form (GCRA): a bucket stores the *theoretical
arrival time* ``tat``; a request at ``now`` is admitted when
``max(tat, now) + 1/rate - now <= burst/rate``, and then ``tat`` moves on by ``1/rate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from ..exceptions import ConfigurationError, StorageError
from ..responses import Deny

if TYPE_CHECKING:
    from ..context import RequestContext

__all__ = [
    "BucketSpec",
    "Hits",
    "MemoryStore",
    "RedisStore",
    "Store",
    "decide_levels",
    "get_store",
    "period_bounds",
]

logger = logging.getLogger("apigw_mw.traffic")

DAY, WEEK, MONTH = 0, 1, 2
PERIODS: Final = {"DAY": DAY, "WEEK": WEEK, "MONTH": MONTH}
_EPS: Final = 1e-6  # one microsecond of slack absorbs float rounding in ``tat`` sums
_NONE: Final = -math.inf  # the ``tat`` of a bucket not held: full
_FAILED: Final = Deny("API_CONFIGURATION_ERROR")


# -- calendar periods (UTC), the same arithmetic as the Lua script -------------------------


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def period_bounds(day: int, kind: int, offset: int) -> tuple[int, int]:
    """First day and first day after the quota period holding ``day`` (days since epoch).

    ``DAY`` periods start at 00:00 UTC; ``WEEK`` periods on the weekday ``offset`` (0 is
    Sunday, 1 Monday... 6 Saturday); ``MONTH`` periods on day ``offset + 1`` of the month.

    >>> period_bounds(19723, MONTH, 0)   # 2024-01-01
    (19723, 19754)
    """
    if kind == DAY:
        return day, day + 1
    if kind == WEEK:
        start = day - (day - 3 - offset) % 7  # 1970-01-04 (day 3) was a Sunday
        return start, start + 7
    y, m, d = _civil_from_days(day)
    if d - 1 < offset:
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return _days_from_civil(y, m, offset + 1), _days_from_civil(ny, nm, offset + 1)


# -- what a policy asks a store to check ----------------------------------------------------


def _num(value: float) -> str:
    """A float as the script reads it: shortest round-trip form, ``.0`` dropped."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


class BucketSpec:
    """A token bucket's parameters in the forms the stores use, computed once.

    ``interval`` and ``capacity`` are in seconds (``1/rate`` and ``burst/rate``);
    ``params`` is their text in microseconds for the Redis script.
    """

    __slots__ = ("burst", "capacity", "capacity_eps", "interval", "name", "params", "rate")

    def __init__(self, rate: float, burst: int, name: str) -> None:
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.capacity = burst / rate
        self.capacity_eps = self.capacity + _EPS
        self.name = name
        self.params = f"{_num(self.interval * 1e6)} {_num(self.capacity * 1e6)}"


class Level:
    """One token bucket to check: its storage key and its :class:`BucketSpec`.

    ``interval`` and ``cap`` (the capacity in seconds plus the rounding slack) are copied
    from the spec, so the memory store's hot path reads them off the level itself.
    """

    __slots__ = ("cap", "interval", "key", "spec")

    def __init__(self, key: str, rate: float, burst: int, name: str) -> None:
        spec = BucketSpec(rate, burst, name)
        self.key = key
        self.spec = spec
        self.interval = spec.interval
        self.cap = spec.capacity_eps

    @classmethod
    def of(cls, key: str, spec: BucketSpec) -> Level:
        """A level for ``key`` sharing ``spec`` (nothing is recomputed)."""
        level = _new_level(cls)
        level.key = key
        level.spec = spec
        level.interval = spec.interval
        level.cap = spec.capacity_eps
        return level

    # Read-only views of the spec.
    @property
    def rate(self) -> float:
        return self.spec.rate

    @property
    def burst(self) -> int:
        return self.spec.burst

    @property
    def capacity(self) -> float:
        return self.spec.capacity

    @property
    def name(self) -> str:
        return self.spec.name


_new_level = object.__new__


class QuotaLevel:
    """One quota counter to check.

    The bounds of the current period are cached on the level until the clock leaves them,
    so the calendar arithmetic runs once a period, not once a request.
    """

    __slots__ = ("_bounds", "key", "kind", "limit", "name", "offset", "params")

    def __init__(self, key: str, limit: int, kind: int, offset: int, name: str) -> None:
        self.key = key
        self.limit = limit
        self.kind = kind
        self.offset = offset
        self.name = name
        self.params = f"{limit} {kind} {offset}"
        # (start, end) in epoch seconds, then in days; empty until first used.
        self._bounds: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)

    @classmethod
    def of(cls, key: str, like: QuotaLevel) -> QuotaLevel:
        """A counter for ``key`` with the limit, period and name of ``like`` (nothing is
        recomputed)."""
        level = _new_level(cls)
        level.key = key
        level.limit = like.limit
        level.kind = like.kind
        level.offset = like.offset
        level.name = like.name
        level.params = like.params
        level._bounds = like._bounds
        return level

    def bounds(self, now: float) -> tuple[float, float, int, int]:
        """``(start, end, start_day, end_day)`` of the period holding ``now``."""
        b = self._bounds
        if b[0] <= now < b[1]:
            return b
        start, end = period_bounds(int(now // 86400), self.kind, self.offset)
        b = self._bounds = (start * 86400.0, end * 86400.0, start, end)
        return b


class Owner:
    """What a store needs from the policy behind an effect (duck-typed)."""

    deny_on_error: bool
    headers: bool
    header_slot: str


class Hits:
    """The effect a traffic policy yields: check these buckets and quotas.

    The outcome thrown back into the flow is ``None`` (admitted) or a :class:`Deny`
    (``THROTTLED`` or ``QUOTA_EXCEEDED`` with ``Retry-After``; ``API_CONFIGURATION_ERROR``
    when the store failed and the policy's ``on_storage_error`` is ``"deny"``).
    ``resolve``, when given, supplies the levels at the moment the batch is performed (a
    limit keyed by the API key, known only once the API-key policy of the phase has run).

    An effect without ``resolve`` whose owner wants no headers does not depend on the
    request: policies build it once and yield the same object for every request (``ctx``
    is then ``None``), and a store may keep what it precomputed for it in ``cmd`` (the
    memory store in ``mem``). ``one`` is the level of an effect that is one bucket and
    nothing else (no quota, no headers, nothing to resolve), else ``None``.
    """

    __slots__ = (
        "batcher",
        "cmd",
        "ctx",
        "detail",
        "levels",
        "mem",
        "one",
        "owner",
        "quotas",
        "resolve",
    )

    def __init__(
        self,
        store: Store,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        owner: Any,
        ctx: RequestContext | None,
        resolve: Callable[[], Sequence[Level]] | None = None,
    ) -> None:
        self.batcher = store
        self.levels = levels
        self.quotas = quotas
        self.owner = owner
        self.ctx = ctx
        self.resolve = resolve
        self.detail = detail = bool(owner.headers)
        self.cmd: Any = None
        self.mem: Any = None
        self.one: Level | None = (
            levels[0]
            if resolve is None and not detail and not quotas and len(levels) == 1
            else None
        )

    def run_sync(self) -> Deny | None:
        return self.batcher.run_many_sync([self])[0]

    async def run_async(self) -> Deny | None:
        return (await self.batcher.run_many_async([self]))[0]


def single_hit(store: Store, key: str, spec: BucketSpec, owner: Any) -> Hits:
    """``Hits(store, (Level.of(key, spec),), (), owner, None)``, built without the general
    constructor's work: what a per-client throttle makes for each new client."""
    level = _new_level(Level)
    level.key = key
    level.spec = spec
    level.interval = spec.interval
    level.cap = spec.capacity_eps
    effect = _new_level(Hits)
    effect.batcher = store
    effect.levels = (level,)
    effect.quotas = ()
    effect.owner = owner
    effect.ctx = None
    effect.resolve = None
    effect.cmd = None
    effect.mem = None
    if owner.headers:
        effect.detail = True
        effect.one = None
    else:
        effect.detail = False
        effect.one = level
    return effect


# A store's raw answer: (now, admitted, [(ok, diff)] per bucket, [(ok, count, end)] per quota)
# ``diff`` is max(tat, now) + interval - now; ``count`` the quota used before this request;
# ``end`` the end of the quota period (epoch seconds).
Raw = tuple[float, bool, list[tuple[bool, float]], list[tuple[bool, int, float]]]


def _collect(effects: list[Hits]) -> tuple[list[Level], list[QuotaLevel], bool]:
    levels: list[Level] = []
    quotas: list[QuotaLevel] = []
    detail = False
    for e in effects:
        if e.resolve is not None:
            e.levels = e.resolve()
            e.resolve = None
        if e.levels:
            levels.extend(e.levels)
        if e.quotas:
            quotas.extend(e.quotas)
        if e.detail:
            detail = True
    return levels, quotas, detail


def _verdicts(effects: list[Hits], raw: Raw) -> list[Deny | None]:
    now, admitted, bres, qres = raw
    if admitted:
        for e in effects:
            if e.detail:
                break
        else:
            return [None] * len(effects)
    throttled = not admitted and any(not ok for ok, _ in bres)
    wait = 0.0
    if not admitted:
        i = 0
        for e in effects:
            for lv in e.levels:
                ok, diff = bres[i]
                i += 1
                if not ok:
                    wait = max(wait, diff - lv.spec.capacity)
        if not throttled:
            j = 0
            for e in effects:
                for _q in e.quotas:
                    ok, _count, end = qres[j]
                    j += 1
                    if not ok:
                        wait = max(wait, end - now)
    retry = {"Retry-After": str(max(1, math.ceil(wait - _EPS)))}
    out: list[Deny | None] = []
    i = j = 0
    for e in effects:
        verdict: Deny | None = None
        items: list[tuple[str, int, int, int, int]] = []
        for lv in e.levels:
            sp = lv.spec
            ok, diff = bres[i]
            i += 1
            if not ok:
                verdict = Deny("THROTTLED", headers=retry)
            if e.detail:
                if admitted:
                    remaining = int((sp.capacity - diff) / sp.interval + _EPS)
                    full_in = diff
                else:
                    remaining = 0 if not ok else int((sp.capacity - diff) / sp.interval + 1 + _EPS)
                    full_in = diff - sp.interval
                items.append(
                    (
                        sp.name,
                        sp.burst,
                        max(1, math.ceil(sp.capacity - _EPS)),
                        max(0, remaining),
                        max(0, math.ceil(full_in - _EPS)),
                    )
                )
        for q in e.quotas:
            ok, count, end = qres[j]
            j += 1
            if not ok and not throttled:
                verdict = Deny("QUOTA_EXCEEDED", headers=retry)
            if e.detail:
                used = count + 1 if admitted else count
                start = q.bounds(now)[0]
                items.append(
                    (
                        q.name,
                        q.limit,
                        int(end - start),
                        max(0, q.limit - used),
                        max(0, math.ceil(end - now)),
                    )
                )
        if items and e.ctx is not None:
            e.ctx.extra[e.owner.header_slot] = items
        out.append(verdict)
    return out


def decide_levels(
    now: float,
    levels: Sequence[Level],
    quotas: Sequence[QuotaLevel],
    tats: Mapping[str, float],
    counts: Mapping[str, tuple[int, int]],
) -> tuple[Raw, dict[str, float], dict[str, tuple[int, int]]]:
    """Decide a phase on values read from a store that cannot run the decision itself.

    ``tats`` holds the stored ``tat`` of each bucket read, ``counts`` each quota counter's
    ``(first day of its period, count)``; an absent key is a full bucket or an unused quota.
    Returns the :data:`Raw` answer and, for an admitted request, the values to write: each
    bucket's new ``tat`` and each quota's ``(first day, count)``. The arithmetic is
    :class:`MemoryStore`'s (a key named twice in a phase is hit twice).
    """
    admitted = True
    bres: list[tuple[bool, float]] = []
    pending: dict[str, float] = {}
    for lv in levels:
        key = lv.key
        sp = lv.spec
        tat = pending.get(key)
        if tat is None:
            tat = tats.get(key, now)
        if tat < now:
            tat = now
        diff = tat + sp.interval - now
        if diff <= sp.capacity_eps:
            pending[key] = now + diff
            bres.append((True, diff))
        else:
            admitted = False
            bres.append((False, diff))
    qres: list[tuple[bool, int, float]] = []
    counted: dict[str, tuple[int, int]] = {}
    for q in quotas:
        _, end, start, _ = q.bounds(now)
        held = counted.get(q.key)
        if held is None:
            held = counts.get(q.key)
        count = held[1] if held is not None and held[0] == start else 0
        ok = count < q.limit
        if ok:
            counted[q.key] = (start, count + 1)
        else:
            admitted = False
        qres.append((ok, count, end))
    return (now, admitted, bres, qres), pending, counted


class Store:
    """Base of the stores: the batcher protocol, failure accounting and logging.

    Attributes:
        errors: how many phase decisions failed because the store was unavailable.
    """

    log_interval: float = 60.0
    retry_interval: float = 1.0

    def __init__(self) -> None:
        self.errors = 0
        self._last_log = -math.inf
        self._down_until = -math.inf
        self._state_lock = threading.Lock()
        self._windows: Any = None

    # Batcher protocol -------------------------------------------------------------------

    def _todo(
        self, effects: list[Hits]
    ) -> tuple[Hits | None, Sequence[Level], Sequence[QuotaLevel], bool] | None:
        """What to decide for a batch (``None``: nothing, every effect admitted)."""
        if len(effects) == 1:  # one policy's effect: no lists to merge
            e = effects[0]
            if e.resolve is not None:
                e.levels = e.resolve()
                e.resolve = None
            if not e.levels and not e.quotas:
                return None
            return e, e.levels, e.quotas, e.detail
        levels, quotas, detail = _collect(effects)
        if not levels and not quotas:
            return None
        return None, levels, quotas, detail

    def run_many_sync(self, effects: list[Hits]) -> list[Deny | None]:
        todo = self._todo(effects)
        if todo is None:
            return [None] * len(effects)
        try:
            raw = self.decide_sync(*todo)
        except StorageError as exc:
            return self._failed(effects, exc)
        return [None] * len(effects) if raw is None else _verdicts(effects, raw)

    async def run_many_async(self, effects: list[Hits]) -> list[Deny | None]:
        todo = self._todo(effects)
        if todo is None:
            return [None] * len(effects)
        try:
            raw = await self.decide_async(*todo)
        except StorageError as exc:
            return self._failed(effects, exc)
        return [None] * len(effects) if raw is None else _verdicts(effects, raw)

    # What each store implements ---------------------------------------------------------

    def decide_sync(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        """Check and commit (all or nothing): ``None`` when admitted and ``detail`` is
        false, else the :data:`Raw` answer. ``effect`` is the single effect decided, if
        so, for stores that precompute per effect."""
        raw = self.check_sync(levels, quotas)
        return None if raw[1] and not detail else raw

    async def decide_async(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        return self.decide_sync(effect, levels, quotas, detail)

    def check_sync(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> Raw:
        """Check and commit (all or nothing), and answer in detail."""
        raise NotImplementedError

    async def check_async(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> Raw:
        return self.check_sync(levels, quotas)

    def quota_used(self, key: str, kind: int, offset: int) -> int:
        """The count of the current period of quota counter ``key``."""
        raise NotImplementedError

    def quota_reset(self, key: str) -> None:
        """Forget quota counter ``key``."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    # Failures ---------------------------------------------------------------------------

    def _failed(self, effects: Sequence[Any], exc: BaseException) -> list[Deny | None]:
        now = time.monotonic()
        with self._state_lock:
            self.errors += 1
            log = now - self._last_log >= self.log_interval
            if log:
                self._last_log = now
        if log:
            logger.warning(
                "%s unavailable (%s); applying each policy's on_storage_error "
                "(%d failed decisions so far)",
                self.describe(),
                exc,
                self.errors,
            )
        return [_FAILED if e.owner.deny_on_error else None for e in effects]


class MemoryStore(Store):
    """Token buckets and quotas in this process's memory.

    Args:
        clock: returns the current time in epoch seconds (``time.time``); tests pass a
            controllable clock.
        max_buckets: a hard cap on the number of buckets kept; past it the least recently
            used are forgotten. Buckets are forgotten anyway once they are full again (which
            cannot change a decision), so the cap only matters for floods of distinct clients
            that keep their buckets draining.

    Safe under threads. Example::

        clock = FakeClock(1_700_000_000.0)
        store = MemoryStore(clock=clock)
        policies = [Throttle(TokenBucket(rate=1, burst=2), storage=store)]
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_buckets: int = 2_000_000
    ) -> None:
        super().__init__()
        if not isinstance(max_buckets, int) or max_buckets < 1:
            raise ConfigurationError("max_buckets", "must be a positive int")
        self.clock = clock
        self.max_buckets = max_buckets
        # Bucket key -> theoretical arrival time, least recently used first.
        self._buckets: OrderedDict[str, float] = OrderedDict()
        # Quota key -> [first day of the period counted, count].
        self._quotas: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._ops = 0

    def __len__(self) -> int:
        """How many buckets are held (full buckets are not)."""
        return len(self._buckets)

    #: In-process work that never blocks: the pipeline performs it without a driver hop.
    inline = True

    # The hot paths: one lock acquisition and one clock read per phase. The lock is taken
    # with ``acquire``/``release`` rather than ``with``: half the cost on this path.

    def run_many_sync(self, effects: list[Hits]) -> list[Deny | None]:
        if len(effects) == 1:
            e = effects[0]
            lv = e.one
            if lv is not None:
                # One bucket, nothing else (a stage, route or per-client limit): one GCRA
                # step. ``tat`` becomes the bucket's new theoretical arrival time, and
                # ``tat - now`` the wait a refusal reports.
                key = lv.key
                buckets = self._buckets
                lock = self._lock
                lock.acquire()
                try:
                    now = self.clock()
                    tat = buckets.get(key, _NONE)
                    if tat < now:
                        # Full (or not held: the same): admits, and starts draining.
                        grew = tat is _NONE
                        tat = now + lv.interval
                        ok = True
                    else:
                        grew = False
                        tat += lv.interval
                        ok = tat - now <= lv.cap
                    if ok:
                        buckets[key] = tat
                        buckets.move_to_end(key)
                    self._ops = ops = self._ops + 1
                    if not ops & 15 or (grew and len(buckets) > self.max_buckets):
                        self._sweep(now)
                finally:
                    lock.release()
                if ok:
                    return [None]
                return _verdicts(effects, (now, False, [(False, tat - now)], []))
            program = e.mem
            if program is None and e.ctx is None and e.resolve is None and not e.detail:
                program = e.mem = _program(e.levels, e.quotas)
            if program:
                return self._run(e, program)
        return Store.run_many_sync(self, effects)

    def _run(self, e: Hits, program: _Program) -> list[Deny | None]:
        """Decide one reused effect of up to two buckets and a quota (a key's plan)."""
        k1, i1, c1, k2, i2, c2, quota = program
        buckets = self._buckets
        lock = self._lock
        lock.acquire()
        try:
            now = self.clock()
            ok = True
            new = 0  # buckets not held yet
            if k1 is not None:
                t1 = buckets.get(k1, _NONE)
                if t1 < now:  # full or not held: admits
                    if t1 is _NONE:
                        new = 1
                    t1 = now + i1
                else:
                    t1 += i1
                    ok = t1 - now <= c1
                if ok and k2 is not None:
                    t2 = buckets.get(k2, _NONE)
                    if t2 < now:
                        if t2 is _NONE:
                            new += 1
                        t2 = now + i2
                    else:
                        t2 += i2
                        ok = t2 - now <= c2
            if ok and quota is not None:
                # Decided last: once the quota is counted nothing can refuse any more.
                bounds = quota._bounds
                if not bounds[0] <= now < bounds[1]:
                    bounds = quota.bounds(now)
                entry = self._quotas.get(quota.key)
                if entry is not None and entry[0] == bounds[2]:
                    if entry[1] < quota.limit:
                        entry[1] += 1
                    else:
                        ok = False
                else:
                    self._quotas[quota.key] = [bounds[2], 1]
            if ok:
                if k1 is not None:
                    buckets[k1] = t1
                    buckets.move_to_end(k1)
                    if k2 is not None:
                        buckets[k2] = t2
                        buckets.move_to_end(k2)
                self._ops = ops = self._ops + 1
                if not ops & 15 or (new and len(buckets) > self.max_buckets):
                    self._sweep(now)
                return [None]
            # Refused (rare): answered in detail at the same instant, committing nothing.
            raw = self._check(now, e.levels, e.quotas)
        finally:
            lock.release()
        return _verdicts([e], raw)

    def decide_sync(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        if detail or len(quotas) > 1:
            raw = self.check_sync(levels, quotas)
            return None if raw[1] and not detail else raw
        buckets = self._buckets
        lock = self._lock
        lock.acquire()
        try:
            now = self.clock()
            # Decide without building an answer; a refusal (rare) is answered in detail by
            # ``_check`` at the same instant, still under the lock, committing nothing.
            pending: dict[str, float] = {}
            for lv in levels:
                key = lv.key
                held = pending.get(key) if pending else None
                tat = buckets.get(key, now) if held is None else held
                if tat < now:
                    tat = now
                tat += lv.interval
                if tat - now > lv.cap:
                    return self._check(now, levels, quotas)
                pending[key] = tat
            if quotas:
                q = quotas[0]
                bounds = q._bounds
                if not bounds[0] <= now < bounds[1]:
                    bounds = q.bounds(now)
                start = bounds[2]
                entry = self._quotas.get(q.key)
                if entry is None or entry[0] != start:
                    entry = self._quotas[q.key] = [start, 0]
                if entry[1] >= q.limit:
                    return self._check(now, levels, quotas)
                entry[1] += 1
            move = buckets.move_to_end
            for key, tat in pending.items():
                buckets[key] = tat
                move(key)
            self._ops = ops = self._ops + 1
            if not ops & 15 or len(buckets) > self.max_buckets:
                self._sweep(now)
        finally:
            lock.release()
        return None

    def check_sync(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> Raw:
        with self._lock:
            return self._check(self.clock(), levels, quotas)

    def _check(self, now: float, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> Raw:
        """Decide in detail and commit if admitted; the caller holds the lock."""
        buckets = self._buckets
        admitted = True
        bres: list[tuple[bool, float]] = []
        pending: dict[str, float] = {}
        for lv in levels:
            key = lv.key
            held = pending.get(key) if pending else None
            tat = buckets.get(key, now) if held is None else held
            if tat < now:
                tat = now
            tat += lv.interval
            diff = tat - now
            if diff <= lv.cap:
                pending[key] = tat
                bres.append((True, diff))
            else:
                admitted = False
                bres.append((False, diff))
        qres: list[tuple[bool, int, float]] = []
        if quotas:
            counted: dict[str, tuple[int, int]] = {}
            stored = self._quotas
            for q in quotas:
                _, end, start, _ = q.bounds(now)
                held_q = counted.get(q.key)
                if held_q is not None:
                    count = held_q[1] if held_q[0] == start else 0
                else:
                    entry = stored.get(q.key)
                    count = entry[1] if entry is not None and entry[0] == start else 0
                ok = count < q.limit
                if ok:
                    counted[q.key] = (start, count + 1)
                else:
                    admitted = False
                qres.append((ok, count, end))
            if admitted:
                for key, (start, count) in counted.items():
                    stored[key] = [start, count]
        if admitted:
            move = buckets.move_to_end
            for key, tat in pending.items():
                buckets[key] = tat
                move(key)
        self._ops += 1
        if not self._ops & 15 or len(buckets) > self.max_buckets:
            self._sweep(now)
        return now, admitted, bres, qres

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again, oldest updates first (a few per call), and
        the least recently used past ``max_buckets``."""
        buckets = self._buckets
        limit = self.max_buckets
        for _ in range(48):
            if not buckets:
                return
            oldest = next(iter(buckets))
            if buckets[oldest] > now and len(buckets) <= limit:
                return
            del buckets[oldest]

    async def run_many_async(self, effects: list[Hits]) -> list[Deny | None]:
        # Nothing to wait for in memory: the sync path, without a second coroutine.
        return self.run_many_sync(effects)

    def quota_used(self, key: str, kind: int, offset: int) -> int:
        with self._lock:
            start, _ = period_bounds(int(self.clock() // 86400), kind, offset)
            entry = self._quotas.get(key)
            return entry[1] if entry is not None and entry[0] == start else 0

    def quota_reset(self, key: str) -> None:
        with self._lock:
            self._quotas.pop(key, None)

    def describe(self) -> str:
        return "memory store"


# A reused effect compiled for the memory store: key, interval and cap of up to two
# buckets (``None`` keys when absent), and the quota or ``None``.
_Program = tuple[str | None, float, float, str | None, float, float, QuotaLevel | None]


def _program(levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> _Program | Literal[False]:
    """The memory store's form of a reused effect; ``False`` for the shapes the general
    path decides (more than two buckets, one bucket named twice, several quotas)."""
    if len(levels) > 2 or len(quotas) > 1:
        return False
    if len(levels) == 2 and levels[0].key == levels[1].key:
        return False
    k1 = k2 = None
    i1 = c1 = i2 = c2 = 0.0
    if levels:
        k1, i1, c1 = levels[0].key, levels[0].interval, levels[0].cap
    if len(levels) == 2:
        k2, i2, c2 = levels[1].key, levels[1].interval, levels[1].cap
    return k1, i1, c1, k2, i2, c2, (quotas[0] if quotas else None)


# -- Redis ------------------------------------------------------------------------------------

_LUA: Final = """
-- KEYS: bucket keys, then quota keys.
-- ARGV[1]: 'interval capacity ...|limit kind offset ...': each bucket's interval and
--          capacity in microseconds, each quota's limit, period kind and offset.
-- ARGV[2]: '' or 'd' (answer in detail even when admitted), followed by the time in
--          microseconds, or nothing for the server's clock.
-- Returns 1 when admitted (unless 'd'), else {now, admitted, (ok, diff) per bucket,
-- (ok, count, period end in days) per quota}.
local spec = ARGV[1]
local bar = string.find(spec, '|', 1, true)
local bp = {}
for v in string.gmatch(string.sub(spec, 1, bar - 1), '%S+') do bp[#bp + 1] = tonumber(v) end
local nb = #bp / 2
local qp = {}
for v in string.gmatch(string.sub(spec, bar + 1), '%S+') do qp[#qp + 1] = tonumber(v) end
local nq = #qp / 3
local mode = ARGV[2]
local detail = string.sub(mode, 1, 1) == 'd'
if detail then mode = string.sub(mode, 2) end
local now
if mode ~= '' then
  now = tonumber(mode)
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local vals = redis.call('MGET', unpack(KEYS))
local ok = 1
local pend = {}
local bres = {}
for i = 1, nb do
  local k = KEYS[i]
  local interval = bp[2 * i - 1]
  local tat = pend[k]
  if tat == nil then tat = tonumber(vals[i] or '0') end
  if tat < now then tat = now end
  local diff = tat + interval - now
  if diff <= bp[2 * i] + 1 then
    pend[k] = tat + interval
    bres[i] = 1
  else
    ok = 0
    bres[i] = 0
  end
  bres[nb + i] = diff
end
local qres = {}
local qpend = {}
local qstart = {}
local qend = {}
if nq > 0 then
  local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
  end
  local function civil_from_days(z)
    z = z + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
      - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local d = doy - math.floor((153 * mp + 2) / 5) + 1
    local m
    if mp < 10 then m = mp + 3 else m = mp - 9 end
    local y = yoe + era * 400
    if m <= 2 then y = y + 1 end
    return y, m, d
  end
  local function bounds(day, kind, offset)
    if kind == 0 then return day, day + 1 end
    if kind == 1 then
      local s = day - ((day - 3 - offset) % 7)
      return s, s + 7
    end
    local y, m, d = civil_from_days(day)
    if d - 1 < offset then
      if m == 1 then y = y - 1; m = 12 else m = m - 1 end
    end
    local ny, nm = y, m + 1
    if m == 12 then ny = y + 1; nm = 1 end
    return days_from_civil(y, m, offset + 1), days_from_civil(ny, nm, offset + 1)
  end
  local day = math.floor(now / 86400000000)
  for j = 1, nq do
    local k = KEYS[nb + j]
    local limit = qp[3 * j - 2]
    local s, e = bounds(day, qp[3 * j - 1], qp[3 * j])
    local count = qpend[k]
    if count == nil then
      count = 0
      local v = vals[nb + j]
      if v then
        local p, n = string.match(v, '^(-?%d+):(%d+)$')
        if p and tonumber(p) == s then count = tonumber(n) end
      end
    end
    if count < limit then
      qpend[k] = count + 1
      qres[3 * j - 2] = 1
    else
      ok = 0
      qres[3 * j - 2] = 0
    end
    qstart[k] = s
    qend[k] = e
    qres[3 * j - 1] = count
    qres[3 * j] = e
  end
end
if ok == 1 then
  for k, tat in pairs(pend) do
    -- A number argument is sent as '%.17g': no precision is lost.
    redis.call('SET', k, tat, 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  for k, count in pairs(qpend) do
    redis.call('SET', k, qstart[k] .. ':' .. count,
      'EX', qend[k] * 86400 - math.floor(now / 1000000) + 3600)
  end
  if not detail then return 1 end
end
local out = {now, ok}
for i = 1, nb do
  out[#out + 1] = bres[i]
  out[#out + 1] = math.ceil(bres[nb + i])
end
for j = 1, 3 * nq do out[#out + 1] = qres[j] end
return out
"""
_SHA: Final = hashlib.sha1(_LUA.encode()).hexdigest()
_SHA_B: Final = _SHA.encode()
_EMPTY: Final = b""
_DETAIL: Final = b"d"


def _safe_uri(uri: str) -> str:
    """The URI without credentials, for logs."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return scheme
    hosts = rest.rpartition("@")[2]
    return f"{scheme}://{hosts.partition('?')[0]}"


class RedisClients:
    """The redis-py clients ``limits`` builds from one URI: one sync, one per event loop.

    The URI's scheme picks the deployment (``redis``, ``rediss``, ``redis+unix``,
    ``redis+sentinel``, ``redis+cluster``, ``valkey...``); its query string carries client
    options (``?socket_timeout=1``), which win over the short defaults given here. The
    ``limits`` storages themselves are kept too, for the window strategies.
    """

    def __init__(self, uri: str, *, timeout: float = 0.5, key_prefix: str = "LIMITS") -> None:
        self.uri = uri.removeprefix("async+")
        self.timeout = timeout
        self.key_prefix = key_prefix
        self._sync: Any = None
        self._sync_storage: Any = None
        self._lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[Any, Any, Any] | None = None  # (loop, client, storage)

    def _options(self, asynchronous: bool) -> dict[str, Any]:
        if asynchronous:
            from redis.asyncio.retry import Retry as AsyncRetry
            from redis.backoff import NoBackoff

            retry: Any = AsyncRetry(NoBackoff(), 0)
        else:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            retry = Retry(NoBackoff(), 0)
        # Short timeouts and no client-side retries: an outage costs one fast failure per
        # decision (then the store's cool-down), never a retry storm.
        options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": retry,
            "key_prefix": self.key_prefix,
        }
        if self.uri.partition("://")[0].endswith("+sentinel"):
            # The clients that ask the Sentinels for the primary take only these options;
            # without them a Sentinel that does not answer holds a decision for redis-py's
            # default timeout.
            options["sentinel_kwargs"] = {
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
            }
            # ``limits`` would read a window's count from a replica, which may lag behind
            # the hit just made on the primary.
            options["use_replicas"] = False
        return options

    def sync_storage(self) -> Any:
        """The ``limits`` storage of the URI (blocking)."""
        storage = self._sync_storage
        if storage is None:
            with self._lock:
                if self._sync_storage is None:
                    from limits.storage import storage_from_string

                    made: Any = storage_from_string(self.uri, **self._options(False))
                    self._sync = made.get_connection()
                    self._sync_storage = made
                storage = self._sync_storage
        return storage

    def sync(self) -> Any:
        client = self._sync
        if client is None:
            self.sync_storage()
            client = self._sync
        return client

    def close(self) -> None:
        """Close the blocking clients' connections (they reconnect when next used)."""
        storage = self._sync_storage
        if storage is None:
            return
        # Behind Sentinel, a replica client and one client per Sentinel come with it; the
        # primary's connections refer back to their pool, so only closing frees them at once.
        sentinel = getattr(storage, "sentinel", None)
        for client in (
            self._sync,
            getattr(storage, "storage_slave", None),
            *getattr(sentinel, "sentinels", ()),
        ):
            if client is not None:
                client.close()

    async def _entry(self) -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            return last
        entry = self._async.get(loop)
        if entry is None:
            from limits.storage import storage_from_string

            storage: Any = storage_from_string(
                "async+" + self.uri, implementation="redispy", **self._options(True)
            )
            client = storage.bridge.get_connection()
            # Close the client's connections when its event loop shuts down: asyncio runs
            # the ``finally`` of every open async generator then (``shutdown_asyncgens``).
            # Behind Sentinel, the clients that ask each Sentinel for the primary hold
            # connections of their own.
            sentinel = getattr(storage.bridge, "sentinel", None)
            closer = _close_on_shutdown(client, *getattr(sentinel, "sentinels", ()))
            await closer.__anext__()
            entry = self._async[loop] = (client, closer, storage)
        last = self._last = (loop, entry[0], entry[2])
        return last

    async def aclient(self) -> Any:
        """The asyncio redis-py client of the running event loop."""
        return (await self._entry())[1]

    async def astorage(self) -> Any:
        """The ``limits`` async storage of the running event loop."""
        return (await self._entry())[2]


async def _close_on_shutdown(*clients: Any) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        for client in clients:
            with contextlib.suppress(Exception):  # closing a broken connection
                await client.aclose()


class _ServerStore(Store):
    """What the stores kept on a server share: their timing options, the pause after an
    outage, and detailed checks made through ``decide_*``."""

    #: How outages name the server in errors and logs.
    server_name = "the store"

    def _options(
        self,
        timeout: float,
        retry_interval: float,
        log_interval: float,
        clock: Callable[[], float] | None,
    ) -> None:
        """Check and keep the options every server store takes."""
        for name, value in (
            ("timeout", timeout),
            ("retry_interval", retry_interval),
            ("log_interval", log_interval),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(name, "must be a non-negative number of seconds")
        if clock is not None and not callable(clock):
            raise ConfigurationError("clock", "must be a callable returning epoch seconds")
        self.retry_interval = retry_interval
        self.log_interval = log_interval

    def _gate(self) -> None:
        """Refuse at once while the server is marked down (``retry_interval``)."""
        if time.monotonic() < self._down_until:
            raise StorageError(f"{self.server_name} marked unavailable; retrying shortly")

    def _down(self, exc: BaseException) -> StorageError:
        """Mark the server down for ``retry_interval`` and describe the failure."""
        self._down_until = time.monotonic() + self.retry_interval
        return StorageError(f"{type(exc).__name__}: {exc}")

    def check_sync(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> Raw:
        raw = self.decide_sync(None, levels, quotas, True)
        assert raw is not None
        return raw

    async def check_async(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> Raw:
        raw = await self.decide_async(None, levels, quotas, True)
        assert raw is not None
        return raw


class RedisStore(_ServerStore):
    """Token buckets and quotas in Redis, shared by every process and host using it.

    Args:
        uri: a Redis URI as ``limits`` reads it (``redis://host:6379/0``,
            ``rediss://...``, ``redis+sentinel://host:26379/mymaster``,
            ``redis+cluster://host1:7000,host2:7001``).
        prefix: prepended to every key this store writes.
        timeout: connect and read timeout in seconds, toward the Sentinels too (a URI
            option wins, except on ``redis+sentinel`` URIs, whose query string ``limits``
            does not read).
        retry_interval: after a failure, decisions skip Redis for this many seconds (and
            follow ``on_storage_error``) before trying again.
        log_interval: an outage is logged at most once per this many seconds.
        clock: for tests: returns epoch seconds sent to the script instead of the server's
            ``TIME``.

    Example::

        store = RedisStore("redis://127.0.0.1:6379/0", prefix="shop:")
        policies = [Throttle(TokenBucket(rate=100, burst=200), storage=store)]
        ...
        store.close()  # at shutdown: the blocking connections, at once
    """

    def __init__(
        self,
        uri: str,
        *,
        prefix: str = "apigw-mw:",
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        log_interval: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ConfigurationError("prefix", "must be a string without braces")
        self._options(timeout, retry_interval, log_interval, clock)
        self.uri = uri
        self.prefix = prefix
        self.clock = clock
        # ``limits`` joins its key prefix and a key with ":"; window keys then start with
        # ``prefix`` as this store's own keys do.
        self.clients = RedisClients(
            uri, timeout=timeout, key_prefix=prefix[:-1] if prefix.endswith(":") else prefix
        )
        from redis.exceptions import NoScriptError, RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self._noscript = NoScriptError

    server_name = "Redis"

    def describe(self) -> str:
        return f"Redis store {_safe_uri(self.uri)}"

    def _command(self, levels: Sequence[Level], quotas: Sequence[QuotaLevel]) -> tuple[Any, ...]:
        """``(numkeys, *keys, params)`` for the script, as bytes: all but the mode."""
        p = self.prefix
        keys = [(p + lv.key).encode() for lv in levels]
        keys.extend((p + q.key).encode() for q in quotas)
        spec = " ".join(lv.spec.params for lv in levels) + "|"
        spec += " ".join(q.params for q in quotas)
        return (len(keys), *keys, spec.encode())

    def _mode(self, detail: bool) -> bytes:
        if self.clock is None:
            return _DETAIL if detail else _EMPTY
        now = repr(int(self.clock() * 1e6)).encode()
        return _DETAIL + now if detail else now

    def _prepared(
        self, effect: Hits | None, levels: Sequence[Level], quotas: Sequence[QuotaLevel]
    ) -> tuple[Any, ...]:
        if effect is None or effect.ctx is not None:  # built for this request only
            return self._command(levels, quotas)
        cmd = effect.cmd  # an effect reused for every request: its command is kept
        if cmd is None or cmd[0] is not self:
            cmd = effect.cmd = (self, self._command(levels, quotas))
        return cmd[1]  # type: ignore[no-any-return]

    @staticmethod
    def _raw(reply: Any, nb: int, nq: int) -> Raw | None:
        if reply == 1:
            return None
        now = reply[0] / 1e6
        bres = [(reply[2 + 2 * i] == 1, reply[3 + 2 * i] / 1e6) for i in range(nb)]
        base = 2 + 2 * nb
        qres = [
            (
                reply[base + 3 * j] == 1,
                int(reply[base + 3 * j + 1]),
                reply[base + 3 * j + 2] * 86400.0,
            )
            for j in range(nq)
        ]
        return now, reply[1] == 1, bres, qres

    def decide_sync(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        if self._down_until > -math.inf:
            self._gate()
        cmd = self._prepared(effect, levels, quotas)
        mode = self._mode(detail)
        try:
            client = self.clients.sync()
            try:
                reply = client.evalsha(_SHA_B, *cmd, mode)
            except self._noscript:
                reply = client.eval(_LUA, *cmd, mode)
        except self._errors as exc:
            raise self._down(exc) from exc
        return self._raw(reply, len(levels), len(quotas))

    async def decide_async(
        self,
        effect: Hits | None,
        levels: Sequence[Level],
        quotas: Sequence[QuotaLevel],
        detail: bool,
    ) -> Raw | None:
        if self._down_until > -math.inf:
            self._gate()
        cmd = self._prepared(effect, levels, quotas)
        mode = self._mode(detail)
        try:
            client = await self.clients.aclient()
            try:
                reply = await client.evalsha(_SHA_B, *cmd, mode)
            except self._noscript:
                reply = await client.eval(_LUA, *cmd, mode)
        except self._errors as exc:
            raise self._down(exc) from exc
        return self._raw(reply, len(levels), len(quotas))

    def quota_used(self, key: str, kind: int, offset: int) -> int:
        try:
            # One script: on Redis Cluster it runs on the node that holds the key, whose
            # clock the decisions read too (a pipeline cannot carry TIME there).
            reply = self.clients.sync().eval(_QUOTA_READ, 1, self.prefix + key)
        except self._errors as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        secs = self.clock() if self.clock is not None else int(reply[0])
        value = reply[1] if len(reply) > 1 else None
        start, _ = period_bounds(int(secs) // 86400, kind, offset)
        if value is None:
            return 0
        period, _, count = (value.decode() if isinstance(value, bytes) else value).partition(":")
        return int(count) if int(period) == start else 0

    def quota_reset(self, key: str) -> None:
        try:
            self.clients.sync().delete(self.prefix + key)
        except self._errors as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close the blocking connections (asyncio ones close with their loop); the store
        connects again when next used."""
        self.clients.close()


# The server's time in seconds and a quota's stored value (``false``, hence ``None``, when
# there is none).
_QUOTA_READ: Final = "return {redis.call('TIME')[1], redis.call('GET', KEYS[1])}"


# -- choosing a store from a URI ----------------------------------------------------------

_REDIS_SCHEMES: Final = ("redis", "rediss", "redis+unix", "redis+cluster", "redis+sentinel")
_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def get_store(spec: str | Store, field: str = "storage") -> Store:
    """The store for a storage URI (one per URI per process) or the store given.

    ``memory://`` is one :class:`MemoryStore` per process (every middleware naming it shares
    it, as every process naming one Redis shares that); Redis URIs give a
    :class:`RedisStore`, ``memcached://`` URIs a
    :class:`~apigw_mw.traffic.memcached.MemcachedStore` (compare-and-set). Other ``limits``
    schemes (MongoDB) are refused with :class:`ConfigurationError`.
    """
    if isinstance(spec, Store):
        return spec
    if not isinstance(spec, str) or "://" not in spec:
        raise ConfigurationError(field, f"{spec!r} is not a storage URI or a store")
    scheme = spec.partition("://")[0].lower().removeprefix("async+")
    with _stores_lock:
        store = _stores.get(spec)
        if store is not None:
            return store
        if scheme == "memory":
            store = MemoryStore()
        elif scheme in _REDIS_SCHEMES or scheme.startswith("valkey"):
            try:
                store = RedisStore(spec)
            except ImportError as exc:
                raise ConfigurationError(
                    field, "Redis storage needs the redis package: pip install 'apigw-mw[redis]'"
                ) from exc
        elif scheme == "memcached":
            from .memcached import MemcachedStore

            try:
                store = MemcachedStore(spec)
            except ConfigurationError as exc:  # the URI's fault: name the caller's field
                raise ConfigurationError(field, exc.message) from exc
        else:
            raise ConfigurationError(
                field,
                f"{scheme}:// cannot hold token buckets (no server-side scripting, no "
                "compare-and-set); use memory://, a Redis URI or memcached://",
            )
        _stores[spec] = store
        return store
