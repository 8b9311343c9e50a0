"""Certificates for the mTLS tests, generated with ``cryptography`` (once per session)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: Any

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@cache
def _rsa(bits: int = 2048, n: int = 0) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make: a few are made once and shared (``n`` picks one)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_key(bits: int = 2048, n: int = 0) -> rsa.RSAPrivateKey:
    return _rsa(bits, n)


def issue(
    cn: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    key: Any = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    hash_alg: Any = None,
    serial: int | None = None,
    eku: list[Any] | None = None,
    path_length: int | None = None,
) -> Issued:
    """A certificate for ``cn``, signed by ``issuer`` (self-signed when ``None``)."""
    key = key if key is not None else _rsa(2048, hash(cn) % 3)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, hash_alg if hash_alg is not None else hashes.SHA256())
    return Issued(cert, key)


@dataclass(frozen=True)
class Pki:
    root: Issued
    intermediate: Issued
    client: Issued
    client_direct: Issued  # issued by the root itself

    @property
    def truststore(self) -> bytes:
        return self.root.pem.encode()


@cache
def pki() -> Pki:
    root = issue("Example Root CA", ca=True)
    inter = issue("Example Issuing CA", root, ca=True, key=_rsa(2048, 1))
    client = issue(
        "client.example.com",
        inter,
        key=_rsa(2048, 2),
        serial=0xA1B2C3,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    direct = issue("direct.example.com", root, key=ec.generate_private_key(ec.SECP256R1()))
    return Pki(root, inter, client, direct)


def crl(issuer: Issued, revoked_serials: list[int]) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(NOW - dt.timedelta(days=1))
        .next_update(NOW + dt.timedelta(days=7))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - dt.timedelta(hours=1))
            .build()
        )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
