"""Authorizers: a cached JWT, a cold RS256 verification against pyjwt, a cached Lambda answer."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt

from apigw_mw import (
    Allow,
    BasePolicy,
    GatewayMiddleware,
    LambdaAuthorizer,
    Phase,
    WSGIGatewayMiddleware,
)
from apigw_mw.auth.jwt import LocalIssuer
from bench_core import starlette_app, wsgi_app
from harness import Call, Scenario


class PyJwtMiddleware:
    """Decodes the bearer token with pyjwt on every request: the reference for cold cost."""

    def __init__(self, app: Any, key: Any, issuer: str, audience: str) -> None:
        self.app = app
        self.key = key
        self.issuer = issuer
        self.audience = audience

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value.decode("latin-1").removeprefix("Bearer ")
        pyjwt.decode(
            token, self.key, algorithms=["RS256"], audience=self.audience, issuer=self.issuer
        )
        await self.app(scope, receive, send)


class FixedAllow(BasePolicy):
    """An authorizer that admits everyone: the pipeline's own cost of running a phase."""

    phase = Phase.AUTHORIZE
    allow = Allow(authorizer={"principalId": "bench"})

    def flow(self, request: Any, context: Any) -> Allow:
        return self.allow


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "principalId": "user|a1",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": "*"}],
        },
        "context": {"tier": "gold"},
    }


def scenarios() -> list[Scenario]:
    local = LocalIssuer()
    token = local.token(sub="bench", audience="bench", expires_in=86400)
    auth = [Call("GET", "/pets/1", headers=[(b"authorization", f"Bearer {token}".encode())])]
    bare = starlette_app()
    public_key = pyjwt.PyJWK(local.jwks_document()["keys"][0]).key
    cached = local.authorizer(audience="bench")
    cold = local.authorizer(audience="bench", cache_size=0)
    lam = LambdaAuthorizer(handler, ttl=300)
    base = "auth: bare app"
    gw = "auth: gateway, no policies"
    fixed = "auth: gateway + fixed Allow policy"
    return [
        Scenario(base, "asgi", bare, auth, group="auth"),
        Scenario(gw, "asgi", GatewayMiddleware(bare), auth, baseline=base, group="auth"),
        # What a cache hit adds is measured against a policy that allows at once, so the
        # pipeline's own cost of running the AUTHORIZE phase is not counted as the JWT's.
        Scenario(
            fixed,
            "asgi",
            GatewayMiddleware(bare, policies=[FixedAllow()]),
            auth,
            baseline=gw,
            group="auth",
        ),
        Scenario(
            "auth: JwtAuthorizer, cached token",
            "asgi",
            GatewayMiddleware(bare, policies=[cached]),
            auth,
            baseline=fixed,
            group="auth",
            budget=0.15,
            budget_kind="added",
            budget_ref=base,
        ),
        Scenario(
            "auth: pyjwt decode per request",
            "asgi",
            PyJwtMiddleware(bare, public_key, local.issuer, "bench"),
            auth,
            baseline=base,
            group="auth",
        ),
        Scenario(
            "auth: JwtAuthorizer, cold RS256 each request",
            "asgi",
            GatewayMiddleware(bare, policies=[cold]),
            auth,
            baseline="auth: pyjwt decode per request",
            group="auth",
            budget=1.0,
        ),
        Scenario(
            "auth: LambdaAuthorizer, cached answer",
            "asgi",
            GatewayMiddleware(bare, policies=[lam]),
            auth,
            baseline=fixed,
            group="auth",
        ),
        Scenario("auth: wsgi bare app", "wsgi", wsgi_app, auth, group="auth"),
        Scenario(
            "auth: wsgi JwtAuthorizer, cached token",
            "wsgi",
            WSGIGatewayMiddleware(wsgi_app, policies=[local.authorizer(audience="bench")]),
            auth,
            baseline="auth: wsgi bare app",
            group="auth",
        ),
    ]
