"""Access logs: one line per request in API Gateway's formats, escaped, without secrets."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from apigw_mw import (
    AccessLog,
    Allow,
    ApiKey,
    ApiKeyAuth,
    ApiKeys,
    BasePolicy,
    ConfigurationError,
    MemoryStore,
    Phase,
    RouteTable,
    Stage,
    Tracing,
)

from .conftest import DenyWhen, Learn, Traces

ROUTES = RouteTable(["GET /pets/{petId}"])
LOGGER = "apigw_mw.access"
CLF_LINE = re.compile(
    r'^(?P<ip>\S+) (?P<caller>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r"(?P<status>\d{3}) (?P<length>\S+) (?P<rid>\S+) (?P<ext>\S+)$"
)
REQUEST_TIME = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def parse_clf(line: str) -> dict[str, str]:
    m = CLF_LINE.match(line)
    assert m is not None, line
    return m.groupdict()


def parse_json(line: str) -> dict[str, str]:
    out: dict[str, str] = json.loads(line)
    return out


def parse_csv(line: str) -> dict[str, str]:
    [row] = list(csv.reader(io.StringIO(line)))
    names = ["ip", "caller", "user", "time", "method", "resourcePath", "protocol", "status"]
    names += ["length", "rid", "ext"]
    return dict(zip(names, row))


def parse_xml(line: str) -> dict[str, str]:
    root = ET.fromstring(line)
    out = {child.tag: child.text or "" for child in root}
    out["id"] = root.attrib["id"]
    return out


PRESETS = [
    pytest.param(
        AccessLog.CLF,
        parse_clf,
        {"rid": "rid", "status": "status", "ip": "ip", "time": "time"},
        id="CLF",
    ),
    pytest.param(
        AccessLog.JSON,
        parse_json,
        {"rid": "requestId", "status": "status", "ip": "ip", "time": "requestTime"},
        id="JSON",
    ),
    pytest.param(
        AccessLog.CSV,
        parse_csv,
        {"rid": "rid", "status": "status", "ip": "ip", "time": "time"},
        id="CSV",
    ),
    pytest.param(
        AccessLog.XML,
        parse_xml,
        {"rid": "id", "status": "status", "ip": "ip", "time": "requestTime"},
        id="XML",
    ),
]


@pytest.mark.parametrize(("fmt", "parse", "keys"), PRESETS)
def test_preset_line_per_request(
    make_client: Any, caplog: pytest.LogCaptureFixture, fmt: str, parse: Any, keys: dict[str, str]
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = make_client([AccessLog(fmt), ROUTES])
    r = client.get("/pets/42")
    assert r.status_code == 200
    [line] = lines(caplog)
    fields = parse(line)
    assert fields[keys["rid"]] == r.headers["x-amzn-requestid"]
    assert fields[keys["status"]] == "200"
    assert fields[keys["ip"]] == "127.0.0.1"
    assert REQUEST_TIME.match(fields[keys["time"]])
    assert "/pets/{petId}" in line
    assert (
        f" {len(r.content)} " in line
        or f'"{len(r.content)}"' in line
        or (f",{len(r.content)}," in line or f">{len(r.content)}<" in line)
    )


@pytest.mark.parametrize(("fmt", "parse", "keys"), PRESETS)
def test_denied_requests_are_logged_too(
    make_client: Any, caplog: pytest.LogCaptureFixture, fmt: str, parse: Any, keys: dict[str, str]
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = make_client([AccessLog(fmt), DenyWhen(), ROUTES])
    r = client.get("/pets/42", headers={"x-deny": "QUOTA_EXCEEDED"})
    assert r.status_code == 429
    assert r.seen == []
    [line] = lines(caplog)
    assert parse(line)[keys["status"]] == "429"


ERROR_FORMAT = (
    '{"requestId":"$context.requestId","status":$context.status,'
    '"error":"$context.error.message","type":"$context.error.responseType",'
    '"length":$context.responseLength,"latency":$context.responseLatency,'
    '"integration":$context.integrationLatency,"route":"$context.routeKey",'
    '"stage":"$context.stage","unknown":"$context.noSuchVariable"}'
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"x-deny": "THROTTLED"},
            {"status": 429, "error": "Too Many Requests", "type": "THROTTLED", "integration": None},
            id="denied",
        ),
        pytest.param({}, {"status": 200, "error": "-", "type": "-"}, id="allowed"),
    ],
)
def test_custom_format_with_errors_and_latencies(
    make_client: Any,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    expected: dict[str, Any],
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = make_client([AccessLog(ERROR_FORMAT), DenyWhen(), ROUTES], stage=Stage("prod"))
    r = client.get("/pets/1", headers=headers)
    [line] = lines(caplog)
    entry = json.loads(line)  # numbers outside quotes stay valid JSON (null when missing)
    for key, value in expected.items():
        assert entry[key] == value
    assert entry["requestId"] == r.headers["x-amzn-requestid"]
    assert entry["length"] == len(r.content)
    assert isinstance(entry["latency"], int)
    assert entry["latency"] >= 0
    assert entry["route"] == "GET /pets/{petId}"
    assert entry["stage"] == "prod"
    assert entry["unknown"] == "-"
    if r.status_code == 200:
        assert isinstance(entry["integration"], int)


HOSTILE = 'Mozilla/5.0 "quoted" \\ back, comma <tag> & \x1b[31mred\x07'
UA_FORMATS = [
    pytest.param(
        '{"requestId":"$context.requestId","ua":"$context.identity.userAgent"}', id="json"
    ),
    pytest.param('$context.requestId "$context.identity.userAgent"', id="clf"),
    pytest.param("$context.requestId,$context.identity.userAgent", id="csv"),
    pytest.param('<r id="$context.requestId"><ua>$context.identity.userAgent</ua></r>', id="xml"),
]


def decode_ua(fmt: str, line: str) -> str:
    if fmt.startswith("{"):
        return str(json.loads(line)["ua"])
    if fmt.startswith("<"):
        return ET.fromstring(line).find("ua").text or ""  # type: ignore[union-attr]
    if "," in fmt:
        return next(iter(csv.reader(io.StringIO(line))))[1]
    return line.split(" ", 1)[1]


@pytest.mark.parametrize("fmt", UA_FORMATS)
def test_quotes_and_control_characters_are_escaped(
    make_client: Any, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = make_client([AccessLog(fmt), ROUTES])
    client.get("/pets/1", headers={"user-agent": HOSTILE})
    [line] = lines(caplog)
    assert "\x1b" not in line
    assert "\x07" not in line
    ua = decode_ua(fmt, line)
    if fmt.startswith("{"):
        assert ua == HOSTILE  # JSON round-trips exactly
    else:  # XML 1.0 cannot carry these control characters; CLF and CSV are plain text
        assert "\x1b" not in ua
        assert "\\x1b[31mred\\x07" in ua
        assert "quoted" in ua


@pytest.mark.parametrize("fmt", UA_FORMATS)
def test_crlf_in_a_header_cannot_forge_a_log_line(
    adapter: str, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    """A header with CR/LF (which some servers pass through) stays on one line."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    forged = 'x\r\n127.0.0.1 - - [01/Jan/2030:00:00:00 +0000] "GET /admin HTTP/1.1" 200'
    from tests.helpers import GatewayClient

    client = GatewayClient(adapter, [AccessLog(fmt), ROUTES])
    if adapter == "asgi":
        client.get("/pets/1", headers={"user-agent": forged})
    else:  # werkzeug's client refuses CR/LF in headers: build the environ by hand
        environ = EnvironBuilder(path="/pets/1").get_environ()
        environ["HTTP_USER_AGENT"] = forged
        _app_iter, status, _ = run_wsgi_app(client.middleware, environ, buffered=True)
        assert status.startswith("200")
    [line] = lines(caplog)
    assert "\r" not in line
    assert "\n" not in line
    if fmt.startswith(("{", "<")):
        assert decode_ua(fmt, line) == forged


def test_secrets_are_never_written(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fmt = (
        "$context.requestId key=$context.identity.apiKey keyId=$context.identity.apiKeyId "
        "token=$context.authorizer.token principal=$context.authorizer.principalId "
        "caller=$context.identity.caller"
    )
    client = make_client([AccessLog(fmt), Learn(), ROUTES])
    client.get("/pets/1")
    [line] = lines(caplog)
    assert "k" * 30 not in line
    assert "eyJsecret" not in line
    assert "key=- keyId=key-id-1 token=- principal=user-7 caller=caller-1" in line


def test_xray_trace_id_in_the_log(
    make_client: Any, caplog: pytest.LogCaptureFixture, traces: Traces
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fmt = "$context.requestId $context.xrayTraceId"
    client = make_client([AccessLog(fmt), Tracing(traces.provider), ROUTES])
    sent = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    r = client.get("/pets/1", headers={"x-amzn-trace-id": sent})
    [line] = lines(caplog)
    assert line == f"{r.headers['x-amzn-requestid']} 1-5759e988-bd862e3fe1be46a994272793"


class _Raising(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("disk full")


def test_failing_handler_does_not_affect_the_request(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("tests.observe.raising")
    logger.handlers[:] = [_Raising()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        client = make_client([AccessLog(logger=logger), ROUTES])
        for _ in range(3):
            r = client.get("/pets/1")
            assert r.status_code == 200
            assert len(r.seen) == 1
    finally:
        logger.handlers[:] = []
    warnings = [r for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(warnings) == 1  # reported once, not per request


def test_disabled_logger_writes_nothing(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    client = make_client([AccessLog(), ROUTES])
    assert client.get("/pets/1").status_code == 200
    assert lines(caplog) == []


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        pytest.param("$context.status $context.identity.sourceIp", "AccessLog.format", id="no-id"),
        pytest.param("$context.requestId\n$context.status", "AccessLog.format", id="two-lines"),
        pytest.param("", "AccessLog.format", id="empty"),
        pytest.param(42, "AccessLog.format", id="not-a-string"),
    ],
)
def test_bad_format_is_a_configuration_error(fmt: Any, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        AccessLog(fmt)
    assert info.value.field == field
    if fmt and isinstance(fmt, str) and "\n" not in fmt:
        assert "$context.requestId or $context.extendedRequestId" in str(info.value)


def test_extended_request_id_alone_is_enough() -> None:
    assert AccessLog("$context.extendedRequestId $context.status").format.startswith("$context")
    with pytest.raises(ConfigurationError) as info:
        AccessLog(logger=42)  # type: ignore[arg-type]
    assert info.value.field == "AccessLog.logger"


@pytest.mark.parametrize("name", ["CLF", "JSON", "CSV", "XML"])
def test_presets_are_documented_verbatim(name: str) -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    assert f"`AccessLog.{name}`" in page
    assert getattr(AccessLog, name) in page


def test_format_text_is_written_verbatim(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Literal text is copied as is, whatever it looks like: braces, percent signs, quotes,
    Python expressions, variables with nothing between them, a variable twice."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    fmt = (
        "x {y} %s %(name)s $context.requestId$context.status '$context.httpMethod' "
        '{__import__("os").getcwd()} key=$context.identity.apiKey$context.requestId \\n'
    )
    client = make_client([AccessLog(fmt), Learn(), ROUTES])
    r = client.get("/pets/1")
    rid = r.headers["x-amzn-requestid"]
    [line] = lines(caplog)
    assert line == (
        f"x {{y}} %s %(name)s {rid}200 'GET' {{__import__(\"os\").getcwd()}} key=-{rid} \\n"
    )


def test_formats_escape_the_request_time_each_their_own_way(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The formatted time is kept for the second, escaped for each format on its own: CSV
    quotes it (it holds a space), CLF and JSON write it as is."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = make_client(
        [AccessLog(AccessLog.CSV), AccessLog(AccessLog.CLF), AccessLog(AccessLog.JSON), ROUTES]
    )
    for _ in range(3):
        client.get("/pets/1")
    got = lines(caplog)
    assert len(got) == 9
    for line in got[0::3]:
        assert REQUEST_TIME.match(parse_csv(line)["time"])
        assert ',"' in line
    for line in got[1::3]:
        assert REQUEST_TIME.match(parse_clf(line)["time"])
    for line in got[2::3]:
        assert REQUEST_TIME.match(parse_json(line)["requestTime"])


def test_only_the_unsafe_value_is_escaped(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fmt = '$context.requestId "$context.identity.userAgent" $context.status $context.path'
    client = make_client([AccessLog(fmt), ROUTES])
    r = client.get("/pets/1", headers={"user-agent": 'say "hi"'})
    [line] = lines(caplog)
    assert line == f'{r.headers["x-amzn-requestid"]} "say \\"hi\\"" 200 /pets/1'


# -- routes= ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "logged"),
    [
        pytest.param("GET", "/pets/1", True, id="its-route"),
        pytest.param("POST", "/pets/1", False, id="same-path-other-method"),
        pytest.param("GET", "/owners/1", False, id="another-declared-route"),
        pytest.param("GET", "/nowhere", False, id="no-declared-route"),
    ],
)
def test_route_limited_access_log_logs_only_its_routes(
    make_client: Any, caplog: pytest.LogCaptureFixture, method: str, path: str, logged: bool
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policies = [
        AccessLog("$context.requestId $context.routeKey", routes=["GET /pets/{petId}"]),
        RouteTable(["POST /pets/{petId}", "GET /owners/{ownerId}"]),
    ]
    r = make_client(policies).request(method, path)
    assert r.status_code == 200
    assert len(r.seen) == 1
    expected = [f"{r.headers['x-amzn-requestid']} GET /pets/{{petId}}"] if logged else []
    assert lines(caplog) == expected


def test_route_limited_access_logs_each_log_their_own_routes(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Two logs on overlapping routes: a request is logged by every log whose routes match."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = make_client(
        [
            AccessLog("admin $context.requestId $context.path", routes=["ANY /admin/{proxy+}"]),
            AccessLog("pets $context.requestId $context.path", routes=["GET /pets/{petId}"]),
            AccessLog("all $context.requestId $context.path"),
        ]
    )
    client.post("/admin/users/7")
    client.get("/pets/1")
    client.get("/other")
    assert [line.split(" ")[0] + " " + line.split(" ")[2] for line in lines(caplog)] == [
        "admin /admin/users/7",
        "all /admin/users/7",
        "pets /pets/1",
        "all /pets/1",
        "all /other",
    ]


def test_bad_routes_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        AccessLog(routes=["GET /pets/{petId"])
    assert info.value.field == "AccessLog.routes"


# -- API keys handed over by an authorizer ----------------------------------------------------

USAGE_KEY = "Fq3sY0cXk1wQ0pZl8mTn2bVx"


class KeyFromToken(BasePolicy):
    """An authorizer that hands the caller's API key to the key check, as a Lambda
    authorizer's ``usageIdentifierKey`` does, with a context of its own."""

    phase = Phase.AUTHORIZE

    def flow(self, request: Any, context: Any) -> Any:
        return Allow(
            authorizer={
                "principalId": "user-7",
                "usageIdentifierKey": USAGE_KEY,
                "sortKey": "by-name",
                "context": {
                    "tier": "gold",
                    "usageIdentifierKey": USAGE_KEY,
                    "nested": [{"apiKey": USAGE_KEY, "accessToken": "eyJsecret"}],
                },
            }
        )


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        pytest.param(
            "$context.requestId key=$context.authorizer.usageIdentifierKey "
            "route=$context.routeKey sort=$context.authorizer.sortKey "
            "keyId=$context.identity.apiKeyId",
            "key=- route=GET /pets/{petId} sort=by-name keyId=k-alice",
            id="clf",
        ),
        pytest.param(
            '{"requestId":"$context.requestId","key":"$context.authorizer.usageIdentifierKey",'
            '"bare":$context.authorizer.usageIdentifierKey,"routeKey":"$context.routeKey"}',
            '"key":"-","bare":null,"routeKey":"GET /pets/{petId}"}',
            id="json",
        ),
        pytest.param(
            "$context.requestId,$context.authorizer.usageIdentifierKey,$context.routeKey",
            ',-,"GET /pets/{petId}"',
            id="csv",
        ),
        pytest.param(
            '<r id="$context.requestId"><key>$context.authorizer.usageIdentifierKey</key>'
            "<route>$context.routeKey</route></r>",
            "<key>-</key><route>GET /pets/{petId}</route></r>",
            id="xml",
        ),
        pytest.param(
            "$context.requestId $context.authorizer.context",
            r"{\"tier\":\"gold\",\"usageIdentifierKey\":null,"
            r"\"nested\":[{\"apiKey\":null,\"accessToken\":null}]}",
            id="mapping-written-whole",
        ),
    ],
)
def test_usage_identifier_key_is_never_written(
    make_client: Any, caplog: pytest.LogCaptureFixture, fmt: str, expected: str
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    keys = ApiKeys([ApiKey(USAGE_KEY, id="k-alice")])
    client = make_client(
        [
            AccessLog(fmt),
            KeyFromToken(),
            ApiKeyAuth(keys, source="AUTHORIZER", storage=MemoryStore()),
            ROUTES,
        ]
    )
    r = client.get("/pets/1")
    assert r.status_code == 200  # the key was real: the key check admitted it
    assert r.seen[0].context.identity.api_key_id == "k-alice"
    [line] = lines(caplog)
    assert USAGE_KEY not in line
    assert "eyJsecret" not in line
    assert line.endswith(expected), line
