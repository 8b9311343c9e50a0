"""MutualTls: chains from the ASGI TLS extension, mod_ssl's environ and forwarded headers."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from apigw_mw import ConfigurationError, GatewayMiddleware, MutualTls
from tests.iam.certs import NOW, crl, issue, pki, rsa_key
from tests.iam.direct import Direct


def _nginx(*pems: str) -> str:
    """nginx's ``$ssl_client_escaped_cert``: the PEM, URL-escaped."""
    return quote("".join(pems), safe="")


def _xfcc(leaf: str, *chain: str, spoofed_first: str | None = None) -> str:
    """Envoy's ``x-forwarded-client-cert`` (an attacker's element may come first)."""
    element = (
        'Hash=3f2a;Cert="'
        + quote(leaf, safe="")
        + '"'
        + (';Chain="' + quote("".join((leaf, *chain)), safe="") + '"' if chain else "")
        + ';Subject="CN=client.example.com,O=Example Corp,C=US";URI=;DNS=client.example.com'
    )
    if spoofed_first is not None:
        element = 'Cert="' + quote(spoofed_first, safe="") + '",' + element
    return element


# -- what a verified certificate gives the app -------------------------------------------------


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_verified_chain_fills_identity_client_cert(adapter: str) -> None:
    p = pki()
    gw = Direct(adapter, [MutualTls(p.truststore)])
    if adapter == "asgi":
        r = gw.call("GET", b"/pets", tls={"client_cert_chain": [p.client.pem, p.intermediate.pem]})
    else:
        r = gw.call(
            "GET",
            b"/pets",
            environ_extra={
                "SSL_CLIENT_CERT": p.client.pem,
                "SSL_CLIENT_CERT_CHAIN_0": p.intermediate.pem,
            },
        )
    assert r.status == 200
    cert = r.seen[0][0].identity.client_cert
    assert cert["clientCertPem"] == p.client.pem
    assert cert["subjectDN"] == "CN=client.example.com,O=Example Corp,C=US"
    assert cert["issuerDN"] == "CN=Example Issuing CA,O=Example Corp,C=US"
    assert cert["serialNumber"] == "a1:b2:c3"
    month = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    fmt = re.compile(month + r" [ 123]\d \d\d:\d\d:\d\d \d{4} GMT$")
    assert fmt.match(cert["validity"]["notBefore"])
    assert fmt.match(cert["validity"]["notAfter"])
    after = p.client.cert.not_valid_after_utc
    assert cert["validity"]["notAfter"] == f"{after:%b} {after.day:2d} {after:%H:%M:%S %Y} GMT"


@pytest.mark.parametrize(
    ("chain", "truststore"),
    [
        pytest.param(("client", "intermediate"), ("root",), id="leaf-and-intermediate"),
        pytest.param(("client",), ("root", "intermediate"), id="intermediate-in-truststore"),
        pytest.param(("client_direct",), ("root",), id="ec-leaf-issued-by-root"),
        pytest.param(("client", "intermediate", "root"), ("root",), id="client-sends-the-root-too"),
    ],
)
def test_chains_that_reach_the_truststore(chain, truststore) -> None:
    p = pki()
    store = "".join(getattr(p, name).pem for name in truststore).encode()
    gw = Direct("asgi", [MutualTls(store)])
    r = gw.call("GET", b"/", tls={"client_cert_chain": [getattr(p, n).pem for n in chain]})
    assert r.status == 200


def _bad_chains() -> list[Any]:
    p = pki()
    root, inter = p.root, p.intermediate
    past = NOW - dt.timedelta(days=10)
    i1 = issue("Level 1 CA", root, ca=True)
    i2 = issue("Level 2 CA", i1, ca=True)
    i3 = issue("Level 3 CA", i2, ca=True)
    deep = issue("deep.example.com", i3)
    forged = issue("admin.example.com", p.client)  # signed with a client's own key
    other_root = issue("Other Root", ca=True, key=rsa_key(2048, 1))
    pathlen0 = issue("Leaf-only CA", root, ca=True, path_length=0)
    below_pathlen0 = issue("Sub CA", pathlen0, ca=True)
    return [
        pytest.param([], id="no-certificate"),
        pytest.param(
            [
                issue(
                    "old.example.com", inter, not_before=past, not_after=NOW - dt.timedelta(days=1)
                ).pem,
                inter.pem,
            ],
            id="expired",
        ),
        pytest.param(
            [
                issue("soon.example.com", inter, not_before=NOW + dt.timedelta(days=1)).pem,
                inter.pem,
            ],
            id="not-yet-valid",
        ),
        pytest.param([issue("self.example.com").pem], id="self-signed-not-in-truststore"),
        pytest.param(
            [issue("stranger.example.com", other_root).pem, other_root.pem],
            id="chain-to-another-root",
        ),
        pytest.param([p.client.pem], id="intermediate-missing"),
        pytest.param([deep.pem, i3.pem, i2.pem, i1.pem], id="chain-longer-than-four"),
        pytest.param(
            [issue("weak.example.com", inter, key=rsa_key(1024)).pem, inter.pem],
            id="rsa-1024-key",
        ),
        pytest.param(
            [
                issue(
                    "weak-ec.example.com", inter, key=ec.generate_private_key(ec.SECP192R1())
                ).pem,
                inter.pem,
            ],
            id="ec-192-key",
        ),
        pytest.param(
            [issue("sha224.example.com", inter, hash_alg=hashes.SHA224()).pem, inter.pem],
            id="sha224-signature-below-sha256",
        ),
        pytest.param([forged.pem, p.client.pem, inter.pem], id="leaf-used-as-ca"),
        pytest.param(
            [issue("x.example.com", below_pathlen0).pem, below_pathlen0.pem, pathlen0.pem],
            id="path-length-exceeded",
        ),
        pytest.param(
            ["-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"],
            id="garbage-pem",
        ),
        pytest.param(["hello"], id="not-pem"),
        pytest.param([p.client.pem] * 5, id="five-certificates"),
    ]


@pytest.mark.parametrize("chain", _bad_chains())
def test_bad_chains_from_the_tls_extension_get_403(chain) -> None:
    gw = Direct("asgi", [MutualTls(pki().truststore)])
    r = gw.call("GET", b"/", tls={"client_cert_chain": chain})
    assert r.status == 403
    assert r.json() == {"message": "Forbidden"}
    assert r.seen == []


@pytest.mark.parametrize("chain", _bad_chains())
def test_bad_chains_from_a_trusted_proxy_header_get_403(make_client, chain) -> None:
    client = make_client(
        [MutualTls(pki().truststore, source="header", header="x-ssl-client-cert")],
        trusted_proxies=["127.0.0.1"],
    )
    headers = {"x-ssl-client-cert": _nginx(*chain)} if chain else {}
    r = client.get("/", headers=headers)
    assert r.status_code == 403
    assert r.json() == {"message": "Forbidden"}
    assert r.seen == []


def test_tls_extension_without_chain_is_refused() -> None:
    gw = Direct("asgi", [MutualTls(pki().truststore)])
    assert gw.call("GET", b"/").status == 403
    assert gw.call("GET", b"/", tls={"client_cert_chain": None}).status == 403
    assert gw.call("GET", b"/", tls={"client_cert_chain": 42}).status == 403


# -- forwarded headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param(
            "x-ssl-client-cert", lambda p: _nginx(p.client.pem, p.intermediate.pem), id="nginx"
        ),
        pytest.param(
            "x-forwarded-client-cert",
            lambda p: _xfcc(p.client.pem, p.intermediate.pem),
            id="envoy-with-chain",
        ),
        pytest.param(
            "x-forwarded-client-cert",
            lambda p: _xfcc(p.client_direct.pem),
            id="envoy-cert-only",
        ),
        pytest.param(
            "x-forwarded-client-cert",
            lambda p: _xfcc(p.client_direct.pem, spoofed_first=issue("evil").pem),
            id="envoy-appended-element-is-read",
        ),
    ],
)
def test_certificate_forwarded_by_a_trusted_proxy(make_client, header, value) -> None:
    p = pki()
    policy = MutualTls(
        p.truststore,
        source="header",
        header=None if header == "x-forwarded-client-cert" else header,
    )
    client = make_client([policy], trusted_proxies=["10.0.0.0/8"])
    r = client.get("/pets", headers={header: value(p)}, client_ip="10.0.0.7")
    assert r.status_code == 200, r.text
    assert r.seen[0].context.identity.client_cert["subjectDN"].endswith("O=Example Corp,C=US")


def test_certificate_header_from_an_untrusted_peer_is_refused(make_client) -> None:
    p = pki()
    client = make_client(
        [MutualTls(p.truststore, source="header", header="x-ssl-client-cert")],
        trusted_proxies=["10.0.0.0/8"],
    )
    value = _nginx(p.client.pem, p.intermediate.pem)
    r = client.get("/", headers={"x-ssl-client-cert": value}, client_ip="192.0.2.10")
    assert r.status_code == 403
    assert r.json() == {"message": "Forbidden"}
    assert r.seen == []
    # Even a trusted proxy's X-Forwarded-For does not make an untrusted peer a proxy.
    r = client.get(
        "/",
        headers={"x-ssl-client-cert": value, "x-forwarded-for": "10.0.0.7"},
        client_ip="192.0.2.10",
    )
    assert r.status_code == 403


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_repeated_certificate_header_is_refused(adapter) -> None:
    p = pki()
    gw = Direct(
        adapter,
        [MutualTls(p.truststore, source="header", header="x-ssl-client-cert")],
        trusted_proxies=["127.0.0.1"],
    )
    value = _nginx(p.client_direct.pem)
    assert gw.call("GET", b"/", [("x-ssl-client-cert", value)]).status == 200
    # Under WSGI the server joins the two values with a comma.
    r = gw.call("GET", b"/", [("x-ssl-client-cert", value), ("x-ssl-client-cert", value)])
    assert r.status == 403
    assert r.seen == []


def test_certificate_header_names_in_any_case_in_the_asgi_scope() -> None:
    import anyio

    p = pki()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gw = GatewayMiddleware(
        app,
        policies=[MutualTls(p.truststore, source="header", header="X-SSL-Client-Cert")],
        trusted_proxies=["127.0.0.1"],
    )
    value = _nginx(p.client_direct.pem).encode()

    def call(headers: list[tuple[bytes, bytes]]) -> int:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 51000),
        }
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        anyio.run(gw, scope, receive, send)
        return status[0]

    # ASGI asks servers for lower-case names but does not require them.
    assert call([(b"X-SSL-Client-Cert", value)]) == 200
    assert len(seen) == 1
    # The same header twice, whatever the case of each name, is a repeated header.
    assert call([(b"X-SSL-Client-Cert", value), (b"x-ssl-client-cert", value)]) == 403
    assert len(seen) == 1


def test_client_cert_is_one_read_only_mapping_per_certificate(make_client) -> None:
    import copy
    import json
    import pickle

    p = pki()
    client = make_client(
        [MutualTls(p.truststore, source="header", header="x-ssl-client-cert")],
        trusted_proxies=["127.0.0.1"],
    )
    headers = {"x-ssl-client-cert": _nginx(p.client.pem, p.intermediate.pem)}
    first = client.get("/", headers=headers)
    second = client.get("/", headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    cert = first.seen[0].context.identity.client_cert
    assert second.seen[0].context.identity.client_cert is cert
    with pytest.raises(TypeError, match="read-only"):
        cert["subjectDN"] = "CN=someone else"
    with pytest.raises(TypeError, match="read-only"):
        cert["validity"]["notAfter"] = "never"
    with pytest.raises(TypeError, match="read-only"):
        cert.pop("clientCertPem")
    assert cert["subjectDN"] == "CN=client.example.com,O=Example Corp,C=US"
    # A copy is an ordinary dict the app may change; the mapping serialises as one.
    mine = dict(cert)
    mine["subjectDN"] = "changed"
    assert cert["subjectDN"] != "changed"
    assert json.loads(json.dumps(cert)) == {**cert, "validity": dict(cert["validity"])}
    assert copy.deepcopy(cert) == cert
    assert pickle.loads(pickle.dumps(cert)) == cert


# -- cache, revocation, checks -----------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync-check", "async-check"])
def test_check_runs_once_per_chain_and_can_refuse(adapter, asynchronous) -> None:
    p = pki()
    seen: list[str] = []

    def decide(leaf: Any, chain: list[Any]) -> bool:
        seen.append(leaf.subject.rfc4514_string())
        return "direct" not in seen[-1]

    async def adecide(leaf: Any, chain: list[Any]) -> bool:
        return decide(leaf, chain)

    gw = Direct(
        adapter,
        [MutualTls(p.truststore, source="header", check=adecide if asynchronous else decide)],
        trusted_proxies=["127.0.0.1"],
    )
    good = [("x-forwarded-client-cert", _xfcc(p.client.pem, p.intermediate.pem))]
    assert gw.call("GET", b"/", good).status == 200
    assert gw.call("GET", b"/", good).status == 200
    assert len(seen) == 1  # the second request used the verified chain
    refused = [("x-forwarded-client-cert", _xfcc(p.client_direct.pem))]
    assert gw.call("GET", b"/", refused).status == 403


def test_check_that_raises_refuses_the_certificate() -> None:
    def broken(leaf: Any, chain: Any) -> bool:
        raise TimeoutError("OCSP responder did not answer")

    p = pki()
    gw = Direct("asgi", [MutualTls(p.truststore, check=broken)])
    r = gw.call("GET", b"/", tls={"client_cert_chain": [p.client_direct.pem]})
    assert r.status == 403
    assert r.seen == []


def test_revoked_certificate_is_refused() -> None:
    p = pki()
    store = p.truststore + p.intermediate.pem.encode()
    revoked = crl(p.intermediate, [p.client.cert.serial_number])
    gw = Direct("asgi", [MutualTls(store, crl=[revoked, crl(p.root, [])])])
    assert gw.call("GET", b"/", tls={"client_cert_chain": [p.client.pem]}).status == 403
    assert gw.call("GET", b"/", tls={"client_cert_chain": [p.client_direct.pem]}).status == 200


def test_client_auth_usage_only_when_asked() -> None:
    p = pki()
    strict = Direct("asgi", [MutualTls(p.truststore, require_client_auth_usage=True)])
    lax = Direct("asgi", [MutualTls(p.truststore)])
    chain = {"client_cert_chain": [p.client.pem, p.intermediate.pem]}
    no_eku = {"client_cert_chain": [p.client_direct.pem]}
    assert strict.call("GET", b"/", tls=chain).status == 200
    assert strict.call("GET", b"/", tls=no_eku).status == 403
    assert lax.call("GET", b"/", tls=no_eku).status == 200


def test_cached_chain_expires_with_the_certificate(monkeypatch) -> None:
    import time as time_module

    p = pki()
    short = issue("short.example.com", p.root, not_after=NOW + dt.timedelta(seconds=3600))
    gw = Direct("asgi", [MutualTls(p.truststore)])
    tls = {"client_cert_chain": [short.pem]}
    assert gw.call("GET", b"/", tls=tls).status == 200
    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() + 7200)
    assert gw.call("GET", b"/", tls=tls).status == 403


# -- configuration -----------------------------------------------------------------------------


def test_bad_configuration_names_the_field(tmp_path) -> None:
    p = pki()
    with pytest.raises(ConfigurationError) as info:
        MutualTls(b"not a pem bundle")
    assert info.value.field == "MutualTls.truststore"
    with pytest.raises(ConfigurationError) as info:
        MutualTls(str(tmp_path / "missing.pem"))
    assert info.value.field == "MutualTls.truststore"
    with pytest.raises(ConfigurationError) as info:
        MutualTls(p.truststore, source="cookie")
    assert info.value.field == "MutualTls.source"
    with pytest.raises(ConfigurationError) as info:
        MutualTls(p.truststore, header="x-cert")
    assert info.value.field == "MutualTls.header"
    with pytest.raises(ConfigurationError) as info:
        MutualTls(p.truststore, crl=[crl(p.intermediate, [])])
    assert info.value.field == "MutualTls.crl[0]"
    with pytest.raises(ConfigurationError) as info:
        MutualTls(p.truststore, crl=b"garbage")
    assert info.value.field == "MutualTls.crl[0]"
    with pytest.raises(ConfigurationError) as info:
        GatewayMiddleware(lambda *a: None, policies=[MutualTls(p.truststore, source="header")])
    assert info.value.field == "MutualTls.source"


def test_truststore_from_a_file(tmp_path) -> None:
    p = pki()
    path = tmp_path / "truststore.pem"
    path.write_bytes(p.truststore)
    gw = Direct("asgi", [MutualTls(path)])
    assert gw.call("GET", b"/", tls={"client_cert_chain": [p.client_direct.pem]}).status == 200


# -- through a real server ---------------------------------------------------------------------


@pytest.fixture
def uvicorn_behind_nginx():  # type: ignore[no-untyped-def]
    """A real uvicorn on 127.0.0.1, as it runs behind an nginx on the same host."""
    import socket
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from apigw_mw import get_context

    async def whoami(request: Request) -> JSONResponse:
        cert = get_context(request).identity.client_cert
        return JSONResponse({"subjectDN": cert["subjectDN"], "serial": cert["serialNumber"]})

    app = GatewayMiddleware(
        Starlette(routes=[Route("/whoami", whoami)]),
        policies=[MutualTls(pki().truststore, source="header", header="x-ssl-client-cert")],
        trusted_proxies=["127.0.0.1"],
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_real_server_with_an_nginx_forwarded_certificate(uvicorn_behind_nginx) -> None:
    import httpx

    p = pki()
    with httpx.Client(base_url=uvicorn_behind_nginx, timeout=5) as http:
        ok = http.get(
            "/whoami", headers={"x-ssl-client-cert": _nginx(p.client.pem, p.intermediate.pem)}
        )
        assert ok.status_code == 200
        assert ok.json() == {
            "subjectDN": "CN=client.example.com,O=Example Corp,C=US",
            "serial": "a1:b2:c3",
        }
        refused = http.get("/whoami", headers={"x-ssl-client-cert": _nginx(issue("x").pem)})
        assert refused.status_code == 403
        assert refused.json() == {"message": "Forbidden"}
        assert refused.headers["x-amzn-errortype"] == "AccessDeniedException"
        assert http.get("/whoami").status_code == 403
