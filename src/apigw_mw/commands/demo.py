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

__all__ = ["DemoCall", "build_app", "demo_calls", "demo_policies", "register"]

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
    "GET /whoami",
)


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
        return line


def demo_calls() -> list[DemoCall]:
    """The demo's scenarios, in the order they are printed."""
    json_header = ("Content-Type", "application/json")
    return [
        DemoCall("a normal call", "GET", "/pets", expect=200),
        DemoCall(
            "path parameters, stage variables and the request context",
            "GET",
            "/pets/2",
            expect=200,
        ),
        DemoCall(
            "create a pet (the body reaches the app untouched)",
            "POST",
            "/pets",
            expect=201,
            headers=[json_header],
            data='{"name": "Rex", "kind": "dog"}',
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
            "/orders",
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
            "/orders",
            expect=413,
            headers=[json_header],
            upload_bytes=DEMO_MAX_BODY + 1,
        ),
        # demo curl lines: add yours above this line
    ]


def demo_policies(*, trace: bool = False, out: TextIO | None = None) -> list[Any]:
    """The policies and gateway-wide settings the demo runs with.

    Args:
        trace: add an observer that prints, for each request, the policies it went through.
        out: where that observer writes (default: standard error).
    """
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
        # demo policies: add yours above this line
    ]
    if trace:
        policies.append(_TracePrinter(out))
    return policies


def build_app(
    *,
    trace: bool = False,
    redis_url: str | None = None,
    out: TextIO | None = None,
) -> ASGIApp:
    """The demo API behind :class:`~apigw_mw.GatewayMiddleware`, ready to serve.

    Args:
        trace: print, for each request, the policies it went through and their decisions.
        redis_url: keep shared state (throttles, quotas, caches) in this Redis instead of
            in memory.
        out: where the trace goes (default: standard error).

    Example::

        from starlette.testclient import TestClient
        from apigw_mw.commands.demo import build_app

        client = TestClient(build_app())
        assert client.get("/admin").status_code == 403
    """
    app = _pets_app()
    return GatewayMiddleware(
        app,
        policies=demo_policies(trace=trace, out=out),
        storage=redis_url or "memory://",
        max_body_size=DEMO_MAX_BODY,
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

    async def whoami(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(get_context(request).as_dict("2.0"))

    return Starlette(
        routes=[
            Route("/pets", list_pets, methods=["GET"]),
            Route("/pets", create_pet, methods=["POST"]),
            Route("/pets/{petId}", get_pet, methods=["GET"]),
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders", create_order, methods=["POST"]),
            Route("/orders/{orderId}", get_order, methods=["GET"]),
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


def _banner(base_url: str, *, trace: bool, redis_url: str | None) -> str:
    lines = [
        f"apigw-mw {__version__} demo: a pets and orders API behind the gateway",
        f"  stage 'demo' (variables color=blue, owner=pets-team), strict routes, "
        f"CORS for {DEMO_ORIGIN}, body limit {DEMO_MAX_BODY} bytes",
        f"  shared state: {redis_url or 'memory://'}"
        + ("   trace: on (one line per request on stderr)" if trace else ""),
        f"  routes: {', '.join(DEMO_ROUTES)}",
        "",
        "Try it (paste into another terminal):",
        "",
    ]
    for call in demo_calls():
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
    app = build_app(trace=args.trace, redis_url=redis_url)
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(_banner(f"http://{host}:{args.port}", trace=args.trace, redis_url=redis_url))
    sys.stdout.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
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
        help="print, for each request, the policies it went through and their decisions",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="keep shared state in this Redis (redis://127.0.0.1:6379/0) instead of memory",
    )
    parser.set_defaults(func=run)
