"""JSON Web Key Sets: fetched, parsed once into verifying keys, cached and refreshed.

A :class:`JwksCache` holds the signing keys of one issuer. It finds the key set through the
issuer's ``/.well-known/openid-configuration`` (or a given ``jwks_uri``), keeps it for an
hour or what the response's ``Cache-Control`` says (at most an hour), and refreshes it:

* when it is stale, or when a token names a ``kid`` the set does not hold;
* at most once per ``cooldown`` seconds, so a flood of tokens with bogus ``kid`` values
  causes no fetch storm;
* once for all concurrent requests that need it (a shared task under asyncio, a lock for
  threads);
* keeping the last good keys when the issuer is unreachable or answers garbage.

The fetch itself is written once, as a generator that yields HTTP GETs; the ASGI driver
performs them with a small HTTP/1.1 client on asyncio streams (the event loop never
blocks), the WSGI driver with a blocking socket. Each GET has a deadline of ``timeout``
seconds (1.5 by default, as API Gateway) and a 1 MiB size limit. Only ``http`` and
``https`` URLs are fetched, and only the discovery document and the key set: ``jku``,
``x5u`` and ``x5c`` token headers are never looked at.

Keys of the wrong type (symmetric ``oct`` keys), keys for encryption (``use: enc``), RSA
keys under 2048 bits and malformed keys are skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .._version import __version__
from ..exceptions import ConfigurationError

__all__ = ["JwkKey", "JwksCache", "JwksError", "JwksRefresh"]

logger = logging.getLogger("apigw_mw.auth")

#: Algorithms a key set can verify. HMAC (``HS*``) and ``none`` are deliberately absent.
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
# ES algorithm -> (curve name, size of r and s in bytes)
_EC_ALGS: Final = {
    "ES256": ("secp256r1", 32),
    "ES384": ("secp384r1", 48),
    "ES512": ("secp521r1", 66),
}
_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$)", re.IGNORECASE)
_MAX_RESPONSE: Final = 1024 * 1024
_MAX_HEAD: Final = 64 * 1024
_MAX_REDIRECTS: Final = 3


class JwksError(Exception):
    """A key set could not be fetched or parsed (logged; the last good keys keep serving)."""


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url (RFC 7515); raises ``ValueError`` on any other character."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64_int(value: Any) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("missing key parameter")
    return int.from_bytes(b64url_decode(value), "big")


class JwkKey:
    """One public verifying key from a key set.

    ``kty`` is ``RSA``, ``EC`` or ``OKP``; ``alg`` is the algorithm the key set pins it to
    (or ``None``). :meth:`verify` checks a JWS signature with one of
    :data:`SUPPORTED_ALGORITHMS` and returns ``False`` for any mismatch (an ``ES256``
    signature against an RSA key, a P-384 key for ``ES256``, ...).
    """

    __slots__ = ("alg", "crv", "key", "kid", "kty")

    def __init__(
        self, kid: str, kty: str, key: Any, alg: str | None = None, crv: str | None = None
    ) -> None:
        self.kid = kid
        self.kty = kty
        self.key = key
        self.alg = alg
        self.crv = crv

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> JwkKey:
        """Build a key from its JWK form; raises ``ValueError`` for unusable keys."""
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError("a key needs a kid")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise ValueError(f"key {kid!r} is for {use!r}, not signatures")
        alg = jwk.get("alg")
        if alg is not None and alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"key {kid!r} has unsupported alg {alg!r}")
        kty = jwk.get("kty")
        if kty == "RSA":
            n, e = _b64_int(jwk.get("n")), _b64_int(jwk.get("e"))
            if n.bit_length() < 2048:
                raise ValueError(f"RSA key {kid!r} is shorter than 2048 bits")
            return cls(kid, kty, rsa.RSAPublicNumbers(e, n).public_key(), alg)
        if kty == "EC":
            crv = jwk.get("crv")
            curve = _CURVES.get(crv) if isinstance(crv, str) else None
            if curve is None:
                raise ValueError(f"EC key {kid!r} has unsupported curve {crv!r}")
            x, y = _b64_int(jwk.get("x")), _b64_int(jwk.get("y"))
            public = ec.EllipticCurvePublicNumbers(x, y, curve()).public_key()
            return cls(kid, kty, public, alg, crv)
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise ValueError(f"OKP key {kid!r} must be Ed25519")
            raw = b64url_decode(str(jwk.get("x", "")))
            return cls(kid, kty, ed25519.Ed25519PublicKey.from_public_bytes(raw), alg, "Ed25519")
        raise ValueError(f"key {kid!r} has unusable kty {kty!r}")

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """Whether ``signature`` over ``signing_input`` is valid for ``alg`` with this key."""
        if self.alg is not None and alg != self.alg:
            return False
        try:
            family = alg[:2]
            if family in ("RS", "PS"):
                if self.kty != "RSA":
                    return False
                digest = _HASHES[alg[2:]]()
                pad: padding.AsymmetricPadding
                if family == "RS":
                    pad = padding.PKCS1v15()
                else:
                    pad = padding.PSS(padding.MGF1(digest), digest.digest_size)
                self.key.verify(signature, signing_input, pad, digest)
                return True
            if family == "ES":
                curve, size = _EC_ALGS[alg]
                if self.kty != "EC" or self.key.curve.name != curve or len(signature) != 2 * size:
                    return False
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                der = encode_dss_signature(r, s)
                self.key.verify(der, signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
                return True
            if alg == "EdDSA" and self.kty == "OKP":
                self.key.verify(signature, signing_input)
                return True
        except (InvalidSignature, KeyError, ValueError):
            return False
        return False

    def __repr__(self) -> str:
        return f"JwkKey(kid={self.kid!r}, kty={self.kty!r}, alg={self.alg!r})"


def parse_jwks(document: Any) -> dict[str, JwkKey]:
    """The usable keys of a JWKS document, by ``kid``; raises :class:`JwksError` when the
    document is not a key set or holds no usable key."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS document (no 'keys' list)")
    keys: dict[str, JwkKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        try:
            key = JwkKey.from_jwk(jwk)
        except (ValueError, TypeError, OverflowError) as exc:
            logger.warning("JWKS: skipping a key: %s", exc)
            continue
        if key.kid in keys:
            logger.warning("JWKS: duplicate kid %r; keeping the first", key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise JwksError("the key set holds no usable signing key")
    return keys


# -- a small HTTP/1.1 GET, written once and driven twice -----------------------------------


@dataclass(frozen=True, slots=True)
class _Get:
    url: str


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JwksError(f"only http and https URLs are fetched, not {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


def _request_bytes(url: str) -> bytes:
    scheme, host, port, target = _target(url)
    default = 443 if scheme == "https" else 80
    host_header = host if port == default else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if port == default else f"[{host}]:{port}"
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\n"
        f"User-Agent: apigw-mw/{__version__}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def _parse_response(data: bytes) -> _Response:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise JwksError("truncated HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/"):
        raise JwksError("not an HTTP response")
    try:
        status = int(status_parts[1])
    except ValueError as exc:
        raise JwksError("bad HTTP status line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise JwksError("bad Content-Length") from exc
        if len(body) < length:
            raise JwksError("truncated HTTP body")
        body = body[:length]
    return _Response(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise JwksError("truncated chunked body")
        try:
            size = int(data[pos:end].split(b";")[0], 16)
        except ValueError as exc:
            raise JwksError("bad chunk size") from exc
        if size == 0:
            return bytes(out)
        start = end + 2
        if start + size > len(data):
            raise JwksError("truncated chunked body")
        out += data[start : start + size]
        pos = start + size + 2


_ssl_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def _get_sync(url: str, timeout: float) -> _Response:
    scheme, host, port, _ = _target(url)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise JwksError(f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        if scheme == "https":
            sock = _tls().wrap_socket(sock, server_hostname=host)
        sock.sendall(_request_bytes(url))
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JwksError(f"GET {url} timed out after {timeout} s")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                break
            size += len(data)
            if size > _MAX_RESPONSE + _MAX_HEAD:
                raise JwksError(f"GET {url}: response larger than 1 MiB")
            chunks.append(data)
    except TimeoutError as exc:
        raise JwksError(f"GET {url} timed out after {timeout} s") from exc
    except OSError as exc:
        raise JwksError(f"GET {url} failed: {exc}") from exc
    finally:
        sock.close()
    return _parse_response(b"".join(chunks))


async def _get_async(url: str, timeout: float) -> _Response:
    scheme, host, port, _ = _target(url)

    async def go() -> bytes:
        tls = _tls() if scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls else None
        )
        try:
            writer.write(_request_bytes(url))
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while True:
                data = await reader.read(65536)
                if not data:
                    return b"".join(chunks)
                size += len(data)
                if size > _MAX_RESPONSE + _MAX_HEAD:
                    raise JwksError(f"GET {url}: response larger than 1 MiB")
                chunks.append(data)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):  # a peer reset on close
                await writer.wait_closed()

    try:
        data = await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError as exc:
        raise JwksError(f"GET {url} timed out after {timeout} s") from exc
    except OSError as exc:
        raise JwksError(f"GET {url} failed: {exc}") from exc
    return _parse_response(data)


def _json_body(resp: _Response, url: str, what: str) -> Any:
    if resp.status != 200:
        raise JwksError(f"GET {url}: HTTP {resp.status} for the {what}")
    try:
        return json.loads(resp.body)
    except ValueError as exc:
        raise JwksError(f"GET {url}: the {what} is not valid JSON") from exc


def _redirect(resp: _Response, url: str) -> str | None:
    if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
        target = resp.headers["location"]
        if target.startswith("/"):
            scheme, host, port, _ = _target(url)
            target = f"{scheme}://{host}:{port}{target}"
        if urlsplit(url).scheme == "https" and not target.startswith("https://"):
            raise JwksError(f"GET {url}: refusing a redirect from https to {target!r}")
        return target
    return None


Fetch = Generator[_Get, _Response, tuple[dict[str, JwkKey], float | None, str]]


def _get(url: str) -> Generator[_Get, _Response, tuple[_Response, str]]:
    for _ in range(_MAX_REDIRECTS + 1):
        resp = yield _Get(url)
        target = _redirect(resp, url)
        if target is None:
            return resp, url
        url = target
    raise JwksError(f"GET {url}: too many redirects")


def _fetch_flow(discovery_url: str | None, jwks_uri: str | None) -> Fetch:
    """Discover (when needed), fetch and parse the key set: yields GETs, returns
    ``(keys, max_age or None, jwks_uri)``."""
    if jwks_uri is None:
        assert discovery_url is not None
        resp, url = yield from _get(discovery_url)
        doc = _json_body(resp, url, "discovery document")
        uri = doc.get("jwks_uri") if isinstance(doc, Mapping) else None
        if not isinstance(uri, str):
            raise JwksError(f"GET {url}: the discovery document has no jwks_uri")
        _target(uri)
        jwks_uri = uri
    resp, url = yield from _get(jwks_uri)
    keys = parse_jwks(_json_body(resp, url, "key set"))
    return keys, _max_age(resp.headers.get("cache-control")), jwks_uri


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0.0
    m = _MAX_AGE.search(cache_control)
    return float(m.group(1)) if m else None


def _drive_sync(flow: Fetch, timeout: float) -> tuple[dict[str, JwkKey], float | None, str]:
    try:
        request = next(flow)
        while True:
            request = flow.send(_get_sync(request.url, timeout))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _drive_async(flow: Fetch, timeout: float) -> tuple[dict[str, JwkKey], float | None, str]:
    try:
        request = next(flow)
        while True:
            request = flow.send(await _get_async(request.url, timeout))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# -- the cache -----------------------------------------------------------------------------


class JwksCache:
    """The signing keys of one issuer, fetched when needed and cached.

    Args:
        issuer: the issuer URL; the key set is found through
            ``{issuer}/.well-known/openid-configuration`` unless ``jwks_uri`` is given.
        jwks_uri: the key set's URL.
        keys: a JWKS document (``{"keys": [...]}``) to use instead of fetching: pinned keys
            that never change (tests, demos, air-gapped setups).
        max_age: the longest time keys are kept before a refresh, in seconds (3600, as API
            Gateway); a shorter ``Cache-Control: max-age`` from the issuer wins.
        cooldown: the shortest time between two fetches, in seconds; also the wait before
            retrying an issuer that failed.
        timeout: the deadline of each HTTP GET, in seconds.

    Attributes: ``fetch_count`` (fetch attempts), ``last_error`` (the last failure, or
    ``None``), ``keys`` (the current keys by ``kid``).

    Example, several authorizers sharing one issuer's keys, fetched at start-up::

        keys = JwksCache(issuer="https://example.okta.com/oauth2/default", cooldown=30)
        keys.warm_up()
        a = JwtAuthorizer(issuer=keys.issuer, audience=["api://pets"], jwks=keys)
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_uri: str | None = None,
        keys: Mapping[str, Any] | None = None,
        max_age: float = 3600.0,
        cooldown: float = 10.0,
        timeout: float = 1.5,
    ) -> None:
        for name, value in (("max_age", max_age), ("cooldown", cooldown), ("timeout", timeout)):
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
                or (name == "timeout" and value == 0)
            ):
                raise ConfigurationError(f"jwks.{name}", f"{value!r} is not a positive number")
        if jwks_uri is not None:
            _check_url(jwks_uri, "jwks_uri")
        if issuer is not None:
            _check_url(issuer, "issuer")
        if keys is None and jwks_uri is None and issuer is None:
            raise ConfigurationError("jwks", "needs an issuer, a jwks_uri or keys")
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.max_age = float(max_age)
        self.cooldown = float(cooldown)
        self.timeout = float(timeout)
        self.static = keys is not None
        self.keys: dict[str, JwkKey] = {}
        if keys is not None:
            try:
                self.keys = parse_jwks(keys)
            except JwksError as exc:
                raise ConfigurationError("keys", str(exc)) from exc
        self.expires_at = math.inf if self.static else -math.inf
        self.fetch_count = 0
        self.last_error: str | None = None
        #: Refreshes finished (successful or not).
        self.completed = 0
        self._inflight = False
        self._last_attempt = -math.inf
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._task_loop: asyncio.AbstractEventLoop | None = None
        self._warm_task: asyncio.Task[None] | None = None

    @property
    def discovery_url(self) -> str | None:
        if self.issuer is None:
            return None
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def refresh_due(self, kid_known: bool, now: float | None = None) -> bool:
        """Whether a request should wait for a refresh: its ``kid`` is unknown or the keys
        are stale, and a refresh is under way or the cooldown since the last one passed."""
        if self.static:
            return False
        if now is None:
            now = time.monotonic()
        if kid_known and now < self.expires_at:
            return False
        if self._inflight:
            return True
        return now >= self._last_attempt + self.cooldown

    def refresh_effect(self) -> JwksRefresh:
        """The effect a policy yields to refresh the keys (shared by concurrent callers)."""
        return JwksRefresh(self, self.completed)

    def warm_up(self, *, background: bool = False) -> bool:
        """Fetch the keys now; returns whether usable keys are loaded.

        Blocking, unless ``background`` is true and an event loop is running in this
        thread: then the fetch runs as a task on that loop and this returns at once.
        """
        if self.static:
            return bool(self.keys)
        if background:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                self._warm_task = loop.create_task(self.refresh_async(self.completed))
                return bool(self.keys)
        self.refresh_sync()
        return bool(self.keys)

    def refresh_sync(self, seen: int | None = None) -> None:
        """Refresh, blocking; a no-op when a refresh finished since ``seen`` (a value of
        ``completed``), so threads that queued behind one fetch share it."""
        with self._lock:
            if seen is not None and self.completed != seen:
                return
            self._begin()
            try:
                result = _drive_sync(_fetch_flow(self.discovery_url, self.jwks_uri), self.timeout)
            except Exception as exc:
                self._failed(exc)
            else:
                self._loaded(*result)

    async def refresh_async(self, seen: int | None = None) -> None:
        """Refresh on the running loop; concurrent callers share one fetch."""
        if seen is not None and self.completed != seen:
            return
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or self._task_loop is not loop:
            self._begin()
            task = self._task = loop.create_task(self._refresh_task())
            self._task_loop = loop
        await asyncio.shield(task)

    async def _refresh_task(self) -> None:
        try:
            result = await _drive_async(
                _fetch_flow(self.discovery_url, self.jwks_uri), self.timeout
            )
        except Exception as exc:
            self._failed(exc)
        else:
            self._loaded(*result)

    def _begin(self) -> None:
        self._inflight = True
        self.fetch_count += 1
        self._last_attempt = time.monotonic()

    def _failed(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        self._done()
        logger.warning(
            "JWKS refresh for %s failed (%s); %s",
            self.jwks_uri or self.issuer,
            exc,
            f"keeping {len(self.keys)} known keys" if self.keys else "no keys available",
        )

    def _loaded(self, keys: dict[str, JwkKey], max_age: float | None, uri: str) -> None:
        ttl = self.max_age if max_age is None else min(max_age, self.max_age)
        self.jwks_uri = uri
        self.keys = keys
        self.expires_at = time.monotonic() + max(ttl, self.cooldown)
        self.last_error = None
        self._done()

    def _done(self) -> None:
        self.completed += 1
        self._inflight = False

    def __repr__(self) -> str:
        source = "static" if self.static else (self.jwks_uri or self.discovery_url)
        return f"<JwksCache {source} keys={sorted(self.keys)}>"


def _check_url(url: Any, field: str) -> None:
    if not isinstance(url, str):
        raise ConfigurationError(field, f"{url!r} is not a URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(field, f"{url!r} is not an http(s) URL")


class JwksRefresh:
    """The effect that refreshes a :class:`JwksCache` (a no-op if someone else did first)."""

    __slots__ = ("jwks", "seen")
    batcher = None

    def __init__(self, jwks: JwksCache, seen: int) -> None:
        self.jwks = jwks
        self.seen = seen

    def run_sync(self) -> None:
        self.jwks.refresh_sync(self.seen)

    async def run_async(self) -> None:
        await self.jwks.refresh_async(self.seen)
