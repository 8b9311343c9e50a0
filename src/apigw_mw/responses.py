"""Gateway responses: every refusal the gateway answers with, and their customisation.

A policy refuses a request by returning ``Deny("THROTTLED")`` (or raising
:class:`~apigw_mw.GatewayError`); this module alone turns that into bytes on the wire, with
API Gateway's status code, ``{"message": ...}`` body and ``x-amzn-*`` headers, customised per
response type as ``x-amazon-apigateway-gateway-responses`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .context import RequestContext
    from .request import Request

__all__ = [
    "RESPONSE_TYPES",
    "Allow",
    "Deny",
    "GatewayResponse",
    "GatewayResponses",
    "Respond",
    "ResponseType",
]


@dataclass(frozen=True, slots=True)
class ResponseType:
    """One of API Gateway's gateway response types with its defaults."""

    name: str
    status: int
    message: str | None
    error_type: str


def _t(name: str, status: int, message: str | None, error_type: str) -> ResponseType:
    return ResponseType(name, status, message, error_type)


#: Every gateway response type, with AWS's default status, message and ``x-amzn-ErrorType``.
RESPONSE_TYPES: Final[Mapping[str, ResponseType]] = MappingProxyType(
    {
        t.name: t
        for t in (
            _t(
                "ACCESS_DENIED",
                403,
                "User is not authorized to access this resource",
                "AccessDeniedException",
            ),
            _t(
                "API_CONFIGURATION_ERROR",
                500,
                "Internal server error",
                "InternalServerErrorException",
            ),
            _t("AUTHORIZER_CONFIGURATION_ERROR", 500, None, "AuthorizerConfigurationException"),
            _t("AUTHORIZER_FAILURE", 500, None, "AuthorizerFailureException"),
            _t(
                "BAD_REQUEST_PARAMETERS",
                400,
                "Missing required request parameters",
                "BadRequestException",
            ),
            _t("BAD_REQUEST_BODY", 400, "Invalid request body", "BadRequestException"),
            _t(
                "EXPIRED_TOKEN",
                403,
                "The security token included in the request is expired",
                "ExpiredTokenException",
            ),
            _t("INTEGRATION_FAILURE", 504, "Internal server error", "InternalServerErrorException"),
            _t(
                "INTEGRATION_TIMEOUT",
                504,
                "Endpoint request timed out",
                "InternalServerErrorException",
            ),
            _t("INVALID_API_KEY", 403, "Forbidden", "ForbiddenException"),
            _t(
                "INVALID_SIGNATURE",
                403,
                "The request signature we calculated does not match the signature you provided",
                "InvalidSignatureException",
            ),
            _t(
                "MISSING_AUTHENTICATION_TOKEN",
                403,
                "Missing Authentication Token",
                "MissingAuthenticationTokenException",
            ),
            _t("QUOTA_EXCEEDED", 429, "Limit Exceeded", "LimitExceededException"),
            _t("REQUEST_TOO_LARGE", 413, "Request Too Long", "RequestTooLargeException"),
            _t("RESOURCE_NOT_FOUND", 404, "Not Found", "NotFoundException"),
            _t("THROTTLED", 429, "Too Many Requests", "TooManyRequestsException"),
            _t("UNAUTHORIZED", 401, "Unauthorized", "UnauthorizedException"),
            _t(
                "UNSUPPORTED_MEDIA_TYPE",
                415,
                "Unsupported Media Type",
                "UnsupportedMediaTypeException",
            ),
            _t("WAF_FILTERED", 403, "Forbidden", "WAFFilteredException"),
            _t("DEFAULT_4XX", 400, "Bad Request", "BadRequestException"),
            _t("DEFAULT_5XX", 500, "Internal server error", "InternalServerErrorException"),
        )
    }
)

_UNSET: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the request with a gateway response.

    Args:
        response_type: one of :data:`RESPONSE_TYPES` (``"THROTTLED"``, ``"UNAUTHORIZED"``...).
        message: the ``message`` of the body; the type's default when left out (``None`` is
            written as JSON ``null``, as AWS does for authorizer errors).
        headers: extra response headers (``WWW-Authenticate``, ``Retry-After``...).
        validation_error: detail for ``$context.error.validationErrorString``.

    Example::

        return Deny("THROTTLED", headers={"Retry-After": "1"})
    """

    response_type: str
    message: str | None = _UNSET
    headers: Mapping[str, str] = field(default_factory=dict)
    validation_error: str | None = None

    def __post_init__(self) -> None:
        if self.response_type not in RESPONSE_TYPES:
            raise ConfigurationError(
                "response_type", f"unknown gateway response type {self.response_type!r}"
            )


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the request from the gateway with a response that is not an error.

    Used by CORS preflight and cache hits: the app is not called.

    Example::

        return Respond(204, headers=[(b"access-control-allow-origin", b"*")])
    """

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Allow:
    """Admit the request and add what the policy learned to the context.

    Args:
        authorizer: merged into ``context.authorizer`` (claims, principal id, context map).
        identity: attributes of ``context.identity`` to set (``api_key_id``, ``user``...).

    Example::

        return Allow(authorizer={"principalId": "user|a1"}, identity={"user": "a1"})
    """

    authorizer: Mapping[str, Any] | None = None
    identity: Mapping[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# Customisation

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS = re.compile(r"^[1-5]\d\d$")
_REF = re.compile(r"^method\.request\.(header|querystring|path)\.([A-Za-z0-9_.\-]+)$")
# `$name.path` or `${name.path}` or `$!{...}`; VTL directives start with '#'.
_VAR = re.compile(r"\$!?\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
_DIRECTIVE = re.compile(r"(^|[^\\])#(set|if|else|elseif|end|foreach|macro|define|include|parse)\b")


@dataclass(frozen=True, slots=True)
class GatewayResponse:
    """How one gateway response type is answered.

    Args:
        status: the status code (``None`` keeps the type's default); a string of three
            digits (``"503"``, as OpenAPI exports write it) is accepted too.
        headers: response headers, each a plain string, API Gateway's quoted static form
            (``"'*'"``) or a ``method.request.header.X`` / ``.querystring.X`` / ``.path.X``
            reference to a request value.
        templates: body templates per content type, with ``$context.*``,
            ``$stageVariables.*`` and ``$method.request.*`` substituted.

    Example::

        GatewayResponses({
            "DEFAULT_4XX": GatewayResponse(headers={"Access-Control-Allow-Origin": "'*'"}),
            "THROTTLED": GatewayResponse(
                status=503,
                templates={"application/json": '{"error": $context.error.messageString,'
                                               ' "id": "$context.requestId"}'},
            ),
        })
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Part:
    literal: str
    var: tuple[str, ...] | None = None
    quoted: bool = False


class _Template:
    """A compiled response template: literal runs and variable references."""

    __slots__ = ("content_type", "parts")

    def __init__(self, content_type: str, source: str, field_name: str) -> None:
        self.content_type = content_type
        if _DIRECTIVE.search(source):
            raise ConfigurationError(
                field_name, "VTL directives (#set, #if, ...) are not supported in templates"
            )
        parts: list[_Part] = []
        pos = 0
        for m in _VAR.finditer(source):
            if m.start() > pos:
                parts.append(_Part(source[pos : m.start()]))
            name = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
            path = tuple(name.split("."))
            allowed = (
                (path[0] == "context" and len(path) > 1)
                or (path[0] == "stageVariables" and len(path) == 2)
                or _REF.match(name) is not None
            )
            if not allowed:
                raise ConfigurationError(
                    field_name,
                    f"${name} is not supported: use $context.*, $stageVariables.* or "
                    "$method.request.(header|querystring|path).*",
                )
            parts.append(_Part("", path))
            pos = m.end()
        if pos < len(source):
            parts.append(_Part(source[pos:]))
        self.parts = tuple(parts)

    def render(self, lookup: _Lookup) -> bytes:
        out = []
        for part in self.parts:
            if part.var is None:
                out.append(part.literal)
            else:
                out.append(lookup.get(part.var))
        return "".join(out).encode("utf-8")


class _Lookup:
    """Resolves template variables for one response."""

    __slots__ = ("ctx", "request", "stage_vars")

    def __init__(self, request: Request | None, ctx: RequestContext) -> None:
        self.request = request
        self.ctx = ctx
        self.stage_vars = ctx.stage_variables

    def get(self, path: tuple[str, ...]) -> str:
        head = path[0]
        if head == "stageVariables":
            return str(self.stage_vars.get(path[1], ""))
        if head == "method":
            return self.param(path[2], ".".join(path[3:]))
        value = self.ctx.lookup(path[1:])
        if value is None:
            return ""
        return str(value)

    def param(self, where: str, name: str) -> str:
        request = self.request
        if request is None:
            return ""
        if where == "header":
            return str(request.headers.get(name, ""))
        if where == "querystring":
            values = request.query.get(name)
            return values[0] if values else ""
        return str(self.ctx.path_parameters.get(name, ""))


@dataclass(frozen=True, slots=True)
class _Compiled:
    status: int
    status_line: bytes
    error_type: bytes
    static_headers: tuple[tuple[bytes, bytes], ...]
    dynamic_headers: tuple[tuple[bytes, str, str], ...]  # (name, where, param)
    templates: tuple[_Template, ...]


class GatewayResponses:
    """Customised gateway responses, keyed by response type.

    Types left out fall back to ``DEFAULT_4XX`` / ``DEFAULT_5XX`` when those are given (by
    their default status class), as API Gateway does; a customised ``DEFAULT_4XX`` status
    changes the status of every 4xx type that is not customised itself.

    Pass it as ``responses=`` or as an entry of ``policies``.

    Example::

        responses = GatewayResponses({
            "DEFAULT_4XX": GatewayResponse(headers={"Access-Control-Allow-Origin": "'*'"}),
            "INVALID_API_KEY": GatewayResponse(templates={
                "application/json": '{"message": "Bad key", "requestId": "$context.requestId"}'
            }),
        })
    """

    __slots__ = ("_compiled", "_given")

    def __init__(self, responses: Mapping[str, GatewayResponse] | None = None) -> None:
        given = dict(responses or {})
        for name, resp in given.items():
            if name not in RESPONSE_TYPES:
                raise ConfigurationError(
                    f"responses.{name}",
                    f"unknown gateway response type; known: {', '.join(sorted(RESPONSE_TYPES))}",
                )
            if not isinstance(resp, GatewayResponse):
                raise ConfigurationError(f"responses.{name}", "must be a GatewayResponse")
            if resp.status is not None:
                given[name] = replace(resp, status=_status(resp.status, name))
        self._given = given
        # The customised types first: an error in DEFAULT_4XX / DEFAULT_5XX is then reported
        # under its own name, not under the first type that falls back to it.
        self._compiled: dict[str, _Compiled] = {}
        for name in (*given, *RESPONSE_TYPES):
            if name not in self._compiled:
                self._compiled[name] = self._compile(name)

    def merged(self, other: GatewayResponses) -> GatewayResponses:
        """These responses with ``other``'s entries taking precedence."""
        return GatewayResponses({**self._given, **other._given})

    def _compile(self, name: str) -> _Compiled:
        rtype = RESPONSE_TYPES[name]
        fallback_name = "DEFAULT_4XX" if rtype.status < 500 else "DEFAULT_5XX"
        own = self._given.get(name)
        fallback = self._given.get(fallback_name) if name != fallback_name else None
        status = rtype.status
        for candidate in (fallback, own):
            if candidate is not None and candidate.status is not None:
                status = candidate.status
        field_name = f"responses.{name}"
        header_map: dict[str, str] = {}
        for candidate in (fallback, own):
            if candidate is not None:
                header_map.update(candidate.headers)
        static: list[tuple[bytes, bytes]] = []
        dynamic: list[tuple[bytes, str, str]] = []
        for hname, hvalue in header_map.items():
            if not isinstance(hname, str) or not _HEADER_NAME.match(hname):
                raise ConfigurationError(f"{field_name}.headers", f"bad header name {hname!r}")
            if not isinstance(hvalue, str):
                raise ConfigurationError(f"{field_name}.headers.{hname}", "must be a string")
            if "\r" in hvalue or "\n" in hvalue:
                raise ConfigurationError(f"{field_name}.headers.{hname}", "contains CR or LF")
            ref = _REF.match(hvalue)
            if ref:
                dynamic.append((hname.lower().encode("latin-1"), ref.group(1), ref.group(2)))
                continue
            if len(hvalue) >= 2 and hvalue[0] == hvalue[-1] == "'":
                hvalue = hvalue[1:-1]
            try:
                encoded = hvalue.encode("latin-1")
            except UnicodeEncodeError as exc:
                raise ConfigurationError(
                    f"{field_name}.headers.{hname}", "must be Latin-1 text (HTTP header bytes)"
                ) from exc
            static.append((hname.lower().encode("latin-1"), encoded))
        templates_src: dict[str, str] = {}
        for candidate in (fallback, own):
            if candidate is not None and candidate.templates:
                templates_src = dict(candidate.templates)
        templates = tuple(
            _Template(ctype, src, f"{field_name}.templates.{ctype}")
            for ctype, src in templates_src.items()
        )
        for ctype in templates_src:
            if not isinstance(ctype, str) or "/" not in ctype:
                raise ConfigurationError(
                    f"{field_name}.templates", f"{ctype!r} is not a content type"
                )
        if not templates:
            templates = (
                _Template(
                    "application/json",
                    '{"message":$context.error.messageString}',
                    f"{field_name}.templates",
                ),
            )
        return _Compiled(
            status=status,
            status_line=str(status).encode(),
            error_type=rtype.error_type.encode(),
            static_headers=tuple(static),
            dynamic_headers=tuple(dynamic),
            templates=templates,
        )

    def render(
        self, deny: Deny, request: Request | None, ctx: RequestContext
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body for a refusal; records the error in the context."""
        compiled = self._compiled[deny.response_type]
        rtype = RESPONSE_TYPES[deny.response_type]
        message = rtype.message if deny.message is _UNSET else deny.message
        ctx.set_error(deny.response_type, message, compiled.status, deny.validation_error)
        lookup = _Lookup(request, ctx)
        template = compiled.templates[0]
        if len(compiled.templates) > 1 and request is not None:
            accept = request.headers.get("accept", "")
            for t in compiled.templates:
                if t.content_type in accept:
                    template = t
                    break
        body = template.render(lookup)
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", template.content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
            (b"x-amzn-requestid", ctx.request_id.encode("latin-1")),
            (b"x-amzn-errortype", compiled.error_type),
            (b"x-amz-apigw-id", ctx.extended_request_id.encode("latin-1")),
        ]
        headers.extend(compiled.static_headers)
        for bname, where, param in compiled.dynamic_headers:
            found = lookup.param(where, param)
            if found:
                headers.append((bname, _header_bytes(found)))
        for name, value in deny.headers.items():
            headers.append((_header_bytes(name.lower()), _header_bytes(str(value))))
        return compiled.status, headers, body


# Control characters (CR and LF above all) must never reach a response header: request values
# reflected into headers would otherwise let a client write headers of its own.
_CONTROL: dict[int, None] = dict.fromkeys((*range(9), *range(10, 32), 127))


def _header_bytes(value: str) -> bytes:
    return value.translate(_CONTROL).encode("latin-1", "replace")


def _status(value: Any, name: str) -> int:
    """A customised status code: an int or a string of three digits (as OpenAPI writes it)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, str))
        or not _STATUS.match(str(value))
    ):
        raise ConfigurationError(f"responses.{name}.statusCode", f"{value!r} is not [1-5]xx")
    return int(value)


DEFAULT_RESPONSES = GatewayResponses()


def json_string(value: str | None) -> str:
    """``$context.error.messageString``: the message as a JSON string (or ``null``)."""
    return json.dumps(value)
