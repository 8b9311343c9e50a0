"""A Flask app with the gateway installed as ``app.wsgi_app``."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, request

from apigw_mw import Cors, RouteTable, Stage, WSGIGatewayMiddleware, get_context
from tests.core.policies import Refuse

ORIGIN = "https://app.example.com"


def make_app() -> Any:
    app = Flask(__name__)
    app.config["calls"] = []

    @app.get("/pets/<pet_id>")
    def get_pet(pet_id: str) -> Any:
        app.config["calls"].append(pet_id)
        ctx = get_context(request)
        return {
            "requestId": ctx.request_id,
            "routeKey": ctx.route_key,
            "petId": ctx.path_parameters["petId"],
            "color": ctx.stage_variables["color"],
            "v1": ctx.as_dict()["resourcePath"],
        }

    @app.post("/pets")
    def create() -> Any:
        app.config["calls"].append("create")
        return {"body": request.get_data(as_text=True)}

    @app.get("/events")
    def events() -> Response:
        return Response((f"data: {i}\n\n" for i in range(3)), mimetype="text/event-stream")

    app.wsgi_app = WSGIGatewayMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        policies=[
            RouteTable(["GET /pets/{petId}", "POST /pets", "GET /events"]),
            Cors(allow_origins=[ORIGIN]),
            Refuse("UNAUTHORIZED", routes=["POST /pets"]),
        ],
        stage=Stage("prod", variables={"color": "blue"}),
    )
    return app


def test_context_reaches_the_view():
    app = make_app()
    r = app.test_client().get("/pets/3", headers={"origin": ORIGIN})
    assert r.status_code == 200
    assert r.get_json() == {
        "requestId": r.headers["x-amzn-requestid"],
        "routeKey": "GET /pets/{petId}",
        "petId": "3",
        "color": "blue",
        "v1": "/pets/{petId}",
    }
    assert r.headers["access-control-allow-origin"] == ORIGIN


def test_denial_never_reaches_the_view():
    app = make_app()
    r = app.test_client().post("/pets", data=b"x", headers={"origin": ORIGIN})
    assert r.status_code == 401
    assert r.get_json() == {"message": "Unauthorized"}
    assert r.headers["x-amzn-errortype"] == "UnauthorizedException"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert app.config["calls"] == []


def test_streaming_response():
    app = make_app()
    r = app.test_client().get("/events")
    assert r.status_code == 200
    assert r.get_data() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
