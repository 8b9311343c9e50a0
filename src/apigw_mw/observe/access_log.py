"""Access logs in API Gateway's ``$context`` format, written through :mod:`logging`."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Phase

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["AccessLog"]

_VARIABLE = re.compile(r"\$context\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)")
# Names whose values are credentials: never written, whatever the format asks for.
_SECRET_NAME = re.compile(
    r"(?i)(?:token|secret|password|passwd|signature|authorization|credentials?|cookie|apikey)$"
)
_CONTROL = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_CLF_UNSAFE = re.compile(f'["\\\\{_CONTROL}]')
_TEXT_CONTROL = re.compile(f"[{_CONTROL}]")
_CSV_UNSAFE = re.compile(f'[,"\\s{_CONTROL}]')
_XML_UNSAFE = re.compile(f"[&<>\"'{_CONTROL}]")
_JSON_UNSAFE = re.compile(f'["\\\\{_CONTROL}]')
_XML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
_CLF_ESCAPES = {'"': '\\"', "\\": "\\\\"}

_report = logging.getLogger("apigw_mw")


def _control(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _clf(value: Any) -> str:
    s = _text(value)
    if not s:
        return "-"
    if _CLF_UNSAFE.search(s) is None:
        return s
    return _CLF_UNSAFE.sub(lambda m: _CLF_ESCAPES.get(m.group()) or _control(m), s)


def _csv(value: Any) -> str:
    s = _text(value)
    if not s:
        return "-"
    if _CSV_UNSAFE.search(s) is None:
        return s
    s = _TEXT_CONTROL.sub(_control, s)
    return '"' + s.replace('"', '""') + '"'


def _xml(value: Any) -> str:
    s = _text(value)
    if not s:
        return "-"
    if _XML_UNSAFE.search(s) is None:
        return s
    return _XML_UNSAFE.sub(lambda m: _XML_ENTITIES.get(m.group()) or _control(m), s)


def _json_in_string(value: Any) -> str:
    s = _text(value)
    if not s:
        return "-"
    if _JSON_UNSAFE.search(s) is None:
        return s
    return json.dumps(s)[1:-1]


def _json_value(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(_text(value))


def _redacted(ctx: RequestContext) -> None:
    return None


def _getter(path: tuple[str, ...]) -> Callable[[RequestContext], Any]:
    if _SECRET_NAME.search(path[-1]) and path != ("identity", "apiKeyId"):
        return _redacted
    if len(path) == 1:
        direct = _DIRECT.get(path[0])
        if direct is not None:
            return direct
    return lambda ctx: ctx.lookup(path)


_DIRECT: dict[str, Callable[[Any], Any]] = {
    "requestId": lambda c: c.request_id,
    "httpMethod": lambda c: c.http_method,
    "path": lambda c: c.path,
    "protocol": lambda c: c.protocol,
    "resourcePath": lambda c: c.resource_path,
    "routeKey": lambda c: c.route_key,
    "stage": lambda c: c.stage,
    "status": lambda c: c.status,
    "responseLength": lambda c: c.response_length,
    "integrationLatency": lambda c: c.integration_latency,
    "requestTimeEpoch": lambda c: c.request_time_epoch,
    "responseLatency": lambda c: int((time.perf_counter() - c.start) * 1000),
}


def _style(fmt: str) -> str:
    text = fmt.strip()
    if text.startswith("{"):
        return "json"
    if text.startswith("<"):
        return "xml"
    literal = _VARIABLE.sub("", text)
    if "," in literal and not any(c.isspace() for c in literal):
        return "csv"
    return "clf"


def _compile(fmt: str) -> tuple[list[Any], set[str]]:
    """Literal strings and ``(getter, escape)`` pairs, and the variables named."""
    style = _style(fmt)
    parts: list[Any] = []
    names: set[str] = set()
    pos = 0
    in_string = False  # inside a JSON string literal of the template
    for m in _VARIABLE.finditer(fmt):
        literal = fmt[pos : m.start()]
        if literal:
            parts.append(literal)
            if style == "json":
                in_string = _json_string_state(literal, in_string)
        name = m.group(1)
        names.add(name)
        if style == "json":
            escape = _json_in_string if in_string else _json_value
        else:
            escape = {"clf": _clf, "csv": _csv, "xml": _xml}[style]
        parts.append((_getter(tuple(name.split("."))), escape))
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts, names


def _json_string_state(literal: str, in_string: bool) -> bool:
    escaped = False
    for c in literal:
        if escaped:
            escaped = False
        elif c == "\\" and in_string:
            escaped = True
        elif c == '"':
            in_string = not in_string
    return in_string


class AccessLog(BasePolicy):
    """One access-log line per request, in API Gateway's ``$context`` format.

    Args:
        format: a format string of ``$context.*`` variables, as pasted from API Gateway, or a
            preset: :attr:`CLF`, :attr:`JSON` (the default), :attr:`CSV`, :attr:`XML`. It must
            name ``$context.requestId`` or ``$context.extendedRequestId``, as in AWS.
        logger: the :mod:`logging` logger (or its name) the lines go to, at ``INFO``.

    The line is written once the response has been sent in full, for refused and failed
    requests too. Values are escaped for the format (JSON string escapes, CSV quoting, XML
    entities, CLF backslash escapes); control characters never reach the line raw, so a
    header cannot forge log lines. API keys, tokens and signatures are never written. A
    failing handler never fails the request.

    Example::

        import logging
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        app = GatewayMiddleware(app, policies=[AccessLog(AccessLog.CLF)])
        # 127.0.0.1 - - [04/Mar/2025:10:00:00 +0000] "GET /pets/{petId} HTTP/1.1" 200 17 ...
    """

    phase = Phase.OBSERVE

    CLF: ClassVar[str] = (
        "$context.identity.sourceIp $context.identity.caller $context.identity.user "
        '[$context.requestTime] "$context.httpMethod $context.resourcePath $context.protocol" '
        "$context.status $context.responseLength $context.requestId $context.extendedRequestId"
    )
    JSON: ClassVar[str] = (
        '{ "requestId":"$context.requestId", "extendedRequestId":"$context.extendedRequestId",'
        ' "ip": "$context.identity.sourceIp", "caller":"$context.identity.caller",'
        ' "user":"$context.identity.user", "requestTime":"$context.requestTime",'
        ' "httpMethod":"$context.httpMethod", "resourcePath":"$context.resourcePath",'
        ' "status":"$context.status", "protocol":"$context.protocol",'
        ' "responseLength":"$context.responseLength" }'
    )
    CSV: ClassVar[str] = (
        "$context.identity.sourceIp,$context.identity.caller,$context.identity.user,"
        "$context.requestTime,$context.httpMethod,$context.resourcePath,$context.protocol,"
        "$context.status,$context.responseLength,$context.requestId,$context.extendedRequestId"
    )
    XML: ClassVar[str] = (
        '<request id="$context.requestId"> <extendedRequestId>$context.extendedRequestId'
        "</extendedRequestId> <ip>$context.identity.sourceIp</ip> <caller>"
        "$context.identity.caller</caller> <user>$context.identity.user</user> <requestTime>"
        "$context.requestTime</requestTime> <httpMethod>$context.httpMethod</httpMethod> "
        "<resourcePath>$context.resourcePath</resourcePath> <status>$context.status</status> "
        "<protocol>$context.protocol</protocol> <responseLength>$context.responseLength"
        "</responseLength> </request>"
    )

    def __init__(
        self, format: str = JSON, *, logger: str | logging.Logger = "apigw_mw.access"
    ) -> None:
        super().__init__()
        if not isinstance(format, str) or not format.strip():
            raise ConfigurationError("AccessLog.format", "must be a non-empty format string")
        if "\n" in format or "\r" in format:
            raise ConfigurationError("AccessLog.format", "must be a single line, as in AWS")
        parts, names = _compile(format)
        if "requestId" not in names and "extendedRequestId" not in names:
            raise ConfigurationError(
                "AccessLog.format",
                "must include $context.requestId or $context.extendedRequestId",
            )
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        elif not isinstance(logger, logging.Logger):
            raise ConfigurationError("AccessLog.logger", "must be a logger or a logger name")
        self.format = format
        self.logger = logger
        self._parts = parts
        self._last_failure = 0.0

    def __repr__(self) -> str:
        return f"AccessLog({self.format!r}, logger={self.logger.name!r})"

    def render(self, context: RequestContext) -> str:
        """The access-log line for a request's context."""
        out = []
        for part in self._parts:
            if type(part) is str:
                out.append(part)
            else:
                out.append(part[1](part[0](context)))
        return "".join(out)

    def on_complete(self, request: Request, context: RequestContext) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            line = self.render(context)
            logger.handle(
                logger.makeRecord(logger.name, logging.INFO, "(access log)", 0, line, (), None)
            )
        except Exception:
            # A broken handler must not fail the request; say so, at most once a minute.
            now = time.monotonic()
            if now - self._last_failure >= 60.0 or not self._last_failure:
                self._last_failure = now
                with contextlib.suppress(Exception):
                    _report.warning(
                        "access log %s could not be written", logger.name, exc_info=True
                    )
