"""``apigw-mw demo``: its curl scenarios driven in process, and the real command on 127.0.0.1."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from apigw_mw.cli import main
from apigw_mw.commands.demo import (
    DEMO_ACCESS_KEY,
    DEMO_API_KEY,
    DEMO_MAX_BODY,
    DEMO_ORIGIN,
    DemoCall,
    _banner,
    demo_calls,
    demo_credentials,
)
from apigw_mw.commands.demo import build_app as _build_app

CREDS = demo_credentials()
CALLS = demo_calls(CREDS)


def build_app(**options: Any) -> Any:
    """The demo app, trusting the tokens the scenarios carry."""
    return _build_app(credentials=CREDS, **options)


def send(app: Any, call: DemoCall) -> httpx.Response:
    """Send one demo call (``repeat`` times) to the ASGI app in process; the last answer."""

    headers = list(call.headers)
    if call.sigv4 is not None:
        headers += signed_headers(call, "http://demo")

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            for _ in range(call.repeat):
                response = await client.request(
                    call.method, call.path, headers=headers, content=call.body()
                )
                await response.aread()
            return response

    return anyio.run(go)


def signed_headers(call: DemoCall, base: str) -> list[tuple[str, str]]:
    """The SigV4 headers botocore (a real AWS client) adds to the call."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    assert call.sigv4 is not None
    access, secret, region = call.sigv4
    request = AWSRequest(method=call.method, url=base + call.path, data=call.body() or b"")
    SigV4Auth(Credentials(access, secret), "execute-api", region).add_auth(request)
    return [(k, v) for k, v in request.headers.items() if k.lower() != "host"]


def scenario(title_part: str) -> DemoCall:
    return next(c for c in CALLS if title_part in c.title)


@pytest.mark.parametrize("call", [pytest.param(c, id=c.title) for c in CALLS])
def test_every_printed_scenario_gets_its_status(call: DemoCall) -> None:
    response = send(build_app(), call)
    assert response.status_code == call.expect, response.text
    # Every answer, the app's or the gateway's, carries a request id.
    assert response.headers["x-amzn-requestid"]


def test_the_scenarios_cover_the_core_behaviours() -> None:
    statuses = {c.expect for c in CALLS}
    assert {200, 201, 204, 400, 401, 403, 413, 429} <= statuses
    assert any(c.method == "OPTIONS" for c in CALLS)


def test_keyed_route_answers_with_the_plan_and_its_headers() -> None:
    app = build_app()
    refused = send(app, scenario("without an API key"))
    assert refused.json()["type"] == "INVALID_API_KEY"
    response = send(app, scenario("demo API key"))
    assert response.status_code == 200
    assert response.json()["gateway"]["apiKeyId"] == "k-demo"
    assert "ratelimit" in response.headers
    assert DEMO_API_KEY not in response.text  # the key itself never reaches the app's output


def test_jwt_claims_reach_the_app_and_scopes_are_enforced() -> None:
    app = build_app()
    response = send(app, scenario("a valid JWT"))
    assert response.json()["authorizer"]["jwt"]["claims"]["sub"] == "alice"
    refused = send(app, scenario("without the route's scope"))
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_lambda_authorizer_context_reaches_the_app() -> None:
    body = send(build_app(), scenario("allows it")).json()
    assert body["principalId"] == "user|alice"
    assert body["authorizer"]["tier"] == "gold"


def test_throttled_orders_carry_retry_after() -> None:
    response = send(build_app(), scenario("place orders quickly"))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["message"] == "Too Many Requests"


def test_iam_route_needs_a_signature_and_names_the_caller() -> None:
    app = build_app()
    assert send(app, scenario("without a SigV4 signature")).status_code == 403
    response = send(app, scenario("signed with SigV4"))
    assert response.status_code == 200
    assert response.json()["accessKey"] == DEMO_ACCESS_KEY


def test_cognito_groups_and_client_certificate_reach_the_app() -> None:
    app = build_app()
    assert send(app, scenario("Cognito route without a token")).status_code == 401
    assert send(app, scenario("Cognito ID token")).json() == {
        "user": "alice",
        "groups": ["pet-owners"],
    }
    assert send(app, scenario("without a client certificate")).status_code == 403
    cert = send(app, scenario("client certificate forwarded")).json()
    assert cert["subjectDN"] == "CN=demo client,O=apigw-mw demo"


def test_resource_policy_refuses_a_denied_range_in_aws_words() -> None:
    response = send(build_app(), scenario("resource policy denies"))
    assert response.status_code == 403
    assert response.json()["message"].startswith(
        "User: anonymous is not authorized to perform: execute-api:Invoke on resource: "
    )


def test_invalid_body_is_refused_with_its_detail() -> None:
    response = send(build_app(), scenario("fails the model"))
    assert response.status_code == 400
    assert "name" in response.json()["message"]


def test_normal_call_reaches_the_app_with_the_context() -> None:
    response = send(build_app(), scenario("path parameters"))
    body = response.json()
    assert body["pet"]["name"] == "Polly"
    assert body["pathParameters"] == {"petId": "2"}
    assert body["color"] == "blue"
    assert body["gateway"]["routeKey"] == "GET /pets/{petId}"
    assert body["gateway"]["stage"] == "demo"
    assert body["gateway"]["requestId"] == response.headers["x-amzn-requestid"]


def test_post_body_reaches_the_app_untouched() -> None:
    response = send(build_app(), scenario("create a pet"))
    assert response.json()["pet"] == {"id": 3, "name": "Rex", "kind": "dog"}


def test_preflight_is_answered_by_the_gateway() -> None:
    response = send(build_app(), scenario("preflight"))
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == DEMO_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"]
    assert response.headers["access-control-max-age"] == "600"
    assert response.content == b""


def test_cross_origin_call_gets_cors_headers() -> None:
    response = send(build_app(), scenario("cross-origin"))
    assert response.headers["access-control-allow-origin"] == DEMO_ORIGIN
    assert "Origin" in response.headers["vary"]


def test_undeclared_route_is_a_customised_403() -> None:
    response = send(build_app(), scenario("does not declare"))
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert response.headers["x-demo-stage"] == "demo"
    assert response.json() == {
        "message": "Missing Authentication Token",
        "type": "MISSING_AUTHENTICATION_TOKEN",
        "requestId": response.headers["x-amzn-requestid"],
    }


def test_oversized_body_is_refused_before_the_app() -> None:
    call = scenario("over the limit")
    assert call.upload_bytes > DEMO_MAX_BODY
    response = send(build_app(), call)
    assert response.status_code == 413
    assert response.headers["x-amzn-errortype"] == "RequestTooLargeException"
    # The app would have answered 400 (the zeros are not JSON): the gateway answered.
    assert response.json()["type"] == "REQUEST_TOO_LARGE"


def test_curl_lines_are_valid_shell_naming_the_request() -> None:
    base = "http://127.0.0.1:8000"
    for call in CALLS:
        line = call.curl(base)
        if call.repeat > 1:
            assert line.startswith(f"for i in $(seq {call.repeat}); do ")
            assert line.endswith("; echo; done")
            line = line.split("; do ", 1)[1].rsplit("; echo; done", 1)[0]
        words = shlex.split(line)
        curl = words[words.index("curl") :]
        assert curl[-1] == base + call.path
        assert curl[1] == "-i"
        if call.method not in ("GET", "POST"):
            assert curl[curl.index("-X") + 1] == call.method
        for name, value in call.headers:
            assert f"{name}: {value}" in curl
        if call.upload_bytes:
            assert line.startswith(f"head -c {call.upload_bytes} /dev/zero | curl ")
            assert "@-" in curl


def test_banner_prints_every_curl_line() -> None:
    base = "http://127.0.0.1:8123"
    banner = _banner(base, trace=False, redis_url=None, credentials=CREDS)
    for call in CALLS:
        assert call.curl(base) in banner
    assert CREDS.writer_token in banner
    assert DEMO_API_KEY in banner


def test_trace_prints_one_line_per_request() -> None:
    out = io.StringIO()
    app = build_app(trace=True, out=out)
    send(app, scenario("a normal call"))
    send(app, scenario("does not declare"))
    everything = out.getvalue().splitlines()
    lines = [line for line in everything if line.startswith("[trace]")]
    assert len(lines) == 2
    access = [line for line in everything if line.startswith("[access]")]
    assert len(access) == 2
    assert json.loads(access[1].removeprefix("[access] "))["status"] in ("403", 403)
    spans = [line for line in everything if line.startswith("span ")]
    assert any("GET /pets" in line for line in spans)
    assert "GET /pets route=GET /pets status=200" in lines[0]
    assert "ResourcePolicy=pass" in lines[0]
    assert "Cors" not in lines[0]  # CORS decides preflights only; a GET just gets headers
    assert "status=403 MISSING_AUTHENTICATION_TOKEN" in lines[1]


def test_demo_refuses_a_redis_option_that_is_not_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--redis", "localhost"]) == 2
    assert "not a URL" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_command() -> list[str]:
    script = Path(sys.executable).with_name("apigw-mw")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "apigw_mw.cli"]


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``apigw-mw demo`` as a real process on a free port; yields its URL and stdout file."""
    port = _free_port()
    stdout = tmp_path / "stdout.txt"
    stderr = tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*_demo_command(), "demo", "--port", str(port)], stdout=out, stderr=err
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}: {stderr.read_text()}")
            try:
                httpx.get(base + "/pets", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the demo did not listen within 30 s: {stderr.read_text()}")
                time.sleep(0.1)
        yield base, stdout
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_demo_command_serves_on_localhost(demo_server: tuple[str, Path]) -> None:
    base, stdout = demo_server
    response = httpx.get(base + "/pets", timeout=5)
    assert response.status_code == 200
    assert response.headers["x-amzn-requestid"]
    assert response.json()["gateway"]["routeKey"] == "GET /pets"
    refused = httpx.get(base + "/admin", timeout=5)
    assert refused.status_code == 403
    printed = stdout.read_text()
    assert f"curl -i {base}/pets" in printed


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_printed_curl_lines_work_against_the_real_demo(demo_server: tuple[str, Path]) -> None:
    """Each printed line, run by a real shell and curl, gets the status the demo promises."""
    _base, stdout = demo_server
    printed = stdout.read_text().splitlines()
    for call in demo_calls(CREDS):
        if call.repeat > 1 or call.upload_bytes:
            continue  # loops and uploads are covered in process
        if call.sigv4 is not None:
            version = subprocess.run(["curl", "--version"], capture_output=True, text=True)
            if "7.7" in version.stdout.split()[1][:3]:
                continue  # curl before 7.75 cannot sign
        # The line printed for this scenario (tokens in it belong to the running demo).
        title = f"# {call.title} -> {call.expect}"
        line = printed[printed.index(title) + 1]
        line = line.replace(" -i ", " -s -o /dev/null -w '%{http_code}' ", 1)
        result = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, timeout=20, check=False
        )
        assert result.stdout.strip() == str(call.expect), (call.title, line, result.stderr)
