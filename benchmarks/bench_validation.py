"""Request validation: a valid 10-field JSON body, with each validator, against the bare app.

Budgets:

- with jsonschema-rs, validating adds at most a quarter of the bare Starlette app's own
  cost: "RequestValidator (jsonschema-rs)" over "routes only", everything counted (the
  gateway's body read, the parse, the check and the replay of the body to the app);
- with the reference ``jsonschema`` validator, it adds nothing beyond the validator's own
  call: compare what "RequestValidator (jsonschema)" adds to "body read only" with what
  "direct jsonschema call" (parse and validate inline) adds to "direct body read" (the same
  inline wrapper reading the body and checking nothing).

"body read only" (a policy that says it reads bodies, ``reads_body``, and checks nothing)
over "routes only" is the cost of the gateway's body read and its replay to the app, which
every body check pays first; "body read by a flow" reads it through the ``ReadBody`` effect
instead (a policy without ``reads_body``).

One-off: loading a definition of 500 operations with ``from_openapi`` takes under 1 s.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apigw_mw import BasePolicy, GatewayMiddleware, Phase, RequestValidator, RouteModel, RouteTable
from harness import Call, Scenario, Timing

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


class BodyReadFirst(BasePolicy):
    """Says it reads bodies, as the validator does: the gateway reads the body before the
    plan runs. Checks nothing."""

    phase = Phase.VALIDATE
    reads_body = True

    def flow(self, request: Any, context: Any) -> Any:
        return None


class ReadBodyOnly(BasePolicy):
    """Reads the body through the effect (a plain flow handing back a generator), checks
    nothing."""

    phase = Phase.VALIDATE

    def flow(self, request: Any, context: Any) -> Any:
        return self._read(request)

    def _read(self, request: Any) -> Any:
        yield request.read_body()
        return None


def _loads() -> Any:
    """The gateway's fast parser when installed (msgspec), else the standard library's."""
    try:
        import msgspec
    except ImportError:
        return json.loads
    return msgspec.json.Decoder().decode


def gateway_formats() -> Any:
    """A ``jsonschema`` format checker for the formats the gateway checks (API Gateway's)."""
    from jsonschema import FormatChecker

    from apigw_mw.validation import CHECKED_FORMATS

    checker = FormatChecker(formats=())
    for name, check in CHECKED_FORMATS.items():
        checker.checks(name)(check)
    return checker


def direct(app: Any, validator: Any = None) -> Any:
    """The bare app behind the cheapest possible inline validation: read, parse (with msgspec
    when installed, as the gateway does), check; with no validator, read only."""
    loads = _loads()

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if validator is not None:
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
    body_read = "validation: gateway + body read only"
    direct_read = "validation: direct body read"
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
            body_read,
            "asgi",
            GatewayMiddleware(bare, policies=[BodyReadFirst(routes=["POST /pets"])]),
            post,
            baseline=routes_only,
            group="validation",
        ),
        Scenario(
            "validation: gateway + body read by a flow",
            "asgi",
            GatewayMiddleware(bare, policies=[ReadBodyOnly(routes=["POST /pets"])]),
            post,
            baseline=routes_only,
            group="validation",
        ),
        Scenario(direct_read, "asgi", direct(bare), post, baseline=base, group="validation"),
        Scenario(
            "validation: direct jsonschema call",
            "asgi",
            # The same validator call the gateway makes: draft 4, API Gateway's formats.
            direct(bare, jsonschema.Draft4Validator(SCHEMA, format_checker=gateway_formats())),
            post,
            baseline=direct_read,
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
            baseline=body_read,
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
            baseline=direct_read,
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


def definition(operations: int, *, shared: bool) -> str:
    """An OpenAPI 3 definition (JSON text) of ``operations`` POSTs validating a header, a path
    parameter and a 10-field body: each with a body schema of its own, or all with a ``$ref``
    to one shared model."""
    paths: dict[str, Any] = {}
    for i in range(operations):
        if shared:
            schema: dict[str, Any] = {"$ref": "#/components/schemas/Pet"}
        else:
            schema = json.loads(json.dumps(SCHEMA))
            schema["properties"]["name"]["maxLength"] = 64 + i  # a distinct schema
        paths[f"/pets{i}/{{petId}}"] = {
            "post": {
                "x-amazon-apigateway-request-validator": "all",
                "parameters": [
                    {"name": "petId", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "x-tenant", "in": "header", "required": True},
                ],
                "requestBody": {"content": {"application/json": {"schema": schema}}},
                "responses": {"200": {"description": "created"}},
            }
        }
    return json.dumps(
        {
            "openapi": "3.0.1",
            "info": {"title": "pets", "version": "1"},
            "x-amazon-apigateway-request-validators": {
                "all": {"validateRequestBody": True, "validateRequestParameters": True}
            },
            "components": {"schemas": {"Pet": SCHEMA}},
            "paths": paths,
        }
    )


def timings() -> list[Timing]:
    from apigw_mw import from_openapi

    own = definition(500, shared=False)
    shared = definition(500, shared=True)
    return [
        Timing(
            "validation: from_openapi, 500 operations, 500 body schemas",
            lambda: from_openapi(own),
            group="validation",
            budget=1.0,
            repeat=3,
        ),
        Timing(
            "validation: from_openapi, 500 operations, one shared model",
            lambda: from_openapi(shared),
            group="validation",
            budget=1.0,
            repeat=3,
        ),
    ]
