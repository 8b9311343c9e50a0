"""A Litestar app with the gateway added through ``DefineMiddleware``."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, get, post
from litestar.middleware import DefineMiddleware

from apigw_mw import Cors, GatewayMiddleware, RouteTable, Stage, get_context
from tests.core.policies import Refuse
from tests.frameworks.asgi_client import call

ORIGIN = "https://app.example.com"
calls: list[str] = []


@get("/pets/{pet_id:str}")
async def get_pet(pet_id: str, request: Request[Any, Any, Any]) -> dict[str, Any]:
    calls.append(pet_id)
    ctx = get_context(request)
    return {
        "requestId": ctx.request_id,
        "routeKey": ctx.route_key,
        "petId": ctx.path_parameters["petId"],
        "stage": ctx.stage,
    }


@post("/pets")
async def create() -> dict[str, Any]:
    calls.append("create")
    return {}


def make_app() -> Litestar:
    return Litestar(
        route_handlers=[get_pet, create],
        middleware=[
            DefineMiddleware(
                GatewayMiddleware,
                policies=[
                    RouteTable(["GET /pets/{petId}", "POST /pets"]),
                    Cors(allow_origins=[ORIGIN]),
                    Refuse("THROTTLED", routes=["POST /pets"]),
                ],
                stage=Stage("prod"),
            )
        ],
    )


def test_context_reaches_the_handler():
    calls.clear()
    r = call(make_app(), "GET", "/pets/5", headers={"origin": ORIGIN})
    assert r.status_code == 200
    assert r.json() == {
        "requestId": r.headers["x-amzn-requestid"],
        "routeKey": "GET /pets/{petId}",
        "petId": "5",
        "stage": "prod",
    }
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert calls == ["5"]


def test_denial_never_reaches_the_handler():
    calls.clear()
    r = call(make_app(), "POST", "/pets")
    assert r.status_code == 429
    assert r.json() == {"message": "Too Many Requests"}
    assert calls == []
