"""Configure the whole gateway from the OpenAPI definition API Gateway exports.

:func:`from_openapi` reads an OpenAPI 3.0/3.1 or Swagger 2.0 definition (JSON, or YAML with
the ``yaml`` extra) with its ``x-amazon-apigateway-*`` extensions and returns the policies
that reproduce the API in process: declared routes with strict matching, request
validators, gateway responses, CORS, the resource policy, API keys, authorizers and
throttles.

A request gets the settings of the single most specific operation of the definition that
matches it, as in API Gateway: a policy made for ``ANY /{proxy+}`` does not run on
``GET /pets`` when the definition declares ``GET /pets`` with settings of its own, and runs
on every other request under it, whatever routes other policies of the gateway declare.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from .exceptions import ConfigurationError
from .pipeline import GatewaySettings, Phase, Policy, RouteTable
from .responses import GatewayResponse, GatewayResponses
from .routes import RouteMatch, RoutePattern, Router, Stage
from .validation import RequestValidator, RouteModel

__all__ = ["from_openapi"]

#: The URI the definition is known by, for ``$ref``s from body schemas into it.
SPEC_URI: Final = "urn:apigw-mw:openapi"
_DRAFT_2020: Final = "https://json-schema.org/draft/2020-12/schema"
# What a URI fragment may hold as it is (RFC 3986: pchar, "/" and "?"), JSON pointers' "~" too.
_FRAGMENT_SAFE: Final = "/?:@!$&'()*+,;=~-._"

_METHODS: Final = {
    "get": "GET",
    "put": "PUT",
    "post": "POST",
    "delete": "DELETE",
    "options": "OPTIONS",
    "head": "HEAD",
    "patch": "PATCH",
    "trace": "TRACE",
    "x-amazon-apigateway-any-method": "ANY",
}

#: Extensions that describe the AWS side only, and why they have no meaning in process.
IGNORED_EXTENSIONS: Final[Mapping[str, str]] = {
    "x-amazon-apigateway-integration": "backend integration: the app behind the middleware "
    "is the backend",
    "x-amazon-apigateway-integrations": "backend integrations: the app is the backend",
    "x-amazon-apigateway-binary-media-types": "binary content handling is the app's",
    "x-amazon-apigateway-minimum-compression-size": "response compression is the server's",
    "x-amazon-apigateway-endpoint-configuration": "endpoint type and VPC endpoints are AWS's",
    "x-amazon-apigateway-documentation": "documentation parts do not change requests",
    "x-amazon-apigateway-tag-value": "tags do not change requests",
    "x-amazon-apigateway-importexport-version": "export metadata",
    "x-amazon-apigateway-api-key-source": "",
}

_HANDLED: Final = frozenset(
    {
        "x-amazon-apigateway-request-validators",
        "x-amazon-apigateway-request-validator",
        "x-amazon-apigateway-gateway-responses",
        "x-amazon-apigateway-cors",
        "x-amazon-apigateway-api-key-source",
        "x-amazon-apigateway-authorizer",
        "x-amazon-apigateway-authtype",
        "x-amazon-apigateway-any-method",
        "x-amazon-apigateway-auth",
        "x-amazon-apigateway-policy",
    }
)

_ANYONE: Final = ("*", {"AWS": "*"}, {"AWS": ["*"]})
_EXECUTE_API_ARN = re.compile(r"^arn:aws[\w-]*:execute-api:([^:]*):([^:]*):([^/]*)/")
_COGNITO_ARN = re.compile(r"^arn:aws[\w-]*:cognito-idp:([a-z0-9-]+):\d*:userpool/([\w-]+)$")
_GR_HEADER = "gatewayresponse.header."
_HEADERS: Final = frozenset(
    {"accept", "authorization", "cookie", "host", "origin", "referer", "user-agent"}
)
_INPUT_PARAM = re.compile(r"^method\.input\.params\.([A-Za-z0-9_.\-]+)$")


class _NeedsInput(ConfigurationError):
    """A policy the definition asks for needs something only the caller can give."""


# -- loading ----------------------------------------------------------------------------------


def _load(spec: Any) -> Mapping[str, Any]:
    if isinstance(spec, Mapping):
        return spec
    if isinstance(spec, bytes):
        spec = spec.decode("utf-8")
    if isinstance(spec, os.PathLike) or (
        isinstance(spec, str) and "\n" not in spec and not spec.lstrip().startswith("{")
    ):
        path = os.fspath(spec)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigurationError("spec", f"cannot read {path!r}: {exc}") from exc
        return _parse(text, str(path))
    if isinstance(spec, str):
        return _parse(spec, "spec")
    raise ConfigurationError("spec", "must be a path, a mapping or the definition's text")


def _parse(text: str, where: str) -> Mapping[str, Any]:
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError("spec", f"{where} is not valid JSON: {exc}") from exc
    else:
        try:
            import yaml
        except ImportError as exc:
            raise ConfigurationError(
                "spec",
                f"{where} is YAML, which needs PyYAML: pip install 'apigw-mw[yaml]' "
                "(or convert the definition to JSON)",
            ) from exc

        class _Loader(yaml.SafeLoader):
            """Keeps dates as strings, as JSON would."""

        _Loader.yaml_implicit_resolvers = {
            k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"]
            for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }
        try:
            doc = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise ConfigurationError("spec", f"{where} is not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ConfigurationError("spec", f"{where} is not an OpenAPI definition (not an object)")
    return doc


def _esc(part: Any) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _unesc(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


class _Spec:
    """The loaded definition with local ``$ref`` resolution."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        if isinstance(doc.get("swagger"), str) and doc["swagger"].startswith("2."):
            self.version = 2
        elif isinstance(doc.get("openapi"), str) and doc["openapi"].startswith("3."):
            self.version = 31 if doc["openapi"].startswith("3.1") else 30
        else:
            raise ConfigurationError(
                "spec", "neither 'swagger: 2.0' nor 'openapi: 3.x': not an OpenAPI definition"
            )
        self._check_refs(doc, "")

    def _check_refs(self, node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str):
                self.pointer_of(ref, f"{where}/$ref")
            for key, value in node.items():
                if key in ("example", "examples", "x-amazon-apigateway-integration"):
                    continue
                self._check_refs(value, f"{where}/{_esc(key)}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                self._check_refs(value, f"{where}/{i}")

    def pointer_of(self, ref: str, where: str) -> str:
        if not ref.startswith("#"):
            raise ConfigurationError(
                f"spec#{where}", f"$ref {ref!r}: only references within the definition work"
            )
        pointer = ref[1:]
        self.at(pointer, where, ref)
        return pointer

    def at(self, pointer: str, where: str = "", ref: str = "") -> Any:
        node: Any = self.doc
        for raw in pointer.split("/")[1:] if pointer else []:
            part = _unesc(raw)
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ConfigurationError(
                    f"spec#{where}", f"$ref {ref or '#' + pointer!r} does not resolve (dangling)"
                )
        return node

    def deref(self, node: Any, pointer: str) -> tuple[Any, str]:
        seen = set()
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            if pointer in seen:
                raise ConfigurationError(f"spec#{pointer}", "$ref loop")
            seen.add(pointer)
            pointer = self.pointer_of(node["$ref"], pointer)
            node = self.at(pointer)
        return node, pointer


# -- the parts of the API ---------------------------------------------------------------------


@dataclass
class _Operation:
    key: str
    pointer: str
    security: list[tuple[str, list[str]]]
    model: RouteModel
    validator: str | None


@dataclass
class _Api:
    """Everything the definition says, for :func:`from_openapi` and ``apigw-mw check``."""

    policies: list[Any] = field(default_factory=list)
    operations: list[_Operation] = field(default_factory=list)
    enforced: dict[str, list[str]] = field(default_factory=dict)
    everywhere: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def note(self, route_keys: Iterable[str], text: str) -> None:
        for key in route_keys:
            self.enforced.setdefault(key, []).append(text)


def _validators(spec: _Spec) -> dict[str, str | None]:
    raw = spec.doc.get("x-amazon-apigateway-request-validators") or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            "spec#/x-amazon-apigateway-request-validators", "must map names to validators"
        )
    out: dict[str, str | None] = {}
    for name, v in raw.items():
        if not isinstance(v, Mapping):
            raise ConfigurationError(
                f"spec#/x-amazon-apigateway-request-validators/{_esc(name)}", "must be an object"
            )
        body, params = bool(v.get("validateRequestBody")), bool(v.get("validateRequestParameters"))
        out[name] = (
            "BODY_AND_PARAMS"
            if body and params
            else "BODY"
            if body
            else "PARAMS"
            if params
            else None
        )
    return out


def _schema_ref(spec: _Spec, schema: Any, pointer: str, cache: dict[str, Any]) -> Any:
    """A schema that points into the definition, so its ``$ref``s resolve there."""
    if isinstance(schema, Mapping) and set(schema) == {"$ref"} and isinstance(schema["$ref"], str):
        pointer = spec.pointer_of(schema["$ref"], pointer)
    found = cache.get(pointer)
    if found is None:
        # Percent-encoded: a path template's braces are not URI characters, and
        # jsonschema-rs refuses a reference that is not a valid URI.
        found = {"$ref": f"{SPEC_URI}#{quote(pointer, safe=_FRAGMENT_SAFE)}"}
        if spec.version == 31:
            found["$schema"] = _DRAFT_2020
        cache[pointer] = found
    return found


def _operation_model(
    spec: _Spec,
    item_params: list[tuple[Any, str]],
    op: Mapping[str, Any],
    pointer: str,
    mode: str | None,
    cache: dict[str, Any],
) -> RouteModel:
    params: dict[tuple[str, str], tuple[Mapping[str, Any], str]] = {}
    own = [(p, f"{pointer}/parameters/{i}") for i, p in enumerate(op.get("parameters") or [])]
    for raw, raw_where in [*item_params, *own]:
        node, where = spec.deref(raw, raw_where)
        if not isinstance(node, Mapping) or "name" not in node or "in" not in node:
            raise ConfigurationError(f"spec#{where}", "a parameter needs 'name' and 'in'")
        params[(str(node["in"]), str(node["name"]))] = (node, where)
    query, headers, path = [], [], []
    body: dict[str, Any] = {}
    for (where_in, name), (node, where) in params.items():
        required = bool(node.get("required")) or where_in == "path"
        if where_in == "body":
            if "schema" in node:
                consumes = op.get("consumes") or spec.doc.get("consumes") or ["application/json"]
                ref = _schema_ref(spec, node["schema"], f"{where}/schema", cache)
                for ctype in consumes:
                    body[_ctype(ctype)] = ref
        elif required and where_in == "query":
            query.append(name)
        elif required and where_in == "header":
            headers.append(name)
        elif required and where_in == "path":
            path.append(name)
    rb = op.get("requestBody")
    if rb is not None:
        rb_node, rb_ptr = spec.deref(rb, f"{pointer}/requestBody")
        content = rb_node.get("content") if isinstance(rb_node, Mapping) else None
        for ctype, media in (content or {}).items():
            if isinstance(media, Mapping) and "schema" in media:
                where = f"{rb_ptr}/content/{_esc(ctype)}/schema"
                body[_ctype(ctype)] = _schema_ref(spec, media["schema"], where, cache)
    if mode is None:
        return RouteModel()
    return RouteModel(query=query, headers=headers, path=path, body=body, mode=mode)


def _ctype(ctype: str) -> str:
    # API Gateway's catch-all model key is $default; OpenAPI's is */*.
    return "$default" if ctype.strip() in ("*/*", "$default") else ctype


def _operations(spec: _Spec, api: _Api) -> tuple[list[_Operation], dict[str, Any]]:
    validators = _validators(spec)
    default = spec.doc.get("x-amazon-apigateway-request-validator")
    paths = spec.doc.get("paths") or {}
    if not isinstance(paths, Mapping):
        raise ConfigurationError("spec#/paths", "must be an object")
    cache: dict[str, Any] = {}
    ops: list[_Operation] = []
    seen: dict[str, str] = {}
    shapes: dict[tuple[str, tuple[Any, ...]], str] = {}
    for path, raw_item in paths.items():
        item_ptr = f"/paths/{_esc(path)}"
        item, _ = spec.deref(raw_item, item_ptr)
        if not isinstance(item, Mapping):
            raise ConfigurationError(f"spec#{item_ptr}", "a path item must be an object")
        item_params = [
            (p, f"{item_ptr}/parameters/{i}") for i, p in enumerate(item.get("parameters") or [])
        ]
        for method_name, op in item.items():
            method = _METHODS.get(method_name)
            if method is None or not isinstance(op, Mapping):
                continue
            pointer = f"{item_ptr}/{_esc(method_name)}"
            pattern = RoutePattern.parse(f"{method} {path}", field_name=f"spec#{item_ptr}")
            key = pattern.key
            if key in seen:
                raise ConfigurationError(f"spec#{pointer}", f"{key} is declared twice")
            seen[key] = pointer
            # Templates that differ only in parameter names are one resource (OpenAPI and
            # API Gateway refuse them); with them, no operation would be the most specific.
            shape = (method, tuple(v if k == 0 else k for k, v in pattern.segments))
            if shape in shapes:
                raise ConfigurationError(
                    f"spec#{pointer}",
                    f"{key} is the same route as {shapes[shape]}: only parameter names differ",
                )
            shapes[shape] = key
            name = op.get("x-amazon-apigateway-request-validator", default)
            if name is not None and name not in validators:
                known = ", ".join(sorted(validators)) or "none declared"
                raise ConfigurationError(
                    f"spec#{pointer}/x-amazon-apigateway-request-validator",
                    f"unknown request validator {name!r}; known: {known}",
                )
            mode = validators[name] if name is not None else None
            model = _operation_model(spec, item_params, op, pointer, mode, cache)
            ops.append(_Operation(key, pointer, _requirement(spec, op, key, pointer), model, name))
    return ops, validators


def _requirement(
    spec: _Spec, op: Mapping[str, Any], key: str, pointer: str
) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    auth = op.get("x-amazon-apigateway-auth")
    if isinstance(auth, Mapping) and str(auth.get("type", "")).upper() == "AWS_IAM":
        out.append(("AWS_IAM", []))
    security = op.get("security")
    if security is None:
        return out
    if not isinstance(security, list) or not all(isinstance(s, Mapping) for s in security):
        raise ConfigurationError(f"spec#{pointer}/security", f"{key}: must be a list of objects")
    requirements = list(security)
    if len(requirements) > 1:
        raise ConfigurationError(
            f"spec#{pointer}/security",
            f"{key} lists {len(requirements)} alternative security requirements; API Gateway "
            "applies every scheme of a single requirement object and cannot express "
            "alternatives: put the schemes in one object, or split the operation",
        )
    for name, scopes in (requirements[0] if requirements else {}).items():
        if not isinstance(scopes, list):
            raise ConfigurationError(f"spec#{pointer}/security", f"{key}: scopes must be a list")
        out.append((str(name), [str(s) for s in scopes]))
    return out


# -- security schemes -------------------------------------------------------------------------


def _schemes(spec: _Spec) -> dict[str, tuple[str, Mapping[str, Any], str]]:
    if spec.version == 2:
        raw, base = spec.doc.get("securityDefinitions") or {}, "/securityDefinitions"
    else:
        components = spec.doc.get("components") or {}
        raw, base = components.get("securitySchemes") or {}, "/components/securitySchemes"
    out: dict[str, tuple[str, Mapping[str, Any], str]] = {}
    for name, node in raw.items():
        scheme, where = spec.deref(node, f"{base}/{_esc(name)}")
        out[name] = (_kind(name, scheme, where), scheme, where)
    out.setdefault("AWS_IAM", ("iam", {}, "x-amazon-apigateway-auth"))
    # API Gateway's own name for the API key requirement; its samples use it undeclared.
    out.setdefault(
        "api_key", ("api_key", {"type": "apiKey", "name": "x-api-key", "in": "header"}, "")
    )
    return out


def _kind(name: str, scheme: Mapping[str, Any], where: str) -> str:
    if not isinstance(scheme, Mapping):
        raise ConfigurationError(f"spec#{where}", "a security scheme must be an object")
    authorizer = scheme.get("x-amazon-apigateway-authorizer")
    authtype = str(scheme.get("x-amazon-apigateway-authtype", "")).lower()
    if isinstance(authorizer, Mapping):
        kind = str(authorizer.get("type", "")).lower()
        found = {
            "token": "token",
            "request": "request",
            "cognito_user_pools": "cognito",
            "jwt": "jwt",
        }.get(kind)
        if found is None:
            raise ConfigurationError(
                f"spec#{where}/x-amazon-apigateway-authorizer/type",
                f"{kind!r} is not token, request, cognito_user_pools or jwt",
            )
        return found
    if authtype == "cognito_user_pools":
        raise ConfigurationError(
            f"spec#{where}", "a cognito_user_pools scheme needs x-amazon-apigateway-authorizer"
        )
    if authtype.startswith("aws"):
        return "iam"
    if scheme.get("type") == "apiKey" and str(scheme.get("name", "")).lower() == "x-api-key":
        return "api_key"
    raise ConfigurationError(
        f"spec#{where}",
        f"security scheme {name!r} is neither an API key (x-api-key header), an "
        "x-amazon-apigateway-authorizer, nor x-amazon-apigateway-authtype awsSigv4",
    )


def _policy_class(name: str, scheme: str) -> Any:
    import apigw_mw

    cls = getattr(apigw_mw, name, None)
    if cls is None:
        raise ConfigurationError(
            f"security scheme {scheme!r}", f"needs {name}, which this installation does not provide"
        )
    return cls


def _overrides(authorizers: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = authorizers.get(name)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if callable(value):
        return {"handler": value}
    raise ConfigurationError(
        f"authorizers[{name!r}]", "must be a handler or a mapping of constructor arguments"
    )


def _identity_sources(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(s).strip() for s in value]


def _route_scopes(uses: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    return {key: scopes for key, scopes in uses if scopes}


def _build_authorizer(
    name: str,
    kind: str,
    scheme: Mapping[str, Any],
    uses: list[tuple[str, list[str]]],
    overrides: dict[str, Any],
    stage: Stage | None,
) -> tuple[Any, str]:
    keys = [key for key, _ in uses]
    az = scheme.get("x-amazon-apigateway-authorizer") or {}
    if kind in ("token", "request"):
        if "handler" not in overrides:
            raise _NeedsInput(
                "authorizers",
                f"security scheme {name!r} is a Lambda {kind.upper()} authorizer: pass its "
                f"handler as authorizers={{{name!r}: handler}}",
            )
        cls = _policy_class("LambdaAuthorizer", name)
        if kind == "token":
            header = scheme.get("name") or "Authorization"
            sources = [f"method.request.header.{header}"]
        else:
            sources = _identity_sources(az.get("identitySource"))
        args: dict[str, Any] = {
            "type": kind.upper(),
            "identity_sources": sources,
            "ttl": int(az.get("authorizerResultTtlInSeconds", 300)),
            "validation_expression": az.get("identityValidationExpression"),
            "payload_format": str(az.get("authorizerPayloadFormatVersion", "1.0")),
            "simple_responses": bool(az.get("enableSimpleResponses", False)),
            "function_name": name,
            "routes": keys,
            **overrides,
        }
        handler = args.pop("handler")
        return cls(handler, **args), f"LambdaAuthorizer {kind.upper()} ({name})"
    if kind == "cognito":
        arns = az.get("providerARNs") or []
        if len(arns) != 1 or not isinstance(arns[0], str):
            raise ConfigurationError(
                f"security scheme {name!r}", "providerARNs must name exactly one user pool"
            )
        m = _COGNITO_ARN.match(arns[0])
        if m is None and not {"region", "user_pool_id"} <= set(overrides):
            raise _NeedsInput(
                f"security scheme {name!r}",
                f"{arns[0]!r} is not a Cognito user pool ARN: pass "
                f"authorizers={{{name!r}: {{'region': ..., 'user_pool_id': ...}}}}",
            )
        cls = _policy_class("CognitoAuthorizer", name)
        args = {
            "region": m.group(1) if m else None,
            "user_pool_id": m.group(2) if m else None,
            "scopes": _route_scopes(uses),
            "routes": keys,
            **overrides,
        }
        return cls(**args), f"CognitoAuthorizer ({name})"
    if kind == "jwt":
        cfg = az.get("jwtConfiguration") or {}
        issuer = cfg.get("issuer")
        oidc = scheme.get("openIdConnectUrl")
        if issuer is None and isinstance(oidc, str):
            issuer = oidc.removesuffix("/.well-known/openid-configuration")
        sources = _identity_sources(az.get("identitySource")) or ["$request.header.Authorization"]
        cls = _policy_class("JwtAuthorizer", name)
        args = {
            "issuer": issuer,
            "audience": cfg.get("audience") or (),
            "identity_source": sources[0],
            "scopes": _route_scopes(uses),
            "routes": keys,
            **overrides,
        }
        if not args["issuer"]:
            raise ConfigurationError(
                f"security scheme {name!r}", "a jwt authorizer needs jwtConfiguration.issuer"
            )
        return cls(**args), f"JwtAuthorizer ({name})"
    if kind == "iam":
        if "credentials" not in overrides:
            raise _NeedsInput(
                "authorizers",
                f"security scheme {name!r} is IAM (SigV4): pass the callers' credentials as "
                f"authorizers={{{name!r}: {{'credentials': {{access_key_id: secret}}}}}}",
            )
        cls = _policy_class("IamAuthorizer", name)
        args = {"region": stage.region if stage else "us-east-1", "routes": keys, **overrides}
        credentials = args.pop("credentials")
        return cls(credentials, **args), f"IamAuthorizer ({name})"
    raise AssertionError(kind)  # pragma: no cover


# -- most specific operation ------------------------------------------------------------------


class _Operations:
    """The definition's own operations, and which of them is the most specific for a request.

    The gateway's route key is the most specific route declared by any policy: a route
    another policy names beside the definition's (a throttle's ``GET /pets/special``, an
    ``OPTIONS /{proxy+}`` for preflights) may be more specific than every operation of the
    definition. An operation's settings follow the definition's resources alone, so the
    choice is made here, among the operations only, on the path below the stage's base
    path.

    When the gateway's route key is itself an operation, it is the answer: the gateway
    declares every operation, so the most specific of all its routes, when it is one of the
    operations, is also the most specific of the operations (no two operations tie:
    :func:`_operations` refuses routes that differ only in parameter names).
    """

    __slots__ = ("keys", "router")

    def __init__(self, keys: Iterable[str]) -> None:
        self.router = Router(RoutePattern.parse(k) for k in keys)
        self.keys = frozenset(p.key for p in self.router.patterns)

    def best(self, request: Any, route_path: Callable[[str], str | None]) -> RouteMatch | None:
        """The match of the most specific operation, or ``None`` when none matches."""
        path = route_path(request.path)
        if path is None:
            return None
        found = self.router.match(request.method, path)
        return found if found.best is not None else None


class _ByOperation:
    """A policy of the definition, bound with the operations it belongs to."""

    def __init__(
        self,
        inner: Any,
        operations: _Operations,
        route_path: Callable[[str], str | None] | None = None,
    ) -> None:
        self.inner = inner
        self.operations = operations
        self.phase: Phase = inner.phase
        self.routes: tuple[str, ...] | None = inner.routes
        self._route_path = route_path or Stage().route_path

    def bind(self, settings: GatewaySettings) -> Policy:
        bind = getattr(self.inner, "bind", None)
        inner = bind(settings) if bind is not None else self.inner
        return self._rebound(inner, settings.stage.route_path)

    def _rebound(self, inner: Any, route_path: Callable[[str], str | None]) -> Policy:
        raise NotImplementedError  # pragma: no cover


class _OnlyBestRoute(_ByOperation):
    """Runs a policy only when the definition's most specific operation for the request is
    one of its operations.

    The core applies a policy to every request that matches any of its routes; an
    operation's settings apply only when that operation is the most specific match among
    the definition's operations.
    """

    def __init__(
        self,
        inner: Any,
        keys: Iterable[str],
        operations: _Operations,
        route_path: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(inner, operations, route_path)
        self.keys = frozenset(RoutePattern.parse(k).key for k in keys)
        self.on_response = self._on_response if getattr(inner, "on_response", None) else None
        self.on_request = self._on_request if getattr(inner, "on_request", None) else None
        self.on_complete = self._on_complete if getattr(inner, "on_complete", None) else None

    def _applies(self, request: Any, context: Any) -> bool:
        key = context.route_key
        if key in self.keys:
            return True
        if key in self.operations.keys:
            return False  # another operation is the most specific (see _Operations)
        found = self.operations.best(request, self._route_path)
        return found is not None and found.best is not None and found.best.key in self.keys

    def flow(self, request: Any, context: Any) -> Any:
        if self._applies(request, context):
            return self.inner.flow(request, context)
        return None

    def _rebound(self, inner: Any, route_path: Callable[[str], str | None]) -> Policy:
        return _OnlyBestRoute(inner, self.keys, self.operations, route_path)

    def _on_response(self, request: Any, context: Any, head: Any) -> None:
        if self._applies(request, context):
            self.inner.on_response(request, context, head)

    def _on_request(self, request: Any, context: Any) -> None:
        if self._applies(request, context):
            self.inner.on_request(request, context)

    def _on_complete(self, request: Any, context: Any) -> None:
        if self._applies(request, context):
            self.inner.on_complete(request, context)

    def __repr__(self) -> str:
        return f"<only the most specific of {sorted(self.keys)}: {self.inner!r}>"


class _OperationParameters(_ByOperation):
    """Runs the request validator with the path parameters of the definition's most
    specific operation.

    The validator picks the model of the most specific of its routes (every operation) by
    itself; the path parameters it checks come from the context, which holds those of the
    gateway's route key. When that key is not an operation, the operation's own are given
    for the duration of the call.
    """

    def flow(self, request: Any, context: Any) -> Any:
        key = context.route_key
        if key is None or key in self.operations.keys:
            return self.inner.flow(request, context)
        found = self.operations.best(request, self._route_path)
        if found is None:
            return self.inner.flow(request, context)
        saved = context.path_parameters
        context.path_parameters = found.path_parameters
        try:
            return self.inner.flow(request, context)
        finally:
            context.path_parameters = saved

    def _rebound(self, inner: Any, route_path: Callable[[str], str | None]) -> Policy:
        return _OperationParameters(inner, self.operations, route_path)

    def __repr__(self) -> str:
        return f"<with the operations' path parameters: {self.inner!r}>"


def _specific(policy: Any, keys: Sequence[str], operations: _Operations) -> Any:
    """``policy``, wrapped when one of its routes could match a more specific operation's
    request (a path parameter, a greedy segment or ``ANY``)."""
    for key in keys:
        pattern = RoutePattern.parse(key)
        if pattern.method == "ANY" or any(kind != 0 for kind, _ in pattern.segments):
            return _OnlyBestRoute(policy, keys, operations)
    return policy


# -- gateway responses, CORS, throttles -------------------------------------------------------


def _gateway_responses(spec: _Spec, ops: list[_Operation], api: _Api) -> GatewayResponses | None:
    raw = spec.doc.get("x-amazon-apigateway-gateway-responses")
    if raw is None:
        return None
    base = "/x-amazon-apigateway-gateway-responses"
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"spec#{base}", "must map response types to responses")
    path_names: set[str] = set()
    header_names: set[str] = set()
    for op in ops:
        path_names.update(op.model.path)
        path_names.update(name for _, name in RoutePattern.parse(op.key).segments)
        header_names.update(op.model.headers)
    out: dict[str, GatewayResponse] = {}
    for rtype, resp in raw.items():
        where = f"{base}/{_esc(rtype)}"
        if not isinstance(resp, Mapping):
            raise ConfigurationError(f"spec#{where}", "must be an object")
        status = resp.get("statusCode")
        headers: dict[str, str] = {}
        for pname, value in (resp.get("responseParameters") or {}).items():
            if not str(pname).startswith(_GR_HEADER):
                api.ignored.append((f"{where}/responseParameters/{_esc(pname)}", "not a header"))
                continue
            value = str(value)
            m = _INPUT_PARAM.match(value)
            if m is not None:
                # $input.params(x) searches path, query string and headers in turn; the
                # definition's parameters (and header-like names) decide which one here.
                name = m.group(1)
                if name in path_names:
                    where_in = "path"
                elif name in header_names or "-" in name or name.lower() in _HEADERS:
                    where_in = "header"
                else:
                    where_in = "querystring"

                value = f"method.request.{where_in}.{name}"
            headers[str(pname)[len(_GR_HEADER) :]] = value
        try:
            status_code = None if status is None else int(status)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"spec#{where}/statusCode", f"{status!r} is not a status"
            ) from exc
        out[str(rtype)] = GatewayResponse(
            status=status_code,
            headers=headers,
            templates=dict(resp.get("responseTemplates") or {}),
        )
    try:
        return GatewayResponses(out)
    except ConfigurationError as exc:
        raise ConfigurationError(f"spec#{base}", f"{exc.field}: {exc.message}") from exc


def _cors(spec: _Spec) -> Any:
    raw = spec.doc.get("x-amazon-apigateway-cors")
    if raw is None:
        return None
    from .cors import Cors

    if not isinstance(raw, Mapping):
        raise ConfigurationError("spec#/x-amazon-apigateway-cors", "must be an object")
    try:
        return Cors(
            allow_origins=raw.get("allowOrigins") or (),
            allow_methods=raw.get("allowMethods") or (),
            allow_headers=raw.get("allowHeaders") or (),
            expose_headers=raw.get("exposeHeaders") or (),
            max_age=raw.get("maxAge"),
            allow_credentials=bool(raw.get("allowCredentials", False)),
        )
    except ConfigurationError as exc:
        raise ConfigurationError("spec#/x-amazon-apigateway-cors", exc.message) from exc


def _resource_policy(spec: _Spec, stage: Stage | None, api: _Api) -> Any:
    """The API's resource policy, from ``x-amazon-apigateway-policy``."""
    raw = spec.doc.get("x-amazon-apigateway-policy")
    if raw is None:
        return None
    from .auth.resource_policy import ResourcePolicy

    try:
        policy = ResourcePolicy(raw)
    except ConfigurationError as exc:
        raise ConfigurationError("spec#/x-amazon-apigateway-policy", exc.message) from exc
    api.everywhere.append("resource policy from x-amazon-apigateway-policy:")
    statements = policy.document.get("Statement")
    if isinstance(statements, Mapping):
        statements = [statements]
    # An export names the API in full ARNs (an import turns execute-api:/... into them);
    # they match only a stage with the same region, account and API id.
    named: set[tuple[str, str, str]] = set()
    for st in statements if isinstance(statements, list) else []:
        if not isinstance(st, Mapping):
            continue
        text = [str(st.get("Effect"))]
        for key in ("Resource", "NotResource"):
            value = st.get(key)
            resources = [value] if isinstance(value, str) else list(value or [])
            if resources:
                text.append(("not " if key == "NotResource" else "") + ", ".join(resources))
            for resource in resources:
                m = _EXECUTE_API_ARN.match(str(resource))
                if m is not None and "*" not in m.group(0) and "?" not in m.group(0):
                    named.add((m.group(1), m.group(2), m.group(3)))
        condition = st.get("Condition")
        if isinstance(condition, Mapping):
            for operator, tests in condition.items():
                for name, values in (tests or {}).items() if isinstance(tests, Mapping) else ():
                    text.append(f"if {operator} {name} {values}")
        if "NotPrincipal" in st or st.get("Principal", "*") not in _ANYONE:
            text.append("(names a principal: never matches, the caller is anonymous)")
        api.everywhere.append("  " + " ".join(text))
    stage = stage or Stage()
    ours = (stage.region, stage.account_id, stage.api_id)
    for region, account, api_id in sorted(named - {ours}):
        api.everywhere.append(
            f"  its ARNs name API {api_id} ({region}, account {account}): they match only "
            f"under Stage(region={region!r}, account_id={account!r}, api_id={api_id!r})"
        )
    return policy


def _bucket(raw: Any, field_name: str) -> Any:
    bucket_cls = _policy_class("TokenBucket", "throttle")
    if isinstance(raw, bucket_cls):
        return raw
    if not isinstance(raw, Mapping) or "rate" not in raw or "burst" not in raw:
        raise ConfigurationError(field_name, "a limit is {rate: per second, burst: capacity}")
    return bucket_cls(rate=raw["rate"], burst=raw["burst"])


def _throttles(raw: Any, storage: Any, field_name: str) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if callable(getattr(raw, "flow", None)):
        return [raw]
    if not isinstance(raw, Mapping):
        raw = {"default": raw}
    extra = set(raw) - {"default", "rate", "burst", "routes"}
    if extra:
        raise ConfigurationError(field_name, f"unknown keys {sorted(extra)}")
    default = raw.get("default")
    if default is None and "rate" in raw:
        default = {"rate": raw["rate"], "burst": raw.get("burst")}
    # API Gateway's account default when only per-route limits are given.
    bucket = _bucket(default or {"rate": 10_000, "burst": 5_000}, f"{field_name}.default")
    limits = {
        RoutePattern.parse(k, field_name=f"{field_name}.routes").key: _bucket(
            v, f"{field_name}.routes[{k!r}]"
        )
        for k, v in (raw.get("routes") or {}).items()
    }
    cls = _policy_class("Throttle", "throttle")
    return [cls(bucket, key="route", route_limits=limits, storage=storage)]


def _usage_plans(raw: Any, field_name: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(field_name, "must map plan ids to plans")
    plan_cls = _policy_class("UsagePlan", "usagePlans")
    quota_cls = _policy_class("Quota", "usagePlans")
    plans = {}
    for plan_id, plan in raw.items():
        where = f"{field_name}.{plan_id}"
        if not isinstance(plan, Mapping):
            raise ConfigurationError(where, "must be an object")
        quota = plan.get("quota")
        plans[str(plan_id)] = plan_cls(
            str(plan.get("name", plan_id)),
            throttle=_bucket(plan["throttle"], f"{where}.throttle") if "throttle" in plan else None,
            quota=quota_cls(
                quota["limit"], period=quota.get("period", "DAY"), offset=quota.get("offset", 0)
            )
            if isinstance(quota, Mapping)
            else None,
            route_limits={
                k: _bucket(v, f"{where}.routes[{k!r}]")
                for k, v in (plan.get("routes") or {}).items()
            },
        )
    return plans


# -- putting it together ----------------------------------------------------------------------


def _ignored(spec: _Spec, api: _Api) -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                path = f"{where}/{_esc(key)}"
                if isinstance(key, str) and key.startswith("x-amazon-apigateway-"):
                    if key not in _HANDLED:
                        reason = IGNORED_EXTENSIONS.get(key) or "has no meaning in process"
                        api.ignored.append((path, reason))
                    continue
                walk(value, path)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(spec.doc, "")
    if spec.version == 2 and spec.doc.get("basePath"):
        api.ignored.append(("/basePath", "a base path is the stage's: Stage(base_path=...)"))
    if spec.version != 2 and spec.doc.get("servers"):
        api.ignored.append(("/servers", "servers are AWS's endpoints: Stage(base_path=...)"))
    if spec.doc.get("security"):
        api.ignored.append(
            ("/security", "API Gateway applies only operation-level security, as here")
        )


def _build(
    spec: Any,
    *,
    authorizers: Mapping[str, Any],
    api_keys: Any,
    stage: Stage | None,
    throttle: Any,
    storage: Any,
    check: bool = False,
) -> _Api:
    spec = _Spec(_load(spec))
    api = _Api()
    if stage is not None:
        if not isinstance(stage, Stage):
            raise ConfigurationError("stage", "must be a Stage")
        api.policies.append(stage)
    if not isinstance(authorizers, Mapping):
        raise ConfigurationError("authorizers", "must map security scheme names to handlers")
    ops, _ = _operations(spec, api)
    keys = [op.key for op in ops]
    ext = spec.doc.get("x-apigw-mw") or {}
    if not isinstance(ext, Mapping):
        raise ConfigurationError("spec#/x-apigw-mw", "must be an object")
    unknown = set(ext) - {"throttle", "usagePlans", "strict"}
    if unknown:
        raise ConfigurationError("spec#/x-apigw-mw", f"unknown keys {sorted(unknown)}")

    operations = _Operations(keys)
    cors = _cors(spec)
    strict = bool(ext.get("strict", True))
    # Only the operations: preflights to any path, declared or not, are answered by the CORS
    # policy before the route table refuses what matches no operation, as API Gateway does.
    api.policies.append(RouteTable(keys, strict=strict))
    if strict:
        api.everywhere.append(
            "strict routes: undeclared routes get 403 Missing Authentication Token"
        )
    responses = _gateway_responses(spec, ops, api)
    if responses is not None:
        api.policies.append(responses)
        api.everywhere.append("gateway responses from x-amazon-apigateway-gateway-responses")
    if cors is not None:
        api.policies.append(cors)
        api.everywhere.append("CORS from x-amazon-apigateway-cors")
    resource_policy = _resource_policy(spec, stage, api)
    if resource_policy is not None:
        api.policies.append(resource_policy)

    # Throttles: the throttle= argument, else the x-apigw-mw extension.
    throttle_raw = throttle if throttle is not None else ext.get("throttle")
    for policy in _throttles(
        throttle_raw, storage, "throttle" if throttle is not None else "spec#/x-apigw-mw/throttle"
    ):
        api.policies.append(policy)
        api.everywhere.append(f"throttle {type(policy).__name__}")

    # Security: one policy per scheme, on exactly the operations that name it.
    schemes = _schemes(spec)
    for name in authorizers:
        if name not in schemes:
            raise ConfigurationError(
                "authorizers",
                f"unknown security scheme {name!r}; the definition declares: "
                f"{', '.join(sorted(schemes))}",
            )
    uses: dict[str, list[tuple[str, list[str]]]] = {}
    for op in ops:
        for name, scopes in op.security:
            if name not in schemes:
                known = ", ".join(sorted(schemes))
                raise ConfigurationError(
                    f"spec#{op.pointer}/security",
                    f"{op.key}: unknown security scheme {name!r}; known: {known}",
                )
            uses.setdefault(name, []).append((op.key, scopes))
    key_routes: list[str] = []
    for name, used in uses.items():
        kind, scheme, _where = schemes[name]
        if kind == "api_key":
            key_routes += [k for k, _ in used]
            continue
        try:
            policy, label = _build_authorizer(
                name, kind, scheme, used, _overrides(authorizers, name), stage
            )
        except _NeedsInput as exc:
            if not check:
                raise
            api.note([k for k, _ in used], f"{name}: {kind} authorizer, not built ({exc.message})")
            continue
        api.policies.append(_specific(policy, [k for k, _ in used], operations))
        for key, scopes in used:
            api.note([key], label + (f" scopes {scopes}" if scopes else ""))
    if key_routes:
        source = str(spec.doc.get("x-amazon-apigateway-api-key-source", "HEADER")).upper()
        plans = _usage_plans(ext.get("usagePlans"), "spec#/x-apigw-mw/usagePlans")
        if api_keys is None:
            if not check:
                raise ConfigurationError(
                    "api_keys",
                    f"{', '.join(key_routes)} require an API key: pass api_keys=ApiKeys([...]), "
                    "a KeyStore, or the path of API Gateway's key CSV",
                )
            api.note(key_routes, "API key required (api_keys needed)")
        else:
            if isinstance(api_keys, (str, os.PathLike)):
                api_keys = _policy_class("ApiKeys", "api_key").from_csv(api_keys, plans=plans)
            cls = _policy_class("ApiKeyAuth", "api_key")
            policy = cls(api_keys, source=source, routes=key_routes, storage=storage)
            api.policies.append(_specific(policy, key_routes, operations))
            api.note(key_routes, f"API key required (source {source})")
    elif api_keys is not None:
        raise ConfigurationError("api_keys", "no operation of the definition requires an API key")

    # Validation: one validator holding every operation, so that the most specific
    # operation's validator (or its absence) decides.
    models = {op.key: op.model for op in ops}
    if any(op.validator is not None for op in ops):
        try:
            validator = RequestValidator(routes=models, resources={SPEC_URI: _resource(spec)})
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"spec: {exc.field}".replace(SPEC_URI, ""), exc.message.replace(SPEC_URI, "")
            ) from exc
        if any(op.model.path for op in ops):
            # Required path parameters are the operation's, whatever the route key.
            api.policies.append(_OperationParameters(validator, operations))
        else:
            api.policies.append(validator)
        for op in ops:
            described = validator.describe(op.key)
            if described is not None:
                api.note([op.key], f"{described} (validator {op.validator!r})")
    api.operations = ops
    _ignored(spec, api)
    return api


def _resource(spec: _Spec) -> Mapping[str, Any]:
    if spec.version == 31 and "$schema" not in spec.doc:
        return {**spec.doc, "$schema": _DRAFT_2020}
    return spec.doc


def from_openapi(
    spec: Any,
    *,
    authorizers: Mapping[str, Any] | None = None,
    api_keys: Any = None,
    stage: Stage | None = None,
    throttle: Any = None,
    storage: Any = "memory://",
) -> list[Any]:
    """The policies that reproduce an API Gateway API from its exported OpenAPI definition.

    Args:
        spec: the definition: a path (``.json``, ``.yaml``), its text, or a mapping.
            OpenAPI 3.0/3.1 and Swagger 2.0; YAML needs the ``yaml`` extra.
        authorizers: per security scheme name, the Python handler of a ``token`` or
            ``request`` Lambda authorizer, or a mapping of constructor arguments that
            override what the definition says (``{"MyPool": {"jwks_uri": ...}}``; an
            ``awsSigv4`` scheme needs ``{"credentials": {...}}``).
        api_keys: the keys for operations whose security names an API key: ``ApiKeys``,
            a ``KeyStore``, or the path of API Gateway's key CSV (its ``UsagePlanIds``
            refer to the ``x-apigw-mw`` extension's ``usagePlans``).
        stage: the :class:`Stage` to run as (included in the result).
        throttle: stage throttling: a ``TokenBucket`` (each route), a mapping
            ``{"rate", "burst", "routes": {route: {"rate", "burst"}}}``, or ready
            ``Throttle`` policies; overrides the ``x-apigw-mw`` extension's ``throttle``.
        storage: the ``limits`` storage URI (or a store) of the throttles, API keys and
            quotas created here.

    Returns:
        A list for ``policies=``: a strict :class:`RouteTable` declaring every operation,
        then gateway responses, CORS, the resource policy (a
        :class:`~apigw_mw.ResourcePolicy`), throttles, authorizers, API keys and the
        request validator, as the definition says. Other policies may be listed beside
        them: the routes they declare do not change which operation's settings apply.

    Example::

        from apigw_mw import GatewayMiddleware, from_openapi

        app = GatewayMiddleware(app, policies=from_openapi(
            "petstore.yaml", authorizers={"test-authorizer": my_lambda_handler}))
    """
    api = _build(
        spec,
        authorizers=authorizers or {},
        api_keys=api_keys,
        stage=stage,
        throttle=throttle,
        storage=storage,
    )
    return api.policies
