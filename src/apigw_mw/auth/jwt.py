"""JWT authorizers: API Gateway's HTTP API JWT authorizer, for any OIDC issuer.

A token is verified once: parsed by a small parser of our own (no library parse on the
request path), its signature checked with ``cryptography`` against a key of the issuer's
key set (:mod:`apigw_mw.auth.jwks`), its claims checked, and the outcome kept in a bounded
cache keyed by the token until the token expires (or its ``kid`` leaves the key set). A
repeat request costs a dictionary lookup plus the route's scope check.

Refusals follow API Gateway: 401 ``{"message":"Unauthorized"}`` with ``WWW-Authenticate:
Bearer scope="" error="invalid_token" error_description="..."``; a token without any of the
route's scopes is 403 ``{"message":"Forbidden"}`` with ``error="insufficient_scope"``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Decision, Flow, GatewaySettings, Phase, Policy
from ..responses import Allow, Deny
from ..routes import RoutePattern, Router, Stage
from .custom import IdentitySource, _header, route_path
from .jwks import SUPPORTED_ALGORITHMS, JwkKey, JwksCache

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["JwtAuthorizer", "LocalIssuer"]

#: Tokens longer than this many characters are refused without parsing.
MAX_TOKEN_SIZE: Final = 8192

_TOKEN = re.compile(r"^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$")
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_now = time.time
_monotonic = time.monotonic
_decode_json = json.JSONDecoder(parse_constant=_no_constants).decode
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(part: str) -> bytes:
    # The token regex already restricted ``part`` to the base64url alphabet.
    data = part.encode("ascii").translate(_FROM_URLSAFE)
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


class _Parsed:
    """A token split and decoded, not yet verified."""

    __slots__ = ("alg", "claims", "kid", "signature", "signing_input")

    def __init__(
        self, alg: str, kid: str, claims: dict[str, Any], signing_input: bytes, signature: bytes
    ) -> None:
        self.alg = alg
        self.kid = kid
        self.claims = claims
        self.signing_input = signing_input
        self.signature = signature


def parse_token(token: str, algorithms: frozenset[str]) -> _Parsed | str:
    """Split and decode a compact JWS; an error description when it is unusable.

    Only ``alg``, ``kid`` and ``crit`` of the header are looked at: ``jku``, ``x5u``,
    ``x5c`` and ``jwk`` are ignored, so no key ever comes from the token itself.
    """
    if len(token) > MAX_TOKEN_SIZE:
        return "the token is too large"
    m = _TOKEN.match(token)
    if m is None:
        return "the token is malformed"
    h64, p64, s64 = m.groups()
    try:
        header = _decode_json(_b64(h64).decode("utf-8"))
        claims = _decode_json(_b64(p64).decode("utf-8"))
        signature = _b64(s64)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "the token is malformed"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return "the token is malformed"
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        return "the token's algorithm is not allowed"
    if "crit" in header:
        return "the token has critical header parameters"
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        return "the token has no kid"
    return _Parsed(alg, kid, claims, f"{h64}.{p64}".encode("ascii"), signature)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def token_scopes(claims: Mapping[str, Any]) -> list[str]:
    """The scopes a token carries in ``scope`` (space-separated) and/or ``scp``."""
    out: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            items: Iterable[Any] = value.split()
        elif isinstance(value, list):
            items = value
        else:
            continue
        for item in items:
            if isinstance(item, str) and item and item not in out:
                out.append(item)
    return out


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class _Entry:
    """A verified token: what it proves, until when, and for which key."""

    __slots__ = ("allow", "errors", "key", "kid", "scopes", "valid_until")

    def __init__(
        self,
        kid: str,
        key: JwkKey,
        valid_until: float,
        scopes: frozenset[str],
        allow: Allow,
        errors: tuple[str | None, str | None],
    ) -> None:
        self.kid = kid
        self.key = key
        self.valid_until = valid_until
        self.scopes = scopes
        self.allow = allow
        self.errors = errors


class _JwtBase(BasePolicy):
    """The machinery JwtAuthorizer and CognitoAuthorizer share."""

    phase: ClassVar[Phase] = Phase.AUTHORIZE
    #: The status of a token lacking the route's scopes: 403 (HTTP API) or 401 (Cognito).
    scope_failure: ClassVar[str] = "ACCESS_DENIED"

    def __init__(
        self,
        *,
        issuer: str,
        jwks_uri: str | None,
        jwks: JwksCache | None,
        discovery: bool,
        algorithms: Iterable[str],
        identity_source: str,
        scopes: Mapping[str, Sequence[str]] | None,
        leeway: float,
        routes: Iterable[str] | None,
        warm_up: bool,
        cache_size: int,
    ) -> None:
        super().__init__(routes=routes)
        if not isinstance(issuer, str) or not issuer:
            raise ConfigurationError("issuer", "must be a non-empty string")
        self.issuer = issuer
        if jwks is not None:
            if not isinstance(jwks, JwksCache):
                raise ConfigurationError("jwks", "must be a JwksCache")
            if jwks_uri is not None:
                raise ConfigurationError("jwks_uri", "give jwks_uri or jwks, not both")
        elif jwks_uri is not None:
            jwks = JwksCache(jwks_uri=jwks_uri)
        elif discovery:
            jwks = JwksCache(issuer=issuer)
        else:  # pragma: no cover - subclasses always derive a jwks_uri
            raise ConfigurationError("jwks_uri", "is required")
        self.jwks = jwks
        if isinstance(algorithms, str):
            algorithms = [algorithms]
        algs = frozenset(algorithms)
        if not algs:
            raise ConfigurationError("algorithms", "at least one algorithm is required")
        for alg in algs:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ConfigurationError(
                    "algorithms",
                    f"{alg!r} is not allowed; choose from {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
                    " (HMAC and 'none' are never accepted)",
                )
        self.algorithms = algs
        self.identity_source = IdentitySource.parse(identity_source, "identity_source")
        self._header: tuple[bytes, str] | None = None
        if self.identity_source.kind == "header":
            self._header = (self.identity_source.lower, self.identity_source.environ_key)
        leeway_n = _number(leeway)
        if leeway_n is None or leeway_n < 0:
            raise ConfigurationError("leeway", f"{leeway!r} is not a non-negative number")
        self.leeway = leeway_n
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size", "must be a non-negative int")
        self.cache_size = cache_size
        self.warm_up = bool(warm_up)
        self._scopes: dict[str, frozenset[str]] = {}
        self._scope_denials: dict[frozenset[str], Deny] = {}
        if scopes is not None:
            if not isinstance(scopes, Mapping):
                raise ConfigurationError("scopes", "must map routes to lists of scopes")
            for route, wanted in scopes.items():
                key = RoutePattern.parse(route, field_name=f"scopes[{route!r}]").key
                if isinstance(wanted, str) or not isinstance(wanted, Iterable):
                    raise ConfigurationError(f"scopes[{route!r}]", "must be a list of scopes")
                items = frozenset(wanted)
                for s in items:
                    if not isinstance(s, str) or not s or " " in s or '"' in s:
                        raise ConfigurationError(f"scopes[{route!r}]", f"{s!r} is not a scope")
                self._scopes[key] = items
                if items and items not in self._scope_denials:
                    self._scope_denials[items] = self._scope_deny(items)
        self._scope_router = Router([RoutePattern.parse(r) for r in self._scopes])
        self._stage = Stage()
        self._cache: dict[str, _Entry] = {}
        self._denials: dict[str, Deny] = {}
        self._missing = Deny("UNAUTHORIZED", headers={"WWW-Authenticate": "Bearer"})

    # -- configuration hooks ---------------------------------------------------------------

    def _mode_errors(self, claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """Claim errors for a route without scopes and for a route with scopes."""
        raise NotImplementedError

    def _output(self, claims: dict[str, Any], scopes: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "claims": claims,
            "jwt": {"claims": claims, "scopes": scopes or None},
        }
        sub = claims.get("sub")
        if isinstance(sub, str):
            out["principalId"] = sub
        return out

    def _scope_deny(self, required: frozenset[str]) -> Deny:
        wanted = " ".join(sorted(required))
        header = (
            f'Bearer scope="{_quote(wanted)}" error="insufficient_scope" '
            f'error_description="expected scopes: [{_quote(", ".join(sorted(required)))}]"'
        )
        if self.scope_failure == "UNAUTHORIZED":
            return Deny("UNAUTHORIZED", headers={"WWW-Authenticate": header})
        return Deny("ACCESS_DENIED", "Forbidden", headers={"WWW-Authenticate": header})

    # -- policy ---------------------------------------------------------------------------

    def bind(self, settings: GatewaySettings) -> Policy:
        bound = copy.copy(self)
        bound._stage = settings.stage
        if self.warm_up and not self.jwks.keys:
            self.jwks.warm_up(background=settings.mode == "async")
        return bound

    def _deny(self, description: str) -> Deny:
        deny = self._denials.get(description)
        if deny is None:
            header = f'Bearer scope="" error="invalid_token" error_description="{description}"'
            deny = self._denials[description] = Deny(
                "UNAUTHORIZED", headers={"WWW-Authenticate": header}
            )
        return deny

    def _required(self, request: Request, ctx: RequestContext) -> frozenset[str] | None:
        key = ctx.route_key
        if key is not None:
            found = self._scopes.get(key)
            if found is not None:
                return found
        path = route_path(self._stage, request.path)
        if path is None:
            return None
        best = self._scope_router.match(request.method, path).best
        return None if best is None else self._scopes[best.key]

    def flow(self, request: Request, context: RequestContext) -> Decision | Flow:
        # The hot path, a token verified before, inlined; anything else goes to _check.
        header = self._header
        if header is not None:
            raw = _header(request, header[0], header[1])
        else:
            raw = self.identity_source.get(request, context)
        if raw is not None:
            entry = self._cache.get(raw)
            if entry is not None:
                jwks = self.jwks
                if (
                    entry.valid_until > _now()
                    and jwks.keys.get(entry.kid) is entry.key
                    and _monotonic() < jwks.expires_at
                ):
                    if not self._scopes and entry.errors[0] is None:
                        return entry.allow
                    return self._decide(entry, request, context)
        return self._check(request, context, True)

    def _check(self, request: Request, ctx: RequestContext, may_refresh: bool) -> Decision | Flow:
        raw = self.identity_source.get(request, ctx)
        if raw is None:
            return self._missing
        jwks = self.jwks
        entry = self._cache.get(raw)
        if entry is not None:
            if entry.valid_until > time.time() and jwks.keys.get(entry.kid) is entry.key:
                if may_refresh and jwks.refresh_due(True):
                    return self._refresh_then_check(request, ctx)
                return self._decide(entry, request, ctx)
            self._cache.pop(raw, None)
        token = raw
        if _BEARER.match(token):
            token = _BEARER.sub("", token, count=1)
        if not token.isascii():
            return self._deny("the token is malformed")
        parsed = parse_token(token, self.algorithms)
        if isinstance(parsed, str):
            return self._deny(parsed)
        key = jwks.keys.get(parsed.kid)
        if may_refresh and jwks.refresh_due(key is not None):
            return self._refresh_then_check(request, ctx)
        if key is None:
            if not jwks.keys:
                return self._deny("the signing keys are unavailable")
            return self._deny("the token's signing key is not known")
        if not key.verify(parsed.alg, parsed.signing_input, parsed.signature):
            return self._deny("the token does not have a valid signature")
        claims = parsed.claims
        problem = self._time_and_issuer(claims)
        if isinstance(problem, str):
            return self._deny(problem)
        scopes = token_scopes(claims)
        entry = _Entry(
            parsed.kid,
            key,
            problem + self.leeway,
            frozenset(scopes),
            Allow(authorizer=self._output(claims, scopes)),
            self._mode_errors(claims),
        )
        if self.cache_size:
            cache = self._cache
            if len(cache) >= self.cache_size:
                self._evict()
            cache[raw] = entry
        return self._decide(entry, request, ctx)

    def _evict(self) -> None:
        # Drop the oldest eighth in one go (dicts keep insertion order): no scan per insert.
        cache = self._cache
        for k in list(itertools.islice(cache, max(1, self.cache_size // 8))):
            cache.pop(k, None)  # another thread may have evicted it

    def _refresh_then_check(self, request: Request, ctx: RequestContext) -> Flow:
        yield self.jwks.refresh_effect()
        decision = self._check(request, ctx, False)
        assert not isinstance(decision, Iterable)
        return decision

    def _time_and_issuer(self, claims: Mapping[str, Any]) -> float | str:
        """The token's ``exp``, or what is wrong with its times or issuer."""
        now = time.time()
        leeway = self.leeway
        exp = _number(claims.get("exp"))
        if exp is None:
            return "the token has no valid exp claim"
        if exp + leeway <= now:
            return "the token has expired"
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None or nbf - leeway > now:
                return "the token is not valid yet"
        if "iat" in claims:
            iat = _number(claims["iat"])
            if iat is None or iat - leeway > now:
                return "the token was issued in the future"
        if claims.get("iss") != self.issuer:
            return "the token has an invalid issuer"
        return exp

    def _decide(self, entry: _Entry, request: Request, ctx: RequestContext) -> Decision:
        required = self._required(request, ctx) if self._scopes else None
        error = entry.errors[1 if required else 0]
        if error is not None:
            return self._deny(error)
        if required and required.isdisjoint(entry.scopes):
            return self._scope_denials[required]
        return entry.allow


class JwtAuthorizer(_JwtBase):
    """API Gateway's JWT authorizer (HTTP API) for any OpenID Connect issuer.

    Args:
        issuer: the exact ``iss`` tokens must carry; keys are found through
            ``{issuer}/.well-known/openid-configuration`` unless ``jwks_uri`` is given.
        audience: the accepted audiences (at least one): a token's ``aud`` must hold one,
            or, when it has no ``aud``, its ``client_id`` must be one.
        jwks_uri: the key set URL, skipping discovery.
        algorithms: the accepted signature algorithms (RSA, RSA-PSS, ECDSA, EdDSA; HMAC and
            ``none`` are refused).
        identity_source: where the token is: ``$request.header.Authorization`` (raw or
            ``Bearer``-prefixed), or ``$request.querystring.x`` ...
        scopes: per route, the scopes of which a token needs at least one (``scope`` or
            ``scp`` claim); an empty list exempts a route.
        leeway: seconds of clock skew allowed for ``exp``, ``nbf`` and ``iat``.
        routes: the routes this authorizer protects (``None``: every request).
        jwks: a :class:`~apigw_mw.auth.jwks.JwksCache` to use (shared, pinned keys, tuned
            cooldown or timeout) instead of one built from ``issuer``/``jwks_uri``.
        warm_up: fetch the keys when the middleware is built rather than on the first
            request (in a background task when an event loop is already running, as when a
            framework builds its middleware on the first request).
        cache_size: how many verified tokens are remembered (0 turns the cache off).

    The app finds ``claims``, ``jwt.claims``, ``jwt.scopes`` and ``principalId`` (the
    ``sub`` claim) in ``get_context(request).authorizer``. Those mappings are shared by
    every request with the same token: read them, do not change them.

    Example::

        okta = JwtAuthorizer(issuer="https://example.okta.com/oauth2/default",
                             audience=["api://pets"], scopes={"POST /pets": ["pets:write"]},
                             routes=["ANY /pets", "ANY /pets/{id}"])
        app.add_middleware(GatewayMiddleware, policies=[okta])
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Iterable[str],
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = ("RS256",),
        identity_source: str = "$request.header.Authorization",
        scopes: Mapping[str, Sequence[str]] | None = None,
        leeway: float = 0,
        routes: Iterable[str] | None = None,
        jwks: JwksCache | None = None,
        warm_up: bool = False,
        cache_size: int = 10_000,
    ) -> None:
        if isinstance(audience, str):
            audience = [audience]
        audiences = frozenset(audience) if isinstance(audience, Iterable) else frozenset()
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ConfigurationError("audience", "at least one audience (a string) is required")
        self.audiences = audiences
        super().__init__(
            issuer=issuer,
            jwks_uri=jwks_uri,
            jwks=jwks,
            discovery=True,
            algorithms=algorithms,
            identity_source=identity_source,
            scopes=scopes,
            leeway=leeway,
            routes=routes,
            warm_up=warm_up,
            cache_size=cache_size,
        )

    def _mode_errors(self, claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
        error = (
            None if _audience_ok(claims, self.audiences) else "the token has an invalid audience"
        )
        return error, error


def _audience_ok(claims: Mapping[str, Any], audiences: frozenset[str]) -> bool:
    if "aud" in claims:
        aud = claims["aud"]
        if isinstance(aud, str):
            return aud in audiences
        if isinstance(aud, list):
            return any(isinstance(a, str) and a in audiences for a in aud)
        return False
    client_id = claims.get("client_id")
    return isinstance(client_id, str) and client_id in audiences


# -- a local issuer for demos and tests ------------------------------------------------------


class LocalIssuer:
    """A throwaway RSA signing key with its key set: mint tokens for demos and tests.

    The key lives in memory only; :meth:`authorizer` returns a :class:`JwtAuthorizer`
    that trusts it (through pinned keys, no HTTP), :meth:`token` signs RS256 tokens.

    Example::

        issuer = LocalIssuer()
        app.add_middleware(GatewayMiddleware, policies=[
            issuer.authorizer(audience="demo", scopes={"POST /pets": ["pets/write"]}),
        ])
        print("Authorization: Bearer " + issuer.token(sub="alice", scope="pets/write"))
    """

    def __init__(
        self, issuer: str = "https://issuer.apigw-mw.local", *, kid: str = "local-1"
    ) -> None:
        self.issuer = issuer
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks_document(self) -> dict[str, Any]:
        """The public key set, as a JWKS document."""
        numbers = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "RS256",
                    "n": _b64_uint(numbers.n),
                    "e": _b64_uint(numbers.e),
                }
            ]
        }

    def public_key_pem(self) -> str:
        """The public key in PEM form."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def jwks(self) -> JwksCache:
        """A :class:`JwksCache` pinned to this issuer's key."""
        return JwksCache(keys=self.jwks_document())

    def authorizer(
        self, *, audience: str | Iterable[str] = "demo", **options: Any
    ) -> JwtAuthorizer:
        """A :class:`JwtAuthorizer` trusting this issuer (other options passed through)."""
        return JwtAuthorizer(issuer=self.issuer, audience=audience, jwks=self.jwks(), **options)

    def token(
        self,
        *,
        sub: str = "demo-user",
        audience: str | None = "demo",
        scope: str | None = None,
        expires_in: float = 3600,
        **claims: Any,
    ) -> str:
        """A signed RS256 token with ``iss``, ``sub``, ``aud``, ``iat``, ``exp`` and ``claims``."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "sub": sub, "iat": now}
        body["exp"] = now + int(expires_in)
        if audience is not None:
            body["aud"] = audience
        if scope is not None:
            body["scope"] = scope
        body.update(claims)
        return self.sign(body)

    def sign(self, claims: Mapping[str, Any], header: Mapping[str, Any] | None = None) -> str:
        """Sign ``claims`` as they are (RS256), with extra ``header`` parameters."""
        head = {"alg": "RS256", "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = f"{_b64_json(head)}.{_b64_json(claims)}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64encode(signature)}"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: Mapping[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":")).encode())


def _b64_uint(value: int) -> str:
    return _b64encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))
