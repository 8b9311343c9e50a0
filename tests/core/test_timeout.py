"""ASGI integration timeout: 504 when the app is slow to start its response."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from apigw_mw import ConfigurationError, Cors, GatewayMiddleware
from tests.core import drive
from tests.core.policies import Tag


async def slow_app(scope, receive, send):  # type: ignore[no-untyped-def]
    await asyncio.sleep(2)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"late"})


async def _slow(request):  # type: ignore[no-untyped-def]
    await asyncio.sleep(2)
    return JSONResponse({"late": True})


starlette_slow = Starlette(routes=[Route("/{p:path}", _slow)])

ORIGIN = [(b"origin", b"https://a.example")]


@pytest.mark.parametrize(
    "policies",
    [
        pytest.param([], id="no-policies"),
        pytest.param([Tag("t"), Cors(allow_origins=["https://a.example"])], id="with-policies"),
    ],
)
@pytest.mark.parametrize("app", [slow_app, starlette_slow], ids=["raw-asgi", "starlette"])
def test_slow_app_gets_504(app, policies, caplog):
    gw = GatewayMiddleware(app, policies=policies, integration_timeout=0.05)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        r = drive.run(gw, drive.scope("GET", "/slow", headers=ORIGIN))
    assert time.perf_counter() - started < 1.0
    assert r.status == 504
    assert r.json() == {"message": "Endpoint request timed out"}
    assert r.headers["x-amzn-errortype"] == "InternalServerErrorException"
    assert r.headers["x-amzn-requestid"]
    if policies:
        assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert caplog.records == []


def test_none_disables_the_timeout():
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.15)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    r = drive.run(GatewayMiddleware(app, integration_timeout=None), drive.scope())
    assert (r.status, r.body) == (200, b"done")


def test_a_streaming_response_that_started_in_time_is_not_cut():
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await asyncio.sleep(0.06)
            await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    r = drive.run(GatewayMiddleware(app, integration_timeout=0.05), drive.scope())
    assert r.status == 200
    assert r.body == b"012"


def test_timeouts_of_concurrent_requests_are_independent():
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.3 if scope["path"] == "/slow" else 0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gw = GatewayMiddleware(app, integration_timeout=0.1)

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(
            drive.call(gw, drive.scope("GET", "/slow")),
            drive.call(gw, drive.scope("GET", "/fast")),
        )

    slow, fast = asyncio.run(both())
    assert slow.status == 504
    assert fast.status == 200


@pytest.mark.parametrize("value", [0, -1, "29", True])
def test_bad_integration_timeout(value):
    with pytest.raises(ConfigurationError) as err:
        GatewayMiddleware(slow_app, integration_timeout=value)
    assert err.value.field == "integration_timeout"


def test_a_response_just_inside_the_timeout_is_not_cut():
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.15)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"in time"})

    r = drive.run(GatewayMiddleware(app, integration_timeout=0.2), drive.scope())
    assert (r.status, r.body) == (200, b"in time")


def test_an_app_that_swallows_the_cancellation_still_gets_504():
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        with contextlib.suppress(asyncio.CancelledError):  # carries on as if nothing happened
            await asyncio.sleep(2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})

    r = drive.run(GatewayMiddleware(app, integration_timeout=0.05), drive.scope())
    assert r.status == 504
    assert r.json() == {"message": "Endpoint request timed out"}


def test_one_middleware_serving_loops_in_several_threads():
    """Each thread's loop keeps its own watchdog; the middleware finds the running one."""

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.5 if scope["path"] == "/slow" else 0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gw = GatewayMiddleware(app, integration_timeout=0.1)
    results: dict[str, list[int]] = {}

    def serve(name: str) -> None:
        async def calls() -> list[int]:
            out = []
            for path in ("/fast", "/slow", "/fast", "/slow"):
                out.append((await drive.call(gw, drive.scope("GET", path))).status)
            return out

        results[name] = asyncio.run(calls())

    threads = [threading.Thread(target=serve, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {f"t{i}": [200, 504, 200, 504] for i in range(3)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_looks_its_running_loop_up_again():
    gw = GatewayMiddleware(slow_app, integration_timeout=0.05)

    async def in_loop() -> int:
        r = await drive.call(gw, drive.scope("GET", "/slow"))
        return r.status

    assert asyncio.run(in_loop()) == 504
    pid = os.fork()
    if pid == 0:  # the child: the parent's watchdog is not trusted, timeouts still work
        code = 0 if gw._watchdog is not None and not gw._watchdog.fast else 1
        code = code or (0 if asyncio.run(in_loop()) == 504 else 2)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
