"""API keys: the keys themselves, where they are kept, and the :class:`ApiKeyAuth` policy.

Key values are never kept: a key is known by the SHA-256 hash of its value, and lookups go
by that hash (a dictionary or database lookup on a digest the caller cannot steer, so its
timing reveals nothing about stored keys). Values never appear in logs, errors or reprs.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from ..effects import Call
from ..exceptions import ConfigurationError, StorageError
from ..pipeline import BasePolicy, GatewaySettings, Phase, Policy, ResponseHead
from ..responses import Deny
from ..traffic.bucket import TrafficFlow, _decide, limited_route, write_headers
from ..traffic.storage import Hits, RedisClients, Store, get_store

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request
    from ..traffic.plans import UsagePlan

__all__ = [
    "ApiKey",
    "ApiKeyAuth",
    "ApiKeys",
    "KeyStore",
    "RedisKeyStore",
    "generate_api_key",
    "hash_api_key",
]

logger = logging.getLogger("apigw_mw.auth")

_VALUE: Final = re.compile(r"[\x21-\x7e]{20,128}")
_ID: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_FORBIDDEN: Final = Deny("INVALID_API_KEY")
_FAILED: Final = Deny("API_CONFIGURATION_ERROR")
_ALPHABET: Final = string.ascii_letters + string.digits

# SHA-256 from CPython's own implementation when it has one: for a key of a few dozen bytes
# it costs a quarter of OpenSSL's (whose per-call set-up dominates such short inputs), and
# the digest is the same.
try:
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python build
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        _sha256 = hashlib.sha256  # type: ignore[assignment,unused-ignore]


def hash_api_key(value: str) -> str:
    """The hex SHA-256 of a key value: how stores know a key.

    >>> hash_api_key("Fq3sY0cXk1wQ0pZl8mTn2bVx")[:12]
    '35aa45faeca2'
    """
    return _sha256(value.encode("ascii")).hexdigest()  # type: ignore[no-any-return]


def generate_api_key(length: int = 40) -> str:
    """A new random key value of API Gateway's shape (40 letters and digits by default).

    >>> len(generate_api_key())
    40
    """
    if not isinstance(length, int) or not 20 <= length <= 128:
        raise ConfigurationError("length", "must be 20..128")
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _check_value(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        raise ConfigurationError(
            field, "an API key must be 20-128 printable ASCII characters without spaces"
        )
    return value


def _derived_id(key_hash: str) -> str:
    return hashlib.sha256(b"apigw-mw key id:" + key_hash.encode()).hexdigest()[:10]


class ApiKey:
    """An API key, known by the hash of its value.

    Args:
        value: the key (20-128 printable ASCII characters, no spaces). Only its SHA-256 is
            kept.
        id: the key's id (``$context.identity.apiKeyId``); derived from the value's hash when
            left out, so it is the same in every process.
        name: a label for people.
        enabled: a disabled key is refused (403) like an unknown one.
        plan: the :class:`UsagePlan` the key belongs to.

    Example::

        ApiKey("Fq3sY0cXk1wQ0pZl8mTn2bVx", id="k-alice", name="alice", plan=basic)
    """

    __slots__ = ("enabled", "id", "key_hash", "name", "plan")

    def __init__(
        self,
        value: str,
        *,
        id: str | None = None,
        name: str | None = None,
        enabled: bool = True,
        plan: UsagePlan | None = None,
    ) -> None:
        _check_value(value, "ApiKey.value")
        self._init(hash_api_key(value), id, name, enabled, plan)

    @classmethod
    def from_hash(
        cls,
        key_hash: str,
        *,
        id: str | None = None,
        name: str | None = None,
        enabled: bool = True,
        plan: UsagePlan | None = None,
    ) -> ApiKey:
        """A key known only by its hash (what a :class:`KeyStore` returns)."""
        if not isinstance(key_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", key_hash):
            raise ConfigurationError("ApiKey.key_hash", "must be a hex SHA-256 digest")
        key = cls.__new__(cls)
        key._init(key_hash, id, name, enabled, plan)
        return key

    def _init(
        self,
        key_hash: str,
        id: str | None,
        name: str | None,
        enabled: bool,
        plan: UsagePlan | None,
    ) -> None:
        from ..traffic.plans import UsagePlan

        if id is None:
            id = _derived_id(key_hash)
        elif not isinstance(id, str) or not _ID.match(id):
            raise ConfigurationError("ApiKey.id", f"{id!r} must be 1-128 of [A-Za-z0-9_.:-]")
        if plan is not None and not isinstance(plan, UsagePlan):
            raise ConfigurationError("ApiKey.plan", f"{plan!r} is not a UsagePlan")
        self.key_hash = key_hash
        self.id = id
        self.name = name
        self.enabled = bool(enabled)
        self.plan = plan

    def matches(self, value: str) -> bool:
        """Whether ``value`` is this key (constant-time comparison of the hashes)."""
        try:
            candidate = hash_api_key(value)
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(candidate, self.key_hash)

    def __repr__(self) -> str:
        plan = self.plan.name if self.plan is not None else None
        return f"ApiKey(id={self.id!r}, name={self.name!r}, enabled={self.enabled}, plan={plan!r})"


@runtime_checkable
class KeyStore(Protocol):
    """Where :class:`ApiKeyAuth` looks keys up: implement it over your own database.

    ``lookup`` receives the hex SHA-256 of the presented value (see :func:`hash_api_key`)
    and returns the :class:`ApiKey` (build it with :meth:`ApiKey.from_hash`) or ``None``. It
    may be a plain function (run in a worker thread under ASGI) or ``async def``; an optional
    ``alookup`` coroutine is preferred under ASGI. Cache in your store if lookups are slow:
    the cache's lifetime is how long a revoked key keeps working.

    Example::

        class SqlKeys:
            def lookup(self, key_hash):
                row = db.execute("select id, plan from keys where hash = ?", (key_hash,)).one()
                return row and ApiKey.from_hash(key_hash, id=row.id, plan=PLANS[row.plan])
    """

    def lookup(self, key_hash: str) -> ApiKey | Awaitable[ApiKey | None] | None: ...


class ApiKeys:
    """API keys held in memory, by hash.

    Example::

        keys = ApiKeys([ApiKey("Fq3sY0cXk1wQ0pZl8mTn2bVx", id="k-alice", plan=basic)])
        keys = ApiKeys.from_csv("keys.csv", plans={"basic": basic})
    """

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        self._by_digest: dict[bytes, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}
        for i, key in enumerate(keys):
            self._add(key, f"keys[{i}]")

    def _add(self, key: ApiKey, field: str) -> None:
        if not isinstance(key, ApiKey):
            raise ConfigurationError(field, f"{type(key).__name__} is not an ApiKey")
        if key.key_hash in self._by_hash:
            raise ConfigurationError(field, "the same key value is given twice")
        if key.id in self._by_id:
            raise ConfigurationError(field, f"the key id {key.id!r} is given twice")
        self._by_hash[key.key_hash] = key
        self._by_digest[bytes.fromhex(key.key_hash)] = key
        self._by_id[key.id] = key

    @classmethod
    def from_csv(cls, path: str | Path, plans: Mapping[str, UsagePlan] | None = None) -> ApiKeys:
        """Read API Gateway's key import format (``Name,Key,Description,Enabled,UsagePlanIds``).

        Column names are matched case-insensitively and may come in any order; ``Key`` is
        required; ``Enabled`` is ``true``/``false`` (default true); ``UsagePlanIds`` names
        at most one plan of ``plans``. A bad row raises :class:`ConfigurationError` whose
        field is ``path:line``.
        """
        plans = dict(plans or {})
        out = cls()
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise ConfigurationError(f"{path}:1", "empty file: no header row") from None
            cols = {name.strip().lower(): i for i, name in enumerate(header)}
            if "key" not in cols:
                raise ConfigurationError(f"{path}:1", "the header row has no Key column")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue

                def cell(name: str, row: list[str] = row) -> str:
                    i = cols.get(name)
                    return row[i].strip() if i is not None and i < len(row) else ""

                value = cell("key")
                try:
                    _check_value(value, where)
                except ConfigurationError:
                    raise ConfigurationError(
                        where, "Key must be 20-128 printable ASCII characters without spaces"
                    ) from None
                enabled_text = cell("enabled").lower()
                if enabled_text not in ("", "true", "false"):
                    raise ConfigurationError(where, "Enabled must be true or false")
                plan_ids = [p.strip() for p in cell("usageplanids").split(",") if p.strip()]
                if len(plan_ids) > 1:
                    raise ConfigurationError(where, "a key may belong to one usage plan")
                plan = None
                if plan_ids:
                    plan = plans.get(plan_ids[0])
                    if plan is None:
                        raise ConfigurationError(where, f"unknown usage plan {plan_ids[0]!r}")
                name = cell("name") or None
                key = ApiKey(value, name=name, enabled=enabled_text != "false", plan=plan)
                out._add(key, where)
        return out

    def lookup(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, or ``None``."""
        return self._by_hash.get(key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        """The key with this id, or ``None``."""
        return self._by_id.get(key_id)

    def __len__(self) -> int:
        return len(self._by_hash)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._by_hash.values())


class RedisKeyStore:
    """API keys in Redis, so keys can be added, disabled and deleted at run time.

    Args:
        uri: a Redis URI (as ``limits`` reads it, so Sentinel, Cluster and TLS work).
        plans: the usage plans keys may name, by plan name.
        prefix: prepended to every key this store writes.
        cache_ttl: seconds a lookup (found or not) is remembered in process; this is how long
            a disabled or deleted key may keep working in other processes (0: no cache).
        timeout: connect and read timeout in seconds.

    Example::

        store = RedisKeyStore("redis://127.0.0.1:6379/0", plans={"basic": basic})
        alice = store.add(generate_api_key(), id="k-alice", plan="basic")
        policies = [ApiKeyAuth(store)]
        store.disable("k-alice")   # refused everywhere within cache_ttl seconds
    """

    def __init__(
        self,
        uri: str,
        *,
        plans: Mapping[str, UsagePlan] | None = None,
        prefix: str = "apigw-mw:keys:",
        cache_ttl: float = 5.0,
        timeout: float = 0.5,
        max_cached: int = 100_000,
    ) -> None:
        if not isinstance(cache_ttl, (int, float)) or cache_ttl < 0:
            raise ConfigurationError("RedisKeyStore.cache_ttl", "must be >= 0 seconds")
        self.plans = dict(plans or {})
        self.prefix = prefix
        self.cache_ttl = float(cache_ttl)
        self.max_cached = max_cached
        self.clients = RedisClients(uri, timeout=timeout)
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)

    def _record_key(self, key_hash: str) -> str:
        return f"{self.prefix}h:{key_hash}"

    def _id_key(self, key_id: str) -> str:
        return f"{self.prefix}id:{key_id}"

    def _decode(self, key_hash: str, fields: Mapping[Any, Any]) -> ApiKey | None:
        if not fields:
            return None
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        plan_name = f.get("plan") or None
        plan = self.plans.get(plan_name) if plan_name else None
        if plan_name and plan is None:
            logger.warning("API key %s names unknown usage plan %r", f.get("id"), plan_name)
        return ApiKey.from_hash(
            key_hash,
            id=f.get("id"),
            name=f.get("name") or None,
            enabled=f.get("enabled") == "1",
            plan=plan,
        )

    def _cached(self, key_hash: str) -> tuple[bool, ApiKey | None]:
        entry = self._cache.get(key_hash)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def _remember(self, key_hash: str, key: ApiKey | None) -> None:
        if self.cache_ttl <= 0:
            return
        with self._lock:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            self._cache[key_hash] = (time.monotonic() + self.cache_ttl, key)

    def lookup(self, key_hash: str) -> ApiKey | None:
        """The key with this hash (blocking)."""
        hit, key = self._cached(key_hash)
        if hit:
            return key
        try:
            fields = self.clients.sync().hgetall(self._record_key(key_hash))
        except self._errors as exc:
            raise StorageError(f"key store: {type(exc).__name__}: {exc}") from exc
        key = self._decode(key_hash, fields)
        self._remember(key_hash, key)
        return key

    async def alookup(self, key_hash: str) -> ApiKey | None:
        """The key with this hash (on the event loop)."""
        hit, key = self._cached(key_hash)
        if hit:
            return key
        try:
            client = await self.clients.aclient()
            fields = await client.hgetall(self._record_key(key_hash))
        except self._errors as exc:
            raise StorageError(f"key store: {type(exc).__name__}: {exc}") from exc
        key = self._decode(key_hash, fields)
        self._remember(key_hash, key)
        return key

    # -- administration (blocking) ---------------------------------------------------------

    def add(
        self,
        value: str,
        *,
        id: str | None = None,
        name: str | None = None,
        enabled: bool = True,
        plan: str | None = None,
    ) -> ApiKey:
        """Store a key (by hash) and return it; ``plan`` names one of ``plans``."""
        if plan is not None and plan not in self.plans:
            raise ConfigurationError("plan", f"unknown usage plan {plan!r}")
        key = ApiKey(
            value,
            id=id,
            name=name,
            enabled=enabled,
            plan=self.plans[plan] if plan is not None else None,
        )
        client = self.clients.sync()
        taken = not client.set(self._id_key(key.id), key.key_hash, nx=True)
        if taken and client.get(self._id_key(key.id)) not in (key.key_hash, key.key_hash.encode()):
            raise ConfigurationError("id", f"the key id {key.id!r} is taken")
        client.hset(
            self._record_key(key.key_hash),
            mapping={
                "id": key.id,
                "name": name or "",
                "enabled": "1" if enabled else "0",
                "plan": plan or "",
            },
        )
        return key

    def _hash_of(self, key_id: str) -> str | None:
        raw = self.clients.sync().get(self._id_key(key_id))
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def get(self, key_id: str) -> ApiKey | None:
        """The key with this id, or ``None``."""
        key_hash = self._hash_of(key_id)
        if key_hash is None:
            return None
        return self._decode(key_hash, self.clients.sync().hgetall(self._record_key(key_hash)))

    def set_enabled(self, key_id: str, enabled: bool) -> bool:
        """Enable or disable a key; ``False`` when there is no such key."""
        key_hash = self._hash_of(key_id)
        if key_hash is None:
            return False
        self.clients.sync().hset(self._record_key(key_hash), "enabled", "1" if enabled else "0")
        self._cache.pop(key_hash, None)
        return True

    def disable(self, key_id: str) -> bool:
        """Disable a key (refused with 403 once caches expire)."""
        return self.set_enabled(key_id, False)

    def enable(self, key_id: str) -> bool:
        """Enable a key again."""
        return self.set_enabled(key_id, True)

    def delete(self, key_id: str) -> bool:
        """Delete a key; ``False`` when there is no such key."""
        key_hash = self._hash_of(key_id)
        if key_hash is None:
            return False
        self.clients.sync().delete(self._record_key(key_hash), self._id_key(key_id))
        self._cache.pop(key_hash, None)
        return True


class _StoreLookup:
    """Effect: look a key hash up in a store that has both ``lookup`` and ``alookup``."""

    __slots__ = ("key_hash", "store")
    batcher = None

    def __init__(self, store: Any, key_hash: str) -> None:
        self.store = store
        self.key_hash = key_hash

    def run_sync(self) -> ApiKey | None:
        return self.store.lookup(self.key_hash)  # type: ignore[no-any-return]

    async def run_async(self) -> ApiKey | None:
        return await self.store.alookup(self.key_hash)  # type: ignore[no-any-return]


class ApiKeyAuth(BasePolicy):
    """Require an API key, and apply its usage plan's limits and quota.

    Args:
        keys: :class:`ApiKeys`, a :class:`RedisKeyStore`, or any :class:`KeyStore`.
        source: ``"HEADER"`` (the ``header`` request header) or ``"AUTHORIZER"`` (the
            ``usageIdentifierKey`` an authorizer returned).
        header: the header carrying the key.
        routes: the routes that require a key (``None``: every route).
        storage: where the plan's buckets and quota live (URI or store); ``None`` uses the
            gateway's ``storage``.
        on_storage_error: ``"allow"`` (default) or ``"deny"`` (500 API_CONFIGURATION_ERROR)
            when that storage is down.
        on_key_store_error: ``"deny"`` (default: 500 API_CONFIGURATION_ERROR) or ``"allow"``
            (let the request through without key or plan) when the key store fails.
        headers: add ``RateLimit-Policy``/``RateLimit`` headers for the plan's levels.

    A missing, unknown, malformed or disabled key, or several ``x-api-key`` headers, is 403
    ``INVALID_API_KEY`` ``{"message":"Forbidden"}``. A refused plan throttle is 429
    ``THROTTLED``, an exhausted quota 429 ``QUOTA_EXCEEDED`` ``{"message":"Limit
    Exceeded"}``, both with ``Retry-After``. The app reads the key's id at
    ``get_context(request).identity.api_key_id`` and its plan at ``.extra["usagePlan"]``.

    Example::

        keys = ApiKeys([ApiKey("Fq3sY0cXk1wQ0pZl8mTn2bVx", id="k-alice", plan=basic)])
        policies = [ApiKeyAuth(keys, routes=["GET /pets", "POST /orders"])]
    """

    phase = Phase.API_KEY

    def __init__(
        self,
        keys: ApiKeys | KeyStore,
        *,
        source: str = "HEADER",
        header: str = "x-api-key",
        routes: Iterable[str] | None = None,
        storage: str | Store | None = None,
        on_storage_error: str = "allow",
        on_key_store_error: str = "deny",
        headers: bool = False,
    ) -> None:
        super().__init__(routes=routes)
        if not isinstance(keys, ApiKeys) and not callable(getattr(keys, "lookup", None)):
            raise ConfigurationError("ApiKeyAuth.keys", "must be ApiKeys or a KeyStore")
        self.keys = keys
        source = source.upper() if isinstance(source, str) else source
        if source not in ("HEADER", "AUTHORIZER"):
            raise ConfigurationError("ApiKeyAuth.source", "must be 'HEADER' or 'AUTHORIZER'")
        self.source = source
        if not isinstance(header, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", header):
            raise ConfigurationError("ApiKeyAuth.header", f"{header!r} is not a header name")
        self.header = header.lower()
        if storage is not None and not isinstance(storage, (str, Store)):
            raise ConfigurationError("ApiKeyAuth.storage", "must be a storage URI or a store")
        self.storage = storage
        for field, value in (
            ("on_storage_error", on_storage_error),
            ("on_key_store_error", on_key_store_error),
        ):
            if value not in ("allow", "deny"):
                raise ConfigurationError(f"ApiKeyAuth.{field}", "must be 'allow' or 'deny'")
        self.on_storage_error = on_storage_error
        self.on_key_store_error = on_key_store_error
        self.headers = bool(headers)

    def bind(self, settings: GatewaySettings) -> Policy:
        store = get_store(
            settings.storage if self.storage is None else self.storage, "ApiKeyAuth.storage"
        )
        if self.source == "HEADER" and isinstance(self.keys, ApiKeys):
            return _HeaderApiKeys(self, store, settings)
        return _BoundApiKeyAuth(self, store, settings)


Flow = Generator[Any, Any, Deny | None]
# A key's plan, its id, and the plan's reused effect per route (``None``: no route limit).
_PlanEntry = tuple[Any, str, dict[str | None, Hits | None]]

#: How many keys' plan effects a bound policy keeps ready (then it starts afresh).
_PLAN_CACHE: Final = 100_000


def _presented(request: Request, name: str, raw_name: bytes, cgi_name: str) -> str | None:
    """The value of header ``name`` when it is sent exactly once, else ``None``.

    Reads the server's own headers (the ASGI scope's list, the WSGI environ) without
    building the request's header mapping; anything else goes through the mapping.
    """
    raw = request.raw
    if isinstance(raw, dict):
        if "wsgi.input" in raw:
            found = raw.get(cgi_name)
            if found is None:
                return None
            if "," not in found:  # servers join repeated headers with ", "
                return found  # type: ignore[no-any-return]
        elif raw.get("type") == "http":
            value: bytes | None = None
            size = len(raw_name)
            for k, v in raw.get("headers") or ():
                if len(k) == size and (k == raw_name or k.lower() == raw_name):
                    if value is not None:
                        return None
                    value = v
            return None if value is None else value.decode("latin-1")
    values = request.headers.getlist(name)
    return values[0] if len(values) == 1 else None


class _BoundApiKeyAuth:
    """An :class:`ApiKeyAuth` bound to one gateway's store and mode."""

    phase = Phase.API_KEY

    def __init__(self, spec: ApiKeyAuth, store: Store, settings: GatewaySettings) -> None:
        self.spec = spec
        self.routes = spec.routes
        self.store = store
        self.stage = settings.stage
        self.deny_on_error = spec.on_storage_error == "deny"
        self.headers = spec.headers
        self.header_slot = f"apigw.ratelimit.{id(self):x}"
        if spec.headers:
            self.on_response = self._on_response
        self._header = spec.header if spec.source == "HEADER" else None
        self._raw_header = spec.header.encode("latin-1")
        self._cgi_header = "HTTP_" + spec.header.upper().replace("-", "_")
        keys = spec.keys
        self._memory = keys if isinstance(keys, ApiKeys) else None
        # A Redis key store answers from its in-process cache without I/O: no effect then.
        self._cache = keys if isinstance(keys, RedisKeyStore) and keys.cache_ttl > 0 else None
        self._both = callable(getattr(keys, "alookup", None))
        self._deny_on_key_error = spec.on_key_store_error == "deny"
        # Key -> (its plan, its id, {route -> the plan's effect}): the levels, storage keys
        # and script arguments of a key's plan are built once and reused; the entry is
        # rebuilt if the key's plan or id changes.
        self._plan_effects: dict[ApiKey, _PlanEntry] = {}

    on_response: Callable[[Request, RequestContext, ResponseHead], None] | None = None
    on_request: Callable[[Request, RequestContext], None] | None = None
    on_complete: Callable[[Request, RequestContext], None] | None = None

    def bind(self, settings: GatewaySettings) -> Policy:
        return self

    def _on_response(self, request: Request, ctx: RequestContext, head: ResponseHead) -> None:
        write_headers(ctx, self.header_slot, head)

    def flow(self, request: Request, ctx: RequestContext) -> Deny | Flow | TrafficFlow | None:
        header = self._header
        if header is not None:
            value = _presented(request, header, self._raw_header, self._cgi_header)
            if value is None:
                return _FORBIDDEN
        else:
            found: Any = ctx.authorizer.get("usageIdentifierKey")
            if found is None:
                found = ctx.extra.get("usageIdentifierKey")
            if not isinstance(found, str):
                return _FORBIDDEN
            value = found
        # 20-128 printable ASCII characters without spaces (what ``_VALUE`` matches).
        if not (
            20 <= len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value
        ):
            return _FORBIDDEN
        # $context.identity.apiKey, as API Gateway hands it to the backend; logs, templates
        # and as_dict() never show it.
        ctx.identity.api_key = value
        digest = _sha256(value.encode("ascii")).digest()
        memory = self._memory
        if memory is not None:
            return self._admit(memory._by_digest.get(digest), request, ctx)
        key_hash = digest.hex()
        cache = self._cache
        if cache is not None:
            hit, key = cache._cached(key_hash)
            if hit:
                return self._admit(key, request, ctx)
        return self._lookup(key_hash, request, ctx)

    def _lookup(self, key_hash: str, request: Request, ctx: RequestContext) -> Flow:
        keys: Any = self.spec.keys
        effect: Any = _StoreLookup(keys, key_hash) if self._both else Call(keys.lookup, key_hash)
        try:
            key = yield effect
        except Exception as exc:
            # The message names the store and the error, never the key.
            logger.warning("API key lookup failed: %s: %s", type(exc).__name__, exc)
            return _FAILED if self._deny_on_key_error else None
        if key is not None and not isinstance(key, ApiKey):
            logger.error("key store returned %s, not an ApiKey", type(key).__name__)
            return _FAILED
        if key is not None and not hmac.compare_digest(key.key_hash, key_hash):
            return _FORBIDDEN
        decision = self._admit(key, request, ctx)
        if decision is None or isinstance(decision, Deny):
            return decision
        if isinstance(decision, Generator):
            return (yield from decision)
        outcome: Deny | None = yield decision  # the plan's effect: its outcome decides
        return outcome

    def _admit(
        self, key: ApiKey | None, request: Request, ctx: RequestContext
    ) -> Deny | Flow | TrafficFlow | None:
        if key is None or not key.enabled:
            return _FORBIDDEN
        key_id = key.id
        ctx.identity.api_key_id = key_id
        plan = key.plan
        if plan is None:
            return None
        ctx.extra["usagePlan"] = plan.name
        cached = self._plan_effects.get(key)
        if cached is None or cached[0] is not plan or cached[1] is not key_id:
            cached = self._plan_entry(key, plan, key_id)
        effects = cached[2]
        if plan.route_limits:
            route = limited_route(request, ctx, plan.route_limits, plan._route_router, self.stage)
            effect = effects[route] if route in effects else self._plan_effect(cached, route)
        else:
            effect = effects[None]
        if effect is None:
            return None
        if self.headers:
            effect = Hits(self.store, effect.levels, effect.quotas, self, ctx)
        return _decide(effect, ctx)

    def _plan_entry(self, key: ApiKey, plan: UsagePlan, key_id: str) -> _PlanEntry:
        """The key's cache entry, made afresh (first use, or its plan or id changed)."""
        if len(self._plan_effects) >= _PLAN_CACHE:
            self._plan_effects.clear()
        entry: _PlanEntry = (plan, key_id, {})
        self._plan_effects[key] = entry
        self._plan_effect(entry, None)
        return entry

    def _plan_effect(self, entry: _PlanEntry, route: str | None) -> Hits | None:
        """The reused effect of a key's plan on ``route`` (a key of the plan's
        ``route_limits``, or ``None``): its levels, storage keys and quota period, built
        once; ``None`` when the plan limits nothing there."""
        plan, key_id, effects = entry
        quota = plan.quota_level(key_id)
        levels = plan.levels(key_id, route)
        effect = effects[route] = (
            Hits(self.store, tuple(levels), (quota,) if quota is not None else (), self, None)
            if levels or quota is not None
            else None
        )
        return effect


class _HeaderApiKeys(_BoundApiKeyAuth):
    """Keys sent in a header and held in memory (:class:`ApiKeys`), the common case: the
    whole check in one function, the ASGI header scan inline."""

    def __init__(self, spec: ApiKeyAuth, store: Store, settings: GatewaySettings) -> None:
        super().__init__(spec, store, settings)
        assert isinstance(spec.keys, ApiKeys)
        self._by_digest = spec.keys._by_digest
        self._size = len(self._raw_header)

    def flow(self, request: Request, ctx: RequestContext) -> Deny | Flow | TrafficFlow | None:
        raw: Any = request.raw
        if type(raw) is dict and raw.get("type") == "http" and "wsgi.input" not in raw:
            # The ASGI scope's header list (what ``_presented`` reads, inline).
            name = self._raw_header
            size = self._size
            found: bytes | None = None
            for k, v in raw.get("headers") or ():
                if len(k) == size and (k == name or k.lower() == name):
                    if found is not None:
                        return _FORBIDDEN
                    found = v
            if found is None:
                return _FORBIDDEN
            value = found.decode("latin-1")
        else:
            presented = _presented(request, self.spec.header, self._raw_header, self._cgi_header)
            if presented is None:
                return _FORBIDDEN
            value = presented
        # 20-128 printable ASCII characters without spaces (what ``_VALUE`` matches).
        if not (
            20 <= len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value
        ):
            return _FORBIDDEN
        identity = ctx.identity
        # $context.identity.apiKey, as API Gateway hands it to the backend; logs, templates
        # and as_dict() never show it.
        identity.api_key = value
        key = self._by_digest.get(_sha256(value.encode("ascii")).digest())
        if key is None or not key.enabled:
            return _FORBIDDEN
        key_id = key.id
        identity.api_key_id = key_id
        plan = key.plan
        if plan is None:
            return None
        ctx.extra["usagePlan"] = plan.name
        cached = self._plan_effects.get(key)
        if cached is None or cached[0] is not plan or cached[1] is not key_id:
            cached = self._plan_entry(key, plan, key_id)
        effects = cached[2]
        limits = plan.route_limits
        if limits:
            route = ctx.route_key
            if route is None or route not in limits:
                route = limited_route(request, ctx, limits, plan._route_router, self.stage)
            effect = effects[route] if route in effects else self._plan_effect(cached, route)
        else:
            effect = effects[None]
        if effect is None:
            return None
        if self.headers:
            effect = Hits(self.store, effect.levels, effect.quotas, self, ctx)
        return _decide(effect, ctx)
