"""Token buckets and the :class:`Throttle` policy (stage, route and per-client limits)."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..effects import Effect
from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, GatewaySettings, Phase, Policy, ResponseHead
from ..responses import Deny
from ..routes import RoutePattern, Router, Stage
from .storage import BucketSpec, Hits, Level, Store, get_store, single_hit
from .windows import STRATEGIES, TOKEN_BUCKET, WindowHit, window_item, windows_for

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["Throttle", "TokenBucket"]

_KEYS = ("route", "stage", "source_ip", "api_key")
_ON_ERROR = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A token bucket: ``burst`` tokens of capacity, refilled at ``rate`` tokens a second.

    Each request takes one token. A full bucket admits ``burst`` requests back to back, then
    ``rate`` a second (fractions allowed: ``rate=0.5`` is one request every two seconds).

    Example::

        TokenBucket(rate=10, burst=20)
    """

    rate: float
    """Tokens added per second; positive, fractions allowed."""
    burst: int
    """Capacity: how many requests a full bucket admits back to back; at least 1."""

    def __post_init__(self) -> None:
        rate, burst = self.rate, self.burst
        if (
            not isinstance(rate, (int, float))
            or isinstance(rate, bool)
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise ConfigurationError("TokenBucket.rate", f"{rate!r} must be a positive number")
        if isinstance(burst, float) and float(burst).is_integer():
            object.__setattr__(self, "burst", int(burst))
            burst = int(burst)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ConfigurationError("TokenBucket.burst", f"{burst!r} must be an int of at least 1")


def check_bucket(value: Any, field: str) -> TokenBucket:
    if not isinstance(value, TokenBucket):
        raise ConfigurationError(field, f"{value!r} is not a TokenBucket")
    return value


def route_limits_arg(
    limits: Mapping[str, TokenBucket] | None, field: str
) -> tuple[dict[str, TokenBucket], Router | None]:
    """Normalised route keys to buckets, and a router over them."""
    out: dict[str, TokenBucket] = {}
    if limits is None:
        return out, None
    if not isinstance(limits, Mapping):
        raise ConfigurationError(field, "must be a mapping of route keys to TokenBuckets")
    patterns = []
    for route, bucket in limits.items():
        pattern = RoutePattern.parse(route, field_name=field)
        out[pattern.key] = check_bucket(bucket, f"{field}.{route}")
        patterns.append(pattern)
    return out, (Router(patterns) if patterns else None)


def route_path(request: Request, stage: Stage) -> str:
    """The request's path with the stage's base path removed (unchanged outside it)."""
    path = request.path
    if stage.base_path is None:
        return path
    return stage.route_path(path) or path


def limited_route(
    request: Request,
    ctx: RequestContext,
    limits: Mapping[str, Any],
    router: Router | None,
    stage: Stage,
) -> str | None:
    """The route key of ``limits`` that applies to the request, if any."""
    rk = ctx.route_key
    if rk is not None and rk in limits:
        return rk
    if router is None:
        return None
    best = router.match(request.method, route_path(request, stage)).best
    return best.key if best is not None else None


#: The request-context attribute under which an observer that records traffic decisions
#: (``Tracing``) puts the context's ``extra`` map. A plain attribute read finds it, or its
#: absence, for next to nothing; looking for ``extra`` itself would build it (and the
#: context's attribute dict) on every request nobody watches.
WATCHED: Final = "_apigw_watched"


#: What a traffic flow returns: its effect (whose outcome is the decision), or a generator.
TrafficFlow = Generator[Any, Any, "Deny | None"] | Effect[Any]


def _decide(effect: Effect[Any], ctx: RequestContext) -> TrafficFlow:
    """What a traffic flow returns: the effect, whose outcome is the decision, or, for a
    request an observer records, a flow that also notes the admission."""
    if ctx._apigw_watched is None:
        return effect
    return _wait(effect, ctx)


def _wait(effect: Any, ctx: RequestContext) -> Generator[Any, Any, Deny | None]:
    # A failed store is thrown in at the ``yield`` (the effect protocol), never sent.
    outcome = yield effect
    if outcome is None:
        # Admitted: ``extra["throttle"]`` for an observer (Tracing's ``apigw.throttle``).
        watched = getattr(ctx, WATCHED, None)
        if watched is not None:
            watched["throttle"] = "allowed"
    return outcome  # type: ignore[no-any-return]


def format_headers(items: list[tuple[str, int, int, int, int]]) -> tuple[bytes, bytes]:
    """``RateLimit-Policy`` and ``RateLimit`` values (structured-field lists)."""
    policy = ", ".join(f'"{n}";q={q};w={w}' for n, q, w, _r, _t in items)
    current = ", ".join(f'"{n}";r={r};t={t}' for n, _q, _w, r, t in items)
    return policy.encode("ascii"), current.encode("ascii")


def write_headers(ctx: RequestContext, slot: str, head: ResponseHead) -> None:
    items = ctx.extra.get(slot)
    if items:
        policy, current = format_headers(items)
        head.headers.append((b"ratelimit-policy", policy))
        head.headers.append((b"ratelimit", current))


class Throttle(BasePolicy):
    """Throttle requests with token buckets, as API Gateway's stage, route and usage-plan
    limits do.

    Args:
        bucket: the :class:`TokenBucket` of each key.
        key: what one bucket is for: ``"route"`` (default: one bucket per route key, API
            Gateway's default method throttling), ``"stage"`` (one bucket for the whole API,
            like the account limit), ``"source_ip"`` (one per client address),
            ``"api_key"`` (one per API key, once :class:`ApiKeyAuth` has found it), or a
            callable taking the :class:`Request` and returning a string, or ``None`` to let
            the request through unthrottled.
        routes: where the policy applies (``None``: everywhere).
        route_limits: per-route buckets that *replace* ``bucket`` on their route (a route
            key, a separate bucket per route and key).
        storage: a storage URI or store; ``None`` uses the gateway's ``storage``.
        on_storage_error: ``"allow"`` (default) lets requests through while the storage is
            down; ``"deny"`` answers 500 ``API_CONFIGURATION_ERROR``.
        headers: add ``RateLimit-Policy`` and ``RateLimit`` headers to every response.
        name: the policy's name in storage keys and headers (default: derived from ``key``
            and ``routes``, the same in every process).
        strategy: ``"token-bucket"`` (default: the exact token bucket, decided with the
            other levels of its phase) or one of the ``limits`` package's window
            strategies, ``"fixed-window"``, ``"moving-window"`` or
            ``"sliding-window-counter"``: ``burst`` requests per window of ``burst / rate``
            seconds (a whole number), decided on its own.

    Limits keyed by route, stage, address or callable run in the phase before the
    authorizers; ``key="api_key"`` runs with the API key check. A refused request gets 429
    ``THROTTLED`` ``{"message":"Too Many Requests"}`` with ``Retry-After``.

    Example::

        policies = [
            Throttle(TokenBucket(rate=1000, burst=2000)),
            Throttle(TokenBucket(rate=5, burst=10), key="source_ip", routes=["POST /login"]),
            Throttle(TokenBucket(rate=100 / 60, burst=100), key="source_ip",
                     strategy="moving-window", name="per-minute"),   # 100 a minute
        ]
    """

    phase = Phase.THROTTLE

    def __init__(
        self,
        bucket: TokenBucket,
        *,
        key: str | Callable[[Request], str | None] = "route",
        routes: Iterable[str] | None = None,
        route_limits: Mapping[str, TokenBucket] | None = None,
        storage: str | Store | None = None,
        on_storage_error: str = "allow",
        headers: bool = False,
        name: str | None = None,
        strategy: str = TOKEN_BUCKET,
    ) -> None:
        super().__init__(routes=routes)
        self.bucket = check_bucket(bucket, "Throttle.bucket")
        if not callable(key) and key not in _KEYS:
            raise ConfigurationError(
                "Throttle.key", f"{key!r} is not one of {', '.join(_KEYS)} or a callable"
            )
        self.key = key
        self.route_limits, self._router = route_limits_arg(route_limits, "Throttle.route_limits")
        if self.routes is not None:
            mine = {RoutePattern.parse(r).key for r in self.routes}
            for route in self.route_limits:
                if route not in mine:
                    raise ConfigurationError(
                        f"Throttle.route_limits.{route}", "is not among the policy's routes"
                    )
        if storage is not None and not isinstance(storage, (str, Store)):
            raise ConfigurationError("Throttle.storage", "must be a storage URI or a store")
        self.storage = storage
        if on_storage_error not in _ON_ERROR:
            raise ConfigurationError("Throttle.on_storage_error", "must be 'allow' or 'deny'")
        self.on_storage_error = on_storage_error
        self.headers = bool(headers)
        if strategy not in STRATEGIES:
            raise ConfigurationError(
                "Throttle.strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        self.strategy = strategy
        # Window strategies: each bucket's window, checked here rather than on a request.
        self._items: dict[str | None, Any] = {}
        if strategy != TOKEN_BUCKET:
            self._items[None] = window_item(self.bucket, "Throttle.bucket")
            for route, b in self.route_limits.items():
                self._items[route] = window_item(b, f"Throttle.route_limits.{route}")
        kind = key if isinstance(key, str) else "custom"
        if name is None:
            name = kind
            if self.routes is not None:
                digest = hashlib.sha256(",".join(sorted(self.routes)).encode()).hexdigest()
                name = f"{kind}-{digest[:8]}"
            elif callable(key):
                qual = f"{getattr(key, '__module__', '')}.{getattr(key, '__qualname__', '')}"
                name = f"custom-{hashlib.sha256(qual.encode()).hexdigest()[:8]}"
        elif (
            not isinstance(name, str)
            or not name
            or any(c in name for c in '{}"\\')
            or (not name.isascii() or not name.isprintable())
        ):
            raise ConfigurationError("Throttle.name", f"{name!r} must be printable ASCII")
        self.name = name
        if key == "api_key":
            self.phase = Phase.API_KEY  # type: ignore[misc]

    def bind(self, settings: GatewaySettings) -> Policy:
        store = get_store(
            settings.storage if self.storage is None else self.storage, "Throttle.storage"
        )
        bound = _BoundThrottle
        if self.strategy == TOKEN_BUCKET and not self.route_limits:
            if self.key == "stage":
                bound = _StageThrottle
            elif self.key == "route":
                bound = _RouteThrottle
            elif self.key == "source_ip":
                bound = _ClientThrottle
        return bound(self, store, settings)


#: How many per-client buckets a bound throttle keeps ready (then it starts afresh).
_CLIENT_CACHE: Final = 10_000


class _BoundThrottle:
    """A :class:`Throttle` bound to one gateway's store and stage.

    Everything that does not depend on the time is worked out once and kept: per route key
    (and per client, in a bounded cache) the storage key, the bucket's parameters and, when
    no headers are wanted, the effect itself, yielded unchanged for every request.
    """

    def __init__(self, spec: Throttle, store: Store, settings: GatewaySettings) -> None:
        self.spec = spec
        self.phase = spec.phase
        self.routes = spec.routes
        self.store = store
        self.stage = settings.stage
        self.deny_on_error = spec.on_storage_error == "deny"
        self.headers = spec.headers
        self.header_slot = f"apigw.ratelimit.{id(self):x}"
        if spec.headers:
            self.on_response = self._on_response
        key = spec.key
        self._kind = key if isinstance(key, str) else "custom"
        self._func: Callable[[Request], str | None] | None = None if isinstance(key, str) else key
        self._limits = spec.route_limits
        self._router = spec._router
        tag = "{s:" + settings.stage.name + "}" if key != "api_key" else ""
        self._prefix = f"{tag}:t:{spec.name}:"
        self._windows = None
        if spec.strategy != TOKEN_BUCKET:
            self._windows = windows_for(store, "Throttle.strategy")
        self._strategy = spec.strategy
        bucket = spec.bucket
        self._specs: dict[str | None, BucketSpec] = {
            None: BucketSpec(bucket.rate, bucket.burst, spec.name)
        }
        for route, b in self._limits.items():
            self._specs[route] = BucketSpec(b.rate, b.burst, spec.name)
        # Route key (or None) -> the effect; per-client kinds: -> {client -> effect}.
        self._static: dict[str | None, Any] = {}
        self._clients: dict[str | None, dict[str, Any]] = {}
        self._lock = threading.Lock()

    on_response: Callable[[Request, RequestContext, ResponseHead], None] | None = None
    on_request: Callable[[Request, RequestContext], None] | None = None
    on_complete: Callable[[Request, RequestContext], None] | None = None

    def bind(self, settings: GatewaySettings) -> Policy:
        return self

    def _on_response(self, request: Request, ctx: RequestContext, head: ResponseHead) -> None:
        write_headers(ctx, self.header_slot, head)

    def _effect(self, route: str | None, client: str) -> Any:
        """The request-independent effect for ``client`` (``""`` for route/stage keys) on
        ``route`` (``route`` is a key of ``route_limits``, or the route key for
        ``key="route"``, or ``None``)."""
        limited = route is not None and route in self._limits
        part = route if limited or self._kind == "route" else None
        key = self._prefix + (part or "") + ("|" + client if client else "")
        if self._kind == "api_key":
            key = "{k:" + client + "}" + key
        which = route if limited else None
        windows = self._windows
        if windows is not None:
            return WindowHit(
                windows,
                self._strategy,
                self.spec._items[which],
                key,
                self.spec.name,
                self,
                None,
            )
        return Hits(self.store, (Level.of(key, self._specs[which]),), (), self, None)

    def _one(self, key: str) -> Hits:
        """A reused single-bucket effect for storage key ``key`` with the default bucket."""
        return single_hit(self.store, key, self._specs[None], self)

    def _cached(self, route: str | None, client: str) -> Any:
        if not client:
            effect = self._static.get(route)
            if effect is None:
                effect = self._effect(route, client)
                with self._lock:
                    if len(self._static) < _CLIENT_CACHE:
                        self._static[route] = effect
            return effect
        clients = self._clients.get(route)
        if clients is None:
            with self._lock:
                clients = self._clients.setdefault(route, {})
        effect = clients.get(client)
        if effect is None:
            effect = self._effect(route, client)
            if len(clients) >= _CLIENT_CACHE:
                clients.clear()
            clients[client] = effect
        return effect

    def _for(self, effect: Any, ctx: RequestContext) -> Any:
        """The effect to yield: the shared one, or a copy carrying the request's context
        (for the headers)."""
        if not self.headers:
            return effect
        if isinstance(effect, WindowHit):
            return WindowHit(
                effect.batcher,
                effect.strategy,
                effect.item,
                effect.key,
                effect.name,
                self,
                ctx,
            )
        return Hits(self.store, effect.levels, (), self, ctx)

    def flow(self, request: Request, ctx: RequestContext) -> TrafficFlow | None:
        kind = self._kind
        route = (
            limited_route(request, ctx, self._limits, self._router, self.stage)
            if self._limits
            else None
        )
        if kind == "route":
            route = route or ctx.route_key or "$default"
            effect = self._static.get(route)
            if effect is None:
                effect = self._cached(route, "")
        elif kind == "stage":
            effect = self._cached(route, "")
        elif kind == "source_ip":
            ip = ctx.identity.source_ip
            if ip is None:
                return None
            clients = self._clients.get(route)
            effect = clients.get(ip) if clients is not None else None
            if effect is None:
                effect = self._cached(route, ip)
        elif kind == "api_key":
            return _decide(self._by_key(route, ctx), ctx)
        else:
            assert self._func is not None
            value = self._func(request)
            if value is None:
                return None
            effect = self._cached(route, str(value))
        return _decide(effect if not self.headers else self._for(effect, ctx), ctx)

    def _by_key(self, route: str | None, ctx: RequestContext) -> Any:
        """An effect whose bucket is known once the API key check of the phase has run."""
        identity = ctx.identity

        if self._windows is not None:

            def window_key() -> str | None:
                key_id = identity.api_key_id
                if key_id is None:
                    return None
                return self._cached(route, key_id).key  # type: ignore[no-any-return]

            return WindowHit(
                self._windows,
                self._strategy,
                self.spec._items[route if route in self._limits else None],
                None,
                self.spec.name,
                self,
                ctx,
                window_key,
            )

        def levels() -> Any:
            key_id = identity.api_key_id
            if key_id is None:
                return ()
            return self._cached(route, key_id).levels

        return Hits(self.store, (), (), self, ctx, levels)


# Token-bucket throttles without route limits, the common shapes: the flow goes straight
# to the kept effect.


class _StageThrottle(_BoundThrottle):
    """``key="stage"``: one bucket, one effect for every request."""

    def __init__(self, spec: Throttle, store: Store, settings: GatewaySettings) -> None:
        super().__init__(spec, store, settings)
        self._stage_effect = self._one(self._prefix)

    def flow(self, request: Request, ctx: RequestContext) -> TrafficFlow:
        effect = self._stage_effect
        return _decide(effect if not self.headers else self._for(effect, ctx), ctx)


class _RouteThrottle(_BoundThrottle):
    """``key="route"``: one bucket and one effect per route key (``$default`` outside
    every declared route), kept by the request's route key."""

    def __init__(self, spec: Throttle, store: Store, settings: GatewaySettings) -> None:
        super().__init__(spec, store, settings)
        self._routes: dict[str | None, Hits] = {}

    def flow(self, request: Request, ctx: RequestContext) -> TrafficFlow:
        rk = ctx.route_key
        effect = self._routes.get(rk)
        if effect is None:
            # Route keys come from the declared routes: a bounded set.
            effect = self._routes[rk] = self._one(self._prefix + (rk or "$default"))
        return _decide(effect if not self.headers else self._for(effect, ctx), ctx)


class _ClientThrottle(_BoundThrottle):
    """``key="source_ip"``: one bucket per client address; the effects of up to
    ``_CLIENT_CACHE`` clients are kept (then the cache starts afresh)."""

    def __init__(self, spec: Throttle, store: Store, settings: GatewaySettings) -> None:
        super().__init__(spec, store, settings)
        self._client_prefix = self._prefix + "|"
        self._default = self._specs[None]
        self._by_client: dict[str, Hits] = {}

    def flow(self, request: Request, ctx: RequestContext) -> TrafficFlow | None:
        ip = ctx.identity.source_ip
        if ip is None:
            return None
        effect = self._by_client.get(ip)
        if effect is None:
            effect = self._client(ip)
        return _decide(effect if not self.headers else self._for(effect, ctx), ctx)

    def _client(self, ip: str) -> Hits:
        effect = single_hit(self.store, self._client_prefix + ip, self._default, self)
        clients = self._by_client
        if len(clients) >= _CLIENT_CACHE:
            clients.clear()
        clients[ip] = effect
        return effect
