"""Access logs in API Gateway's ``$context`` format, written through :mod:`logging`."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, ClassVar

from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Phase

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["AccessLog", "console_access_log"]

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
_XML_ENTITIES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&apos;",
    "\t": "&#9;",
    "\n": "&#10;",
    "\r": "&#13;",
}
_CLF_ESCAPES = {'"': '\\"', "\\": "\\\\"}

_report = logging.getLogger("apigw_mw")


def _control(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _text(value: Any) -> str:
    """A value as log text; ``-`` for a missing or empty one, as API Gateway writes it."""
    if value is None or value == "":
        return "-"
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
    if _CLF_UNSAFE.search(s) is None:
        return s
    return _CLF_UNSAFE.sub(lambda m: _CLF_ESCAPES.get(m.group()) or _control(m), s)


def _csv(value: Any) -> str:
    s = _text(value)
    if _CSV_UNSAFE.search(s) is None:
        return s
    s = _TEXT_CONTROL.sub(_control, s)
    return '"' + s.replace('"', '""') + '"'


def _xml(value: Any) -> str:
    # Tab, CR and LF become character references (they round-trip); XML 1.0 cannot carry the
    # other control characters at all, so they are written as \xNN text.
    s = _text(value)
    if _XML_UNSAFE.search(s) is None:
        return s
    return _XML_UNSAFE.sub(lambda m: _XML_ENTITIES.get(m.group()) or _control(m), s)


def _json_in_string(value: Any) -> str:
    s = _text(value)
    if _JSON_UNSAFE.search(s) is None:
        return s
    return json.dumps(s)[1:-1]


def _json_value(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(_text(value))


_STYLES: dict[str, tuple[Callable[[Any], str], re.Pattern[str]]] = {
    "clf": (_clf, _CLF_UNSAFE),
    "csv": (_csv, _CSV_UNSAFE),
    "xml": (_xml, _XML_UNSAFE),
    "json": (_json_in_string, _JSON_UNSAFE),
}


def _redacted(ctx: RequestContext, request: Request) -> None:
    return None


_last_time: list[Any] = [-1, ""]


def _request_time(ctx: RequestContext, request: Request) -> str:
    # Requests of the same second share the formatted time.
    second = ctx.request_time_epoch // 1000
    last = _last_time
    if last[0] != second:
        last[1] = ctx.request_time
        last[0] = second
    return str(last[1])


def _learned_identity(ctx: RequestContext) -> Any:
    """The context's identity if a policy has filled it in: building an untouched lazy
    identity only to read what the request already says would cost for nothing."""
    fields = getattr(ctx, "__dict__", None)
    return ctx.identity if fields is None else fields.get("identity")


def _source_ip(ctx: RequestContext, request: Request) -> Any:
    identity = _learned_identity(ctx)
    return request.source_ip if identity is None else identity.source_ip


def _user_agent(ctx: RequestContext, request: Request) -> Any:
    identity = _learned_identity(ctx)
    return request.headers.get("user-agent") if identity is None else identity.user_agent


def _identity_field(attr: str) -> Getter:
    def get(ctx: RequestContext, request: Request) -> Any:
        identity = _learned_identity(ctx)
        return None if identity is None else getattr(identity, attr)

    return get


Getter = Callable[["RequestContext", "Request"], Any]

_DIRECT: dict[tuple[str, ...], Getter] = {
    ("requestId",): lambda c, r: c.request_id,
    ("extendedRequestId",): lambda c, r: c.extended_request_id,
    ("httpMethod",): lambda c, r: c.http_method,
    ("path",): lambda c, r: c.path,
    ("protocol",): lambda c, r: c.protocol,
    ("resourcePath",): lambda c, r: c.resource_path,
    ("routeKey",): lambda c, r: c.route_key,
    ("stage",): lambda c, r: c.stage,
    ("status",): lambda c, r: c.status,
    ("responseLength",): lambda c, r: c.response_length,
    ("integrationLatency",): lambda c, r: c.integration_latency,
    ("requestTime",): _request_time,
    ("requestTimeEpoch",): lambda c, r: c.request_time_epoch,
    ("responseLatency",): lambda c, r: int((time.perf_counter() - c.start) * 1000),
    ("identity", "sourceIp"): _source_ip,
    ("identity", "userAgent"): _user_agent,
    ("identity", "caller"): _identity_field("caller"),
    ("identity", "user"): _identity_field("user"),
    ("identity", "apiKeyId"): _identity_field("api_key_id"),
}


def _getter(path: tuple[str, ...]) -> Getter:
    if _SECRET_NAME.search(path[-1]):
        return _redacted
    direct = _DIRECT.get(path)
    if direct is not None:
        return direct
    return lambda ctx, request: ctx.lookup(path)


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


class _Template:
    """A compiled format: a ``str.format`` pattern with one slot per variable, the
    variables' getters, and their escapes.

    Most values need no escaping, so all of a line's values are checked with one regular
    expression search over their concatenation; only when it finds something is each value
    escaped on its own.
    """

    __slots__ = ("escapes", "getters", "names", "pattern", "unsafe")

    def __init__(self, fmt: str) -> None:
        style = _style(fmt)
        escape, unsafe = _STYLES[style]
        pieces: list[str] = []
        self.getters: list[Getter] = []
        self.escapes: list[Callable[[Any], str]] = []
        self.names: set[str] = set()
        self.unsafe: re.Pattern[str] | None = unsafe
        pos = 0
        in_string = False  # inside a JSON string literal of the template
        for m in _VARIABLE.finditer(fmt):
            literal = fmt[pos : m.start()]
            pieces.append(literal.replace("{", "{{").replace("}", "}}"))
            if style == "json":
                in_string = _json_string_state(literal, in_string)
            pieces.append("{}")
            name = m.group(1)
            self.names.add(name)
            self.getters.append(_getter(tuple(name.split("."))))
            if style == "json" and not in_string:
                self.escapes.append(_json_value)
                self.unsafe = None  # a bare JSON value always needs encoding
            else:
                self.escapes.append(escape)
            pos = m.end()
        pieces.append(fmt[pos:].replace("{", "{{").replace("}", "}}"))
        self.pattern = "".join(pieces)

    def render(self, ctx: RequestContext, request: Request) -> str:
        values = [get(ctx, request) for get in self.getters]
        unsafe = self.unsafe
        if unsafe is not None:
            texts = [v if type(v) is str and v else _text(v) for v in values]
            if unsafe.search("".join(texts)) is None:
                return self.pattern.format(*texts)
        return self.pattern.format(*[esc(v) for esc, v in zip(self.escapes, values)])


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
        template = _Template(format)
        if "requestId" not in template.names and "extendedRequestId" not in template.names:
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
        self._template = template
        self._last_failure = 0.0

    def __repr__(self) -> str:
        return f"AccessLog({self.format!r}, logger={self.logger.name!r})"

    def render(self, request: Request, context: RequestContext) -> str:
        """The access-log line for a request and its context."""
        return self._template.render(context, request)

    def on_complete(self, request: Request, context: RequestContext) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            line = self._template.render(context, request)
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


def console_access_log(format: str = AccessLog.CLF, out: IO[str] | None = None) -> AccessLog:
    """An :class:`AccessLog` that prints its lines to ``out`` (standard error by default),
    whatever the application's logging configuration; meant for demos and debugging.

    Example::

        app = GatewayMiddleware(app, policies=[console_access_log(), ...])
    """
    logger = logging.getLogger("apigw_mw.access.console")
    handler = logging.StreamHandler(out if out is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("[access] %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return AccessLog(format, logger=logger)
