"""The effects a policy may yield, and how each is performed.

Policies are sans-I/O: when a policy needs I/O it *yields an effect* from its flow and gets
the result back (or the effect's exception thrown in)::

    class TenantExists(BasePolicy):
        phase = Phase.AUTHORIZE

        def __init__(self, lookup, **kw):
            super().__init__(**kw)
            self.lookup = lookup

        def flow(self, request, context):
            tenant = request.headers.get("x-tenant", "")
            found = yield Call(self.lookup, tenant)         # blocking lookup, off the loop
            if not found:
                return Deny("ACCESS_DENIED")
            return Allow(authorizer={"tenant": tenant})

The ASGI adapter performs each effect with ``await effect.run_async()``, the WSGI adapter
with ``effect.run_sync()``; an effect is the only place where sync and async code differ.

Effects that share a ``batcher`` (for example token-bucket hits against one storage) are
performed together in one round trip when several policies of a phase yield them at once.

An effect whose ``inline`` attribute is true (or whose batcher's is) promises that
``run_sync`` (``run_many_sync``) never blocks, in-memory work only: both drivers then perform
it on the spot, without a round trip through the driver.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from .exceptions import EffectTimeout

if TYPE_CHECKING:
    from .request import Request

__all__ = ["Batcher", "Call", "Effect", "ReadBody"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Effect(Protocol[T_co]):
    """Something a policy needs done: the drivers call one of these two methods."""

    def run_sync(self) -> T_co:
        """Perform the effect, blocking (WSGI)."""
        ...

    async def run_async(self) -> T_co:
        """Perform the effect on the running event loop (ASGI)."""
        ...


class Batcher(Protocol):
    """Performs several effects in one go (one storage round trip).

    An effect with a ``batcher`` attribute that is not ``None`` is grouped with the other
    effects of the same phase that name the same batcher. The result list has one entry per
    effect: the value, or an exception instance to throw into that effect's flow.
    """

    def run_many_sync(self, effects: list[Any]) -> list[Any]: ...

    async def run_many_async(self, effects: list[Any]) -> list[Any]: ...


class ReadBody:
    """Read the request body (up to the gateway's ``max_body_size``) and return it.

    The body is buffered once and replayed to the app byte for byte. Obtain it through
    :meth:`Request.read_body`.
    """

    __slots__ = ("request",)
    batcher = None

    def __init__(self, request: Request) -> None:
        self.request = request

    @property
    def inline(self) -> bool:
        """True once the body is buffered: reading it again cannot block."""
        return self.request.body is not None

    def run_sync(self) -> bytes:
        body = self.request.body
        if body is None:
            body = self.request._reader().read_sync()
            self.request._set_body(body)
        return body

    async def run_async(self) -> bytes:
        body = self.request.body
        if body is None:
            body = await self.request._reader().read_async()
            self.request._set_body(body)
        return body


_local = threading.local()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _run_coroutine_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous code (a WSGI worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = getattr(_local, "loop", None)
        if loop is None or loop.is_closed():
            loop = _local.loop = asyncio.new_event_loop()
        return loop.run_until_complete(awaitable)
    # Called from inside a running loop's thread: finish it on a helper thread's loop.
    future: concurrent.futures.Future[T] = _executor().submit(_run_coroutine_sync, awaitable)
    return future.result()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=16, thread_name_prefix="apigw-mw"
                )
    return _pool


class Call(Generic[T]):
    """Call a function, plain or ``async``, and return its result.

    Args:
        func: the function; an ``async def`` is awaited (under WSGI it runs on a private
            event loop), a plain function runs in a worker thread under ASGI when
            ``blocking`` is true, inline otherwise.
        *args: its positional arguments.
        blocking: whether a plain ``func`` may block (default ``True``).
        timeout: seconds before :class:`~apigw_mw.EffectTimeout` is thrown into the flow
            (under WSGI a plain function cannot be interrupted: it runs on a helper thread
            and is abandoned after the timeout).

    Example::

        user = yield Call(db.fetch_user, user_id, timeout=2.0)
    """

    __slots__ = ("args", "blocking", "func", "inline", "timeout")
    batcher = None

    def __init__(
        self,
        func: Callable[..., T] | Callable[..., Awaitable[T]],
        *args: Any,
        blocking: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.func = func
        self.args = args
        self.blocking = blocking
        self.timeout = timeout
        # A plain function that does not block runs where the flow is, even under ASGI.
        self.inline = not blocking and timeout is None and not inspect.iscoroutinefunction(func)

    def run_sync(self) -> T:
        if self.timeout is not None:
            future = _executor().submit(self._call_sync)
            try:
                return future.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError as exc:
                raise EffectTimeout(f"call exceeded {self.timeout} s") from exc
        return self._call_sync()

    def _call_sync(self) -> T:
        result: Any = self.func(*self.args)
        if inspect.isawaitable(result):
            return _run_coroutine_sync(result)  # type: ignore[no-any-return]
        return result  # type: ignore[no-any-return]

    async def run_async(self) -> T:
        try:
            if self.timeout is None:
                return await self._call_async()
            return await asyncio.wait_for(self._call_async(), self.timeout)
        except asyncio.TimeoutError as exc:
            raise EffectTimeout(f"call exceeded {self.timeout} s") from exc

    async def _call_async(self) -> T:
        func = self.func
        if inspect.iscoroutinefunction(func):
            return await func(*self.args)  # type: ignore[no-any-return]
        if self.blocking:
            result = await asyncio.to_thread(func, *self.args)
        else:
            result = func(*self.args)
        if inspect.isawaitable(result):
            return await result  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]
