"""``apigw-mw demo``: a small pets and orders API behind the gateway, on 127.0.0.1.

The demo mounts every policy the library offers in front of a Starlette app and prints
ready-to-paste ``curl`` lines that show each one at work, then serves with uvicorn::

    apigw-mw demo                      # http://127.0.0.1:8000
    apigw-mw demo --port 9000 --trace  # print the policies each request went through
    apigw-mw demo --redis redis://127.0.0.1:6379/0

:func:`build_app` builds the same app without serving it, and :func:`demo_calls` lists the
scenarios the printed ``curl`` lines come from, each with the status it should get, so the
demo can be driven in process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .._version import __version__
from ..asgi import ASGIApp, GatewayMiddleware
from ..context import RequestContext, get_context
from ..cors import Cors
from ..pipeline import BasePolicy, Phase, RouteTable
from ..request import Request
from ..responses import GatewayResponse, GatewayResponses
from ..routes import Stage

__all__ = [
    "DemoCall",
    "DemoCredentials",
    "build_app",
    "demo_calls",
    "demo_credentials",
    "demo_policies",
    "register",
]

#: The origin the demo's CORS policy allows (the browser app of the example).
DEMO_ORIGIN = "https://app.example.com"
#: The demo's body limit, small so that the 413 scenario is one short ``curl`` line.
DEMO_MAX_BODY = 64 * 1024

#: Every route the demo app serves, as API Gateway route keys.
DEMO_ROUTES = (
    "GET /pets",
    "POST /pets",
    "GET /pets/{petId}",
    "GET /orders",
    "POST /orders",
    "GET /orders/{orderId}",
    "GET /pets/{petId}/secrets",
    "GET /profile",
    "GET /certs/whoami",
    "GET /reports",
    "GET /whoami",
)

#: The demo Cognito user pool (its tokens are signed in process; nothing is fetched).
DEMO_COGNITO_POOL = "us-east-1_Demo12345"
DEMO_COGNITO_CLIENT = "demo-app-client"
DEMO_COGNITO_ISSUER = f"https://cognito-idp.us-east-1.amazonaws.com/{DEMO_COGNITO_POOL}"
#: The header a TLS-terminating proxy (nginx) forwards the client certificate in.
DEMO_CERT_HEADER = "X-SSL-Client-Cert"

#: SigV4 credentials of the demo's IAM-protected route (``GET /reports``).
DEMO_ACCESS_KEY = "AKIAAPIGWMWDEMO00001"
DEMO_SECRET_KEY = "demo/secret/key/for/apigw-mw/0123456789"
DEMO_REGION = "us-east-1"

#: The demo usage plan's API key (20 to 128 characters, as API Gateway's keys are).
DEMO_API_KEY = "demo-Fq3sY0cXk1wQ0pZl8mTn2bVx"

#: The model ``POST /pets`` bodies are validated against (JSON Schema draft 4).
PET_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "kind": {"type": "string", "enum": ["dog", "cat", "parrot", "fish"]},
    },
    "additionalProperties": False,
}


def _demo_lambda_authorizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A Lambda REQUEST authorizer, written exactly as it would run in AWS Lambda."""
    user = (event.get("headers") or {}).get("x-demo-user")
    if not user:
        raise Exception("Unauthorized")  # API Gateway's way to say 401
    effect = "Deny" if user == "mallory" else "Allow"
    return {
        "principalId": f"user|{user}",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
            ],
        },
        "context": {"user": user, "tier": "gold"},
    }


@dataclass(frozen=True)
class DemoCall:
    """One demo scenario: a request, the status it should get, and its ``curl`` line.

    Args:
        title: what the call shows, printed above its ``curl`` line.
        method: the HTTP method.
        path: the path, query string included.
        expect: the status the demo answers with.
        headers: request headers.
        data: a text body.
        upload_bytes: send a body of this many zero bytes instead (``head -c N /dev/zero``).
        repeat: send the call this many times in a row; ``expect`` is the last answer's status.
        sigv4: ``(access key, secret key, region)`` to sign the call with (``execute-api``).

    Example::

        DemoCall("a strict-route 403", "GET", "/admin", expect=403)
    """

    title: str
    method: str
    path: str
    expect: int
    headers: Sequence[tuple[str, str]] = ()
    data: str | None = None
    upload_bytes: int = 0
    repeat: int = 1
    sigv4: tuple[str, str, str] | None = None

    def body(self) -> bytes | None:
        """The request body the call sends, or ``None``."""
        if self.upload_bytes:
            return b"\0" * self.upload_bytes
        if self.data is not None:
            return self.data.encode("utf-8")
        return None

    def curl(self, base_url: str) -> str:
        """The call as one ``curl`` line against ``base_url``."""
        parts = ["curl", "-i"]
        sends_body = self.data is not None or self.upload_bytes > 0
        if self.method not in ("GET", "POST") or (self.method == "POST") != sends_body:
            parts += ["-X", self.method]
        if self.sigv4 is not None:
            access, secret, region = self.sigv4
            parts += [
                "--aws-sigv4",
                f"aws:amz:{region}:execute-api",
                "--user",
                f"{access}:{secret}",
            ]
        for name, value in self.headers:
            parts += ["-H", f"{name}: {value}"]
        if self.upload_bytes:
            parts += ["--data-binary", "@-"]
        elif self.data is not None:
            parts += ["--data", self.data]
        parts.append(base_url.rstrip("/") + self.path)
        line = " ".join(shlex.quote(p) for p in parts)
        if self.upload_bytes:
            line = f"head -c {self.upload_bytes} /dev/zero | {line}"
        if self.repeat > 1:
            line = f"for i in $(seq {self.repeat}); do {line}; echo; done"
        return line


@dataclass(frozen=True)
class DemoCredentials:
    """The demo's API key, tokens and handler secret, printed in its ``curl`` lines.

    Attributes:
        api_key: a key of the demo usage plan (``GET /orders``).
        writer_token: a JWT with the ``orders/write`` scope (``POST /orders``).
        reader_token: a JWT without that scope.
        issuer: the in-memory issuer that signed both tokens.
    """

    api_key: str
    writer_token: str
    reader_token: str
    issuer: Any
    cognito_token: str = ""
    cognito_issuer: Any = None
    client_cert_header: str = ""
    ca_pem: bytes = b""


def demo_credentials() -> DemoCredentials:
    """Fresh demo credentials: throwaway signing keys, tokens valid for 12 hours, and a
    client certificate issued by a throwaway CA."""
    from ..auth.jwt import LocalIssuer

    issuer = LocalIssuer("https://issuer.demo.apigw-mw.local")
    cognito = LocalIssuer(DEMO_COGNITO_ISSUER, kid="demo-pool-1")
    id_claims: dict[str, Any] = {
        "token_use": "id",
        "email": "alice@example.com",
        "cognito:username": "alice",
        "cognito:groups": ["pet-owners"],
    }
    cognito_token = cognito.token(
        sub="5f3c2a1e-demo-user", audience=DEMO_COGNITO_CLIENT, expires_in=12 * 3600, **id_claims
    )
    ca_pem, client_header = _demo_certificates()
    return DemoCredentials(
        api_key=DEMO_API_KEY,
        writer_token=issuer.token(sub="alice", scope="orders/write", expires_in=12 * 3600),
        reader_token=issuer.token(sub="bob", scope="orders/read", expires_in=12 * 3600),
        issuer=issuer,
        cognito_token=cognito_token,
        cognito_issuer=cognito,
        client_cert_header=client_header,
        ca_pem=ca_pem,
    )


def _demo_certificates() -> tuple[bytes, str]:
    """A throwaway CA and a client certificate it issued: the CA's PEM, and the client
    certificate URL-escaped as nginx's ``$ssl_client_escaped_cert`` forwards it."""
    import datetime
    from urllib.parse import quote

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apigw-mw demo"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("demo CA"))
        .issuer_name(name("demo CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        x509.CertificateBuilder()
        .subject_name(name("demo client"))
        .issuer_name(ca.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    client_pem = client.public_bytes(serialization.Encoding.PEM).decode()
    return ca_pem, quote(client_pem, safe="")


def demo_calls(credentials: DemoCredentials | None = None) -> list[DemoCall]:
    """The demo's scenarios, in the order they are printed.

    Args:
        credentials: the credentials the keyed and authorized calls use (see
            :func:`demo_credentials`); left out, those calls are not listed.
    """
    json_header = ("Content-Type", "application/json")
    calls = [
        DemoCall("a normal call", "GET", "/pets", expect=200),
        DemoCall(
            "path parameters, stage variables and the request context",
            "GET",
            "/pets/2",
            expect=200,
        ),
        DemoCall(
            "create a pet (the body is validated, then reaches the app untouched)",
            "POST",
            "/pets",
            expect=201,
            headers=[json_header],
            data='{"name": "Rex", "kind": "dog"}',
        ),
        DemoCall(
            "a body that fails the model: 400 Invalid request body, with the detail",
            "POST",
            "/pets",
            expect=400,
            headers=[json_header],
            data='{"kind": "dog"}',
        ),
        DemoCall(
            "a CORS preflight, answered by the gateway",
            "OPTIONS",
            "/pets",
            expect=204,
            headers=[
                ("Origin", DEMO_ORIGIN),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
        ),
        DemoCall(
            "a cross-origin call gets CORS headers",
            "GET",
            "/pets",
            expect=200,
            headers=[("Origin", DEMO_ORIGIN)],
        ),
        DemoCall(
            "a route the API does not declare: 403 Missing Authentication Token",
            "GET",
            "/admin",
            expect=403,
        ),
        DemoCall(
            "a body over the limit: 413, the app never sees it",
            "POST",
            "/pets",
            expect=413,
            headers=[json_header],
            upload_bytes=DEMO_MAX_BODY + 1,
        ),
        DemoCall(
            "a client in a range the resource policy denies (via the trusted local proxy): 403",
            "GET",
            "/pets",
            expect=403,
            headers=[("X-Forwarded-For", "192.0.2.10")],
        ),
        DemoCall(
            "a keyed route without an API key: 403 Forbidden",
            "GET",
            "/orders",
            expect=403,
        ),
        DemoCall(
            "a Lambda-style authorizer without its header: 401 Unauthorized",
            "GET",
            "/pets/1/secrets",
            expect=401,
        ),
        DemoCall(
            "the same authorizer (your Lambda handler, run in process) allows it",
            "GET",
            "/pets/1/secrets",
            expect=200,
            headers=[("X-Demo-User", "alice")],
        ),
        DemoCall(
            "an IAM route without a SigV4 signature: 403 Missing Authentication Token",
            "GET",
            "/reports",
            expect=403,
        ),
        DemoCall(
            "signed with SigV4 by curl itself (curl 7.75 or later): 200",
            "GET",
            "/reports",
            expect=200,
            sigv4=(DEMO_ACCESS_KEY, DEMO_SECRET_KEY, DEMO_REGION),
        ),
        DemoCall(
            "a Cognito route without a token: 401 Unauthorized",
            "GET",
            "/profile",
            expect=401,
        ),
        DemoCall(
            "a mutual-TLS route without a client certificate: 403 Forbidden",
            "GET",
            "/certs/whoami",
            expect=403,
        ),
        DemoCall(
            "a JWT route without a token: 401 Unauthorized",
            "GET",
            "/whoami",
            expect=401,
        ),
    ]
    if credentials is not None:
        key = ("x-api-key", credentials.api_key)
        writer = ("Authorization", f"Bearer {credentials.writer_token}")
        reader = ("Authorization", f"Bearer {credentials.reader_token}")
        calls += [
            DemoCall(
                "with the demo API key: 200, with the usage plan's RateLimit headers",
                "GET",
                "/orders",
                expect=200,
                headers=[key],
            ),
            DemoCall(
                "a valid JWT: 200, the claims reach the app ($context.authorizer)",
                "GET",
                "/whoami",
                expect=200,
                headers=[writer],
            ),
            DemoCall(
                "a token without the route's scope: 403 insufficient_scope",
                "POST",
                "/orders",
                expect=403,
                headers=[reader, json_header],
                data='{"petId": 1}',
            ),
            DemoCall(
                "a Cognito ID token (user pool authorizer): 200 with the user's groups",
                "GET",
                "/profile",
                expect=200,
                headers=[("Authorization", credentials.cognito_token)],
            ),
            DemoCall(
                "a client certificate forwarded by a TLS proxy (mutual TLS): 200",
                "GET",
                "/certs/whoami",
                expect=200,
                headers=[(DEMO_CERT_HEADER, credentials.client_cert_header)],
            ),
            DemoCall(
                "place orders quickly: the client's token bucket (burst 3) answers 429",
                "POST",
                "/orders",
                expect=429,
                headers=[writer, json_header],
                data='{"petId": 1}',
                repeat=4,
            ),
        ]
    calls += [
        # demo curl lines: add yours above this line
    ]
    return calls


def demo_policies(
    *,
    trace: bool = False,
    out: TextIO | None = None,
    credentials: DemoCredentials | None = None,
) -> list[Any]:
    """The policies and gateway-wide settings the demo runs with.

    Args:
        trace: print, for each request, the policies it went through, and its OpenTelemetry
            spans (when the SDK is installed).
        out: where the access log and the trace go (default: standard error).
        credentials: the demo's key and token issuer (fresh ones when left out).
    """
    from ..auth.api_keys import ApiKey, ApiKeyAuth, ApiKeys
    from ..auth.cognito import CognitoAuthorizer
    from ..auth.custom import LambdaAuthorizer
    from ..auth.mtls import MutualTls
    from ..auth.resource_policy import ResourcePolicy
    from ..auth.sigv4 import IamAuthorizer
    from ..observe import AccessLog, Metrics, Tracing, console_access_log, console_tracer_provider
    from ..traffic.bucket import Throttle, TokenBucket
    from ..traffic.plans import Quota, UsagePlan
    from ..validation import RequestValidator, RouteModel

    creds = credentials or demo_credentials()
    plan = UsagePlan(
        "demo-plan", throttle=TokenBucket(rate=5, burst=10), quota=Quota(1000, period="DAY")
    )
    policies: list[Any] = [
        Stage("demo", variables={"color": "blue", "owner": "pets-team"}),
        RouteTable(DEMO_ROUTES, strict=True),
        Cors(
            allow_origins=[DEMO_ORIGIN],
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization", "x-api-key"],
            expose_headers=["x-amzn-RequestId"],
            max_age=600,
        ),
        GatewayResponses(
            {
                "DEFAULT_4XX": GatewayResponse(
                    headers={"X-Demo-Stage": "'demo'"},
                    templates={
                        "application/json": (
                            '{"message":$context.error.messageString,'
                            '"type":"$context.error.responseType",'
                            '"requestId":"$context.requestId"}'
                        )
                    },
                ),
            }
        ),
        # Evaluated first: callers from 192.0.2.0/24 (a documentation range) are refused.
        ResourcePolicy(
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
                        "Condition": {"IpAddress": {"aws:SourceIp": ["192.0.2.0/24"]}},
                    },
                ],
            }
        ),
        # The whole API: 100 requests a second per route, bursts of 200.
        Throttle(TokenBucket(rate=100, burst=200)),
        # Each client may place an order a second, three in a burst.
        Throttle(
            TokenBucket(rate=1, burst=3),
            key="source_ip",
            routes=["POST /orders"],
            headers=True,
            name="orders-per-client",
        ),
        ApiKeyAuth(
            ApiKeys([ApiKey(creds.api_key, id="k-demo", name="demo", plan=plan)]),
            routes=["GET /orders", "GET /orders/{orderId}"],
            headers=True,
        ),
        creds.issuer.authorizer(
            audience="demo",
            routes=["GET /whoami", "POST /orders"],
            scopes={"POST /orders": ["orders/write"]},
        ),
        LambdaAuthorizer(
            _demo_lambda_authorizer,
            type="REQUEST",
            identity_sources=["method.request.header.X-Demo-User"],
            ttl=300,
            routes=["GET /pets/{petId}/secrets"],
        ),
        IamAuthorizer(
            {DEMO_ACCESS_KEY: DEMO_SECRET_KEY}, region=DEMO_REGION, routes=["GET /reports"]
        ),
        CognitoAuthorizer(
            region=DEMO_REGION,
            user_pool_id=DEMO_COGNITO_POOL,
            app_client_ids=[DEMO_COGNITO_CLIENT],
            jwks=creds.cognito_issuer.jwks(),  # the pool's keys, pinned: nothing is fetched
            routes=["GET /profile"],
        ),
        # Behind a TLS-terminating proxy on this machine, which forwards the certificate.
        MutualTls(
            creds.ca_pem, source="header", header=DEMO_CERT_HEADER, routes=["GET /certs/whoami"]
        ),
        # Request metrics through OpenTelemetry (idle unless a meter provider is configured).
        Metrics(),
        RequestValidator(
            routes={"POST /pets": RouteModel(body={"application/json": PET_SCHEMA})},
            verbose_errors=True,
        ),
        # demo policies: add yours above this line
    ]
    # One access-log line per request, in API Gateway's JSON preset.
    policies.append(console_access_log(AccessLog.JSON, out=out))
    if trace:
        policies.append(_TracePrinter(out))
        # Without the OpenTelemetry SDK installed, the summary line only.
        with contextlib.suppress(ImportError):
            policies.append(Tracing(console_tracer_provider(out), policy_spans=True))
    return policies


def build_app(
    *,
    trace: bool = False,
    redis_url: str | None = None,
    out: TextIO | None = None,
    credentials: DemoCredentials | None = None,
) -> ASGIApp:
    """The demo API behind :class:`~apigw_mw.GatewayMiddleware`, ready to serve.

    Args:
        trace: print, for each request, the policies it went through and their decisions.
        redis_url: keep shared state (throttles, quotas, caches) in this Redis instead of
            in memory.
        out: where the trace goes (default: standard error).
        credentials: the API key and token issuer (see :func:`demo_credentials`).

    Example::

        from starlette.testclient import TestClient
        from apigw_mw.commands.demo import build_app

        client = TestClient(build_app())
        assert client.get("/admin").status_code == 403
    """
    app = _pets_app()
    return GatewayMiddleware(
        app,
        policies=demo_policies(trace=trace, out=out, credentials=credentials),
        # A named in-process store per app: two demo apps in one process keep apart.
        storage=redis_url or f"memory://demo-{id(app):x}",
        max_body_size=DEMO_MAX_BODY,
        # The TLS-terminating proxy of the mutual-TLS route runs on this machine.
        trusted_proxies=["127.0.0.1", "::1"],
    )


def _pets_app() -> ASGIApp:
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request as StarletteRequest
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise SystemExit(
            "the demo needs Starlette and uvicorn: pip install 'apigw-mw[demo]'"
        ) from exc

    pets: dict[int, dict[str, Any]] = {
        1: {"id": 1, "name": "Tom", "kind": "cat"},
        2: {"id": 2, "name": "Polly", "kind": "parrot"},
    }
    orders: dict[int, dict[str, Any]] = {1: {"id": 1, "petId": 2, "status": "placed"}}

    def summary(request: StarletteRequest) -> dict[str, Any]:
        ctx = get_context(request)
        return {
            "requestId": ctx.request_id,
            "routeKey": ctx.route_key,
            "stage": ctx.stage,
            "stageVariables": dict(ctx.stage_variables),
            "sourceIp": ctx.identity.source_ip,
            "apiKeyId": ctx.identity.api_key_id,
            "authorizer": {k: v for k, v in ctx.authorizer.items() if _jsonable(v)},
        }

    async def list_pets(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"pets": list(pets.values()), "gateway": summary(request)})

    async def get_pet(request: StarletteRequest) -> JSONResponse:
        pet_id = request.path_params["petId"]
        pet = pets.get(int(pet_id)) if pet_id.isdigit() else None
        if pet is None:
            return JSONResponse({"message": "no such pet"}, status_code=404)
        ctx = get_context(request)
        return JSONResponse(
            {
                "pet": pet,
                "pathParameters": dict(ctx.path_parameters),
                "color": ctx.stage_variables.get("color"),
                "gateway": summary(request),
            }
        )

    async def create_pet(request: StarletteRequest) -> JSONResponse:
        try:
            payload = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"message": "body must be JSON"}, status_code=400)
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return JSONResponse({"message": "a pet needs a name"}, status_code=400)
        pet = {"id": max(pets, default=0) + 1, "name": payload["name"]}
        pet["kind"] = str(payload.get("kind", "unknown"))
        pets[pet["id"]] = pet
        return JSONResponse({"pet": pet, "gateway": summary(request)}, status_code=201)

    async def list_orders(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"orders": list(orders.values()), "gateway": summary(request)})

    async def get_order(request: StarletteRequest) -> JSONResponse:
        order_id = request.path_params["orderId"]
        order = orders.get(int(order_id)) if order_id.isdigit() else None
        if order is None:
            return JSONResponse({"message": "no such order"}, status_code=404)
        return JSONResponse({"order": order, "gateway": summary(request)})

    async def create_order(request: StarletteRequest) -> JSONResponse:
        try:
            payload = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"message": "body must be JSON"}, status_code=400)
        pet_id = payload.get("petId") if isinstance(payload, dict) else None
        if pet_id not in pets:
            return JSONResponse({"message": "petId must name a pet"}, status_code=400)
        order = {"id": max(orders, default=0) + 1, "petId": pet_id, "status": "placed"}
        orders[order["id"]] = order
        return JSONResponse({"order": order, "gateway": summary(request)}, status_code=201)

    async def profile(request: StarletteRequest) -> JSONResponse:
        claims = get_context(request).authorizer.get("claims", {})
        return JSONResponse(
            {"user": claims.get("cognito:username"), "groups": claims.get("cognito:groups")}
        )

    async def cert_whoami(request: StarletteRequest) -> JSONResponse:
        cert = get_context(request).identity.client_cert or {}
        return JSONResponse({"subjectDN": cert.get("subjectDN"), "issuerDN": cert.get("issuerDN")})

    async def reports(request: StarletteRequest) -> JSONResponse:
        identity = get_context(request).identity
        return JSONResponse(
            {"report": "weekly sales", "accessKey": identity.access_key, "user": identity.user}
        )

    async def whoami(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(get_context(request).as_dict("2.0"))

    async def pet_secrets(request: StarletteRequest) -> JSONResponse:
        ctx = get_context(request)
        return JSONResponse(
            {"secret": "Polly wants a cracker", "authorizer": summary(request)["authorizer"]}
            | {"principalId": ctx.authorizer.get("principalId")}
        )

    return Starlette(
        routes=[
            Route("/pets", list_pets, methods=["GET"]),
            Route("/pets", create_pet, methods=["POST"]),
            Route("/pets/{petId}", get_pet, methods=["GET"]),
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders", create_order, methods=["POST"]),
            Route("/orders/{orderId}", get_order, methods=["GET"]),
            Route("/pets/{petId}/secrets", pet_secrets, methods=["GET"]),
            Route("/profile", profile, methods=["GET"]),
            Route("/certs/whoami", cert_whoami, methods=["GET"]),
            Route("/reports", reports, methods=["GET"]),
            Route("/whoami", whoami, methods=["GET"]),
        ]
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class _TracePrinter(BasePolicy):
    """Prints one line per request: route, status and each policy's decision and time."""

    phase = Phase.OBSERVE

    def __init__(self, out: TextIO | None) -> None:
        super().__init__()
        self._out = out

    def on_request(self, request: Request, context: RequestContext) -> None:
        context.policy_trace = []

    def on_complete(self, request: Request, context: RequestContext) -> None:
        steps = []
        for policy, start, end, decision in context.policy_trace or ():
            outcome = "pass" if decision is None else type(decision).__name__
            if getattr(decision, "response_type", None):
                outcome += f" {decision.response_type}"
            steps.append(f"{type(policy).__name__}={outcome} ({(end - start) / 1000:.0f} us)")
        error = f" {context.error.response_type}" if context.error else ""
        line = (
            f"[trace] {context.request_id} {context.http_method} {context.path} "
            f"route={context.route_key or '-'} status={context.status}{error} "
            f"policies: {', '.join(steps) or 'none'}"
        )
        print(line, file=self._out or sys.stderr, flush=True)


def _banner(
    base_url: str,
    *,
    trace: bool,
    redis_url: str | None,
    credentials: DemoCredentials | None = None,
) -> str:
    lines = [
        f"apigw-mw {__version__} demo: a pets and orders API behind the gateway",
        f"  stage 'demo' (variables color=blue, owner=pets-team), strict routes, "
        f"CORS for {DEMO_ORIGIN}, body limit {DEMO_MAX_BODY} bytes",
        f"  shared state: {redis_url or 'memory://'}"
        + ("   trace: on (one line per request on stderr)" if trace else ""),
        f"  routes: {', '.join(DEMO_ROUTES)}",
        "",
        *(
            [
                f"  demo API key:  {credentials.api_key}",
                f"  writer token:  {credentials.writer_token}",
                f"  reader token:  {credentials.reader_token}",
                "",
            ]
            if credentials is not None
            else []
        ),
        "Try it (paste into another terminal):",
        "",
    ]
    for call in demo_calls(credentials):
        lines.append(f"# {call.title} -> {call.expect}")
        lines.append(call.curl(base_url))
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Serve the demo until interrupted."""
    try:
        import uvicorn
    except ImportError:
        print("the demo needs uvicorn: pip install 'apigw-mw[demo]'", file=sys.stderr)
        return 1
    redis_url: str | None = args.redis
    if redis_url is not None and "://" not in redis_url:
        print(f"--redis: {redis_url!r} is not a URL such as redis://127.0.0.1:6379/0")
        return 2
    credentials = demo_credentials()
    app = build_app(trace=args.trace, redis_url=redis_url, credentials=credentials)
    host = args.host if ":" not in args.host else f"[{args.host}]"
    base_url = f"http://{host}:{args.port}"
    print(_banner(base_url, trace=args.trace, redis_url=redis_url, credentials=credentials))
    sys.stdout.flush()
    # The gateway writes the access log (API Gateway's format); uvicorn's would repeat it.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``apigw-mw`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="serve a small API behind the gateway and print curl lines to try",
        description=(
            "Serve a small pets and orders API behind the gateway with every policy the "
            "library offers, and print ready-to-paste curl lines."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print, for each request, the policies it went through and its spans",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="keep shared state in this Redis (redis://127.0.0.1:6379/0) instead of memory",
    )
    parser.set_defaults(func=run)
