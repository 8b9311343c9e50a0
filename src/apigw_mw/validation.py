"""Request validation, as API Gateway's request validators do it.

A :class:`RequestValidator` holds one :class:`RouteModel` per route: the query parameters,
headers and path parameters that must be present and non-blank, and the JSON Schema the body
must match for each content type (``$default`` for every content type without its own).
Parameters are checked before the body; the body is read only when a model applies to the
request's content type.

Schemas are compiled once, in the constructor: drafts are picked from ``$schema`` (draft 4
when absent, as API Gateway uses), every ``$ref`` is resolved up front (a dangling one is a
:class:`~apigw_mw.ConfigurationError`), and a schema that is itself invalid is refused with the
JSON pointer of the bad node. When the ``jsonschema-rs`` package is installed (the ``fast``
extra) it validates; the ``jsonschema`` package is the reference and the fallback, and both
give the same verdict.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin

from .exceptions import ConfigurationError
from .pipeline import BasePolicy, Decision, GatewaySettings, Phase, Policy
from .request import header_value
from .responses import Deny
from .routes import RoutePattern, Router

if TYPE_CHECKING:
    from .context import RequestContext
    from .request import Request

__all__ = ["CHECKED_FORMATS", "RequestValidator", "RouteModel"]

logger = logging.getLogger("apigw_mw")

MODES: Final = ("BODY_AND_PARAMS", "BODY", "PARAMS")
DEFAULT_CONTENT_TYPE: Final = "application/json"
_MAX_DETAILS: Final = 10

# -- formats ----------------------------------------------------------------------------------
#
# API Gateway validates with a draft-4 validator that checks the draft-4 formats (date-time,
# email, hostname, ipv4, ipv6, uri) and regex, and ignores every other format name. Both
# validators here use these same functions, so the verdict cannot differ between them.

_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$",
    re.ASCII,
)
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", re.ASCII)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]*$", re.ASCII)
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+$", re.ASCII)


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    m = _DATE_TIME.match(value)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        date(year, month, day)
    except ValueError:
        return False
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset_hour, offset_minute = m.group(9), m.group(10)
    return offset_hour is None or (int(offset_hour) <= 23 and int(offset_minute) <= 59)


def _is_hostname(value: object) -> bool:
    if not isinstance(value, str):
        return True
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def _is_email(value: object) -> bool:
    if not isinstance(value, str):
        return True
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or len(local) > 64:
        return False
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return bool(_EMAIL_LOCAL.match(local)) and _is_hostname(domain)


def _is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _is_ipv6(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "%" in value:
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return _URI.match(value) is not None


def _is_regex(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        re.compile(value)
    except re.error:
        return False
    return True


#: The ``format`` values that are checked, as API Gateway checks them; others are ignored.
CHECKED_FORMATS: Final[Mapping[str, Callable[[object], bool]]] = MappingProxyType(
    {
        "date-time": _is_date_time,
        "email": _is_email,
        "hostname": _is_hostname,
        "ipv4": _is_ipv4,
        "ipv6": _is_ipv6,
        "uri": _is_uri,
        "regex": _is_regex,
    }
)

# Formats jsonschema-rs knows natively; the ones API Gateway does not check are neutralised.
_RS_NATIVE_FORMATS: Final = (
    "date",
    "time",
    "duration",
    "idn-email",
    "idn-hostname",
    "uri-reference",
    "iri",
    "iri-reference",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "uuid",
)


def _always(value: object) -> bool:
    return True


# jsonschema-rs checks the formats API Gateway checks natively (a Python callback would cost
# more than the whole validation); the corpus tests hold both validators to the same verdict.
_RS_FORMATS: Final[dict[str, Callable[[object], bool]]] = dict.fromkeys(_RS_NATIVE_FORMATS, _always)

# -- drafts -----------------------------------------------------------------------------------

_DRAFTS: Final = {
    "http://json-schema.org/draft-04/schema": "draft4",
    "http://json-schema.org/draft-06/schema": "draft6",
    "http://json-schema.org/draft-07/schema": "draft7",
    "https://json-schema.org/draft/2019-09/schema": "draft2019-09",
    "https://json-schema.org/draft/2020-12/schema": "draft2020-12",
}


def _draft_of(schema: Any, default: str, field_name: str) -> str:
    if not isinstance(schema, Mapping) or "$schema" not in schema:
        return default
    uri = schema["$schema"]
    if not isinstance(uri, str):
        raise ConfigurationError(field_name, "$schema must be a string")
    key = uri.rstrip("#")
    draft = (
        _DRAFTS.get(key)
        or _DRAFTS.get(key.replace("https://", "http://", 1))
        or _DRAFTS.get(key.replace("http://", "https://", 1))
    )
    if draft is None:
        raise ConfigurationError(
            f"{field_name}/$schema",
            f"unknown JSON Schema draft {uri!r}; known: {', '.join(sorted(_DRAFTS))}",
        )
    return draft


def _reference_class(draft: str) -> Any:
    import jsonschema

    return {
        "draft4": jsonschema.Draft4Validator,
        "draft6": jsonschema.Draft6Validator,
        "draft7": jsonschema.Draft7Validator,
        "draft2019-09": jsonschema.Draft201909Validator,
        "draft2020-12": jsonschema.Draft202012Validator,
    }[draft]


def _specification(draft: str) -> Any:
    import referencing.jsonschema as rj

    return {
        "draft4": rj.DRAFT4,
        "draft6": rj.DRAFT6,
        "draft7": rj.DRAFT7,
        "draft2019-09": rj.DRAFT201909,
        "draft2020-12": rj.DRAFT202012,
    }[draft]


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


_format_checker: Any = None


def _reference_format_checker() -> Any:
    global _format_checker
    if _format_checker is None:
        from jsonschema import FormatChecker

        checker = FormatChecker(formats=())
        for name, func in CHECKED_FORMATS.items():
            checker.checks(name)(func)
        _format_checker = checker
    return _format_checker


def fast_path_available() -> bool:
    """Whether ``jsonschema-rs`` is installed (the ``fast`` extra)."""
    try:
        import jsonschema_rs  # noqa: F401
    except ImportError:
        return False
    return True


# -- schema compilation ---------------------------------------------------------------------

# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_SCHEMA_KEYWORDS: Final = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
        "contentSchema",
        "allOf",
        "anyOf",
        "oneOf",
        "prefixItems",
    }
)
_SCHEMA_MAPS: Final = frozenset(
    {"properties", "patternProperties", "definitions", "$defs", "dependentSchemas"}
)


def _subschemas(node: Mapping[str, Any]) -> Iterable[tuple[tuple[str, ...], Any]]:
    for key, value in node.items():
        if key in _SCHEMA_KEYWORDS:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield (key, str(i)), item
            else:
                yield (key,), value
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            for name, item in value.items():
                yield (key, name), item
        elif key == "dependencies" and isinstance(value, Mapping):
            for name, item in value.items():
                if isinstance(item, (Mapping, bool)):
                    yield (key, name), item


class _Checker:
    """Meta-validates a schema and every schema its ``$ref``s reach, resolving each once."""

    def __init__(self, field_name: str, seen: set[int]) -> None:
        self.field_name = field_name
        self.seen = seen

    def check(self, node: Any, resolver: Any, base: str, where: str, draft: str) -> None:
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        draft = _draft_of(node, draft, f"{self.field_name}: {where}")
        cls = _reference_class(draft)
        meta = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)
        from jsonschema.exceptions import best_match

        error = best_match(meta.iter_errors(node))
        if error is not None:
            at = where + _pointer(error.absolute_path)
            raise ConfigurationError(
                self.field_name, f"invalid schema at {at or '/'}: {error.message}"
            )
        self._walk(node, resolver, base, where, draft)

    def _walk(self, node: Any, resolver: Any, base: str, where: str, draft: str) -> None:
        if not isinstance(node, Mapping):
            return
        ref = node.get("$ref")
        if isinstance(ref, str):
            from referencing.exceptions import Unresolvable

            try:
                resolved = resolver.lookup(ref)
            except Unresolvable as exc:
                raise ConfigurationError(
                    self.field_name,
                    f"$ref {ref!r} at {where or '/'} does not resolve ({type(exc).__name__})",
                ) from exc
            target = _join(base, ref)
            doc, _, fragment = target.partition("#")
            self.check(resolved.contents, resolved.resolver, doc, f"{doc}#{fragment}", draft)
        for parts, sub in _subschemas(node):
            self._walk(sub, resolver, base, where + _pointer(parts), draft)


def _reaches_format(schema: Any, resolver: Any) -> bool:
    """Whether ``schema`` can reach, through its subschemas and ``$ref``s, a ``format`` that
    jsonschema-rs checks and API Gateway does not.

    jsonschema-rs costs about a third more per call once any Python format function is
    registered, used or not, so the neutralising functions are registered only for schemas
    that need them. Anything this walk cannot follow for sure (a reference it cannot
    resolve, a nested ``$id`` that moves the base URI, a dynamic reference) counts as
    reaching one.
    """
    names = _RS_NATIVE_FORMATS
    seen: set[int] = set()
    stack: list[tuple[Any, Any, bool]] = [(schema, resolver, True)]
    while stack:
        node, res, root = stack.pop()
        if not isinstance(node, Mapping) or id(node) in seen:
            continue
        seen.add(id(node))
        value = node.get("format")
        if isinstance(value, str) and value in names:
            return True
        if "$dynamicRef" in node or "$recursiveRef" in node:
            return True
        if not root and (isinstance(node.get("$id"), str) or isinstance(node.get("id"), str)):
            return True
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolved = res.lookup(ref)
            except Exception:
                return True
            stack.append((resolved.contents, resolved.resolver, True))
        stack.extend((sub, res, False) for _, sub in _subschemas(node))
    return False


class _Env:
    """What every schema of one validator shares: the documents ``$ref``s point into (one
    registry for each validator, built once) and the schemas already checked."""

    def __init__(self, resources: Mapping[str, Any], engine: str) -> None:
        from referencing import Registry, Resource

        self.resources = resources
        self.engine = engine
        registry: Any = Registry()
        for uri, doc in resources.items():
            doc_draft = _draft_of(doc, "draft4", f"resources[{uri!r}]")
            registry = registry.with_resource(
                uri, Resource.from_contents(doc, default_specification=_specification(doc_draft))
            )
        self.registry = registry
        self.seen: set[int] = set()
        self._rs_registry: Any = None

    def rs_registry(self, jsonschema_rs: Any, drafts: Mapping[str, Any]) -> Any:
        if self._rs_registry is None and self.resources:
            # Documents without their own $schema are read as draft 4, like the schemas.
            first = next(iter(self.resources.values()))
            self._rs_registry = jsonschema_rs.Registry(
                list(self.resources.items()), draft=drafts[_draft_of(first, "draft4", "")]
            )
        return self._rs_registry


def _join(base: str, ref: str) -> str:
    if ref.startswith("#"):
        return base + ref
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", ref) or not base:
        return ref
    return urljoin(base, ref)


class _Schema:
    """One compiled body schema: the fast validator when available, and the reference one.

    ``is_valid`` is the request path's check (the fast validator's, else the reference's);
    only when it fails are the details computed, by :meth:`errors`.
    """

    __slots__ = ("fast", "is_valid", "reference", "source")

    def __init__(self, fast: Any, reference: Any, source: Any) -> None:
        self.fast = fast
        self.reference = reference
        self.source = source
        self.is_valid: Callable[[Any], bool] = (fast if fast is not None else reference).is_valid

    def errors(self, instance: Any, *, reference: bool = False) -> list[str] | None:
        """``None`` when valid, else up to ten ``pointer: message`` details.

        ``reference`` asks for the reference validator whatever is installed (for documents
        only the reference parser read).
        """
        fast = None if reference else self.fast
        if fast is not None:
            if fast.is_valid(instance):
                return None
            found = [(list(e.instance_path), e.message) for e in fast.iter_errors(instance)]
        else:
            ref = self.reference
            found = [(list(e.absolute_path), e.message) for e in ref.iter_errors(instance)]
            if not found:
                return None
        found.sort(key=lambda item: [str(p) for p in item[0]])
        return [f"{_pointer(path) or '/'}: {message}" for path, message in found[:_MAX_DETAILS]]


def _compile_schema(
    schema: Any,
    *,
    field_name: str,
    resources: Mapping[str, Any] | None = None,
    engine: str = "auto",
    env: _Env | None = None,
) -> _Schema:
    from referencing import Resource

    if env is None:
        env = _Env(resources or {}, engine)
    if not isinstance(schema, (Mapping, bool)):
        raise ConfigurationError(field_name, "a schema must be a JSON object (or a boolean)")
    draft = _draft_of(schema, "draft4", field_name)
    if isinstance(schema, bool) and draft == "draft4":
        raise ConfigurationError(field_name, "boolean schemas need draft 6 or later ($schema)")
    root = Resource.from_contents(schema, default_specification=_specification(draft))
    resolver = env.registry.resolver_with_root(root)
    _Checker(field_name, env.seen).check(schema, resolver, "", "", draft)
    reference = _reference_class(draft)(
        schema, registry=env.registry, format_checker=_reference_format_checker()
    )
    fast = None
    if env.engine != "jsonschema":
        fast = _compile_fast(
            schema, draft, env, field_name, required=env.engine != "auto", resolver=resolver
        )
    return _Schema(fast, reference, schema)


def _compile_fast(
    schema: Any, draft: str, env: _Env, field_name: str, required: bool, resolver: Any
) -> Any:
    try:
        import jsonschema_rs
    except ImportError as exc:
        if required:
            raise ConfigurationError(
                "engine", "jsonschema-rs is not installed: pip install 'apigw-mw[fast]'"
            ) from exc
        return None
    classes = {
        "draft4": jsonschema_rs.Draft4Validator,
        "draft6": jsonschema_rs.Draft6Validator,
        "draft7": jsonschema_rs.Draft7Validator,
        "draft2019-09": jsonschema_rs.Draft201909Validator,
        "draft2020-12": jsonschema_rs.Draft202012Validator,
    }
    drafts = {
        "draft4": jsonschema_rs.Draft4,
        "draft6": jsonschema_rs.Draft6,
        "draft7": jsonschema_rs.Draft7,
        "draft2019-09": jsonschema_rs.Draft201909,
        "draft2020-12": jsonschema_rs.Draft202012,
    }
    try:
        return classes[draft](
            schema,
            validate_formats=True,
            formats=_RS_FORMATS if _reaches_format(schema, resolver) else None,
            registry=env.rs_registry(jsonschema_rs, drafts),
        )
    except Exception as exc:
        # The reference accepted the schema above; jsonschema-rs may still refuse something
        # it accepts (a regular-expression dialect difference): validate with the reference.
        if required:
            raise ConfigurationError(
                field_name, f"jsonschema-rs refused the schema: {exc}"
            ) from exc
        logger.warning(
            "%s: jsonschema-rs refused the schema (%s); using jsonschema", field_name, exc
        )
        return None


# -- the public objects -----------------------------------------------------------------------


def _names(values: Iterable[str] | str, field_name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ConfigurationError(field_name, f"{v!r} is not a parameter name")
        if v not in out:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteModel:
    """What one route requires of a request.

    Args:
        query: query parameters that must be present and non-blank (``?q=`` is blank).
        headers: headers that must be present and non-blank (names are case-insensitive).
        path: path parameters that must be non-blank.
        body: JSON Schema per content type (``"application/json"``); ``"$default"`` covers
            every content type without its own. A request without ``Content-Type`` is
            treated as ``application/json``, as API Gateway does.
        mode: ``"BODY_AND_PARAMS"``, ``"BODY"`` or ``"PARAMS"`` for this route; ``None``
            (the default) uses the validator's mode.

    Example::

        RouteModel(query=["q1"], headers=["h1"],
                   body={"application/json": {"type": "object", "required": ["name"]}})
    """

    query: Sequence[str] = ()
    headers: Sequence[str] = ()
    path: Sequence[str] = ()
    body: Mapping[str, Any] = field(default_factory=dict)
    mode: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "query", _names(self.query, "RouteModel.query"))
        object.__setattr__(self, "headers", _names(self.headers, "RouteModel.headers"))
        object.__setattr__(self, "path", _names(self.path, "RouteModel.path"))
        if not isinstance(self.body, Mapping):
            raise ConfigurationError("RouteModel.body", "must map content types to schemas")
        body: dict[str, Any] = {}
        for ctype, schema in self.body.items():
            if not isinstance(ctype, str) or (ctype != "$default" and "/" not in ctype):
                raise ConfigurationError(
                    "RouteModel.body", f"{ctype!r} is not a content type or '$default'"
                )
            body[ctype if ctype == "$default" else _media_type(ctype)] = schema
        object.__setattr__(self, "body", MappingProxyType(body))
        if self.mode is not None and self.mode not in MODES:
            raise ConfigurationError("RouteModel.mode", f"{self.mode!r} is not one of {MODES}")


def _media_type(value: str) -> str:
    return value.partition(";")[0].strip().lower()


# WSGI header names whose environ value differs from the last value of the header mapping
# (servers join repeated API keys; the content headers have CGI names of their own).
_CGI_SPECIAL: Final = frozenset({"content-type", "content-length", "x-api-key"})


def _header_keys(name: str) -> tuple[str, bytes | None, str | None]:
    if not name.isascii():  # keep the header mapping's Unicode case folding
        return name, None, None
    special = name in _CGI_SPECIAL or "_" in name
    return name, name.encode("ascii"), None if special else "HTTP_" + name.upper().replace("-", "_")


class _Entry:
    """A route's compiled model, with the mode applied, in the shape the request path reads.

    ``params`` says whether any parameter is required; ``bodies`` maps lower-case media
    types to schemas, or is ``None`` when the body is not checked; ``types`` is the same map
    keyed by the bytes of the header value (what an ASGI server hands over), ``None`` when
    the body is not checked; ``json`` is the schema for a request without ``Content-Type``.
    ``header_keys`` holds, per required header, its ASGI name and its WSGI environ key
    (``None`` where the environ needs the full header mapping).
    """

    __slots__ = (
        "bodies",
        "default",
        "header_keys",
        "headers",
        "json",
        "params",
        "path",
        "query",
        "route",
        "types",
    )

    def __init__(
        self,
        route: str,
        query: tuple[str, ...],
        headers: tuple[str, ...],
        path: tuple[str, ...],
        bodies: dict[str, _Schema] | None,
        default: _Schema | None,
    ) -> None:
        self.route = route
        self.query = query
        self.headers = headers
        self.header_keys = tuple(_header_keys(h) for h in headers)
        self.path = path
        self.params = bool(query or headers or path)
        self.bodies = bodies
        self.default = default
        self.json = None if bodies is None else bodies.get(DEFAULT_CONTENT_TYPE) or default
        self.types: dict[bytes, _Schema] | None = None
        if bodies is not None:
            # Media types are lower-case ASCII tokens in practice; anything else is found by
            # schema_for.
            self.types = {k.encode("latin-1"): v for k, v in bodies.items() if k.isascii()}

    def schema_for(self, ctype: str | None) -> _Schema | None:
        """The schema for a ``Content-Type`` value (``None`` when absent), or ``None``."""
        bodies = self.bodies
        if bodies is None:
            return None
        if ctype is None:
            return self.json
        # The raw value is usually the bare media type: try it before normalising.
        return bodies.get(ctype) or bodies.get(_media_type(ctype)) or self.default


# -- parsing ----------------------------------------------------------------------------------
#
# The reference parser is the standard library's, refusing what is not JSON: the NaN and
# Infinity literals, and numbers too large for a double (Python would read them as infinity,
# which no JSON value is and which jsonschema-rs cannot represent). msgspec (the ``fast``
# extra) is the fast parser: whatever it accepts, it reads exactly as the reference does
# (integers of any size stay integers, floats are correctly rounded, the last of duplicate
# keys wins); what it refuses (invalid JSON, lone surrogates such as "\ud800", numbers out
# of range, bodies nested too deeply) is left to the reference parser, whose document is then
# checked by the reference validator. orjson is not used: it reads integers beyond 64 bits as
# floats, which changes verdicts (10**30 is not an integer for draft 4, nor within
# ``maximum: 2**64`` once rounded), and it accepts nesting the reference parser refuses.

_EMPTY_BODY: Final = re.compile(rb"^[ \t\r\n]*$")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # infinite: the number does not fit a double
        shown = text if len(text) <= 24 else text[:24] + "..."
        raise ValueError(f"number {shown} is out of range")
    return value


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _parse_reference(body: bytes) -> Any:
    return _DECODER.decode(body.decode("utf-8"))


class _Refused(ValueError):
    """The strict parser leaves this body to the reference parser."""


def _parse_plain(body: bytes) -> Any:
    # Without msgspec, the reference parser is the strict one too, except that a ``\u``
    # escape may hide a lone surrogate, which jsonschema-rs cannot take: such bodies go to
    # the reference path.
    if b"\\u" in body:
        raise _Refused("\\u escape")
    return _parse_reference(body)


def _strict_parser() -> Callable[[bytes], Any]:
    """msgspec's decoder when installed (the ``fast`` extra), else :func:`_parse_plain`."""
    try:
        import msgspec
    except ImportError:
        return _parse_plain
    decode: Callable[[bytes], Any] = msgspec.json.Decoder().decode
    if type(decode(b"18446744073709551616")) is not int:  # a release that rounds big integers
        return _parse_plain
    return decode


# Parses a body on the request path; a document it returns can go to either validator.
_parse_strict: Callable[[bytes], Any] = _strict_parser()


class RequestValidator(BasePolicy):
    """Validate requests as API Gateway's request validators do.

    Required parameters are checked before the body: a missing or blank one answers 400
    ``BAD_REQUEST_PARAMETERS`` ``{"message":"Missing required request parameters: [q1, h2]"}``;
    a body that is not JSON or does not match its schema answers 400 ``BAD_REQUEST_BODY``
    ``{"message":"Invalid request body"}``. The detail is in
    ``$context.error.validationErrorString`` (gateway response templates can show it);
    ``verbose_errors=True`` makes it the message.

    Each request is checked against the model of the single most specific route that
    matches it: the request's route key when it has a model here, else the most specific
    of this validator's routes.

    Args:
        routes: route key (``"POST /pets"``) to :class:`RouteModel`.
        mode: ``"BODY_AND_PARAMS"`` (default), ``"BODY"`` or ``"PARAMS"``: what is checked
            on routes whose model sets no mode of its own.
        unmatched_content_type: ``"pass"`` (default, as API Gateway): a body whose content
            type has no model and no ``$default`` is not validated; ``"reject"``: it is
            answered 415 ``UNSUPPORTED_MEDIA_TYPE`` (API Gateway's
            ``passthroughBehavior: NEVER``). Applies to routes that have body models.
        verbose_errors: put the validation detail in the response message.
        resources: JSON documents that ``$ref``s may point into, by URI
            (``{"urn:api": spec}`` lets a schema say ``{"$ref": "urn:api#/definitions/Pet"}``).
        engine: ``"auto"`` (``jsonschema-rs`` when installed, else ``jsonschema``),
            ``"jsonschema"`` or ``"jsonschema-rs"``.

    Example::

        RequestValidator(routes={
            "GET /validation": RouteModel(query=["q1"]),
            "POST /validation": RouteModel(headers=["h1"], body={"application/json": {
                "type": "object", "required": ["name", "price"],
                "properties": {"price": {"type": "number", "minimum": 25, "maximum": 500}},
            }}),
        })
    """

    phase = Phase.VALIDATE

    def __init__(
        self,
        *,
        routes: Mapping[str, RouteModel],
        mode: str = "BODY_AND_PARAMS",
        unmatched_content_type: str = "pass",
        verbose_errors: bool = False,
        resources: Mapping[str, Any] | None = None,
        engine: str = "auto",
    ) -> None:
        if not isinstance(routes, Mapping):
            raise ConfigurationError("RequestValidator.routes", "must map route keys to models")
        if mode not in MODES:
            raise ConfigurationError("RequestValidator.mode", f"{mode!r} is not one of {MODES}")
        if unmatched_content_type not in ("pass", "reject"):
            raise ConfigurationError(
                "RequestValidator.unmatched_content_type", "must be 'pass' or 'reject'"
            )
        if engine not in ("auto", "jsonschema", "jsonschema-rs"):
            raise ConfigurationError(
                "RequestValidator.engine", "must be 'auto', 'jsonschema' or 'jsonschema-rs'"
            )
        env = _Env(dict(resources or {}), engine)
        super().__init__(routes=list(routes))
        self.mode = mode
        self.unmatched_content_type = unmatched_content_type
        self.verbose_errors = bool(verbose_errors)
        self.engine = engine
        self.models: Mapping[str, RouteModel] = MappingProxyType(
            {RoutePattern.parse(k).key: v for k, v in routes.items()}
        )
        self._reject = unmatched_content_type == "reject"
        self._entries: dict[str, _Entry] = {}
        compiled: dict[int, _Schema] = {}
        for key, model in routes.items():
            norm = RoutePattern.parse(key, field_name="RequestValidator.routes").key
            if not isinstance(model, RouteModel):
                raise ConfigurationError(
                    f"RequestValidator.routes[{key!r}]", "must be a RouteModel"
                )
            route_mode = model.mode or mode
            params = route_mode != "BODY"
            bodies: dict[str, _Schema] | None = None
            default = None
            if route_mode != "PARAMS" and model.body:
                bodies = {}
                for ctype, schema in model.body.items():
                    # One compilation per schema object, however many routes share it.
                    done = compiled.get(id(schema))
                    if done is None:
                        done = compiled[id(schema)] = _compile_schema(
                            schema,
                            field_name=f"RequestValidator.routes[{key!r}].body[{ctype!r}]",
                            env=env,
                        )
                    if ctype == "$default":
                        default = done
                    else:
                        bodies[ctype] = done
            self._entries[norm] = _Entry(
                norm,
                tuple(model.query) if params else (),
                tuple(h.lower() for h in model.headers) if params else (),
                tuple(model.path) if params else (),
                bodies,
                default,
            )
        self._router = Router(RoutePattern.parse(k) for k in self._entries)
        # Some route checks a body: the gateway reads the body before this flow runs.
        self.reads_body = any(
            e.bodies is not None or e.default is not None for e in self._entries.values()
        )
        self._base_path: str | None = None
        self._base_slash = ""

    @property
    def fast(self) -> bool:
        """Whether the bodies are validated by ``jsonschema-rs``."""
        return any(
            s.fast is not None
            for e in self._entries.values()
            for s in [*(e.bodies or {}).values(), *([e.default] if e.default else [])]
        )

    def bind(self, settings: GatewaySettings) -> Policy:
        if settings.stage.base_path == self._base_path:
            return self
        import copy

        bound = copy.copy(self)
        bound._base_path = base = settings.stage.base_path
        bound._base_slash = "" if base is None else base + "/"
        return bound

    def describe(self, route: str) -> str | None:
        """What is checked on ``route`` (for ``apigw-mw check``), or ``None``."""
        entry = self._entries.get(route)
        if entry is None:
            return None
        parts = []
        params = [*(f"path.{p}" for p in entry.path), *(f"query.{q}" for q in entry.query)]
        params += [f"header.{h}" for h in entry.headers]
        if params:
            parts.append("params " + ", ".join(params))
        if entry.bodies is not None:
            types = [*entry.bodies, *(["$default"] if entry.default else [])]
            parts.append("body " + ", ".join(types))
        if not parts:
            return None
        return "validate " + "; ".join(parts)

    # -- request path ------------------------------------------------------------------------
    #
    # Everything a request needs is precomputed per route in _Entry. The common case (a
    # route key with a model, a JSON body that is valid) costs one dictionary lookup for
    # the route, a scan of the raw headers for Content-Type whose bytes are looked up as
    # they are, the body read, one parse and one ``is_valid`` call; nothing else is
    # allocated. The detail of a refusal is computed only when the body is refused.

    def _entry_for(self, request: Request) -> _Entry | None:
        """The model of the most specific of this validator's routes matching ``request``
        (when the request's route key has no model here)."""
        path = request.path
        base = self._base_path
        if base is not None:
            if path == base:
                path = "/"
            elif path.startswith(self._base_slash):
                path = path[len(base) :]
            else:
                return None
        best = self._router.match(request.method, path).best
        return self._entries.get(best.key) if best is not None else None

    def flow(
        self, request: Request, context: RequestContext
    ) -> Decision | Generator[Any, Any, Decision]:
        entry = self._entries.get(context.route_key)  # type: ignore[arg-type]
        if entry is None:
            entry = self._entry_for(request)
            if entry is None:
                return None
        if entry.params:
            missing = _missing(entry, request, context)
            if missing:
                message = f"Missing required request parameters: [{', '.join(missing)}]"
                return Deny("BAD_REQUEST_PARAMETERS", message, validation_error=message)
        types = entry.types
        if types is None:
            return None
        schema = None
        raw = request.raw
        if type(raw) is dict and "REQUEST_METHOD" not in raw:
            # ASGI: the header's bytes are looked up as received (b"application/json"),
            # without decoding them or building the header mapping.
            for name, value in raw.get("headers") or ():
                if name == b"content-type":
                    schema = types.get(value)
                    break
        if schema is None:
            # Anything else: parameters, another case, $default, no Content-Type, WSGI.
            schema = entry.schema_for(_content_type(request))
            if schema is None:
                return self._unmatched(request)
        body = request._body
        if body is not None:  # read already: for this flow (``reads_body``) or by a policy
            return self._decide(schema, body)
        return self._read_and_check(request, schema)

    def _read_and_check(self, request: Request, schema: _Schema) -> Generator[Any, Any, Decision]:
        body = yield request.read_body()
        return self._decide(schema, body)

    def _decide(self, schema: _Schema, body: bytes) -> Decision:
        # The common case, a valid JSON body, costs one parse and one ``is_valid``. Anything
        # else (an empty body, a body the strict parser leaves to the reference parser, an
        # invalid document, a recursion limit) is decided by _check, which handles each case
        # and computes the detail.
        try:
            if schema.is_valid(_parse_strict(body)):
                return None
        except Exception:
            pass
        return self._check(schema, body)

    def _unmatched(self, request: Request) -> Decision:
        """A content type with no model on a route that has body models."""
        if not self._reject:
            return None
        ctype = _content_type(request)
        media = DEFAULT_CONTENT_TYPE if ctype is None else _media_type(ctype)
        detail = f"Content type {media!r} is not supported on this route"
        return Deny("UNSUPPORTED_MEDIA_TYPE", validation_error=detail)

    def _check(self, schema: _Schema, body: bytes) -> Decision:
        detail = _body_errors(schema, body)
        if detail is None:
            return None
        message = "Invalid request body"
        return Deny(
            "BAD_REQUEST_BODY", detail if self.verbose_errors else message, validation_error=detail
        )


def _missing(entry: _Entry, request: Request, context: RequestContext) -> list[str]:
    missing: list[str] = []
    if entry.path:
        params = context.path_parameters
        for name in entry.path:
            if not params.get(name, "").strip():
                missing.append(name)
    if entry.query:
        query = request.query
        for name in entry.query:
            values = query.get(name)
            # Like the single-value view API Gateway gives the backend: the last value.
            if not values or not values[-1].strip():
                missing.append(name)
    for name, raw_name, cgi_key in entry.header_keys:
        value = _last_header(request, name, raw_name, cgi_key)
        if value is None or not value.strip():
            missing.append(name)
    return missing


def _last_header(
    request: Request, name: str, raw_name: bytes | None, cgi_key: str | None
) -> str | None:
    """The last value of one header, read from the ASGI scope or WSGI environ without
    building the header mapping (``None`` when absent)."""
    raw = request.raw
    if raw_name is not None and isinstance(raw, dict):
        if "REQUEST_METHOD" in raw:
            if cgi_key is not None:
                return raw.get(cgi_key)
        else:
            headers = raw.get("headers")
            if headers is not None:
                found = None
                for k, v in headers:
                    if k == raw_name or k.lower() == raw_name:
                        found = v
                return None if found is None else found.decode("latin-1")
    values = request.headers.getlist(name)
    return values[-1] if values else None


def _content_type(request: Request) -> str | None:
    # Read straight from the ASGI scope or WSGI environ: building the header mapping costs
    # more than the rest of the check.
    raw = request.raw
    if isinstance(raw, dict):
        if "REQUEST_METHOD" in raw:
            return raw.get("CONTENT_TYPE") or None
        headers = raw.get("headers")
        if headers is not None:
            for k, v in headers:
                if k == b"content-type":
                    return v.decode("latin-1")  # type: ignore[no-any-return]
            # Names a server did not lower-case, as the header mapping would find them.
            found = header_value(headers, b"content-type")
            return None if found is None else found.decode("latin-1")
    return request.headers.get("content-type")  # type: ignore[no-any-return]


def _body_errors(schema: _Schema, body: bytes) -> str | None:
    """``None`` if ``body`` is JSON matching ``schema``, else the validation error string."""
    reference = False
    try:
        if _EMPTY_BODY.match(body):
            # API Gateway validates a missing body as an empty object.
            document: Any = {}
        else:
            try:
                document = _parse_strict(body)
            except ValueError:  # msgspec's DecodeError and ValidationError, _Refused
                # The reference parser decides (and words the error); its document may hold
                # what only the reference validator takes (a lone surrogate).
                document = _parse_reference(body)
                reference = True
    except RecursionError:
        return "[Invalid JSON: nested too deeply]"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"[Invalid JSON: {_first_line(exc)}]"
    try:
        errors = schema.errors(document, reference=reference)
    except RecursionError:
        return "[/: nested too deeply to validate]"
    if errors is None:
        return None
    return "[" + "; ".join(errors) + "]"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
