"""The whole pipeline on one request, against the bare app (DESIGN.md's overall budget).

API key with a usage plan and quota, a cached JWT, a token bucket, body validation, tracing
with the no-op tracer provider and the request context, all on one ``POST /orders``: together
they must add less than the bare app itself costs.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apigw_mw import (
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    GatewayMiddleware,
    MemoryStore,
    Quota,
    RequestValidator,
    RouteModel,
    Throttle,
    TokenBucket,
    Tracing,
    UsagePlan,
    get_context,
)
from apigw_mw.auth.jwt import LocalIssuer
from harness import Call, Scenario

KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"
HUGE = TokenBucket(rate=1e9, burst=10**9)
SCHEMA = {
    "type": "object",
    "required": ["petId", "quantity"],
    "properties": {
        "petId": {"type": "integer", "minimum": 1},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
        "note": {"type": "string", "maxLength": 200},
    },
}
BODY = json.dumps({"petId": 2, "quantity": 1, "note": "gift wrap"}).encode()


def orders_app() -> Any:
    async def create(request: Request) -> JSONResponse:
        order = json.loads(await request.body())
        return JSONResponse({"ok": True, "petId": order["petId"]})

    async def create_with_context(request: Request) -> JSONResponse:
        order = json.loads(await request.body())
        ctx = get_context(request)
        return JSONResponse({"ok": True, "petId": order["petId"], "by": ctx.identity.api_key_id})

    return Starlette(
        routes=[
            Route("/orders", create, methods=["POST"]),
            Route("/orders/mine", create_with_context, methods=["POST"]),
        ]
    )


def scenarios() -> list[Scenario]:
    issuer = LocalIssuer()
    token = issuer.token(sub="alice", scope="orders/write")
    bare = orders_app()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"x-api-key", KEY.encode()),
        (b"authorization", b"Bearer " + token.encode()),
    ]
    call = [Call("POST", "/orders", headers=headers, body=BODY)]
    store = MemoryStore()
    plan = UsagePlan("bench", throttle=HUGE, quota=Quota(10**9))
    policies = [
        Tracing(),  # no SDK configured: the no-op provider
        Throttle(HUGE, storage=store),
        issuer.authorizer(audience="demo", scopes={"POST /orders": ["orders/write"]}),
        ApiKeyAuth(ApiKeys([ApiKey(KEY, id="k-bench", plan=plan)]), storage=store),
        RequestValidator(routes={"POST /orders": RouteModel(body={"application/json": SCHEMA})}),
    ]
    bare_name = "pipeline: bare app, POST /orders"
    return [
        Scenario(bare_name, "asgi", bare, call, group="pipeline"),
        Scenario(
            "pipeline: gateway, no policies",
            "asgi",
            GatewayMiddleware(bare),
            call,
            baseline=bare_name,
            group="pipeline",
        ),
        Scenario(
            "pipeline: key + plan + quota + JWT + bucket + validation + tracing",
            "asgi",
            GatewayMiddleware(bare, policies=policies),
            call,
            baseline=bare_name,
            group="pipeline",
            budget=1.0,
            budget_kind="added",
        ),
    ]
