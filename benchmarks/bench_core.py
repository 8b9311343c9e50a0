"""The core: the gateway with no policies and with CORS, against the bare app."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from apigw_mw import Cors, GatewayMiddleware, WSGIGatewayMiddleware
from harness import Call, Scenario


def starlette_app() -> Any:
    """A small pets API: the bare app every ratio in this project is measured against."""

    async def list_pets(request: Any) -> JSONResponse:
        return JSONResponse([{"id": 1, "type": "dog"}, {"id": 2, "type": "cat"}])

    async def get_pet(request: Any) -> JSONResponse:
        return JSONResponse({"id": request.path_params["pet_id"], "type": "dog", "price": 249.99})

    async def create(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=200)

    return Starlette(
        routes=[
            Route("/", list_pets),
            Route("/pets", list_pets, methods=["GET"]),
            Route("/pets", create, methods=["POST"]),
            Route("/pets/{pet_id:int}", get_pet, methods=["GET", "PUT", "DELETE"]),
            Route("/pets/{pet_id:int}/photos", list_pets),
            Route("/orders", list_pets, methods=["GET"]),
            Route("/orders", create, methods=["POST"]),
            Route("/orders/{order_id}", get_pet),
            Route("/login", create, methods=["POST"]),
            Route("/users/{user_id}", get_pet),
        ]
    )


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


ORIGIN = (b"origin", b"https://app.example.com")


def scenarios() -> list[Scenario]:
    bare = starlette_app()
    get = [Call("GET", "/pets/1")]
    cors_get = [Call("GET", "/pets/1", headers=[ORIGIN])]
    cors = Cors(allow_origins=["https://app.example.com"], allow_methods=["GET", "POST"])
    return [
        Scenario("starlette: bare app", "asgi", bare, get),
        Scenario(
            "starlette: gateway, no policies",
            "asgi",
            GatewayMiddleware(bare),
            get,
            baseline="starlette: bare app",
            budget=1.15,
        ),
        Scenario(
            "starlette: bare app + Origin", "asgi", bare, cors_get, baseline="starlette: bare app"
        ),
        Scenario(
            "starlette: CORSMiddleware",
            "asgi",
            CORSMiddleware(
                bare, allow_origins=["https://app.example.com"], allow_methods=["GET", "POST"]
            ),
            cors_get,
            baseline="starlette: bare app + Origin",
        ),
        Scenario(
            "starlette: gateway + Cors",
            "asgi",
            GatewayMiddleware(bare, policies=[cors]),
            cors_get,
            baseline="starlette: bare app + Origin",
        ),
        Scenario("wsgi: bare app", "wsgi", wsgi_app, get),
        Scenario(
            "wsgi: gateway, no policies",
            "wsgi",
            WSGIGatewayMiddleware(wsgi_app),
            get,
            baseline="wsgi: bare app",
        ),
    ]
