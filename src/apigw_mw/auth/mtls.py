"""Mutual TLS: client certificates verified against a truststore, as API Gateway does.

The certificate comes from the server's TLS layer (the ASGI TLS extension, or mod_ssl's
``SSL_CLIENT_CERT`` under WSGI) or, behind a TLS-terminating proxy the gateway trusts, from
a forwarded header (nginx's ``$ssl_client_escaped_cert``, Envoy's
``x-forwarded-client-cert``). The chain is built from the truststore and the presented
intermediates and checked with ``cryptography``: signatures, validity dates, CA
constraints, at most four certificates, SHA-256 or better and keys of at least RSA 2048 /
ECDSA 256 bits. A verified chain is remembered by its bytes until its ``notAfter``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..effects import Call
from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Decision, Flow, GatewaySettings, Phase, Policy
from ..responses import Allow, Deny

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["MutualTls"]

logger = logging.getLogger("apigw_mw")

MAX_CHAIN = 4
_FORBIDDEN = Deny("ACCESS_DENIED", "Forbidden")
_STRONG_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"})
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_MAX_HEADER = 32 * 1024
_CACHE_MAX = 10_000
_NEGATIVE_TTL = 60.0

CheckResult = bool | Awaitable[bool]
PemSource = str | bytes | os.PathLike[str]


class _Refused(Exception):
    """A certificate chain failed verification (the reason is logged, never returned)."""


class _ReadOnlyDict(dict[str, Any]):
    """A ``dict`` that refuses changes: one certificate's mapping, shared by its requests.

    It serialises, copies and compares as a ``dict``; ``dict(m)`` or ``m.copy()`` gives a
    plain, changeable copy.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("identity.client_cert is read-only: change a copy, dict(client_cert)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __copy__(self) -> dict[str, Any]:
        return dict(self)


@dataclass(frozen=True, slots=True)
class _Entry:
    decision: Allow | Deny  # the request's answer: the certificate's identity, or 403
    until: float


def _read(value: str | bytes | os.PathLike[str], field: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.lstrip().startswith("-----BEGIN"):
            return text.encode("ascii", "replace")
        try:
            with open(text, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigurationError(field, f"cannot read {text!r}: {exc}") from exc
    raise ConfigurationError(field, "must be PEM bytes, PEM text or a file path")


def _openssl_time(dt: datetime) -> str:
    """OpenSSL's ``notBefore``/``notAfter`` format, as API Gateway writes them."""
    return f"{dt:%b} {dt.day:2d} {dt:%H:%M:%S} {dt.year} GMT"


def _serial(n: int) -> str:
    text = f"{n:x}"
    if len(text) % 2:
        text = "0" + text
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


def _client_cert(leaf: x509.Certificate) -> Mapping[str, Any]:
    return _ReadOnlyDict(
        clientCertPem=leaf.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        subjectDN=leaf.subject.rfc4514_string(),
        issuerDN=leaf.issuer.rfc4514_string(),
        serialNumber=_serial(leaf.serial_number),
        validity=_ReadOnlyDict(
            notBefore=_openssl_time(leaf.not_valid_before_utc),
            notAfter=_openssl_time(leaf.not_valid_after_utc),
        ),
    )


def _pems(text: str) -> list[bytes]:
    """Certificates in ``text`` as PEM, whatever happened to the line breaks on the way."""
    out = []
    for body in _PEM_BLOCK.findall(text):
        b64 = "".join(body.split())
        lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
        out.append(f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n".encode())
    return out


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            buf.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _xfcc(value: str) -> list[bytes]:
    """The client's certificate chain from Envoy's ``x-forwarded-client-cert``.

    Each proxy appends one comma-separated element; the last one is what the nearest
    (trusted) proxy saw, so it is the one read. ``Chain`` wins over ``Cert`` when present.
    """
    element = _split_outside_quotes(value, ",")[-1]
    found: dict[str, str] = {}
    for pair in _split_outside_quotes(element, ";"):
        key, eq, val = pair.strip().partition("=")
        if not eq:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        found[key.strip().lower()] = val
    for key in ("chain", "cert"):
        if key in found:
            return _pems(unquote(found[key]))
    return []


class MutualTls(BasePolicy):
    """Require a client certificate that chains to a truststore CA (API Gateway's mTLS).

    Args:
        truststore: a PEM bundle of the CAs (roots, and intermediates when clients do not
            send them): a file path, PEM text or bytes.
        source: ``"tls"`` reads the certificate from the server's TLS layer (the ASGI TLS
            extension ``scope["extensions"]["tls"]["client_cert_chain"]``; under WSGI,
            mod_ssl's ``SSL_CLIENT_CERT`` and ``SSL_CLIENT_CERT_CHAIN_n``); ``"header"``
            reads it from a header that a TLS-terminating proxy sets, and only when the
            request comes from one of the gateway's ``trusted_proxies``.
        header: the header for ``source="header"`` (default ``x-forwarded-client-cert``);
            it may hold nginx's URL-escaped PEM (``$ssl_client_escaped_cert``) or Envoy's
            ``x-forwarded-client-cert`` elements (``Cert="..."``/``Chain="..."``).
        crl: certificate revocation lists (PEM or DER; paths or bytes), each signed by a
            truststore CA; revoked certificates are refused. AWS does not check revocation.
        check: a callable ``check(leaf, chain) -> bool`` (plain or ``async``) run once a
            chain verifies, for extra rules (an OCSP lookup, an allow-list of subjects);
            ``False`` or an exception refuses the certificate.
        require_client_auth_usage: also require the ``clientAuth`` extended key usage on
            the client certificate (AWS does not).
        cache_ttl: seconds a verified chain is remembered (never past its ``notAfter``);
            ``None``: until ``notAfter``, or 300 s when ``crl`` or ``check`` is given.
        routes: route patterns it applies to (default: every request).

    A refused certificate gets 403 ``{"message":"Forbidden"}`` (type ``ACCESS_DENIED``).
    The app finds the certificate in ``context.identity.client_cert``: ``clientCertPem``,
    ``subjectDN``, ``issuerDN``, ``serialNumber``, ``validity.notBefore`` and
    ``validity.notAfter``, formatted as API Gateway does. The mapping is shared by every
    request presenting the same chain, so it is read-only (``dict(client_cert)`` copies it).

    Example, behind nginx on the same host::

        app.add_middleware(
            GatewayMiddleware,
            policies=[MutualTls("/etc/ssl/clients-ca.pem", source="header",
                                header="x-ssl-client-cert")],
            trusted_proxies=["127.0.0.1"],
        )
    """

    phase = Phase.MTLS

    def __init__(
        self,
        truststore: PemSource,
        *,
        source: str = "tls",
        header: str | None = None,
        crl: str
        | bytes
        | os.PathLike[str]
        | Sequence[str | bytes | os.PathLike[str]]
        | None = None,
        check: Callable[[x509.Certificate, list[x509.Certificate]], CheckResult] | None = None,
        require_client_auth_usage: bool = False,
        cache_ttl: float | None = None,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        data = _read(truststore, "MutualTls.truststore")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ConfigurationError(
                "MutualTls.truststore", f"not a PEM bundle of certificates: {exc}"
            ) from exc
        self._trust: dict[bytes, list[x509.Certificate]] = {}
        self._trusted: set[bytes] = set()
        for cert in certs:
            self._trust.setdefault(cert.subject.public_bytes(), []).append(cert)
            self._trusted.add(cert.fingerprint(hashes.SHA256()))
        if source not in ("tls", "header"):
            raise ConfigurationError("MutualTls.source", "must be 'tls' or 'header'")
        if header is not None and (source != "header" or not isinstance(header, str) or not header):
            raise ConfigurationError("MutualTls.header", "a header name, with source='header'")
        self.source = source
        self.header = (header or "x-forwarded-client-cert").lower()
        try:
            self._header_raw: bytes | None = self.header.encode("latin-1")
        except UnicodeEncodeError:  # no header can have that name: the general lookup refuses
            self._header_raw = None
        self._crls = self._load_crls(crl)
        if check is not None and not callable(check):
            raise ConfigurationError("MutualTls.check", "must be callable")
        self._check = check
        self.require_client_auth_usage = bool(require_client_auth_usage)
        if cache_ttl is not None and (
            not isinstance(cache_ttl, (int, float)) or isinstance(cache_ttl, bool) or cache_ttl < 0
        ):
            raise ConfigurationError("MutualTls.cache_ttl", "must be a non-negative number")
        if cache_ttl is None and (self._crls or check is not None):
            cache_ttl = 300.0
        self.cache_ttl = cache_ttl
        self._cache: dict[Any, _Entry] = {}
        self._proxies: Any = None
        self._wsgi = False

    def _load_crls(self, crl: Any) -> dict[bytes, list[x509.CertificateRevocationList]]:
        if crl is None:
            return {}
        items = [crl] if isinstance(crl, (str, bytes, os.PathLike)) else list(crl)
        out: dict[bytes, list[x509.CertificateRevocationList]] = {}
        for i, item in enumerate(items):
            field = f"MutualTls.crl[{i}]"
            data = _read(item, field)
            try:
                lists = (
                    [x509.load_pem_x509_crl(data)]
                    if b"-----BEGIN" in data
                    else [x509.load_der_x509_crl(data)]
                )
            except ValueError as exc:
                raise ConfigurationError(field, f"not a CRL: {exc}") from exc
            for lst in lists:
                issuers = self._trust.get(lst.issuer.public_bytes(), [])
                if not any(_crl_signed_by(lst, ca) for ca in issuers):
                    raise ConfigurationError(field, "not signed by a truststore certificate")
                out.setdefault(lst.issuer.public_bytes(), []).append(lst)
        return out

    def bind(self, settings: GatewaySettings) -> Policy:
        if self.source == "header" and not settings.trusted_proxies:
            raise ConfigurationError(
                "MutualTls.source",
                "source='header' needs the gateway's trusted_proxies: a certificate header "
                "is believed only from a trusted proxy",
            )
        bound = copy.copy(self)
        bound._proxies = settings.trusted_proxies
        bound._wsgi = settings.mode == "sync"
        bound._cache = {}
        return bound

    # -- the request path -------------------------------------------------------------------

    def flow(self, request: Request, context: RequestContext) -> Decision | Flow:
        key: Any
        if self.source == "header":
            proxies = self._proxies
            peer = request.peer
            if proxies is None or peer is None or not proxies.trusts(peer):
                return _FORBIDDEN
            name = self._header_raw
            if self._wsgi or name is None:
                values = request.headers.getlist(self.header)
                if len(values) != 1:
                    return _FORBIDDEN
                key = values[0]
            else:
                # Straight from the scope: the cached path then decodes and copies nothing,
                # and the header as received (bytes) is the cache key.
                size = len(name)
                key = None
                for k, v in request.raw.get("headers") or ():
                    if k == name or (len(k) == size and k.lower() == name):
                        if key is not None:  # repeated
                            return _FORBIDDEN
                        key = v
                if key is None:
                    return _FORBIDDEN
            if len(key) > _MAX_HEADER:
                return _FORBIDDEN
        elif self._wsgi:
            environ = request.raw
            leaf = environ.get("SSL_CLIENT_CERT")
            if not leaf:
                return _FORBIDDEN
            chain = [leaf]
            for i in range(MAX_CHAIN):
                extra = environ.get(f"SSL_CLIENT_CERT_CHAIN_{i}")
                if not extra:
                    break
                chain.append(extra)
            key = tuple(chain)
        else:
            tls = (request.raw.get("extensions") or {}).get("tls") or {}
            chain_in = tls.get("client_cert_chain")
            if not chain_in:
                return _FORBIDDEN
            try:
                key = tuple(chain_in)
            except TypeError:
                return _FORBIDDEN
        entry = self._cache.get(key)
        if entry is not None and time.time() < entry.until:
            return entry.decision
        return self._verify_flow(key)

    def _verify_flow(self, key: Any) -> Decision | Flow:
        now = time.time()
        try:
            chain = self._certificates(key)
            leaf = chain[0]
            path = self._verify(chain, datetime.fromtimestamp(now, timezone.utc))
        except _Refused as exc:
            logger.info("client certificate refused: %s", exc)
            self._remember(key, _FORBIDDEN, now + _NEGATIVE_TTL)
            return _FORBIDDEN
        if self._check is None:
            return self._accept(key, leaf, path, now)
        return self._checked(key, leaf, path, now)

    def _checked(
        self, key: Any, leaf: x509.Certificate, path: list[x509.Certificate], now: float
    ) -> Flow:
        check = self._check
        assert check is not None
        try:
            ok = yield Call(check, leaf, path)
        except Exception:
            logger.warning("MutualTls check failed; refusing the certificate", exc_info=True)
            return _FORBIDDEN
        if ok is not True:
            logger.info("client certificate refused by the check: %s", leaf.subject)
            self._remember(key, _FORBIDDEN, now + _NEGATIVE_TTL)
            return _FORBIDDEN
        return self._accept(key, leaf, path, now)

    def _accept(
        self, key: Any, leaf: x509.Certificate, path: list[x509.Certificate], now: float
    ) -> Decision:
        # Built once per verified chain; every request it admits shares the read-only mapping.
        allow = Allow(identity=MappingProxyType({"client_cert": _client_cert(leaf)}))
        until = min(c.not_valid_after_utc.timestamp() for c in path)
        if self.cache_ttl is not None:
            until = min(until, now + self.cache_ttl)
        self._remember(key, allow, until)
        return allow

    def _remember(self, key: Any, decision: Allow | Deny, until: float) -> None:
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = _Entry(decision, until)

    # -- verification -----------------------------------------------------------------------

    def _certificates(self, key: Any) -> list[x509.Certificate]:
        if isinstance(key, bytes):  # a forwarded header, from an ASGI scope
            key = key.decode("latin-1")
        if isinstance(key, str):
            text = key.strip()
            # nginx's form starts with the PEM armour; Envoy's with a key (By=, Hash=, Cert=).
            if unquote(text[:32]).startswith("-----BEGIN"):
                if "," in text:  # never in an escaped PEM: the header was repeated
                    raise _Refused("the certificate header was repeated")
                pems = _pems(unquote(text))
            else:
                pems = _xfcc(text)
        else:
            pems = []
            for item in key:
                if isinstance(item, bytes):
                    item = item.decode("ascii", "replace")
                if not isinstance(item, str):
                    raise _Refused("the TLS extension's chain holds a non-PEM entry")
                pems.extend(_pems(item))
        if not pems:
            raise _Refused("no certificate found")
        if len(pems) > MAX_CHAIN:
            raise _Refused(f"more than {MAX_CHAIN} certificates presented")
        try:
            return [x509.load_pem_x509_certificate(p) for p in pems]
        except ValueError as exc:
            raise _Refused(f"malformed certificate: {exc}") from exc

    def _verify(self, chain: list[x509.Certificate], now: datetime) -> list[x509.Certificate]:
        """The verified path from the leaf to a truststore certificate."""
        leaf = chain[0]
        if self.require_client_auth_usage:
            try:
                eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except x509.ExtensionNotFound:
                raise _Refused("no extended key usage (clientAuth required)") from None
            if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
                raise _Refused("extended key usage lacks clientAuth")
        pool = chain[1:]
        path = [leaf]
        current = leaf
        while True:
            _check_cert(current, now)
            trusted = current.fingerprint(hashes.SHA256()) in self._trusted
            if trusted and current.issuer == current.subject:
                break
            issuer = self._issuer(current, self._trust.get(current.issuer.public_bytes(), []))
            if issuer is None:
                issuer = self._issuer(current, pool)
                if issuer is None:
                    if trusted:
                        break
                    raise _Refused(f"no path to a truststore CA from {current.subject}")
            _check_ca(issuer, len(path) - 1)
            path.append(issuer)
            if len(path) > MAX_CHAIN:
                raise _Refused(f"chain longer than {MAX_CHAIN}")
            current = issuer
        for cert in path[:-1]:
            for crl in self._crls.get(cert.issuer.public_bytes(), ()):
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise _Refused(f"certificate {_serial(cert.serial_number)} is revoked")
        return path

    @staticmethod
    def _issuer(
        cert: x509.Certificate, candidates: Iterable[x509.Certificate]
    ) -> x509.Certificate | None:
        for candidate in candidates:
            if candidate is cert:
                continue
            try:
                cert.verify_directly_issued_by(candidate)
            except Exception:
                continue
            return candidate
        return None


def _check_cert(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise _Refused(f"{cert.subject} is not valid before {cert.not_valid_before_utc}")
    if now > cert.not_valid_after_utc:
        raise _Refused(f"{cert.subject} expired at {cert.not_valid_after_utc}")
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception as exc:
        raise _Refused(f"{cert.subject}: unsupported signature algorithm") from exc
    if algorithm is not None and algorithm.name not in _STRONG_HASHES:
        raise _Refused(f"{cert.subject} is signed with {algorithm.name}, below SHA-256")
    try:
        key = cert.public_key()
    except Exception as exc:
        raise _Refused(f"{cert.subject}: unsupported public key") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise _Refused(f"{cert.subject} has an RSA key of {key.key_size} bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < 256:
            raise _Refused(f"{cert.subject} has an EC key of {key.curve.key_size} bits")
    elif not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        raise _Refused(f"{cert.subject} has a {type(key).__name__}, not RSA, EC or EdDSA")


def _check_ca(cert: x509.Certificate, below: int) -> None:
    """``cert`` issues others: it must be a CA whose path length allows ``below`` more CAs."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise _Refused(f"{cert.subject} is not a CA (no basic constraints)") from None
    if not bc.ca:
        raise _Refused(f"{cert.subject} is not a CA")
    if bc.path_length is not None and below > bc.path_length:
        raise _Refused(f"{cert.subject}: path length constraint exceeded")


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        key = ca.public_key()
        return bool(crl.is_signature_valid(key))  # type: ignore[arg-type]
    except Exception:
        return False
