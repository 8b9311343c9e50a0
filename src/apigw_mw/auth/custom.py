"""Lambda-style custom authorizers: run your existing Lambda authorizer function in process.

:class:`LambdaAuthorizer` calls ``handler(event, context)`` with the event API Gateway would
send (TOKEN or REQUEST, payload format 1.0 or 2.0), reads the answer the way API Gateway
does (an IAM policy with ``principalId``, ``context`` and ``usageIdentifierKey``, or an HTTP
API simple response) and caches it per identity-source values.

The cached policy is evaluated against each request's own method ARN. Where API Gateway
answers 403 only because the cached policy does not mention the ARN of the current request
(a policy written for the first route a caller hit), the authorizer is called again for that
ARN and its answer cached too; ``reauthorize_unlisted=False`` keeps API Gateway's exact
behaviour.

Identity sources (:class:`IdentitySource`) are written in REST syntax
(``method.request.header.Auth``, ``method.request.querystring.q``, ``stageVariables.v``,
``context.identity.sourceIp``) or HTTP API syntax (``$request.header.Auth``, ...).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ..effects import Call
from ..exceptions import ConfigurationError, EffectTimeout
from ..pipeline import BasePolicy, Decision, Flow, GatewaySettings, Phase, Policy
from ..responses import Allow, Deny
from ..routes import Stage
from .iam_policy import IamPolicy, PolicyError

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["IdentitySource", "LambdaAuthorizer", "LambdaContext", "route_path"]

logger = logging.getLogger("apigw_mw.auth")

_UNAUTHORIZED: Final = Deny("UNAUTHORIZED")
_ACCESS_DENIED: Final = Deny("ACCESS_DENIED")
_CONFIG_ERROR: Final = Deny("AUTHORIZER_CONFIGURATION_ERROR")
_MAX_CACHE: Final = 10_000
_INVOKE: Final = "execute-api:Invoke"

_SOURCE = re.compile(
    r"^(?:method\.request\.(?P<rest>header|querystring)\.(?P<rname>[!#$%&'*+.^_`|~0-9A-Za-z-]+)"
    r"|\$request\.(?P<http>header|querystring)\.(?P<hname>[!#$%&'*+.^_`|~0-9A-Za-z-]+)"
    r"|(?P<sd>\$?)stageVariables\.(?P<stage>[A-Za-z0-9_]+)"
    r"|(?P<cd>\$?)context\.(?P<ctx>[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*))$"
)


def route_path(stage: Stage, path: str) -> str | None:
    """``path`` with the stage's base path removed (``None`` when outside it)."""
    return stage.route_path(path)


@dataclass(frozen=True, slots=True)
class IdentitySource:
    """Where an authorizer finds the caller's identity in a request.

    ``kind`` is ``header``, ``querystring``, ``stage`` or ``context``; ``http_syntax`` tells
    whether it was written as an HTTP API (``$request.header.X``) or a REST
    (``method.request.header.X``) expression.

    >>> IdentitySource.parse("$request.header.Authorization").kind
    'header'
    """

    expression: str
    kind: str
    name: str
    http_syntax: bool
    lower: bytes
    environ_key: str

    @classmethod
    def parse(cls, expression: str, field: str = "identity_sources") -> IdentitySource:
        if not isinstance(expression, str):
            raise ConfigurationError(field, f"{expression!r} is not an identity source")
        m = _SOURCE.match(expression.strip())
        if m is None:
            raise ConfigurationError(
                field,
                f"{expression!r} is not an identity source: use method.request.header.X, "
                "method.request.querystring.X, stageVariables.X, context.X or their "
                "$request.header.X / $stageVariables.X / $context.X forms",
            )
        if m.group("rest"):
            kind, name, http = m.group("rest"), m.group("rname"), False
        elif m.group("http"):
            kind, name, http = m.group("http"), m.group("hname"), True
        elif m.group("stage"):
            kind, name, http = "stage", m.group("stage"), bool(m.group("sd"))
        else:
            kind, name, http = "context", m.group("ctx"), bool(m.group("cd"))
        lower = name.lower()
        environ_key = "HTTP_" + lower.upper().replace("-", "_")
        if lower in ("content-type", "content-length"):
            environ_key = lower.upper().replace("-", "_")
        return cls(expression, kind, name, http, lower.encode("latin-1"), environ_key)

    def get(self, request: Request, ctx: RequestContext) -> str | None:
        """The source's value in this request, or ``None`` when absent or empty."""
        kind = self.kind
        value: Any
        if kind == "header":
            value = _header(request, self.lower, self.environ_key)
        elif kind == "querystring":
            values = request.query.get(self.name)
            value = values[0] if values else None
        elif kind == "stage":
            value = ctx.stage_variables.get(self.name)
        else:
            value = ctx.lookup(self.name.split("."))
            if value is not None and not isinstance(value, str):
                value = str(value)
        return value or None


def _header(request: Request, lower: bytes, environ_key: str) -> str | None:
    """One header, without building the full header mapping on the hot path."""
    raw = request.raw
    if type(raw) is dict and request._headers is None:
        if "REQUEST_METHOD" in raw:  # a WSGI environ
            found = raw.get(environ_key)
            return found if isinstance(found, str) else None
        for name, value in raw.get("headers") or ():
            if name == lower:
                return value.decode("latin-1")  # type: ignore[no-any-return]
        return None
    return request.headers.get(lower.decode("latin-1"))  # type: ignore[no-any-return]


class LambdaContext:
    """The ``context`` argument handed to the authorizer, shaped like AWS Lambda's.

    Attributes: ``aws_request_id``, ``function_name``, ``function_version``,
    ``invoked_function_arn``, ``memory_limit_in_mb``, ``log_group_name``,
    ``log_stream_name``, ``identity``, ``client_context``; method
    :meth:`get_remaining_time_in_millis`.
    """

    __slots__ = (
        "_deadline",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
    )

    def __init__(self, function_name: str, stage: Stage, timeout: float) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:{stage.region}:{stage.account_id}:function:{function_name}"
        )
        self.memory_limit_in_mb = "128"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity: Any = None
        self.client_context: Any = None
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the authorizer's timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _CaseInsensitiveDict(dict[str, Any]):
    """A plain dict (JSON-serialisable) whose lookups ignore case, as REST handlers expect
    ``event["headers"]["Authorization"]`` to work whatever case the client sent."""

    def __getitem__(self, key: str) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            if isinstance(key, str):
                return super().__getitem__(key.lower())
            raise

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (
            isinstance(key, str) and super().__contains__(key.lower())
        )


class _Result:
    """One authorizer answer, cached for ``ttl`` seconds."""

    __slots__ = ("allow", "authorized", "decisions", "expires", "policy", "usage_key")

    def __init__(
        self,
        allow: Allow,
        authorized: bool,
        policy: IamPolicy | None,
        usage_key: str | None,
        expires: float,
    ) -> None:
        self.allow = allow
        self.authorized = authorized
        self.policy = policy
        self.usage_key = usage_key
        self.expires = expires
        self.decisions: dict[str, str] = {}

    def verdict(self, arn: str) -> str:
        """``"allow"``, ``"deny"`` or ``"unlisted"`` (the policy does not mention ``arn``)."""
        policy = self.policy
        if policy is None:
            return "allow" if self.authorized else "deny"
        found = self.decisions.get(arn)
        if found is None:
            effect = policy.evaluate(_INVOKE, arn)
            if effect == "Allow":
                found = "allow"
            elif effect == "Deny" or policy.mentions(arn):
                found = "deny"
            else:
                found = "unlisted"
            if len(self.decisions) < 256:
                self.decisions[arn] = found
        return found


class _Malformed(Exception):
    pass


class LambdaAuthorizer(BasePolicy):
    """API Gateway's Lambda (custom) authorizer, calling your handler in process.

    Args:
        handler: ``handler(event, context)``, plain or ``async``, exactly as deployed to
            Lambda. A plain handler runs in a worker thread under ASGI.
        type: ``"TOKEN"`` (the event carries one header's value) or ``"REQUEST"`` (headers,
            query string, path, stage variables and request context).
        identity_sources: where the identity is. TOKEN: one header (default
            ``method.request.header.Authorization``). REQUEST: any of headers, query
            parameters, stage variables and context values; with caching on every one must
            be present, else 401 without calling the handler.
        ttl: seconds an answer is cached per identity-source values (0 to 3600; 0 is off).
        validation_expression: TOKEN only: a regular expression the whole token must match,
            else 401 without calling the handler.
        payload_format: ``"1.0"`` (REST and HTTP API) or ``"2.0"`` (HTTP API).
        simple_responses: with payload 2.0, the handler answers
            ``{"isAuthorized": bool, "context": {...}}`` instead of an IAM policy.
        timeout: seconds the handler may run; past it the answer is 500.
        routes: the routes this authorizer protects (``None``: every request).
        reauthorize_unlisted: when a cached policy does not mention the current request's
            method ARN, call the handler again for it (``True``) or answer 403 as API Gateway
            does (``False``).
        function_name: the name in the Lambda context (default: the handler's name).

    The app finds ``principalId`` and each ``context`` value (also under ``lambda`` with
    payload 2.0) in ``get_context(request).authorizer``; ``usageIdentifierKey``, an API key,
    goes only to ``context.extra`` for API keys with source ``AUTHORIZER``.

    Answers: the handler raising ``Exception("Unauthorized")`` is 401; an explicit Deny, or
    no Allow for the method ARN, 403 ACCESS_DENIED; any other exception, a timeout or a
    malformed answer, 500 AUTHORIZER_CONFIGURATION_ERROR ``{"message": null}``.

    Example::

        def handler(event, context):   # the function deployed to Lambda today
            if event["authorizationToken"] != "allow-me":
                raise Exception("Unauthorized")
            return {"principalId": "user|a1", "context": {"tier": "gold"},
                    "policyDocument": {"Version": "2012-10-17", "Statement": [{
                        "Action": "execute-api:Invoke", "Effect": "Allow",
                        "Resource": event["methodArn"]}]}}

        app.add_middleware(GatewayMiddleware, policies=[LambdaAuthorizer(handler, ttl=300)])
    """

    phase: ClassVar[Phase] = Phase.AUTHORIZE

    def __init__(
        self,
        handler: Callable[[dict[str, Any], LambdaContext], Any],
        *,
        type: str = "TOKEN",  # API Gateway's own name for it
        identity_sources: Iterable[str] | str | None = None,
        ttl: int = 300,
        validation_expression: str | None = None,
        payload_format: str = "1.0",
        simple_responses: bool = False,
        timeout: float = 10.0,
        routes: Iterable[str] | None = None,
        reauthorize_unlisted: bool = True,
        function_name: str | None = None,
    ) -> None:
        super().__init__(routes=routes)
        if not callable(handler):
            raise ConfigurationError("handler", "must be a callable handler(event, context)")
        self.handler = handler
        kind = type.upper() if isinstance(type, str) else type
        if kind not in ("TOKEN", "REQUEST"):
            raise ConfigurationError("type", f"{type!r} is not 'TOKEN' or 'REQUEST'")
        self.type = kind
        if payload_format not in ("1.0", "2.0"):
            raise ConfigurationError("payload_format", f"{payload_format!r} is not '1.0' or '2.0'")
        if kind == "TOKEN" and payload_format != "1.0":
            raise ConfigurationError("payload_format", "TOKEN authorizers use payload 1.0")
        self.payload_format = payload_format
        if simple_responses and payload_format != "2.0":
            raise ConfigurationError("simple_responses", "needs payload_format='2.0'")
        self.simple_responses = bool(simple_responses)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 3600:
            raise ConfigurationError("ttl", f"{ttl!r} is not a whole number of seconds 0-3600")
        self.ttl = ttl
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError("timeout", f"{timeout!r} is not a positive number")
        self.timeout = float(timeout)
        if identity_sources is None:
            identity_sources = ("method.request.header.Authorization",) if kind == "TOKEN" else ()
        elif isinstance(identity_sources, str):
            identity_sources = [s.strip() for s in identity_sources.split(",") if s.strip()]
        self.identity_sources = tuple(
            IdentitySource.parse(s, f"identity_sources[{i}]")
            for i, s in enumerate(identity_sources)
        )
        if kind == "TOKEN" and (
            len(self.identity_sources) != 1 or self.identity_sources[0].kind != "header"
        ):
            raise ConfigurationError(
                "identity_sources", "a TOKEN authorizer takes exactly one header"
            )
        if kind == "REQUEST" and ttl and not self.identity_sources:
            raise ConfigurationError(
                "identity_sources", "a REQUEST authorizer with caching (ttl > 0) needs one"
            )
        self.validation_expression: re.Pattern[str] | None = None
        if validation_expression is not None:
            if kind != "TOKEN":
                raise ConfigurationError(
                    "validation_expression", "only TOKEN authorizers validate the token"
                )
            try:
                self.validation_expression = re.compile(validation_expression)
            except (re.error, TypeError) as exc:
                raise ConfigurationError(
                    "validation_expression", f"not a regular expression: {exc}"
                ) from exc
        self.reauthorize_unlisted = bool(reauthorize_unlisted)
        self.function_name: str = function_name or str(getattr(handler, "__name__", "authorizer"))
        self._http = any(s.http_syntax for s in self.identity_sources) or payload_format == "2.0"
        self._stage = Stage()
        self._cache: dict[Any, _Result] = {}

    def bind(self, settings: GatewaySettings) -> Policy:
        bound = copy.copy(self)
        bound._stage = settings.stage
        return bound

    # -- the flow --------------------------------------------------------------------------

    def flow(self, request: Request, context: RequestContext) -> Decision | Flow:
        ctx = context
        path = route_path(self._stage, request.path)
        arn = self._stage.method_arn(request.method, request.path if path is None else path)
        values = tuple(s.get(request, ctx) for s in self.identity_sources)
        if self.type == "TOKEN":
            token = values[0]
            if token is None:
                return _UNAUTHORIZED
            pattern = self.validation_expression
            if pattern is not None and pattern.fullmatch(token) is None:
                return _UNAUTHORIZED
        elif self.ttl and None in values:
            return _UNAUTHORIZED
        if not self.ttl:
            return self._invoke(request, ctx, arn, values, None)
        now = time.monotonic()
        cache = self._cache
        cached = cache.get(values)
        if cached is not None:
            if cached.expires <= now:
                cache.pop(values, None)
            else:
                verdict = cached.verdict(arn)
                if verdict == "allow":
                    return self._allow(cached, ctx)
                if verdict == "deny" or not self.reauthorize_unlisted:
                    return _ACCESS_DENIED
                key = (values, arn)
                again = cache.get(key)
                if again is not None and again.expires > now:
                    if again.verdict(arn) == "allow":
                        return self._allow(again, ctx)
                    return _ACCESS_DENIED
                return self._invoke(request, ctx, arn, values, key)
        return self._invoke(request, ctx, arn, values, values)

    @staticmethod
    def _allow(result: _Result, ctx: RequestContext) -> Allow:
        if result.usage_key is not None:
            ctx.extra["usageIdentifierKey"] = result.usage_key
        return result.allow

    def _invoke(
        self,
        request: Request,
        ctx: RequestContext,
        arn: str,
        values: tuple[str | None, ...],
        cache_key: Any,
    ) -> Flow:
        event = self._event(request, ctx, arn, values)
        lambda_context = LambdaContext(self.function_name, self._stage, self.timeout)
        try:
            answer = yield Call(self.handler, event, lambda_context, timeout=self.timeout)
        except EffectTimeout:
            logger.error("authorizer %s timed out after %s s", self.function_name, self.timeout)
            return _CONFIG_ERROR
        except Exception as exc:
            if str(exc) == "Unauthorized":
                return _UNAUTHORIZED
            logger.error("authorizer %s raised", self.function_name, exc_info=exc)
            return _CONFIG_ERROR
        try:
            result = self._result(answer)
        except _Malformed as exc:
            logger.error("authorizer %s answered malformed output: %s", self.function_name, exc)
            return _CONFIG_ERROR
        if cache_key is not None:
            cache = self._cache
            if len(cache) >= _MAX_CACHE:
                for k in list(itertools.islice(cache, _MAX_CACHE // 8)):
                    cache.pop(k, None)
            cache[cache_key] = result
        if result.verdict(arn) == "allow":
            return self._allow(result, ctx)
        return _ACCESS_DENIED

    # -- the event ---------------------------------------------------------------------------

    def _event(
        self,
        request: Request,
        ctx: RequestContext,
        arn: str,
        values: tuple[str | None, ...],
    ) -> dict[str, Any]:
        if self.type == "TOKEN":
            return {"type": "TOKEN", "authorizationToken": values[0], "methodArn": arn}
        headers = request.headers.items_list()
        query: dict[str, list[str]] = {k: list(v) for k, v in request.query.items()}
        path_params = dict(ctx.path_parameters) or None
        stage_vars = dict(ctx.stage_variables) or None
        present = [v for v in values if v is not None]
        if self.payload_format == "2.0":
            joined: dict[str, str] = {}
            cookies: list[str] = []
            for name, value in headers:
                if name == "cookie":
                    cookies.extend(c.strip() for c in value.split(";") if c.strip())
                    continue
                joined[name] = f"{joined[name]},{value}" if name in joined else value
            return {
                "version": "2.0",
                "type": "REQUEST",
                "routeArn": arn,
                "identitySource": present,
                "routeKey": ctx.route_key or "$default",
                "rawPath": request.path,
                "rawQueryString": request.query_string.decode("latin-1"),
                "cookies": cookies or None,
                "headers": joined,
                "queryStringParameters": {k: ",".join(v) for k, v in query.items()} or None,
                "requestContext": ctx.as_dict("2.0"),
                "pathParameters": path_params,
                "stageVariables": stage_vars,
            }
        single = _CaseInsensitiveDict()
        multi = _CaseInsensitiveDict()
        for name, value in headers:
            single[name] = value
            multi.setdefault(name, []).append(value)
        event: dict[str, Any] = {
            "type": "REQUEST",
            "methodArn": arn,
            "resource": ctx.resource_path or request.path,
            "path": request.path,
            "httpMethod": request.method,
            "headers": single,
            "multiValueHeaders": multi,
            "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
            "multiValueQueryStringParameters": query or None,
            "pathParameters": path_params,
            "stageVariables": stage_vars,
            "requestContext": ctx.as_dict("1.0"),
        }
        if self._http:
            event = {
                "version": "1.0",
                **event,
                "identitySource": ",".join(present),
                "authorizationToken": ",".join(present),
            }
        return event

    # -- the answer --------------------------------------------------------------------------

    def _result(self, answer: Any) -> _Result:
        expires = time.monotonic() + self.ttl
        if not isinstance(answer, Mapping):
            raise _Malformed(f"expected an object, got {type(answer).__name__}")
        if self.simple_responses:
            authorized = answer.get("isAuthorized")
            if not isinstance(authorized, bool):
                raise _Malformed("isAuthorized must be true or false")
            context = self._context(answer.get("context"), nested_ok=True)
            allow = Allow(authorizer={**context, "lambda": context})
            return _Result(allow, authorized, None, None, expires)
        principal = answer.get("principalId")
        if isinstance(principal, bool) or not isinstance(principal, (str, int, float)):
            raise _Malformed("principalId must be a string")
        document = answer.get("policyDocument")
        if isinstance(document, str):
            try:
                document = json.loads(document)
            except ValueError as exc:
                raise _Malformed("policyDocument is not valid JSON") from exc
        if not isinstance(document, Mapping):
            raise _Malformed("policyDocument must be an object")
        try:
            policy = IamPolicy(document, field="policyDocument")
        except PolicyError as exc:
            raise _Malformed(str(exc)) from exc
        context = self._context(answer.get("context"), nested_ok=self.payload_format == "2.0")
        usage_key = answer.get("usageIdentifierKey")
        if usage_key is not None and not isinstance(usage_key, str):
            raise _Malformed("usageIdentifierKey must be a string")
        out: dict[str, Any] = {**context, "principalId": str(principal)}
        if self.payload_format == "2.0":
            out["lambda"] = context
        # usageIdentifierKey is an API key: it goes to the API-key check (context.extra),
        # never to the app's authorizer map, nor from there to logs, as API Gateway keeps it.
        return _Result(Allow(authorizer=out), False, policy, usage_key, expires)

    @staticmethod
    def _context(value: Any, *, nested_ok: bool) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _Malformed("context must be an object")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Malformed("context keys must be strings")
            if not nested_ok and not (item is None or isinstance(item, (str, int, float, bool))):
                raise _Malformed(
                    f"context[{key!r}] must be a string, number or boolean "
                    f"(not {type(item).__name__})"
                )
            out[key] = item
        return out
