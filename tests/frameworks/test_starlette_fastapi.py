"""FastAPI and Starlette apps with the gateway added through ``app.add_middleware``."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from apigw_mw import Cors, GatewayMiddleware, RouteTable, Stage, get_context
from tests.core.policies import Refuse
from tests.frameworks.asgi_client import call

ORIGIN = "https://app.example.com"
POLICIES: list[Any] = [
    RouteTable(["GET /pets/{petId}", "GET /events", "POST /pets"]),
    Cors(allow_origins=[ORIGIN], allow_methods=["GET", "POST"]),
    Refuse("INVALID_API_KEY", routes=["POST /pets"]),
]
STAGE = Stage("prod", variables={"color": "blue"})


def _summary(request: Any) -> dict[str, Any]:
    ctx = get_context(request)
    assert request.state.apigw is ctx
    return {
        "requestId": ctx.request_id,
        "routeKey": ctx.route_key,
        "petId": ctx.path_parameters.get("petId"),
        "color": ctx.stage_variables["color"],
        "sourceIp": ctx.identity.source_ip,
        "v2": ctx.as_dict("2.0")["routeKey"],
    }


def fastapi_app() -> Any:
    app = FastAPI()
    calls: list[str] = []

    @app.get("/pets/{pet_id}")
    def get_pet(pet_id: str, request: FastAPIRequest) -> dict[str, Any]:
        calls.append(pet_id)
        return _summary(request)

    @app.post("/pets")
    def create(request: FastAPIRequest) -> dict[str, Any]:
        calls.append("create")
        return {}

    @app.get("/events")
    def events() -> StreamingResponse:
        return StreamingResponse(
            (f"data: {i}\n\n" for i in range(3)), media_type="text/event-stream"
        )

    app.add_middleware(GatewayMiddleware, policies=POLICIES, stage=STAGE)
    app.state.calls = calls
    return app


def starlette_app() -> Any:
    calls: list[str] = []

    async def get_pet(request: Request) -> JSONResponse:
        calls.append(request.path_params["pet_id"])
        return JSONResponse(_summary(request))

    async def create(request: Request) -> JSONResponse:
        calls.append("create")
        return JSONResponse({})

    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            (f"data: {i}\n\n" for i in range(3)), media_type="text/event-stream"
        )

    app = Starlette(
        routes=[
            Route("/pets/{pet_id}", get_pet),
            Route("/pets", create, methods=["POST"]),
            Route("/events", events),
        ]
    )
    app.add_middleware(GatewayMiddleware, policies=POLICIES, stage=STAGE)
    app.state.calls = calls
    return app


@pytest.fixture(params=[fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def app(request: pytest.FixtureRequest) -> Any:
    return request.param()


def test_context_reaches_the_endpoint(app):
    r = call(app, "GET", "/pets/7", headers={"origin": ORIGIN})
    assert r.status_code == 200
    body = r.json()
    assert body == {
        "requestId": r.headers["x-amzn-requestid"],
        "routeKey": "GET /pets/{petId}",
        "petId": "7",
        "color": "blue",
        "sourceIp": "127.0.0.1",
        "v2": "GET /pets/{petId}",
    }
    assert r.headers["access-control-allow-origin"] == ORIGIN


def test_denial_never_reaches_the_endpoint(app):
    r = call(app, "POST", "/pets", headers={"origin": ORIGIN})
    assert r.status_code == 403
    assert r.json() == {"message": "Forbidden"}
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert app.state.calls == []


def test_preflight(app):
    r = call(
        app, "OPTIONS", "/pets", headers={"origin": ORIGIN, "access-control-request-method": "POST"}
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-methods"] == "GET, POST"


def test_streaming_response(app):
    r = call(app, "GET", "/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_root_path_is_stripped_before_matching():
    app = fastapi_app()
    r = call(app, "GET", "/api/pets/3", root_path="/api")
    assert r.status_code == 200
    assert r.json()["routeKey"] == "GET /pets/{petId}"


def test_integration_timeout_with_a_blocking_endpoint():
    import time

    app = FastAPI()

    @app.get("/slow")
    def slow() -> dict[str, Any]:
        time.sleep(1)
        return {"late": True}

    app.add_middleware(GatewayMiddleware, integration_timeout=0.1)
    started = time.perf_counter()
    r = call(app, "GET", "/slow")
    assert r.status_code == 504
    assert r.json() == {"message": "Endpoint request timed out"}
    assert time.perf_counter() - started < 0.9
