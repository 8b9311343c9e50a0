"""IAM authorization: requests signed with AWS Signature Version 4, checked against IAM policy.

API Gateway's ``AWS_IAM`` authorization, in process. The gateway rebuilds the canonical
request from what arrived on the wire, signs it with the secret of the access key the
request names, and compares signatures in constant time; then, when the caller has an IAM
policy, it must allow ``execute-api:Invoke`` on the request's method ARN.

Both forms are accepted: the ``Authorization: AWS4-HMAC-SHA256 Credential=...,
SignedHeaders=..., Signature=...`` header and presigned URLs (``X-Amz-Algorithm``,
``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-SignedHeaders``,
``X-Amz-Signature`` query parameters).

The canonical request follows AWS for services other than S3: the path as received is
normalised (dot segments and empty segments removed) and URI-encoded once more (so
``/a%20b`` is signed as ``/a%2520b``), query parameters are RFC 3986 encoded and sorted,
header values trimmed with inner whitespace collapsed. The building blocks
(:func:`canonical_request`, :func:`string_to_sign`, :func:`signing_key`) are public for
tests and tools.
"""

from __future__ import annotations

import base64
import calendar
import copy
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, unquote_to_bytes

from ..effects import Call
from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Decision, Flow, GatewaySettings, Phase, Policy
from ..responses import Allow, Deny
from .iam_policy import IamPolicy

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Headers, Request
    from ..routes import Stage

__all__ = [
    "CredentialStore",
    "IamAuthorizer",
    "IamPrincipal",
    "canonical_request",
    "signing_key",
    "string_to_sign",
]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGNED_EXPIRES = 7 * 24 * 3600

_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
_INVALID_TOKEN = "The security token included in the request is invalid."
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# The form every SDK writes, ``<prefix><64 hex digits>``; anything else goes through the
# general parser. A client sends the same prefix (credential scope and signed headers) all
# day, so its parse is remembered and a request only checks its signature's digits.
_AUTHZ_PREFIX = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^,\s=]+), ?SignedHeaders=([^,\s=]+), ?Signature="
)
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_PRESIGN_KEYS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_MISSING = Deny("MISSING_AUTHENTICATION_TOKEN")
_CACHE_MAX = 1024
_CACHE_KEY_MAX = 256
_PREFIX_KEY_MAX = 512  # a credential and a signed-headers list


# -- the building blocks ---------------------------------------------------------------------


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 dot-segment removal; AWS also drops empty segments (``//``)."""
    out: list[bytes] = []
    for seg in path.split(b"/"):
        if not seg or seg == b".":
            continue
        if seg == b"..":
            if out:
                out.pop()
            continue
        out.append(seg)
    if not out:
        return b"/"
    lead = b"/" if path.startswith(b"/") else b""
    trail = b"/" if path.endswith(b"/") else b""
    return lead + b"/".join(out) + trail


def canonical_uri(raw_path: bytes) -> str:
    """The canonical URI of a path *as received* (percent-encoding intact).

    >>> canonical_uri(b"/pets/a%20b")
    '/pets/a%2520b'
    """
    if b"//" in raw_path or b"/." in raw_path:
        raw_path = _remove_dot_segments(raw_path)
    return quote(raw_path, safe="/~")


def canonical_query(query_string: bytes, *, drop_signature: bool = False) -> str:
    """Query parameters decoded, re-encoded as RFC 3986 and sorted by name, then value.

    ``+`` is decoded as a space, as AWS SDKs send it (``a+b`` is signed as ``a%20b``); a
    literal plus sign arrives as ``%2B``.
    """
    if not query_string:
        return ""
    pairs: list[tuple[str, str]] = []
    for piece in query_string.replace(b"+", b" ").split(b"&"):
        if not piece:
            continue
        k, _, v = piece.partition(b"=")
        key = quote(unquote_to_bytes(k), safe="-_.~")
        if drop_signature and key == "X-Amz-Signature":
            continue
        pairs.append((key, quote(unquote_to_bytes(v), safe="-_.~")))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _trimall(value: str) -> str:
    return " ".join(value.split())


def canonical_request(
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: Headers | Iterable[tuple[str, str]],
    signed_headers: Sequence[str],
    payload_hash: str,
    *,
    presigned: bool = False,
) -> str:
    """The SigV4 canonical request for execute-api (and any service other than S3).

    Args:
        method: the HTTP method.
        raw_path: the path as received, percent-encoding intact.
        query_string: the raw query string (without ``?``).
        headers: the request's :class:`Headers`, or ``(name, value)`` pairs (names are
            matched case-insensitively).
        signed_headers: the lower-case names the client signed, sorted.
        payload_hash: the hex SHA-256 of the body (or the ``X-Amz-Content-SHA256`` value).
        presigned: leave ``X-Amz-Signature`` out of the query.

    Example::

        canonical_request("GET", b"/", b"", [("host", "example.amazonaws.com"),
                          ("x-amz-date", "20150830T123600Z")], ["host", "x-amz-date"],
                          EMPTY_SHA256)
    """
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:  # a Headers view: names are lower-case already
        lines = "".join(
            f"{name}:{','.join([_trimall(v) for v in getlist(name)])}\n" for name in signed_headers
        )
    else:
        wanted: dict[str, list[str]] = {name: [] for name in signed_headers}
        pairs: Iterable[tuple[str, str]] = headers  # type: ignore[assignment]
        for name, value in pairs:
            bucket = wanted.get(name.lower())
            if bucket is not None:
                bucket.append(_trimall(value))
        lines = "".join(f"{name}:{','.join(wanted[name])}\n" for name in signed_headers)
    return (
        f"{method}\n{canonical_uri(raw_path)}\n"
        f"{canonical_query(query_string, drop_signature=presigned)}\n"
        f"{lines}\n{';'.join(signed_headers)}\n{payload_hash}"
    )


def _header_lines(headers: Headers, names: Sequence[str]) -> str:
    """The canonical header lines, from the request's (lower-case) headers."""
    if len(headers.items_list()) == len(headers):  # no header is repeated: one value each
        get = headers.get
        lines = ""
        for name in names:  # a handful of names: appending beats building a list to join
            lines += f"{name}:{' '.join(get(name, '').split())}\n"
        return lines
    getlist = headers.getlist
    return "".join([f"{name}:{','.join([_trimall(v) for v in getlist(name)])}\n" for name in names])


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """``AWS4-HMAC-SHA256``, the timestamp, the credential scope and the request's hash."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key for ``secret`` on ``date`` (``YYYYMMDD``)."""
    k = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    k = hmac.digest(k, region.encode(), "sha256")
    k = hmac.digest(k, service.encode(), "sha256")
    return hmac.digest(k, b"aws4_request", "sha256")


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class _Signer:
    """HMAC-SHA256 (RFC 2104) under one signing key, its padded-key states hashed once.

    Each signature then costs two hash copies instead of a new HMAC context: half of
    ``hmac.digest``'s time for the short strings SigV4 signs.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        # A signing key is 32 bytes: never longer than the block, so it is used as is.
        assert len(key) <= 64
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


# -- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IamPrincipal:
    """An access key's secret and who it belongs to, as a :class:`CredentialStore` returns.

    Args:
        secret_key: the secret access key.
        user: the principal id API Gateway writes to ``identity.user`` (``AIDA...`` for a
            user, ``AROA...:session`` for a role); defaults to the access key id.
        user_arn: ``identity.userArn`` (``arn:aws:iam::123456789012:user/alice``).
        caller: ``identity.caller``; defaults to ``user``.
        account_id: ``identity.accountId``.
        policy: the caller's IAM policy; when given it must allow ``execute-api:Invoke`` on
            the request's method ARN. Return a compiled :class:`IamPolicy` from stores that
            are asked often: a mapping is compiled on every lookup.
        session_token: for temporary credentials, the token the request must carry
            (``X-Amz-Security-Token``), compared in constant time.
        expires_at: for temporary credentials, when they expire (epoch seconds); later
            requests get 403 ``EXPIRED_TOKEN``.

    Example::

        IamPrincipal("wJalrXUtnFEMI/K7MDENG", user="AIDAEXAMPLE",
                     user_arn="arn:aws:iam::123456789012:user/alice",
                     policy={"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                             "Action": "execute-api:Invoke", "Resource": "*"}]})
    """

    secret_key: str = field(repr=False)
    user: str | None = None
    user_arn: str | None = None
    caller: str | None = None
    account_id: str | None = None
    policy: IamPolicy | Mapping[str, Any] | str | None = None
    session_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None


@runtime_checkable
class CredentialStore(Protocol):
    """Where :class:`IamAuthorizer` finds the secret of an access key.

    ``lookup(access_key_id, session_token)`` returns an :class:`IamPrincipal`, or ``None``
    for an unknown key (403 ``The security token included in the request is invalid.``).
    ``session_token`` is the request's ``X-Amz-Security-Token`` (or ``None``) for stores
    that check temporary credentials themselves. It may be a plain function (run in a
    worker thread under ASGI, unless the store sets ``blocking = False``) or ``async def``.

    Example::

        class DynamoCredentials:
            blocking = True

            def lookup(self, access_key_id, session_token):
                item = table.get_item(Key={"akid": access_key_id}).get("Item")
                if item is None:
                    return None
                return IamPrincipal(item["secret"], user_arn=item["arn"])
    """

    def lookup(
        self, access_key_id: str, session_token: str | None
    ) -> IamPrincipal | Awaitable[IamPrincipal | None] | None: ...


def _compile_policy(policy: Any, field_name: str) -> IamPolicy | None:
    if policy is None or isinstance(policy, IamPolicy):
        return policy
    return IamPolicy(policy, field=field_name)


@dataclass(frozen=True, slots=True)
class _Known:
    """A principal with its policy compiled and the identity API Gateway fills for it."""

    principal: IamPrincipal
    policy: IamPolicy | None
    allow: Allow


def _known(access_key: str, principal: IamPrincipal, field_name: str) -> _Known:
    user = principal.user or access_key
    identity = {"access_key": access_key, "caller": principal.caller or user, "user": user}
    if principal.user_arn is not None:
        identity["user_arn"] = principal.user_arn
    if principal.account_id is not None:
        identity["account_id"] = principal.account_id
    # One decision per principal, shared by its requests: the pipeline copies the values
    # (strings) into each request's context; the read-only view keeps them as they are.
    return _Known(
        principal,
        _compile_policy(principal.policy, field_name),
        Allow(identity=MappingProxyType(identity)),
    )


# -- the parsed signature --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scope:
    """A credential scope and signed-headers list that passed their checks."""

    access_key: str
    date: str  # YYYYMMDD from the credential scope
    names: tuple[str, ...]  # the signed headers
    header_list: str  # the same names joined by ';', as signed
    credential_scope: str  # date/region/service/aws4_request


@dataclass(slots=True)
class _Signed:
    scope: _Scope
    amz_date: str  # the request's timestamp, ISO 8601 basic
    signature: str
    token: str | None
    presigned: bool


def _fmt(ts: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


def _opaque(value: str) -> str:
    """How AWS refers to a malformed header without echoing it: base64 of its SHA-256."""
    return base64.b64encode(hashlib.sha256(value.encode("utf-8", "replace")).digest()).decode()


def _parse_amz_date(amz_date: str) -> float | Deny:
    m = _AMZ_DATE.match(amz_date)
    valid = False
    ts = 0.0
    if m is not None:
        try:
            ts = float(calendar.timegm((*(int(g) for g in m.groups()), 0, 0, 0)))
            valid = _fmt(ts) == amz_date
        except (ValueError, OverflowError):
            valid = False
    if not valid:
        return Deny(
            "INVALID_SIGNATURE",
            f"Date must be in ISO-8601 'basic format'. Got '{amz_date[:64]}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601",
        )
    return ts


def _signed_header_names(signed_headers: str) -> tuple[str, ...] | Deny:
    names = tuple(signed_headers.split(";"))
    for i, name in enumerate(names):
        if not _HEADER_NAME.match(name) or (i and names[i - 1] >= name):
            return Deny(
                "INVALID_SIGNATURE",
                "SignedHeaders must list lower-case header names, sorted and each once.",
            )
    if "host" not in names:
        return Deny(
            "INVALID_SIGNATURE",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    return names


class IamAuthorizer(BasePolicy):
    """API Gateway's ``AWS_IAM`` authorization: SigV4-signed requests, checked against IAM
    policy.

    Args:
        credentials: a mapping of access key id to secret (or to an :class:`IamPrincipal`),
            or a :class:`CredentialStore`.
        region: the region clients sign for (``Credential=.../us-east-1/...``).
        service: the service name in the credential scope.
        max_skew: seconds ``X-Amz-Date`` may differ from the gateway's clock.
        allow_presigned: accept presigned URLs (query-string signatures).
        allow_unsigned_payload: accept ``X-Amz-Content-SHA256: UNSIGNED-PAYLOAD`` (the body is
            then not covered by the signature).
        debug: on a signature mismatch, echo the canonical request and string to sign in
            the error message, as AWS does; helpful while writing a client, off in
            production.
        lookup_timeout: seconds a :class:`CredentialStore` lookup may take.
        clock: the time source (epoch seconds); tests may pin it.
        routes: route patterns it applies to (default: every request).

    On success the context's identity carries ``accessKey``, ``caller``, ``user``,
    ``userArn`` and ``accountId``.

    Example::

        from apigw_mw import GatewayMiddleware, IamAuthorizer, Stage

        iam = IamAuthorizer({"AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG"}, region="eu-west-1",
                            routes=["ANY /admin/{proxy+}"])
        app.add_middleware(GatewayMiddleware, policies=[iam], stage=Stage("prod"))
    """

    phase = Phase.AUTHORIZE

    def __init__(
        self,
        credentials: Mapping[str, str | IamPrincipal] | CredentialStore,
        *,
        region: str,
        service: str = "execute-api",
        max_skew: float = 300,
        allow_presigned: bool = True,
        allow_unsigned_payload: bool = False,
        debug: bool = False,
        lookup_timeout: float | None = 5.0,
        clock: Callable[[], float] = time.time,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        self._static: dict[str, _Known] | None = None
        self._store: CredentialStore | None = None
        if isinstance(credentials, Mapping):
            static: dict[str, _Known] = {}
            for akid, entry in credentials.items():
                name = f"IamAuthorizer.credentials.{akid}"
                if not isinstance(akid, str) or not akid or "/" in akid:
                    raise ConfigurationError(
                        "IamAuthorizer.credentials", f"{akid!r} is not an access key id"
                    )
                if isinstance(entry, str):
                    if not entry:
                        raise ConfigurationError(name, "the secret is empty")
                    principal = IamPrincipal(entry)
                elif isinstance(entry, IamPrincipal):
                    principal = entry
                else:
                    raise ConfigurationError(name, "must be a secret or an IamPrincipal")
                static[akid] = _known(akid, principal, name)
            self._static = static
        elif callable(getattr(credentials, "lookup", None)):
            self._store = credentials
        else:
            raise ConfigurationError(
                "IamAuthorizer.credentials",
                "must be a mapping of access key ids to secrets or a CredentialStore",
            )
        if not isinstance(region, str) or not _REGION.match(region):
            raise ConfigurationError("IamAuthorizer.region", f"{region!r} is not an AWS region")
        if not isinstance(service, str) or not _SERVICE.match(service):
            raise ConfigurationError("IamAuthorizer.service", f"{service!r} is not a service")
        if (
            not isinstance(max_skew, (int, float))
            or isinstance(max_skew, bool)
            or not 0 < max_skew <= 3600
        ):
            raise ConfigurationError("IamAuthorizer.max_skew", "must be 1 to 3600 seconds")
        if lookup_timeout is not None and (
            not isinstance(lookup_timeout, (int, float)) or lookup_timeout <= 0
        ):
            raise ConfigurationError("IamAuthorizer.lookup_timeout", "must be positive or None")
        self.region = region
        self.service = service
        self.max_skew = float(max_skew)
        self.allow_presigned = bool(allow_presigned)
        self.allow_unsigned_payload = bool(allow_unsigned_payload)
        self.debug = bool(debug)
        self.lookup_timeout = lookup_timeout
        self._clock = clock
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._blocking = bool(getattr(credentials, "blocking", True))
        self._stage: Stage | None = None
        self._signers: dict[tuple[str, str], _Signer] = {}
        self._uris: dict[bytes, str] = {}
        self._scopes: dict[str, tuple[str, str] | Deny] = {}
        self._dates: dict[str, float | Deny] = {}
        self._header_lists: dict[str, tuple[str, ...] | Deny] = {}
        self._prefixes: dict[str, _Scope | tuple[str, str] | Literal[False]] = {}
        self._skew_note = f"{self.max_skew / 60:g} min."

    def bind(self, settings: GatewaySettings) -> Policy:
        bound = copy.copy(self)
        bound._stage = settings.stage
        bound._signers = {}
        bound._uris = {}
        bound._scopes = {}
        bound._dates = {}
        bound._header_lists = {}
        bound._prefixes = {}
        return bound

    # -- the request path -------------------------------------------------------------------

    def flow(self, request: Request, context: RequestContext) -> Decision | Flow:
        auth = request.headers.get("authorization")
        signed = self._parse_query(request) if auth is None else self._parse_header(request, auth)
        if isinstance(signed, Deny):
            return signed
        payload = self._payload(request)
        if isinstance(payload, Deny):
            return payload
        claimed, verify_body = payload
        static = self._static
        if static is not None and not verify_body:
            return self._decide(request, signed, static.get(signed.scope.access_key), claimed, None)
        return self._flow_io(request, signed, claimed, verify_body)

    def _flow_io(
        self, request: Request, signed: _Signed, claimed: str | None, verify_body: bool
    ) -> Flow:
        static = self._static
        if static is not None:
            known = static.get(signed.scope.access_key)
        else:
            store = self._store
            assert store is not None
            principal = yield Call(
                store.lookup,
                signed.scope.access_key,
                signed.token,
                blocking=self._blocking,
                timeout=self.lookup_timeout,
            )
            if principal is None:
                known = None
            elif isinstance(principal, IamPrincipal):
                known = _known(signed.scope.access_key, principal, "IamPrincipal.policy")
            else:
                raise TypeError(
                    f"CredentialStore.lookup returned {type(principal).__name__}, "
                    "not an IamPrincipal or None"
                )
        body_hash: str | None = None
        if verify_body and known is not None:
            body = yield request.read_body()
            body_hash = hashlib.sha256(body).hexdigest()
        return self._decide(request, signed, known, claimed, body_hash)

    def _decide(
        self,
        request: Request,
        signed: _Signed,
        known: _Known | None,
        claimed: str | None,
        body_hash: str | None,
    ) -> Decision:
        if known is None:
            return Deny("INVALID_SIGNATURE", _INVALID_TOKEN)
        principal = known.principal
        if principal.session_token is not None and (
            signed.token is None or not hmac.compare_digest(principal.session_token, signed.token)
        ):
            return Deny("INVALID_SIGNATURE", _INVALID_TOKEN)
        if principal.expires_at is not None and self._clock() >= principal.expires_at:
            return Deny("EXPIRED_TOKEN")
        payload_hash = claimed if claimed is not None else (body_hash or EMPTY_SHA256)
        raw_path = self._raw_path(request)
        uri = self._uris.get(raw_path)
        if uri is None:
            uri = canonical_uri(raw_path)
            if len(raw_path) <= _CACHE_KEY_MAX:
                uris = self._uris
                if len(uris) >= _CACHE_MAX:
                    uris.clear()
                uris[raw_path] = uri
        query = request.query_string
        scope = signed.scope
        canonical = (
            f"{request.method}\n{uri}\n"
            f"{canonical_query(query, drop_signature=signed.presigned) if query else ''}\n"
            f"{_header_lines(request.headers, scope.names)}\n"
            f"{scope.header_list}\n{payload_hash}"
        )
        sts = (
            f"{ALGORITHM}\n{signed.amz_date}\n{scope.credential_scope}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        cache_key = (principal.secret_key, scope.date)
        signer = self._signers.get(cache_key)
        if signer is None:
            signer = _Signer(
                signing_key(principal.secret_key, scope.date, self.region, self.service)
            )
            if len(self._signers) >= _CACHE_MAX:
                self._signers.clear()
            self._signers[cache_key] = signer
        if not hmac.compare_digest(signer.hexdigest(sts.encode()), signed.signature):
            if self.debug:
                return Deny(
                    "INVALID_SIGNATURE",
                    f"{_MISMATCH}\n\nThe Canonical String for this request should have been\n"
                    f"'{canonical}'\n\nThe String-to-Sign should have been\n'{sts}'\n",
                )
            return Deny("INVALID_SIGNATURE", _MISMATCH)
        if claimed is not None and body_hash is not None and claimed != body_hash:
            return Deny(
                "BAD_REQUEST_BODY",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        policy = known.policy
        if policy is not None:
            arn = self._method_arn(request)
            user = principal.user or scope.access_key
            verdict = policy.evaluate(
                "execute-api:Invoke",
                arn,
                {
                    "aws:sourceip": request.source_ip,
                    "aws:principalarn": principal.user_arn,
                    "aws:principalaccount": principal.account_id,
                    "aws:userid": user,
                    "aws:useragent": request.headers.get("user-agent"),
                    "aws:securetransport": "true" if request.scheme == "https" else "false",
                    "aws:epochtime": str(int(self._clock())),
                },
            )
            if verdict != "Allow":
                who = principal.user_arn or user
                suffix = " with an explicit deny" if verdict == "Deny" else ""
                return Deny(
                    "ACCESS_DENIED",
                    f"User: {who} is not authorized to perform: execute-api:Invoke on "
                    f"resource: {arn}{suffix}",
                )
        return known.allow

    # -- parsing ----------------------------------------------------------------------------

    def _parse_header(self, request: Request, auth: str) -> _Signed | Deny:
        headers = request.headers
        amz_date = headers.get("x-amz-date")
        if amz_date is not None:
            prefix = auth[:-64]
            resolved = self._prefixes.get(prefix)
            if resolved is None:
                resolved = self._prefix(prefix)
                if len(prefix) <= _PREFIX_KEY_MAX:
                    if len(self._prefixes) >= _CACHE_MAX:
                        self._prefixes.clear()
                    self._prefixes[prefix] = resolved
            if resolved is not False:
                signature = auth[-64:]
                if _SIGNATURE.fullmatch(signature) is not None:
                    token = headers.get("x-amz-security-token")
                    if isinstance(resolved, _Scope):
                        return self._timed(resolved, amz_date, signature, token, False, None)
                    assert isinstance(resolved, tuple)  # a credential or header list to refuse
                    return self._check(
                        resolved[0], amz_date, resolved[1], signature, token, False, None, True
                    )
        algorithm, _, rest = auth.strip().partition(" ")
        params: dict[str, str] = {}
        for part in rest.split(","):
            part = part.strip()
            name, eq, value = part.partition("=")
            if not eq:
                return Deny(
                    "INVALID_SIGNATURE",
                    "Invalid key=value pair (missing equal-sign) in Authorization header "
                    f"(hashed with SHA-256 and encoded with Base64): '{_opaque(auth)}'.",
                )
            params.setdefault(name.strip(), value.strip())
        if algorithm != ALGORITHM:
            return Deny(
                "INVALID_SIGNATURE",
                f"Unsupported signing algorithm; the Authorization header must start with "
                f"'{ALGORITHM}'.",
            )
        missing = [p for p in ("Credential", "Signature", "SignedHeaders") if p not in params]
        amz_date = request.headers.get("x-amz-date")
        date_header = None if amz_date is not None else request.headers.get("date")
        problems = [f"Authorization header requires '{p}' parameter." for p in missing]
        if amz_date is None and date_header is None:
            problems.append(
                "Authorization header requires existence of either a 'X-Amz-Date' or a "
                "'Date' header."
            )
        if problems:
            return Deny("INVALID_SIGNATURE", " ".join(problems))
        if amz_date is None:
            assert date_header is not None
            try:
                parsed = parsedate_to_datetime(date_header)
            except (TypeError, ValueError):
                return Deny(
                    "INVALID_SIGNATURE", f"Date must be in RFC 1123 format: '{date_header}'."
                )
            amz_date = _fmt(parsed.timestamp())
        return self._check(
            params["Credential"],
            amz_date,
            params["SignedHeaders"],
            params["Signature"],
            request.headers.get("x-amz-security-token"),
            presigned=False,
            expires=None,
        )

    def _parse_query(self, request: Request) -> _Signed | Deny:
        """A presigned URL's signature, for a request without ``Authorization``."""
        q = request.query_string
        if not q or b"X-Amz-" not in q or not self.allow_presigned:
            return _MISSING
        found: dict[str, str] = {}
        for piece in request.query_string.split(b"&"):
            k, _, v = piece.partition(b"=")
            if k.startswith(b"X-Amz-"):
                name = k.decode("latin-1")
                if name in found:
                    return Deny("INVALID_SIGNATURE", f"Query parameter '{name}' is repeated.")
                found[name] = unquote_to_bytes(v.replace(b"+", b" ")).decode("utf-8", "replace")
        if any(k not in found for k in _PRESIGN_KEYS):
            return Deny(
                "MISSING_AUTHENTICATION_TOKEN"
                if "X-Amz-Signature" not in found and "X-Amz-Credential" not in found
                else "INVALID_SIGNATURE",
                "AWS query-string parameters must include 'X-Amz-Algorithm', "
                "'X-Amz-Credential', 'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', "
                "and 'X-Amz-Expires'. Re-examine the query-string parameters.",
            )
        if found["X-Amz-Algorithm"] != ALGORITHM:
            return Deny(
                "INVALID_SIGNATURE",
                f"X-Amz-Algorithm only supports '{ALGORITHM}'.",
            )
        raw_expires = found["X-Amz-Expires"]
        if not raw_expires.isdigit() or not raw_expires.isascii():
            return Deny("INVALID_SIGNATURE", "X-Amz-Expires should be a number.")
        expires = int(raw_expires)
        if expires > MAX_PRESIGNED_EXPIRES:
            return Deny(
                "INVALID_SIGNATURE",
                f"X-Amz-Expires must be less than a week (in seconds) that is "
                f"{MAX_PRESIGNED_EXPIRES}.",
            )
        if expires < 1:
            return Deny("INVALID_SIGNATURE", "X-Amz-Expires must be non-negative.")
        return self._check(
            found["X-Amz-Credential"],
            found["X-Amz-Date"],
            found["X-Amz-SignedHeaders"],
            found["X-Amz-Signature"],
            found.get("X-Amz-Security-Token"),
            presigned=True,
            expires=expires,
        )

    def _check(
        self,
        credential: str,
        amz_date: str,
        signed_headers: str,
        signature: str,
        token: str | None,
        presigned: bool,
        expires: int | None,
        hex_checked: bool = False,
    ) -> _Signed | Deny:
        scope = self._scopes.get(credential)
        if scope is None:
            scope = self._scope(credential)
            if len(credential) <= _CACHE_KEY_MAX:
                if len(self._scopes) >= _CACHE_MAX:
                    self._scopes.clear()
                self._scopes[credential] = scope
        if isinstance(scope, Deny):
            return scope
        akid, date = scope
        stamp = self._stamp(date, amz_date)
        if isinstance(stamp, Deny):
            return stamp
        names = self._header_lists.get(signed_headers)
        if names is None:
            names = _signed_header_names(signed_headers)
            if len(signed_headers) <= _CACHE_KEY_MAX:
                if len(self._header_lists) >= _CACHE_MAX:
                    self._header_lists.clear()
                self._header_lists[signed_headers] = names
        if isinstance(names, Deny):
            return names
        if not hex_checked and not _HEX64.match(signature):
            return Deny("INVALID_SIGNATURE", _MISMATCH)
        checked = _Scope(akid, date, names, signed_headers, date + self._scope_tail)
        return self._timed(checked, amz_date, signature, token, presigned, expires)

    def _stamp(self, date: str, amz_date: str) -> float | Deny:
        """``amz_date`` as epoch seconds, when well-formed and on the credential's ``date``."""
        ts = self._dates.get(amz_date)
        if ts is None:
            ts = _parse_amz_date(amz_date)
            if len(amz_date) <= _CACHE_KEY_MAX:
                if len(self._dates) >= _CACHE_MAX:
                    self._dates.clear()
                self._dates[amz_date] = ts
        if isinstance(ts, Deny):
            return ts
        if date != amz_date[:8]:
            return Deny(
                "INVALID_SIGNATURE",
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{date[:16]}' != '{amz_date[:8]}', from '{amz_date}'.",
            )
        return ts

    def _prefix(self, prefix: str) -> _Scope | tuple[str, str] | Literal[False]:
        """What an ``Authorization`` prefix (all but the signature's digits) resolves to.

        A :class:`_Scope` when it has the SDK form with a valid credential scope and
        signed-headers list; ``(credential, signed headers)`` when it has the form but one
        of them is refused (:meth:`_check` then says which); ``False`` otherwise.
        """
        match = _AUTHZ_PREFIX.fullmatch(prefix)
        if match is None:
            return False
        credential, signed_headers = match.group(1), match.group(2)
        scope = self._scope(credential)
        names = _signed_header_names(signed_headers)
        if isinstance(scope, Deny) or isinstance(names, Deny):
            return credential, signed_headers
        akid, date = scope
        return _Scope(akid, date, names, signed_headers, date + self._scope_tail)

    def _timed(
        self,
        scope: _Scope,
        amz_date: str,
        signature: str,
        token: str | None,
        presigned: bool,
        expires: int | None,
    ) -> _Signed | Deny:
        """The request's timestamp against the scope's day and the clock (skew or expiry)."""
        ts = self._stamp(scope.date, amz_date)
        if isinstance(ts, Deny):
            return ts
        now = self._clock()
        skew = self.max_skew
        if presigned:
            assert expires is not None
            if ts - skew > now:
                return Deny(
                    "INVALID_SIGNATURE",
                    f"Signature not yet current: {amz_date} is still later than "
                    f"{_fmt(now + skew)} ({_fmt(now)} + {self._skew_note})",
                )
            if now > ts + expires:
                return Deny(
                    "INVALID_SIGNATURE",
                    f"Signature expired: {_fmt(ts + expires)} is now earlier than {_fmt(now)}",
                )
        elif ts < now - skew:
            return Deny(
                "INVALID_SIGNATURE",
                f"Signature expired: {amz_date} is now earlier than {_fmt(now - skew)} "
                f"({_fmt(now)} - {self._skew_note})",
            )
        elif ts > now + skew:
            return Deny(
                "INVALID_SIGNATURE",
                f"Signature not yet current: {amz_date} is still later than "
                f"{_fmt(now + skew)} ({_fmt(now)} + {self._skew_note})",
            )
        return _Signed(scope, amz_date, signature, token, presigned)

    def _scope(self, credential: str) -> tuple[str, str] | Deny:
        """``(access key id, date)`` of a well-formed credential for this region/service."""
        parts = credential.split("/")
        if len(parts) != 5 or not parts[0]:
            shown = credential if len(credential) <= 128 else credential[:128] + "..."
            return Deny(
                "INVALID_SIGNATURE",
                "Credential should have exactly 5 slash-delimited elements, e.g. "
                f"keyid/date/region/service/term, got '{shown}'",
            )
        akid, date, region, service, terminator = parts
        if region != self.region:
            return Deny(
                "INVALID_SIGNATURE",
                f"Credential should be scoped to a valid region, not '{region[:32]}'. ",
            )
        if service != self.service:
            return Deny(
                "INVALID_SIGNATURE",
                f"Credential should be scoped to correct service: '{self.service}'. ",
            )
        if terminator != "aws4_request":
            return Deny(
                "INVALID_SIGNATURE",
                "Credential should be scoped with a valid terminator: 'aws4_request', "
                f"not '{terminator[:32]}'. ",
            )
        return akid, date

    def _payload(self, request: Request) -> tuple[str | None, bool] | Deny:
        """``(claimed hash or None, whether the body must be read and hashed)``."""
        headers = request.headers
        length = headers.get("content-length")
        has_body = (length is not None and length.strip() not in ("", "0")) or (
            "transfer-encoding" in headers
        )
        claimed = headers.get("x-amz-content-sha256")
        if claimed is None:
            return None, has_body
        claimed = claimed.strip().lower()
        if claimed == UNSIGNED_PAYLOAD.lower():
            if not self.allow_unsigned_payload:
                return Deny(
                    "INVALID_SIGNATURE", "UNSIGNED-PAYLOAD is not accepted: sign the payload."
                )
            return UNSIGNED_PAYLOAD, False
        if not _HEX64.match(claimed):
            return Deny(
                "INVALID_SIGNATURE",
                "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a valid sha256 value.",
            )
        if not has_body:
            if claimed != EMPTY_SHA256:
                return Deny(
                    "BAD_REQUEST_BODY",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                )
            return claimed, False
        return claimed, True

    # -- paths and ARNs ---------------------------------------------------------------------

    def _raw_path(self, request: Request) -> bytes:
        """The path as the client sent it (see the module docs for the fallbacks)."""
        raw = request.raw
        if isinstance(raw, dict) and "type" in raw:  # an ASGI scope
            got = raw.get("raw_path")
            if got:
                return got  # type: ignore[no-any-return]
            decoded = (raw.get("root_path", "") + raw.get("path", "/")).encode("utf-8")
            return quote(decoded, safe="/-_.~").encode("ascii")
        if isinstance(raw, dict):  # a WSGI environ
            uri = raw.get("RAW_URI") or raw.get("REQUEST_URI")
            if uri:
                path = uri.partition("?")[0]
                if "://" in path:  # absolute-form request target
                    path = "/" + path.partition("://")[2].partition("/")[2]
                return path.encode("latin-1", "replace")  # type: ignore[no-any-return]
            decoded = (raw.get("SCRIPT_NAME", "") + raw.get("PATH_INFO", "")).encode(
                "latin-1", "replace"
            )
            return quote(decoded, safe="/-_.~").encode("ascii")
        return request.raw_path

    def _method_arn(self, request: Request) -> str:
        stage = self._stage
        if stage is None:
            from ..routes import Stage

            stage = Stage()
        path = request.path
        base = stage.base_path
        if base is not None and (path == base or path.startswith(base + "/")):
            path = path[len(base) :] or "/"
        return stage.method_arn(request.method, path)
