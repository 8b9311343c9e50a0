"""Shared parts for the authorizer tests: real keys, a real OIDC issuer on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def _uint(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Key:
    """A signing key with its kid; signs tokens with any header, even bad ones."""

    def __init__(self, kid: str, private: Any) -> None:
        self.kid = kid
        self.private = private

    @property
    def is_rsa(self) -> bool:
        return isinstance(self.private, rsa.RSAPrivateKey)

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.is_rsa:
            n = public.public_numbers()
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "n": _uint(n.n), "e": _uint(n.e)}
        n = public.public_numbers()
        return {"kty": "EC", "kid": self.kid, "crv": "P-256", "x": _uint(n.x), "y": _uint(n.y)}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: Mapping[str, Any], **header: Any) -> str:
        head: dict[str, Any] = {"alg": "RS256" if self.is_rsa else "ES256", "kid": self.kid}
        head.update(header)
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = f"{b64_json(head)}.{b64_json(claims)}".encode()
        if self.is_rsa:
            sig = self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            der = self.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input.decode()}.{b64(sig)}"


@pytest.fixture(scope="session")
def rsa_key() -> Key:
    return Key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def rsa_key2() -> Key:
    return Key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def ec_key() -> Key:
    return Key("ec-1", ec.generate_private_key(ec.SECP256R1()))


class Issuer:
    """An OIDC issuer served over real HTTP on 127.0.0.1.

    Serves ``/.well-known/openid-configuration`` and the key set at ``/jwks.json`` (and at
    any ``.../.well-known/jwks.json``, Cognito's layout). ``mode`` switches the key set's
    behaviour: ``ok``, ``500``, ``garbage`` (invalid JSON), ``slow`` (sleeps ``delay``),
    ``wrong-type`` (only symmetric keys). ``hits`` counts requests per path.
    """

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.extra_jwks: list[dict[str, Any]] = []
        self.mode = "ok"
        self.delay = 0.0
        self.cache_control: str | None = None
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with issuer.lock:
                    issuer.hits[path] += 1
                if path == "/.well-known/openid-configuration":
                    self.reply(200, {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks.json"})
                elif path == "/jwks.json" or path.endswith("/.well-known/jwks.json"):
                    issuer.serve_jwks(self)
                else:
                    self.reply(404, {"message": "not found"})

            def reply(self, status: int, body: Any, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if issuer.cache_control:
                    self.send_header("Cache-Control", issuer.cache_control)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def serve_jwks(self, handler: Any) -> None:
        mode = self.mode
        if mode == "slow":
            time.sleep(self.delay)
        if mode == "500":
            handler.reply(500, {"message": "boom"})
        elif mode == "garbage":
            handler.reply(200, None, raw=b"{not json")
        elif mode == "wrong-type":
            handler.reply(
                200, {"keys": [{"kty": "oct", "kid": k.kid, "k": "c2VjcmV0"} for k in self.keys]}
            )
        else:
            time.sleep(self.delay)
            handler.reply(200, {"keys": [k.jwk() for k in self.keys] + self.extra_jwks})

    @property
    def jwks_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if p.endswith("jwks.json"))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        out: dict[str, Any] = {
            "iss": self.url,
            "sub": "user-1",
            "aud": "api://pets",
            "iat": now - 10,
            "nbf": now - 10,
            "exp": now + 600,
        }
        out.update(overrides)
        return {k: v for k, v in out.items() if v is not None}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer(rsa_key: Key, ec_key: Key) -> Iterator[Issuer]:
    server = Issuer()
    server.keys = [rsa_key, ec_key]
    try:
        yield server
    finally:
        server.close()
