"""Access logs in API Gateway's ``$context`` format, written through :mod:`logging`."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any, ClassVar

from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Phase

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["AccessLog", "console_access_log"]

_VARIABLE = re.compile(r"\$context\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)")
# Names whose values are credentials: never written, whatever the format asks for. Matched
# on the variable's last part (``$context.authorizer.accessToken``), and on the keys of a
# mapping written whole. ``usageIdentifierKey`` is the API key a Lambda authorizer hands to
# API keys with source AUTHORIZER; other names ending in "Key" (``routeKey``) are no secret.
_SECRET_NAME = re.compile(
    r"(?i)(?:token|secret|password|passwd|signature|authorization|credentials?|cookie|apikey"
    r"|usageidentifierkey)$"
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
        return json.dumps(_scrubbed(value), separators=(",", ":"), default=str)
    return str(value)


def _scrubbed(value: Any, depth: int = 0) -> Any:
    """A mapping or list to write whole, with the values of secret-named keys left out
    (``null``), however deep (up to a bound: deeper parts are written as ``null``)."""
    if depth > 32:
        return None
    if isinstance(value, Mapping):
        return {
            k: None if isinstance(k, str) and _SECRET_NAME.search(k) else _scrubbed(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v, depth + 1) for v in value]
    return value


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


def _learned_identity(ctx: RequestContext) -> Any:
    """The context's identity if a policy has filled it in: building an untouched lazy
    identity only to read what the request already says would cost for nothing."""
    fields = getattr(ctx, "__dict__", None)
    return ctx.identity if fields is None else fields.get("identity")


# The variables a compiled format reads inline: (kind, Python expression over ``ctx``,
# ``request`` and ``_id``, the identity a policy filled in). "str" values are strings or
# None; "int" values are ints or None. Only these fixed expressions, never text from the
# format, become code (see ``_compile``).
_INLINE: dict[tuple[str, ...], tuple[str, str]] = {
    ("requestId",): ("str", "ctx.request_id"),
    ("extendedRequestId",): ("str", "ctx.extended_request_id"),
    ("httpMethod",): ("str", "ctx.http_method"),
    ("path",): ("str", "ctx.path"),
    ("protocol",): ("str", "ctx.protocol"),
    ("resourcePath",): ("str", "ctx.resource_path"),
    ("routeKey",): ("str", "ctx.route_key"),
    ("stage",): ("str", "ctx.stage"),
    ("status",): ("int", "ctx.status"),
    ("responseLength",): ("int", "ctx.response_length"),
    ("integrationLatency",): ("int", "ctx.integration_latency"),
    ("requestTimeEpoch",): ("int", "ctx.request_time_epoch"),
    ("responseLatency",): ("int", "int((_perf() - ctx.start) * 1000)"),
    ("identity", "sourceIp"): ("str", "request.source_ip if _id is None else _id.source_ip"),
    ("identity", "userAgent"): (
        "str",
        'request.headers.get("user-agent") if _id is None else _id.user_agent',
    ),
    ("identity", "caller"): ("str", "None if _id is None else _id.caller"),
    ("identity", "user"): ("str", "None if _id is None else _id.user"),
    ("identity", "apiKeyId"): ("str", "None if _id is None else _id.api_key_id"),
}
_REQUEST_TIME = ("requestTime",)

Getter = Callable[["RequestContext", "Request"], Any]
Render = Callable[["RequestContext", "Request"], str]


def _lookup(path: tuple[str, ...]) -> Getter:
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
    """A format compiled once into a render function of literal parts and inline reads.

    Most values need no escaping: the fast path checks every value of a line with one
    regular-expression search over their concatenation and joins them with the literals;
    only when that search finds something is each value escaped on its own. Secrets are
    replaced at compile time, ``requestTime`` is formatted and escaped once a second, and a
    JSON value outside quotes is always encoded.
    """

    __slots__ = ("names", "render")

    def __init__(self, fmt: str) -> None:
        style = _style(fmt)
        escape, unsafe = _STYLES[style]
        self.names: set[str] = set()
        literals: list[str] = []
        slots: list[tuple[tuple[str, ...], Callable[[Any], str]]] = []
        pending = ""  # literal text since the last slot (redacted values join it)
        pos = 0
        in_string = False  # inside a JSON string literal of the template
        for m in _VARIABLE.finditer(fmt):
            literal = fmt[pos : m.start()]
            pos = m.end()
            if style == "json":
                in_string = _json_string_state(literal, in_string)
            name = m.group(1)
            self.names.add(name)
            path = tuple(name.split("."))
            esc = escape if style != "json" or in_string else _json_value
            if _SECRET_NAME.search(path[-1]):
                pending += literal + esc(None)  # never read, whatever the context holds
                continue
            literals.append(pending + literal)
            pending = ""
            slots.append((path, esc))
        literals.append(pending + fmt[pos:])
        self.render: Render = _compile(literals, slots, unsafe)


def _compile(
    literals: list[str],
    slots: list[tuple[tuple[str, ...], Callable[[Any], str]]],
    unsafe: re.Pattern[str],
) -> Render:
    """Generate the render function of a format.

    The generated code names only closure variables (the literals, escapes and getters are
    passed in as values) and the fixed expressions of ``_INLINE``: no text of the format
    becomes code.
    """
    env: dict[str, Any] = {
        "_text": _text,
        "_perf": time.perf_counter,
        "_learned": _learned_identity,
    }
    body: list[str] = []
    out: list[str] = []  # the fast path's f-string parts
    slow: list[str] = []  # the same with every checked value escaped from its raw value
    checked: list[str] = []
    if any(path in _INLINE and path[0] == "identity" for path, _ in slots):
        body.append("_id = _learned(ctx)")
    for i, (path, esc) in enumerate(slots):
        lit = literals[i]
        if lit:
            env[f"_l{i}"] = lit
            out.append(f"{{_l{i}}}")
            slow.append(f"{{_l{i}}}")
        env[f"_e{i}"] = esc
        v, t = f"v{i}", f"t{i}"
        if path == _REQUEST_TIME:
            # Requests of one second share the formatted, escaped time.
            env[f"_rt{i}"] = [(-1, "")]
            body += [
                f"s{i} = ctx.request_time_epoch // 1000",
                f"c{i} = _rt{i}[0]",
                f"if c{i}[0] != s{i}:",
                f"    c{i} = _rt{i}[0] = (s{i}, _e{i}(ctx.request_time))",
                f"{t} = c{i}[1]",
            ]
            out.append(f"{{{t}}}")
            slow.append(f"{{{t}}}")
            continue
        kind, expr = _INLINE.get(path, ("any", ""))
        if kind == "any":
            env[f"_g{i}"] = _lookup(path)
            expr = f"_g{i}(ctx, request)"
        body.append(f"{v} = {expr}")
        if esc is _json_value:  # a bare JSON value: always encoded, never checked
            body.append(
                f'{t} = str({v}) if type({v}) is int else ("null" if {v} is None else _e{i}({v}))'
            )
            out.append(f"{{{t}}}")
            slow.append(f"{{{t}}}")
            continue
        first = f"type({v}) is int" if kind == "int" else f"type({v}) is str and {v}"
        value = f"str({v})" if kind == "int" else v
        body.append(f'{t} = {value} if {first} else ("-" if {v} is None else _text({v}))')
        checked.append(f"{{{t}}}")
        out.append(f"{{{t}}}")
        slow.append(f"{{_e{i}({v})}}")
    n = len(slots)
    if literals[n]:
        env[f"_l{n}"] = literals[n]
        out.append(f"{{_l{n}}}")
        slow.append(f"{{_l{n}}}")
    fast = 'f"' + "".join(out) + '"' if out else '""'
    if checked:
        env["_search"] = unsafe.search
        body.append(f'if _search(f"{"".join(checked)}") is None:')
        body.append(f"    return {fast}")
        body.append('return f"' + "".join(slow) + '"')
    else:
        body.append(f"return {fast}")
    names = sorted(env)
    source = "\n".join(
        [
            f"def _make({', '.join(names)}):",
            "    def render(ctx, request):",
            *(f"        {line}" for line in body),
            "    return render",
        ]
    )
    scope: dict[str, Any] = {}
    exec(compile(source, "<access log format>", "exec"), {}, scope)
    render: Render = scope["_make"](*(env[k] for k in names))
    return render


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
        routes: the route patterns to log (``["ANY /admin/{proxy+}"]``); ``None`` (the
            default) logs every request, unmatched ones included.

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
        self,
        format: str = JSON,
        *,
        logger: str | logging.Logger = "apigw_mw.access",
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
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
        self._render = template.render
        self._last_failure = 0.0

    def __repr__(self) -> str:
        routes = "" if self.routes is None else f", routes={list(self.routes)!r}"
        return f"AccessLog({self.format!r}, logger={self.logger.name!r}{routes})"

    def render(self, request: Request, context: RequestContext) -> str:
        """The access-log line for a request and its context."""
        return self._render(context, request)

    def on_complete(self, request: Request, context: RequestContext) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        try:
            line = self._render(context, request)
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
