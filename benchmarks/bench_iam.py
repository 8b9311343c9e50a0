"""IAM (SigV4), mutual TLS and resource policies, against the bare Starlette app.

Budgets: a SigV4 check of a GET without body adds at most the bare app's own cost; a cached
mTLS chain at most a quarter of it; a resource policy with a few IP ranges at most a tenth.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from apigw_mw import (
    Allow,
    BasePolicy,
    GatewayMiddleware,
    IamAuthorizer,
    MutualTls,
    Phase,
    ResourcePolicy,
    Stage,
)
from bench_core import starlette_app
from harness import Call, Scenario

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-1"
STAGE = Stage("prod", region=REGION)


def _signed_get(path: str) -> Call:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"https://bench{path}", headers={"Host": "bench"})
    SigV4Auth(Credentials(AKID, SECRET), "execute-api", REGION).add_auth(request)
    headers = [
        (k.lower().encode(), v.encode())
        for k, v in request.prepare().headers.items()
        if k.lower() != "host"  # the harness sends host: bench itself
    ]
    return Call("GET", path, headers=headers)


def _pki() -> tuple[bytes, str]:
    """A root CA (the truststore) and a client certificate it issued, nginx-escaped."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(cn: str, key: Any, issuer: Any, signer: Any, ca: bool) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Root")])
    root = cert("Bench Root", root_key, root_name, root_key, True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = cert("client.bench", client_key, root_name, root_key, False)
    pem = serialization.Encoding.PEM
    return root.public_bytes(pem), quote(client.public_bytes(pem).decode(), safe="")


class _NoOp(BasePolicy):
    phase = Phase.AUTHORIZE

    def flow(self, request: Any, context: Any) -> None:
        return None


_CERT = Allow(identity={"client_cert": {"subjectDN": "CN=client.bench"}})


class _ConstantCert(BasePolicy):
    """Admits with a fixed ``client_cert``: what the pipeline itself costs to set identity."""

    phase = Phase.MTLS

    def flow(self, request: Any, context: Any) -> Allow:
        return _CERT


def scenarios() -> list[Scenario]:
    bare = starlette_app()
    get = [Call("GET", "/pets/1")]
    iam = IamAuthorizer({AKID: SECRET}, region=REGION)
    # Distinct signatures over a few paths: the signing key is cached, the signature is not.
    signed = [_signed_get(f"/pets/{i}") for i in range(8)]
    truststore, escaped = _pki()
    mtls = MutualTls(truststore, source="header", header="x-ssl-client-cert")
    cert_call = [Call("GET", "/pets/1", headers=[(b"x-ssl-client-cert", escaped.encode())])]
    policy = ResourcePolicy(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "execute-api:Invoke",
                    "Resource": "execute-api:/*",
                },
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "execute-api:Invoke",
                    "Resource": "execute-api:/*",
                    "Condition": {
                        "NotIpAddress": {
                            "aws:SourceIp": ["127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16"]
                        }
                    },
                },
            ],
        }
    )
    ref = "iam: bare app"
    # The budgets count what each policy adds on top of the pipeline's fixed cost of running
    # one policy, which a policy that decides nothing measures.
    base = "iam: gateway + no-op policy"
    return [
        Scenario(ref, "asgi", bare, get, group="iam"),
        Scenario(
            "iam: gateway, no policies",
            "asgi",
            GatewayMiddleware(bare, stage=STAGE),
            get,
            baseline=ref,
            group="iam",
        ),
        Scenario(
            base,
            "asgi",
            GatewayMiddleware(bare, policies=[_NoOp()], stage=STAGE),
            get,
            baseline=ref,
            group="iam",
        ),
        Scenario(
            "iam: SigV4 GET, no body",
            "asgi",
            GatewayMiddleware(bare, policies=[iam], stage=STAGE),
            signed,
            baseline=base,
            group="iam",
            budget=1.0,
            budget_kind="added",
            budget_ref=ref,
        ),
        Scenario(
            "iam: mTLS, cached chain (nginx header)",
            "asgi",
            GatewayMiddleware(bare, policies=[mtls], stage=STAGE, trusted_proxies=["127.0.0.1"]),
            cert_call,
            baseline=base,
            group="iam",
            budget=0.25,
            budget_kind="added",
            budget_ref=ref,
        ),
        # Not a budget: the share of the mTLS figure that is the pipeline's own cost of
        # writing an identity (context identity and client address through trusted proxies).
        Scenario(
            "iam: identity written, no check (reference)",
            "asgi",
            GatewayMiddleware(
                bare, policies=[_ConstantCert()], stage=STAGE, trusted_proxies=["127.0.0.1"]
            ),
            cert_call,
            baseline=base,
            group="iam",
        ),
        Scenario(
            "iam: resource policy, 3 IP ranges",
            "asgi",
            GatewayMiddleware(bare, policies=[policy], stage=STAGE),
            get,
            baseline=base,
            group="iam",
            budget=0.1,
            budget_kind="added",
            budget_ref=ref,
        ),
    ]
