"""The ``limits`` package's window strategies, for throttles that choose one.

``Throttle(..., strategy="fixed-window" | "moving-window" | "sliding-window-counter")`` counts
requests in windows with ``limits``' own strategies instead of the exact token bucket. The
window of a :class:`~apigw_mw.TokenBucket` is the time an empty bucket takes to fill,
``burst / rate`` seconds (a whole number of them), holding ``burst`` requests:
``TokenBucket(rate=100 / 60, burst=100)`` is 100 requests a minute.

They run on ``limits``' storage for the store's URI: its blocking storage under the WSGI
adapter, its asyncio storage (redis-py's client) under the ASGI adapter. In memory one
``limits`` storage serves both adapters, as one :class:`~apigw_mw.MemoryStore` does.

A window is decided on its own, one ``limits`` call per window (and one more for
``Retry-After`` when it refuses, or for the headers), not in the phase's script: ``limits``
hits one limit at a time, so windows are outside the phase's all-or-nothing rule.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import ConfigurationError, StorageError
from ..responses import Deny
from .storage import MemoryStore, RedisStore, Store

if TYPE_CHECKING:
    from limits import RateLimitItem

    from ..context import RequestContext
    from .bucket import TokenBucket

__all__ = ["STRATEGIES", "WindowHit", "Windows", "window_item", "windows_for"]

TOKEN_BUCKET: Final = "token-bucket"
#: Every strategy a :class:`~apigw_mw.Throttle` accepts; the first is the default.
STRATEGIES: Final = (TOKEN_BUCKET, "fixed-window", "moving-window", "sliding-window-counter")
_EPS: Final = 1e-6


def window_item(bucket: TokenBucket, field: str) -> RateLimitItem:
    """The ``limits`` item of a bucket: ``burst`` requests per ``burst / rate`` seconds."""
    from limits import RateLimitItemPerSecond

    seconds = bucket.burst / bucket.rate
    whole = round(seconds)
    if whole < 1 or abs(seconds - whole) > 1e-9 * seconds:
        raise ConfigurationError(
            field,
            f"a window strategy counts burst requests per burst/rate seconds, here "
            f"{seconds:g} s: make it a whole number of seconds (TokenBucket(rate=100/60, "
            "burst=100) is 100 requests a minute)",
        )
    return RateLimitItemPerSecond(bucket.burst, whole, namespace="w")


class WindowHit:
    """The effect of a window throttle: hit one ``limits`` window.

    ``key`` names the window (``None``: ``resolve`` supplies it when the batch is performed,
    or ``None`` to let the request through). Outcomes are those of :class:`Hits`.
    """

    __slots__ = ("batcher", "ctx", "detail", "item", "key", "name", "owner", "resolve", "strategy")

    def __init__(
        self,
        windows: Windows,
        strategy: str,
        item: RateLimitItem,
        key: str | None,
        name: str,
        owner: Any,
        ctx: RequestContext | None,
        resolve: Callable[[], str | None] | None = None,
    ) -> None:
        self.batcher = windows
        self.strategy = strategy
        self.item = item
        self.key = key
        self.name = name
        self.owner = owner
        self.ctx = ctx
        self.resolve = resolve
        self.detail = bool(owner.headers)

    def run_sync(self) -> Deny | None:
        return self.batcher.run_many_sync([self])[0]

    async def run_async(self) -> Deny | None:
        return (await self.batcher.run_many_async([self]))[0]


class Windows:
    """Performs :class:`WindowHit` effects on the ``limits`` storage behind one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sync: dict[str, Any] = {}
        self._async: dict[str, tuple[Any, Any]] = {}
        self._memory: Any = None
        self._lock = threading.Lock()
        self._errors: tuple[type[BaseException], ...] = _storage_errors(store)

    # -- limiters ---------------------------------------------------------------------------

    def _memory_storage(self) -> Any:
        with self._lock:
            if self._memory is None:
                from limits.storage import MemoryStorage

                self._memory = MemoryStorage()
            return self._memory

    def limiter_sync(self, strategy: str) -> Any:
        """The blocking ``limits`` strategy object for ``strategy``."""
        limiter = self._sync.get(strategy)
        if limiter is None:
            from limits.strategies import STRATEGIES as SYNC

            store = self.store
            if isinstance(store, RedisStore):
                storage = store.clients.sync_storage()
            else:
                storage = self._memory_storage()
            limiter = self._sync[strategy] = SYNC[strategy](storage)
        return limiter

    async def limiter_async(self, strategy: str) -> tuple[Any, bool]:
        """The strategy object for the running loop, and whether its calls are awaited."""
        store = self.store
        if not isinstance(store, RedisStore):
            return self.limiter_sync(strategy), False
        storage = await store.clients.astorage()
        entry = self._async.get(strategy)
        if entry is None or entry[0] is not storage:
            from limits.aio.strategies import STRATEGIES as ASYNC

            factory: Any = ASYNC[strategy]
            entry = self._async[strategy] = (storage, factory(storage))
        return entry[1], True

    # -- batcher protocol -------------------------------------------------------------------

    def run_many_sync(self, effects: list[WindowHit]) -> list[Deny | None]:
        out: list[Deny | None] = []
        for e in effects:
            key = e.key if e.resolve is None else e.resolve()
            if key is None:
                out.append(None)
                continue
            try:
                self._gate()
                limiter = self.limiter_sync(e.strategy)
                ok = limiter.hit(e.item, key)
                stats = limiter.get_window_stats(e.item, key) if not ok or e.detail else None
            except self._errors as exc:
                out.append(self._failed(e, exc))
                continue
            out.append(_verdict(e, ok, stats))
        return out

    async def run_many_async(self, effects: list[WindowHit]) -> list[Deny | None]:
        out: list[Deny | None] = []
        for e in effects:
            key = e.key if e.resolve is None else e.resolve()
            if key is None:
                out.append(None)
                continue
            try:
                self._gate()
                limiter, awaited = await self.limiter_async(e.strategy)
                if awaited:
                    ok = await limiter.hit(e.item, key)
                    stats = (
                        await limiter.get_window_stats(e.item, key) if not ok or e.detail else None
                    )
                else:
                    ok = limiter.hit(e.item, key)
                    stats = limiter.get_window_stats(e.item, key) if not ok or e.detail else None
            except self._errors as exc:
                out.append(self._failed(e, exc))
                continue
            out.append(_verdict(e, ok, stats))
        return out

    # -- failures ---------------------------------------------------------------------------

    def _gate(self) -> None:
        store = self.store
        if isinstance(store, RedisStore) and store._down_until > -math.inf:
            store._gate()

    def _failed(self, effect: WindowHit, exc: BaseException) -> Deny | None:
        store = self.store
        if isinstance(store, RedisStore) and not isinstance(exc, StorageError):
            exc = store._down(exc)
        return store._failed([effect], exc)[0]


def _storage_errors(store: Store) -> tuple[type[BaseException], ...]:
    from limits.errors import StorageError as LimitsStorageError

    errors: tuple[type[BaseException], ...] = (StorageError, LimitsStorageError)
    if isinstance(store, RedisStore):
        errors += store._errors
    return errors


def _verdict(effect: WindowHit, ok: bool, stats: Any) -> Deny | None:
    if stats is None:
        return None
    reset_in = max(0, math.ceil(stats.reset_time - time.time() - _EPS))
    if effect.detail and effect.ctx is not None:
        item = effect.item
        effect.ctx.extra[effect.owner.header_slot] = [
            (
                effect.name,
                item.amount,
                item.get_expiry(),
                max(0, stats.remaining),
                reset_in,
            )
        ]
    if ok:
        return None
    return Deny("THROTTLED", headers={"Retry-After": str(max(1, reset_in))})


_registry_lock = threading.Lock()


def windows_for(store: Store, field: str) -> Windows:
    """The :class:`Windows` of a store (one per store), or ``ConfigurationError``."""
    if not isinstance(store, (MemoryStore, RedisStore)):
        raise ConfigurationError(
            field, f"window strategies need memory:// or a Redis storage, not {store.describe()}"
        )
    with _registry_lock:
        windows = store._windows
        if windows is None:
            windows = store._windows = Windows(store)
        return windows  # type: ignore[no-any-return]
