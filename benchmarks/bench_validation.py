"""Request validation: a valid 10-field JSON body, with each validator, against the bare app.

Budgets: with jsonschema-rs, validation (body read, parse and check) adds at most a quarter of
the bare Starlette app's own cost; with the reference ``jsonschema`` validator it adds nothing
beyond the validator's own call: compare what "RequestValidator (jsonschema)" adds to "routes
only" with what "direct jsonschema call" (read, parse, validate inline) adds to the bare app.

"body read only" is a policy that reads the body through the ``ReadBody`` effect and checks
nothing: what it adds to "routes only" is the cost of the gateway's body read (the effect,
its driver and the replay to the app), which every body check pays before validating.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apigw_mw import BasePolicy, GatewayMiddleware, Phase, RequestValidator, RouteModel, RouteTable
from harness import Call, Scenario

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "maxLength": 64},
        "type": {"type": "string", "enum": ["dog", "cat", "fish"]},
        "price": {"type": "number", "minimum": 25, "maximum": 500},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "string"},
        "vaccinated": {"type": "boolean"},
        "weight": {"type": "number"},
        "color": {"type": "string"},
        "born": {"type": "string", "format": "date-time"},
    },
    "required": ["name", "type", "price"],
    "additionalProperties": False,
}
BODY = json.dumps(
    {
        "id": 7,
        "name": "Rex",
        "type": "dog",
        "price": 249.5,
        "tags": ["good", "boy"],
        "owner": "alice",
        "vaccinated": True,
        "weight": 12.5,
        "color": "brown",
        "born": "2020-04-01T10:00:00Z",
    }
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def starlette_app() -> Any:
    async def create(request: StarletteRequest) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("created")

    return Starlette(routes=[Route("/pets", create, methods=["POST"])])


class ReadBodyOnly(BasePolicy):
    """Reads the body as a validator does (a plain flow handing back a generator), checks
    nothing."""

    phase = Phase.VALIDATE

    def flow(self, request: Any, context: Any) -> Any:
        return self._read(request)

    def _read(self, request: Any) -> Any:
        yield request.read_body()
        return None


def _loads() -> Any:
    try:
        from orjson import loads
    except ImportError:
        return json.loads
    return loads


def gateway_formats() -> Any:
    """A ``jsonschema`` format checker for the formats the gateway checks (API Gateway's)."""
    from jsonschema import FormatChecker

    from apigw_mw.validation import CHECKED_FORMATS

    checker = FormatChecker(formats=())
    for name, check in CHECKED_FORMATS.items():
        checker.checks(name)(check)
    return checker


def direct(app: Any, validator: Any) -> Any:
    """The bare app behind the cheapest possible inline validation: read, parse (with orjson
    when installed, as the gateway does), check."""
    loads = _loads()

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        body = message.get("body", b"")
        if not validator.is_valid(loads(body)):
            raise RuntimeError("the benchmark body must be valid")

        async def replay() -> Any:
            return message

        await app(scope, replay, send)

    return wrapped


def scenarios() -> list[Scenario]:
    import jsonschema

    bare = starlette_app()
    post = [Call("POST", "/pets", headers=HEADERS, body=BODY)]
    table = RouteTable(["POST /pets"])
    model = RouteModel(body={"application/json": SCHEMA})
    base = "validation: bare app, POST 10-field JSON"
    routes_only = "validation: gateway, routes only"
    out = [
        Scenario(base, "asgi", bare, post, group="validation"),
        Scenario(
            routes_only,
            "asgi",
            GatewayMiddleware(bare, policies=[table]),
            post,
            baseline=base,
            group="validation",
        ),
        Scenario(
            "validation: gateway + body read only",
            "asgi",
            GatewayMiddleware(bare, policies=[ReadBodyOnly(routes=["POST /pets"])]),
            post,
            baseline=routes_only,
            group="validation",
        ),
        Scenario(
            "validation: direct jsonschema call",
            "asgi",
            # The same validator call the gateway makes: draft 4, API Gateway's formats.
            direct(bare, jsonschema.Draft4Validator(SCHEMA, format_checker=gateway_formats())),
            post,
            baseline=base,
            group="validation",
        ),
        Scenario(
            "validation: gateway + RequestValidator (jsonschema)",
            "asgi",
            GatewayMiddleware(
                bare,
                policies=[RequestValidator(routes={"POST /pets": model}, engine="jsonschema")],
            ),
            post,
            baseline=routes_only,
            group="validation",
        ),
    ]
    try:
        import jsonschema_rs
    except ImportError:
        return out
    out += [
        Scenario(
            "validation: direct jsonschema-rs call",
            "asgi",
            direct(bare, jsonschema_rs.Draft4Validator(SCHEMA, validate_formats=True)),
            post,
            baseline=base,
            group="validation",
        ),
        Scenario(
            "validation: gateway + RequestValidator (jsonschema-rs)",
            "asgi",
            GatewayMiddleware(
                bare,
                policies=[RequestValidator(routes={"POST /pets": model}, engine="jsonschema-rs")],
            ),
            post,
            baseline=routes_only,
            group="validation",
            budget=0.25,
            budget_kind="added",
            budget_ref=base,
        ),
    ]
    return out
