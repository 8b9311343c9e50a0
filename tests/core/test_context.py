"""The request context the app reads: get_context, as_dict shapes, time, source IP."""

from __future__ import annotations

import asyncio
import gc
import io
import re
import time
from wsgiref.handlers import SimpleHandler

import pytest
from flask import Flask, Response, request, stream_with_context

from apigw_mw import (
    Allow,
    BasePolicy,
    ConfigurationError,
    Cors,
    GatewayMiddleware,
    Phase,
    Request,
    RequestContext,
    RouteTable,
    Stage,
    WSGIGatewayMiddleware,
    get_context,
)
from tests.core import drive
from tests.core.policies import Refuse

REQUEST_TIME = re.compile(
    r"^\d\d/(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/\d{4}:\d\d:\d\d:\d\d \+0000$"
)


class Authorize(BasePolicy):
    phase = Phase.AUTHORIZE

    def flow(self, request, context):  # type: ignore[no-untyped-def]
        return Allow(
            authorizer={"principalId": "user-1", "claims": {"sub": "user-1"}},
            identity={"api_key_id": "key-1", "client_cert": {"subjectDN": "CN=client"}},
        )


def _context(make_client, **kw):  # type: ignore[no-untyped-def]
    client = make_client(
        [RouteTable(["GET /pets/{petId}"]), Authorize()],
        stage=Stage("prod", variables={"color": "blue"}, api_id="abc123"),
        **kw,
    )
    r = client.get("/pets/9?x=1", headers={"user-agent": "curl/8.0"})
    assert r.status_code == 200
    return r.seen[0].context, r


def test_context_attributes(make_client):
    before = int(time.time() * 1000)
    ctx, r = _context(make_client)
    assert isinstance(ctx, RequestContext)
    assert ctx.request_id == r.headers["x-amzn-requestid"]
    assert ctx.extended_request_id == ctx.extended_request_id  # stable once made
    assert ctx.route_key == "GET /pets/{petId}"
    assert ctx.resource_path == "/pets/{petId}"
    assert ctx.path_parameters == {"petId": "9"}
    assert ctx.stage == "prod"
    assert dict(ctx.stage_variables) == {"color": "blue"}
    assert ctx.http_method == "GET"
    assert ctx.path == "/pets/9"
    assert ctx.identity.source_ip == "127.0.0.1"
    assert ctx.identity.user_agent == "curl/8.0"
    assert ctx.identity.api_key_id == "key-1"
    assert ctx.identity.client_cert == {"subjectDN": "CN=client"}
    assert ctx.authorizer["principalId"] == "user-1"
    assert ctx.error is None
    assert REQUEST_TIME.match(ctx.request_time)
    assert before <= ctx.request_time_epoch <= int(time.time() * 1000)
    assert time.strftime("%d/%b/%Y:%H:%M", time.gmtime(ctx.request_time_epoch / 1000)) in (
        ctx.request_time
    )


def test_as_dict_rest_shape(make_client):
    ctx, _ = _context(make_client)
    d = ctx.as_dict("1.0")
    assert d == ctx.as_dict()  # 1.0 is the default
    assert d["requestId"] == ctx.request_id
    assert d["extendedRequestId"] == ctx.extended_request_id
    assert d["httpMethod"] == "GET"
    assert d["resourcePath"] == "/pets/{petId}"
    assert d["path"] == "/pets/9"
    assert d["stage"] == "prod"
    assert d["apiId"] == "abc123"
    assert d["accountId"] == "123456789012"
    assert d["protocol"] == "HTTP/1.1"
    assert REQUEST_TIME.match(d["requestTime"])
    assert d["requestTimeEpoch"] == ctx.request_time_epoch
    assert d["identity"]["sourceIp"] == "127.0.0.1"
    assert d["identity"]["userAgent"] == "curl/8.0"
    assert d["identity"]["apiKeyId"] == "key-1"
    assert d["identity"]["clientCert"] == {"subjectDN": "CN=client"}
    assert "apiKey" not in d["identity"]  # the secret stays out
    assert d["authorizer"]["principalId"] == "user-1"


def test_as_dict_http_api_shape(make_client):
    ctx, _ = _context(make_client)
    d = ctx.as_dict("2.0")
    assert d["requestId"] == ctx.request_id
    assert d["routeKey"] == "GET /pets/{petId}"
    assert d["stage"] == "prod"
    assert d["apiId"] == "abc123"
    assert d["accountId"] == "123456789012"
    assert d["http"] == {
        "method": "GET",
        "path": "/pets/9",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "curl/8.0",
    }
    assert REQUEST_TIME.match(d["time"])
    assert d["timeEpoch"] == ctx.request_time_epoch
    assert d["authorizer"]["principalId"] == "user-1"
    assert d["authentication"] == {"clientCert": {"subjectDN": "CN=client"}}


def test_as_dict_unmatched_route_and_bad_version(make_client):
    r = make_client().get("/x")
    ctx = r.seen[0].context
    assert ctx.as_dict("2.0")["routeKey"] == "$default"
    assert ctx.as_dict("1.0")["resourcePath"] is None
    assert "authorizer" not in ctx.as_dict("2.0")
    with pytest.raises(ValueError, match="version"):
        ctx.as_dict("3.0")


def test_get_context_from_asgi_scope_and_state():
    seen = {}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen["scope"] = get_context(scope)
        seen["state"] = scope["state"]["apigw"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    drive.run(GatewayMiddleware(app), drive.scope())
    assert isinstance(seen["scope"], RequestContext)
    assert seen["state"] is seen["scope"]


def test_get_context_from_wsgi_environ():
    seen = {}

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        seen["ctx"] = get_context(environ)
        start_response("204 No Content", [])
        return []

    drive.call_wsgi(WSGIGatewayMiddleware(app), drive.environ())
    assert isinstance(seen["ctx"], RequestContext)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({}, id="plain-dict"),
        pytest.param({"apigw.context": "forged"}, id="not-a-context"),
        pytest.param(object(), id="unknown-object"),
    ],
)
def test_get_context_without_gateway_raises_lookup_error(obj):
    with pytest.raises(LookupError):
        get_context(obj)


# -- source IP -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "expected"),
    [
        pytest.param((), "10.0.0.1", None, "10.0.0.1", id="peer"),
        pytest.param((), "10.0.0.1", "6.6.6.6", "10.0.0.1", id="spoofed-xff-ignored"),
        pytest.param(
            ("10.0.0.0/8",), "10.0.0.1", "203.0.113.7", "203.0.113.7", id="one-trusted-hop"
        ),
        pytest.param(
            ("10.0.0.0/8",),
            "10.0.0.1",
            "6.6.6.6, 203.0.113.7, 10.0.0.2",
            "203.0.113.7",
            id="rightmost-untrusted",
        ),
        pytest.param(
            ("10.0.0.1",), "192.0.2.9", "6.6.6.6", "192.0.2.9", id="untrusted-peer-ignored"
        ),
        pytest.param(
            ("10.0.0.0/8", "2001:db8::/32"),
            "2001:db8::1",
            "[2001:db8::5]:443, 198.51.100.4:5555",
            "198.51.100.4",
            id="ipv6-proxy-and-ports",
        ),
        pytest.param(("10.0.0.0/8",), "10.0.0.1", "junk", "10.0.0.1", id="garbage-hop"),
        pytest.param(("10.0.0.0/8",), "10.0.0.1", "", "10.0.0.1", id="empty-header"),
    ],
)
def test_source_ip(make_client, trusted, peer, xff, expected):
    client = make_client(trusted_proxies=list(trusted))
    headers = {"x-forwarded-for": xff} if xff is not None else None
    r = client.get("/x", headers=headers, client_ip=peer)
    assert r.json()["context"]["sourceIp"] == expected


@pytest.mark.parametrize("entry", ["not-an-ip", "10.0.0.0/33", 42])
def test_bad_trusted_proxies(adapter, entry):
    from tests.helpers import GatewayClient

    with pytest.raises(ConfigurationError) as err:
        GatewayClient(adapter, trusted_proxies=[entry])
    assert err.value.field == "trusted_proxies"


# -- request ids and the context's lifetime ------------------------------------------------

_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_request_ids_are_unique_uuid4_shaped_across_threads():
    import threading

    from apigw_mw.context import new_request_id

    per_thread: list[list[str]] = [[] for _ in range(4)]

    def mint(out: list[str]) -> None:
        for _ in range(20000):  # crosses several 4096-id blocks
            out.append(new_request_id())

    threads = [threading.Thread(target=mint, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in per_thread for i in out]
    assert len(set(ids)) == len(ids) == 80000
    assert all(_UUID4.match(i) for i in ids)


def test_request_ids_when_the_generator_is_busy(monkeypatch):
    from apigw_mw import context

    def busy() -> str:
        raise ValueError("generator already executing")

    monkeypatch.setattr(context, "_next_id", busy)
    ids = {context.new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(_UUID4.match(i) for i in ids)


@pytest.mark.parametrize("policies", [[], [Cors(allow_origins=["https://a.example"])]])
def test_a_finished_request_leaves_no_reference_cycle(policies):
    """Everything a request made is freed by reference counting, not left to the GC."""
    seen: list[RequestContext] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(get_context(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gw = GatewayMiddleware(app, policies=policies)
    origin = [(b"origin", b"https://a.example")]
    sent: list[dict[str, object]] = []
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, object]:
        return body

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def requests() -> int:
        await gw(drive.scope("GET", "/x", headers=origin), receive, send)
        ctx = seen.pop()
        assert ctx.identity.source_ip  # still readable by whoever kept it
        del ctx
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                await gw(drive.scope("GET", "/x", headers=origin), receive, send)
            seen.clear()
            return gc.collect()
        finally:
            gc.enable()

    assert asyncio.run(requests()) == 0
    assert len(sent) == 102


class _Hangup(io.BytesIO):
    """A client connection that goes away once the first chunk of the body has arrived."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.getvalue().partition(b"\r\n\r\n")[2]:
            raise BrokenPipeError
        return super().write(data)


def _serve(app, path: str, server: type[SimpleHandler] = SimpleHandler) -> bytes:  # type: ignore[no-untyped-def]
    """One request through wsgiref, the standard library's WSGI server, over in-memory
    streams: it iterates the response, closes it (early when the client hangs up on
    ``/stream``) and answers 500 when the app raises."""
    env = drive.environ("GET", path)
    out = _Hangup() if path == "/stream" else io.BytesIO()
    server(env["wsgi.input"], out, io.StringIO(), env, multithread=False).run(app)
    return out.getvalue()


_PATHS = ("/ok", "/deny", "/boom", "/stream")


class _SeesContext(BasePolicy):
    """Records, once each response is over, whether the environ still leads to the context."""

    phase = Phase.OBSERVE

    def __init__(self, log: list[tuple[str, bool]]) -> None:
        super().__init__()
        self.log = log

    def on_complete(self, request: Request, context: RequestContext) -> None:
        self.log.append((request.path, request.raw.get("apigw.context") is context))


def _wsgi_gateway(app, hooks: bool, completed: list[tuple[str, bool]]):  # type: ignore[no-untyped-def]
    policies: list[object] = [Refuse(routes=["GET /deny"])]
    if hooks:
        policies += [Cors(allow_origins=["https://a.example"]), _SeesContext(completed)]
    return WSGIGatewayMiddleware(app, policies=policies)


def _check_answers(answers: list[bytes], seen: list[RequestContext]) -> None:
    ok, denied, boom, stream = answers
    assert ok.startswith(b"HTTP/1.0 200 ")
    assert ok.endswith(b"\r\n\r\nok")
    assert denied.startswith(b"HTTP/1.0 403 ")
    assert boom.startswith(b"HTTP/1.0 500 ")
    # The streamed body read the context while it was sent: its first chunk is the id.
    assert stream.startswith(b"HTTP/1.0 200 ")
    assert stream.endswith(b"\r\n\r\n" + seen[-1].request_id.encode())
    assert [c.path for c in seen] == ["/ok", "/boom", "/stream"]


@pytest.mark.parametrize("hooks", [False, True], ids=["no-hooks", "on-complete-hooks"])
def test_a_finished_wsgi_request_leaves_no_reference_cycle(hooks):
    """The environ holds the context, which refers back to the environ through its request
    view: once a request is over, whatever way it ends, reference counting frees both."""
    seen: list[RequestContext] = []
    closed: list[str] = []
    completed: list[tuple[str, bool]] = []

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        path = environ["PATH_INFO"]
        seen.append(get_context(environ))
        if path == "/boom":
            raise RuntimeError("boom")
        start_response("200 OK", [("Content-Type", "text/plain")])
        if path != "/stream":
            return [b"ok"]

        def body():  # type: ignore[no-untyped-def]
            try:
                for _ in range(3):
                    yield get_context(environ).request_id.encode()
            finally:
                closed.append(path)

        return body()

    gw = _wsgi_gateway(app, hooks, completed)
    _check_answers([_serve(gw, p) for p in _PATHS], seen)
    assert closed == ["/stream"]  # the client hung up: the server closed the generator
    if hooks:  # on_complete hooks still find the context through the environ
        assert completed == [("/ok", True), ("/deny", False), ("/boom", True), ("/stream", True)]
    seen.clear()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            for p in _PATHS:
                _serve(gw, p)
        assert len(seen) == 60
        seen.clear()
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0


def _flask_app(seen: list[RequestContext]) -> Flask:
    app = Flask(__name__)

    # Flask's own handling of an unhandled error keeps the error in a cycle with its
    # traceback (``error = e`` in ``Flask.wsgi_app``), which holds every frame of the
    # request, the server's ``start_response`` included: an error handler avoids that.
    @app.errorhandler(RuntimeError)
    def failed(error: RuntimeError) -> tuple[str, int]:
        return "failed", 500

    @app.get("/ok")
    def ok() -> str:
        seen.append(get_context(request))
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        seen.append(get_context(request))
        raise RuntimeError("boom")

    @app.get("/stream")
    def stream() -> Response:
        seen.append(get_context(request))

        @stream_with_context
        def body():  # type: ignore[no-untyped-def]
            for _ in range(3):
                yield get_context(request).request_id

        return Response(body())

    return app


@pytest.mark.parametrize("hooks", [False, True], ids=["no-hooks", "on-complete-hooks"])
def test_a_finished_flask_request_leaves_no_reference_cycle(hooks):
    """As above, through a Flask app: its context stays readable in a streamed body."""
    seen: list[RequestContext] = []
    completed: list[tuple[str, bool]] = []
    app = _flask_app(seen)
    app.wsgi_app = _wsgi_gateway(app.wsgi_app, hooks, completed)  # type: ignore[method-assign]
    _check_answers([_serve(app, p) for p in _PATHS], seen)
    if hooks:
        assert completed == [("/ok", True), ("/deny", False), ("/boom", True), ("/stream", True)]
    seen.clear()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            for p in _PATHS:
                _serve(app, p)
        assert len(seen) == 60
        seen.clear()
        gc.collect()
        # Flask leaves cycles of its own (Werkzeug's router a closure calling itself at each
        # match, a view's error its traceback), so the count is not zero: what matters is
        # that the gateway's objects are not among them.
        ours = [o for o in gc.garbage if isinstance(o, (RequestContext, Request))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []


def test_a_file_response_reaches_the_server_as_its_file_wrapper():
    """The server can still send a ``wsgi.file_wrapper`` response with sendfile(), and the
    environ lets go of the context all the same."""
    offered: list[str] = []

    class Server(SimpleHandler):
        def sendfile(self) -> bool:
            offered.append(self.environ["PATH_INFO"])
            return False  # wsgiref then writes the file's blocks itself

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = io.BytesIO(get_context(environ).request_id.encode())
        return environ["wsgi.file_wrapper"](body)

    gw = WSGIGatewayMiddleware(app)
    head, _, body = _serve(gw, "/file", Server).partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"x-amzn-RequestId"] == body
    assert offered == ["/file"]
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            _serve(gw, "/file", Server)
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0
    assert len(offered) == 21
