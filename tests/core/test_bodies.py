"""Request bodies (read on demand, replayed, limited) and streamed responses."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest

from apigw_mw import (
    Allow,
    BasePolicy,
    Cors,
    Deny,
    GatewayMiddleware,
    Phase,
    WSGIGatewayMiddleware,
)
from tests.core import drive

BINARY = bytes(range(256)) * 3


class ReadsBody(BasePolicy):
    """Reads the body and records its length and whether it was read before."""

    phase = Phase.VALIDATE

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes | None, bytes]] = []

    def flow(self, request: Any, context: Any) -> Any:
        before = request.body
        body = yield request.read_body()
        again = yield request.read_body()  # a second read is served from the buffer
        assert again is body
        self.seen.append((before, body))
        return Allow(authorizer={"length": len(body)})


class ReadsFirst(ReadsBody):
    """Says it reads bodies (``reads_body``): the gateway reads the body before the flow."""

    reads_body = True


class DecidesOnTheBody(BasePolicy):
    """A plain flow (no generator) that relies on ``reads_body`` and reads ``request.body``."""

    phase = Phase.VALIDATE
    reads_body = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes | None] = []

    def flow(self, request: Any, context: Any) -> Any:
        body = request.body
        self.bodies.append(body)
        if body is not None and b"forbidden" in body:
            return Deny("ACCESS_DENIED")
        return None


class LooksOnly(BasePolicy):
    phase = Phase.VALIDATE

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes | None] = []

    def flow(self, request: Any, context: Any) -> Any:
        self.bodies.append(request.body)
        return None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"name": "rex"}', id="json"),
        pytest.param(BINARY, id="binary"),
    ],
)
def test_body_read_by_a_policy_is_replayed_byte_for_byte(make_client, body):
    reader = ReadsBody()
    r = make_client([reader]).post("/upload", content=body)
    assert r.status_code == 200
    assert reader.seen == [(None, body)]
    assert r.seen[0].body == body
    assert r.json()["context"]["authorizer"] == {"length": len(body)}


@pytest.mark.parametrize(
    "body",
    [pytest.param(b'{"name": "rex"}', id="json"), pytest.param(BINARY, id="binary")],
)
def test_a_policy_that_reads_bodies_finds_the_body_before_its_flow(make_client, body):
    reader = ReadsFirst()
    r = make_client([reader]).post("/upload", content=body)
    assert r.status_code == 200
    assert reader.seen == [(body, body)]  # buffered before the flow ran
    assert r.seen[0].body == body  # and replayed to the app byte for byte
    assert r.json()["context"]["authorizer"] == {"length": len(body)}


def test_a_plain_flow_decides_on_the_body_read_for_it(make_client):
    policy = DecidesOnTheBody()
    client = make_client([policy])
    ok = client.post("/upload", content=b"fine")
    denied = client.post("/upload", content=b"this is forbidden")
    assert ok.status_code == 200
    assert ok.seen[0].body == b"fine"
    assert denied.status_code == 403
    assert denied.json() == {"message": "User is not authorized to access this resource"}
    assert denied.seen == []  # nothing reached the app
    assert policy.bodies == [b"fine", b"this is forbidden"]


def test_a_request_without_a_body_reads_as_empty(make_client):
    plain, reader = DecidesOnTheBody(), ReadsFirst()
    r = make_client([plain, reader]).get("/nothing")
    assert r.status_code == 200
    assert plain.bodies == [b""]
    assert reader.seen == [(b"", b"")]


class RefusesEveryone(BasePolicy):
    phase = Phase.AUTHORIZE  # before VALIDATE, where the body readers run

    def flow(self, request: Any, context: Any) -> Any:
        return Deny("ACCESS_DENIED")


@pytest.mark.parametrize("reader_class", [DecidesOnTheBody, ReadsFirst])
def test_a_body_is_not_read_for_a_request_refused_before_its_reader(reader_class):
    # The body is read just before the first flow that reads bodies, after the cheaper checks
    # of the earlier phases: a refused request's body is never read.
    received = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        raise AssertionError("the app must not be called")

    async def receive():  # type: ignore[no-untyped-def]
        received.append(1)
        return {"type": "http.request", "body": b"payload"}

    messages: list[Any] = []

    async def send(message):  # type: ignore[no-untyped-def]
        messages.append(message)

    import asyncio

    policies = [reader_class(), RefusesEveryone()]
    headers = [(b"content-length", b"7")]
    asyncio.run(
        GatewayMiddleware(app, policies=policies)(
            drive.scope("POST", "/up", headers=headers), receive, send
        )
    )
    assert messages[0]["status"] == 403
    assert received == []

    wsgi = WSGIGatewayMiddleware(drive.WsgiEcho(), policies=[reader_class(), RefusesEveryone()])
    env = drive.environ("POST", "/up", body=b"payload", content_length="7")
    r = drive.call_wsgi(wsgi, env)
    assert r.status == 403
    assert env["wsgi.input"].tell() == 0


def test_body_is_not_read_unless_a_policy_asks(make_client):
    looks = LooksOnly()
    r = make_client([looks]).post("/upload", content=b"payload")
    assert looks.bodies == [None]
    assert r.seen[0].body == b"payload"


@pytest.mark.parametrize("policies", [[], [LooksOnly()]], ids=["no-policies", "policy"])
@pytest.mark.parametrize("limit", [10, 0])
def test_content_length_over_limit_is_refused_before_reading(make_client, policies, limit):
    r = make_client(policies, max_body_size=limit).post("/upload", content=b"x" * 11)
    assert r.status_code == 413
    assert r.json() == {"message": "Request Too Long"}
    assert r.headers["x-amzn-errortype"] == "RequestTooLargeException"
    assert r.seen == []


def test_body_at_the_limit_passes(make_client):
    r = make_client([ReadsBody()], max_body_size=11).post("/upload", content=b"x" * 11)
    assert r.status_code == 200
    assert r.seen[0].body == b"x" * 11


def test_no_limit(make_client):
    r = make_client([ReadsBody()], max_body_size=None).post("/upload", content=BINARY * 10)
    assert r.status_code == 200
    assert r.seen[0].body == BINARY * 10


# -- ASGI: bodies in several messages -----------------------------------------------------

CHUNKED = [(b"transfer-encoding", b"chunked")]
# No policy; a flow that reads the body through the effect; a policy that says it reads
# bodies, whose body the gateway reads before the plan runs.
READERS = [[], [ReadsBody()], [ReadsFirst()]]
READER_IDS = ["no-policy", "reading-policy", "reads-body-policy"]


def _asgi(policies: list[Any], **kw: Any) -> tuple[drive.EchoApp, GatewayMiddleware]:
    app = drive.EchoApp()
    return app, GatewayMiddleware(app, policies=policies, **kw)


@pytest.mark.parametrize("policies", READERS, ids=READER_IDS)
def test_asgi_chunked_upload_in_several_messages(policies):
    chunks = [b"first,", b"", b"second,", BINARY]
    app, gw = _asgi(policies)
    r = drive.run(gw, drive.scope("POST", "/up", headers=CHUNKED), chunks)
    assert r.status == 200
    assert r.body == b"".join(chunks)
    assert app.calls[0]["body"] == b"".join(chunks)


@pytest.mark.parametrize("policies", READERS, ids=READER_IDS)
def test_asgi_streamed_body_cut_at_the_limit(policies, caplog):
    app, gw = _asgi(policies, max_body_size=10)
    with caplog.at_level(logging.WARNING):
        r = drive.run(gw, drive.scope("POST", "/up", headers=CHUNKED), [b"123456", b"7890", b"X"])
    assert r.status == 413
    assert r.json() == {"message": "Request Too Long"}
    assert [c for c in app.calls if not c.get("disconnected")] == []
    assert caplog.records == []


def test_asgi_streamed_body_at_the_limit_passes():
    _app, gw = _asgi([], max_body_size=10)
    r = drive.run(gw, drive.scope("POST", "/up", headers=CHUNKED), [b"123456", b"7890"])
    assert r.status == 200
    assert r.body == b"1234567890"


@pytest.mark.parametrize("policies", READERS, ids=READER_IDS)
def test_asgi_client_disconnect_mid_body_is_quiet(policies, caplog):
    app, gw = _asgi(policies)
    with caplog.at_level(logging.DEBUG):
        r = drive.run(
            gw,
            drive.scope("POST", "/up", headers=[(b"content-length", b"100")]),
            [b"partial"],
            disconnect=True,
        )
    assert r.messages == []  # nobody to answer
    if policies:
        assert app.calls == []  # a policy was reading: the app is not called
    else:
        assert app.calls == [{"path": "/up", "disconnected": True}]
    assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("reader_class", [ReadsBody, ReadsFirst])
def test_asgi_content_length_over_limit_never_reads_the_body(reader_class):
    received = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        raise AssertionError("the app must not be called")

    gw = GatewayMiddleware(app, policies=[reader_class()], max_body_size=4)
    scope = drive.scope("POST", "/up", headers=[(b"content-length", b"5")])

    async def receive():  # type: ignore[no-untyped-def]
        received.append(1)
        return {"type": "http.request", "body": b"12345"}

    messages = []

    async def send(message):  # type: ignore[no-untyped-def]
        messages.append(message)

    import asyncio

    asyncio.run(gw(scope, receive, send))
    assert received == []
    assert messages[0]["status"] == 413


# -- ASGI: streamed responses -------------------------------------------------------------


async def sse_app(scope, receive, send):  # type: ignore[no-untyped-def]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for i in range(3):
        await send(
            {"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True}
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.mark.parametrize(
    "policies",
    [[], [Cors(allow_origins=["https://a.example"]), LooksOnly()]],
    ids=["no-policies", "with-hooks"],
)
def test_asgi_streaming_response_passes_through(policies):
    gw = GatewayMiddleware(sse_app, policies=policies, integration_timeout=0.05)
    r = drive.run(gw, drive.scope("GET", "/events", headers=[(b"origin", b"https://a.example")]))
    assert len(r.starts) == 1
    assert r.status == 200
    assert r.bodies == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m.get("more_body") for m in r.messages[1:]] == [True, True, True, False]
    assert r.headers["x-amzn-requestid"]
    assert r.headers["content-type"] == "text/event-stream"


def test_asgi_a_second_response_start_from_the_app_is_dropped():
    async def twice(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    r = drive.run(GatewayMiddleware(twice, policies=[LooksOnly()]), drive.scope())
    assert r.status == 200
    assert r.body == b"ok"


# -- WSGI: bodies without Content-Length ---------------------------------------------------


@pytest.mark.parametrize("policies", READERS, ids=READER_IDS)
def test_wsgi_body_without_length_read_when_input_terminated(policies):
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=policies)
    r = drive.call_wsgi(gw, drive.environ("POST", "/up", body=BINARY, terminated=True))
    assert r.status == 200
    assert r.body == BINARY
    assert app.calls[0]["body"] == BINARY


def test_wsgi_body_without_length_or_terminated_input_is_not_read():
    reader = ReadsBody()
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=[reader])
    env = drive.environ("POST", "/up", body=b"unbounded")
    stream = env["wsgi.input"]
    r = drive.call_wsgi(gw, env)
    assert r.status == 200
    assert reader.seen == [(None, b"")]
    assert stream.tell() == 0  # the gateway did not touch the stream


@pytest.mark.parametrize("policies", READERS, ids=READER_IDS)
def test_wsgi_terminated_input_cut_at_the_limit(policies, caplog):
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=policies, max_body_size=10)
    with caplog.at_level(logging.WARNING):
        r = drive.call_wsgi(gw, drive.environ("POST", "/up", body=b"x" * 11, terminated=True))
    assert r.status == 413
    assert r.json() == {"message": "Request Too Long"}
    assert r.headers["x-amzn-requestid"]
    assert caplog.records == []


@pytest.mark.parametrize("reader_class", [ReadsBody, ReadsFirst])
def test_wsgi_input_shorter_than_content_length_is_a_client_error(caplog, reader_class):
    reader = reader_class()
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=[reader])
    env = drive.environ("POST", "/up", body=b"short", content_length="100")
    with caplog.at_level(logging.WARNING):
        r = drive.call_wsgi(gw, env)
    assert r.status == 400
    assert r.json() == {"message": "Bad Request"}
    assert app.calls == []
    assert caplog.records == []


def test_wsgi_replayed_body_has_a_matching_content_length():
    app = drive.WsgiEcho()
    gw = WSGIGatewayMiddleware(app, policies=[ReadsBody()])
    env = drive.environ("POST", "/up", body=b"abc", terminated=True)
    drive.call_wsgi(gw, env)
    assert env["CONTENT_LENGTH"] == "3"
    assert isinstance(env["wsgi.input"], io.BytesIO)
    assert app.calls[0]["body"] == b"abc"


def test_wsgi_streaming_response_passes_through():
    def stream(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    gw = WSGIGatewayMiddleware(stream, policies=[Cors(allow_origins=["*"])])
    chunks: list[bytes] = []
    started: list[str] = []

    def start_response(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
        started.append(status)

    result = gw(drive.environ(headers={"origin": "https://x.example"}), start_response)
    for chunk in result:
        chunks.append(chunk)
    result.close()  # type: ignore[attr-defined]
    assert started == ["200 OK"]
    assert chunks == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
