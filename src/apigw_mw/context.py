"""The request context: what the gateway learned about a request, for the app and the logs.

Shaped like API Gateway's ``$context`` / ``requestContext``: the app reads it with
:func:`get_context`, access-log formats and response templates read it as ``$context.*``.
"""

from __future__ import annotations

import itertools
import os
import time
from base64 import b64encode
from collections.abc import Callable, Iterator, Mapping
from time import perf_counter as _perf_counter
from time import time as _time
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from .responses import json_string

__all__ = ["ErrorInfo", "Identity", "RequestContext", "get_context"]

_T = TypeVar("_T")
_C = TypeVar("_C", bound="RequestContext")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Request ids are UUID-4 shaped: a random per-process prefix and a counter that starts at a
# random offset. That costs a fraction of uuid4() and stays unique across processes with the
# prefix's 62 random bits. The counter's last three hex digits come from a table, so most ids
# cost one string concatenation inside a generator.
_rand = os.urandom(16).hex()
_VARIANT = "89ab"[int(_rand[15], 16) % 4]
_PREFIX = f"{_rand[:8]}-{_rand[8:12]}-4{_rand[12:15]}-{_VARIANT}{_rand[16:19]}-"
_TAILS = tuple(f"{i:03x}" for i in range(4096))


def _ids(high: int) -> Iterator[str]:
    while True:
        head = f"{_PREFIX}{high & 0xFFFFFFFFF:09x}"
        high += 1
        for tail in _TAILS:
            yield head + tail


_next_id = _ids(int(_rand[19:28], 16)).__next__
# Ids for a thread that finds the generator busy in another thread: another random prefix.
_rand2 = os.urandom(16).hex()
_PREFIX2 = f"{_rand2[:8]}-{_rand2[8:12]}-4{_rand2[12:15]}-{_VARIANT}{_rand2[16:19]}-"
_counter = itertools.count(int(_rand2[19:31], 16))


# Extended ids look like API Gateway's ("K8QKmGxJIAMEbGQ="): 14 base64 characters and "=",
# here a random per-process prefix followed by a counter.
_EXT_PREFIX = b64encode(os.urandom(6)).decode()[:6]
_ext_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_extended_id() -> str:
    """A fresh extended request id (``x-amz-apigw-id``)."""
    return f"{_EXT_PREFIX}{next(_ext_counter) & 0xFFFFFFFF:08x}="


def new_request_id() -> str:
    """A fresh request id (UUID-4 shaped), safe to call from any thread."""
    try:
        return _next_id()
    except ValueError:  # "generator already executing": another thread is inside it
        return f"{_PREFIX2}{next(_counter) & 0xFFFFFFFFFFFF:012x}"


class _once(Generic[_T]):
    """A lazily computed attribute, stored on the instance on first read.

    ``functools.cached_property`` takes a lock on every first read before Python 3.12;
    a request context is read from one task or thread at a time, so it needs none.
    """

    __slots__ = ("func", "name")

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func = func
        self.name = func.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _once[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> _T: ...

    def __get__(self, obj: object | None, owner: type) -> _once[_T] | _T:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.func(obj)
        return value


class Identity:
    """Who the caller is, as far as the gateway knows (``$context.identity``).

    Attributes: ``source_ip``, ``user_agent``, ``api_key`` (the key the caller presented,
    for the app only: access logs, gateway-response templates and ``as_dict()`` never show
    it), ``api_key_id``, ``client_cert`` (a mapping), ``access_key``, ``caller``, ``user``,
    ``user_arn``, ``principal_org_id``.
    """

    # Defaults on the class: a request's identity writes only what a policy learns.
    api_key: str | None = None
    api_key_id: str | None = None
    client_cert: Mapping[str, Any] | None = None
    access_key: str | None = None
    account_id: str | None = None
    caller: str | None = None
    user: str | None = None
    user_arn: str | None = None
    principal_org_id: str | None = None
    cognito_identity_id: str | None = None
    _request: Any = None

    _FIELDS = (
        ("source_ip", "sourceIp"),
        ("user_agent", "userAgent"),
        ("api_key", "apiKey"),
        ("api_key_id", "apiKeyId"),
        ("access_key", "accessKey"),
        ("account_id", "accountId"),
        ("caller", "caller"),
        ("user", "user"),
        ("user_arn", "userArn"),
        ("principal_org_id", "principalOrgId"),
        ("cognito_identity_id", "cognitoIdentityId"),
        ("client_cert", "clientCert"),
    )

    def __init__(self, source_ip: Any, user_agent: Any) -> None:
        # Either may be a callable: resolved on first read, as most requests never ask.
        self._source_ip = source_ip
        self._user_agent = user_agent

    @classmethod
    def _of(cls, request: Any) -> Identity:
        """The identity of ``request``: address and user agent read from it when asked."""
        self = cls.__new__(cls)
        self._request = request
        return self

    @property
    def source_ip(self) -> str | None:
        """The client address (through trusted proxies' ``X-Forwarded-For``)."""
        try:
            ip = self._source_ip
        except AttributeError:
            ip = self._source_ip = self._request.source_ip
        if callable(ip):
            ip = self._source_ip = ip()
        return ip  # type: ignore[no-any-return]

    @source_ip.setter
    def source_ip(self, value: str | None) -> None:
        self._source_ip = value

    @property
    def user_agent(self) -> str | None:
        try:
            ua = self._user_agent
        except AttributeError:
            ua = self._user_agent = self._request.header("user-agent")
        if callable(ua):
            ua = self._user_agent = ua()
        return ua  # type: ignore[no-any-return]

    @user_agent.setter
    def user_agent(self, value: str | None) -> None:
        self._user_agent = value

    def as_dict(self) -> dict[str, Any]:
        return {camel: getattr(self, attr) for attr, camel in self._FIELDS}

    def __repr__(self) -> str:
        return f"Identity(source_ip={self.source_ip!r}, api_key_id={self.api_key_id!r})"


class ErrorInfo:
    """``$context.error``: set when the gateway answered with a gateway response."""

    __slots__ = ("message", "response_type", "status", "validation_error_string")

    def __init__(
        self,
        response_type: str,
        message: str | None,
        status: int,
        validation_error_string: str | None = None,
    ) -> None:
        self.response_type = response_type
        self.message = message
        self.status = status
        self.validation_error_string = validation_error_string

    @property
    def message_string(self) -> str:
        """The message as a JSON string literal, quotes included (``null`` when ``None``)."""
        return json_string(self.message)

    def __repr__(self) -> str:
        return f"ErrorInfo({self.response_type!r}, {self.message!r})"


class RequestContext:
    """What the gateway knows about one request; read it with :func:`get_context`.

    Example (FastAPI)::

        @app.get("/pets")
        def pets(request: Request):
            ctx = get_context(request)
            return {"caller": ctx.identity.api_key_id, "stage": ctx.stage,
                    "color": ctx.stage_variables.get("color")}
    """

    # Defaults live on the class so that building a context per request costs only the
    # handful of attributes every request has; the rest are set when a policy learns them.
    route_key: str | None = None
    resource_path: str | None = None
    path_parameters: Mapping[str, str] = MappingProxyType({})
    error: ErrorInfo | None = None
    status: int | None = None
    response_length: int | None = None
    integration_latency: int | None = None
    domain_name: str | None = None
    #: The API owner's account id (the stage's ``account_id``), as ``requestContext.accountId``.
    account_id: str | None = None
    #: When an observer sets a list here in ``on_request``, the pipeline appends
    #: ``(policy, start_ns, end_ns, decision)`` for each policy it runs.
    policy_trace: list[tuple[Any, int, int, Any]] | None = None
    _extended_id: str | None = None
    # ``extra``, while an observer records traffic decisions (``traffic.bucket.WATCHED``).
    _apigw_watched: dict[str, Any] | None = None

    def __init__(
        self,
        *,
        request_id: str,
        http_method: str,
        path: str,
        protocol: str,
        stage: str,
        stage_variables: Mapping[str, str],
        api_id: str,
        identity: Identity | None = None,
        request: Any = None,
        domain_name: str | None = None,
        account_id: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.start = time.perf_counter()
        self.request_time_epoch = int(time.time() * 1000)
        self.http_method = http_method
        self.path = path
        self.protocol = protocol
        self.stage = stage
        self.stage_variables = stage_variables
        self.api_id = api_id
        if domain_name is not None:
            self.domain_name = domain_name
        if account_id is not None:
            self.account_id = account_id
        if identity is not None:
            self.identity = identity
        self._request = request

    @classmethod
    def _new(
        cls: type[_C],
        request_id: str,
        http_method: str,
        path: str,
        protocol: str,
        stage: Any,
        request: Any,
    ) -> _C:
        """The adapters' constructor: the fewest attribute writes a request needs.

        ``request`` is the :class:`~apigw_mw.Request` or a callable that builds it. On a
        class made by :meth:`_for_stage`, ``stage`` may be ``None``: the class carries it.
        """
        self = cls.__new__(cls)
        self.request_id = request_id
        self.start = _perf_counter()
        self.http_method = http_method
        self.path = path
        self.protocol = protocol
        if stage is not None:
            self.stage = stage.name
            self.stage_variables = stage.variables
            self.api_id = stage.api_id
            self.account_id = stage.account_id
        self._request = request
        return self

    @classmethod
    def _for_stage(cls: type[_C], stage: Any) -> type[_C]:
        """A subclass carrying ``stage``'s fields as class attributes, so that a request
        writes none of them."""
        fields = {
            "stage": stage.name,
            "stage_variables": stage.variables,
            "api_id": stage.api_id,
            "account_id": stage.account_id,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        return type(cls.__name__, (cls,), fields)

    @_once
    def request_time_epoch(self) -> int:
        """When the request arrived, in milliseconds since the epoch."""
        return int((_time() - (_perf_counter() - self.start)) * 1000)

    def _req(self) -> Any:
        """The request view, built on first use when the adapter deferred it."""
        request = self._request
        if request is not None and not hasattr(request, "method"):
            request = self._request = request()
        return request

    @_once
    def identity(self) -> Identity:
        """``$context.identity``: source IP, user agent, API key id, client certificate..."""
        request = self._req()
        if request is None:
            return Identity(None, None)
        return Identity._of(request)

    @_once
    def authorizer(self) -> dict[str, Any]:
        """``$context.authorizer``: what the authorizers returned (claims, principal id...)."""
        return {}

    @_once
    def extra(self) -> dict[str, Any]:
        """Free-form values policies share with each other and with log formats."""
        return {}

    @property
    def extended_request_id(self) -> str:
        """API Gateway's ``extendedRequestId`` (also sent as ``x-amz-apigw-id``)."""
        ext = self._extended_id
        if ext is None:
            ext = self._extended_id = new_extended_id()
        return ext

    @property
    def request_time(self) -> str:
        """``dd/MMM/yyyy:HH:mm:ss +0000``, as ``$context.requestTime``."""
        t = time.gmtime(self.request_time_epoch / 1000)
        return (
            f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
        )

    def set_error(
        self,
        response_type: str,
        message: str | None,
        status: int,
        validation_error: str | None = None,
    ) -> None:
        self.error = ErrorInfo(response_type, message, status, validation_error)

    # -- $context.* lookup, shared by response templates and access logs -------------------

    def lookup(self, path: tuple[str, ...] | list[str]) -> Any:
        """The value of ``$context.<path>`` (``("identity", "sourceIp")``), or ``None``."""
        if not path:
            return None
        head = path[0]
        rest = path[1:]
        if head == "error":
            err = self.error
            if not rest:
                return None
            key = rest[0]
            if key == "messageString":
                return err.message_string if err else '""'
            if err is None:
                return None
            return {
                "message": err.message,
                "responseType": err.response_type,
                "validationErrorString": err.validation_error_string,
                "status": err.status,
            }.get(key)
        if head == "identity":
            if not rest:
                return None
            for attr, camel in Identity._FIELDS:
                if camel == rest[0]:
                    value = getattr(self.identity, attr)
                    if attr == "api_key":
                        return None  # never expose the key value in logs or templates
                    return _dig(value, rest[1:])
            return None
        if head == "authorizer":
            if not rest or rest[0] == "usageIdentifierKey":
                return None  # an API key: never in logs or response templates
            return _dig(self.authorizer, rest)
        simple = _SIMPLE.get(head)
        if simple is not None and not rest:
            return simple(self)
        return None

    def as_dict(self, version: str = "1.0") -> dict[str, Any]:
        """API Gateway's ``requestContext`` for Lambda proxy payloads (camelCase keys).

        ``version="1.0"`` gives the REST API shape, ``"2.0"`` the HTTP API shape.

        >>> ctx.as_dict("2.0")["http"]["method"]  # doctest: +SKIP
        'GET'
        """
        identity = self.identity.as_dict()
        identity.pop("apiKey", None)
        if version == "2.0":
            out: dict[str, Any] = {
                "accountId": self.account_id or "anonymous",
                "apiId": self.api_id,
                "domainName": self.domain_name,
                "domainPrefix": (self.domain_name or "").split(".")[0] or None,
                "http": {
                    "method": self.http_method,
                    "path": self.path,
                    "protocol": self.protocol,
                    "sourceIp": self.identity.source_ip,
                    "userAgent": self.identity.user_agent,
                },
                "requestId": self.request_id,
                "routeKey": self.route_key or "$default",
                "stage": self.stage,
                "time": self.request_time,
                "timeEpoch": self.request_time_epoch,
            }
            if self.authorizer:
                out["authorizer"] = dict(self.authorizer)
            if self.identity.client_cert:
                out["authentication"] = {"clientCert": dict(self.identity.client_cert)}
            return out
        if version != "1.0":
            raise ValueError("version must be '1.0' or '2.0'")
        out = {
            "accountId": self.account_id or "anonymous",
            "apiId": self.api_id,
            "domainName": self.domain_name,
            "extendedRequestId": self.extended_request_id,
            "httpMethod": self.http_method,
            "identity": identity,
            "path": self.path,
            "protocol": self.protocol,
            "requestId": self.request_id,
            "requestTime": self.request_time,
            "requestTimeEpoch": self.request_time_epoch,
            "resourceId": None,
            "resourcePath": self.resource_path,
            "stage": self.stage,
        }
        if self.authorizer:
            out["authorizer"] = dict(self.authorizer)
        return out

    def __repr__(self) -> str:
        return f"<RequestContext {self.request_id} {self.http_method} {self.path}>"


def _dig(value: Any, rest: tuple[str, ...] | list[str]) -> Any:
    for key in rest:
        if isinstance(value, Mapping):
            value = value.get(key)
        else:
            return None
    return value


_SIMPLE: dict[str, Any] = {
    "requestId": lambda c: c.request_id,
    "extendedRequestId": lambda c: c.extended_request_id,
    "apiId": lambda c: c.api_id,
    "accountId": lambda c: c.account_id,
    "domainName": lambda c: c.domain_name,
    "httpMethod": lambda c: c.http_method,
    "path": lambda c: c.path,
    "protocol": lambda c: c.protocol,
    "resourcePath": lambda c: c.resource_path,
    "routeKey": lambda c: c.route_key,
    "stage": lambda c: c.stage,
    "requestTime": lambda c: c.request_time,
    "requestTimeEpoch": lambda c: c.request_time_epoch,
    "status": lambda c: c.status,
    "responseLength": lambda c: c.response_length,
    "integrationLatency": lambda c: c.integration_latency,
    "responseLatency": lambda c: int((time.perf_counter() - c.start) * 1000),
    "xrayTraceId": lambda c: c.extra.get("xrayTraceId"),
}


def get_context(obj: Any) -> RequestContext:
    """The gateway's context for a request.

    Accepts a Starlette/FastAPI/Litestar ``Request``, a Flask/Werkzeug/Django request, an ASGI
    scope or a WSGI environ. Raises ``LookupError`` when the request did not pass through a
    gateway middleware.

    Example (Flask)::

        @app.get("/pets")
        def pets():
            ctx = get_context(request)
            return {"requestId": ctx.request_id, "apiKeyId": ctx.identity.api_key_id}
    """
    if isinstance(obj, dict):
        found = obj.get("apigw.context")
        if isinstance(found, RequestContext):
            return found
        raise LookupError("no apigw-mw context: is the gateway middleware installed?")
    for attr in ("scope", "environ", "META"):
        carrier = getattr(obj, attr, None)
        if isinstance(carrier, dict):
            found = carrier.get("apigw.context")
            if isinstance(found, RequestContext):
                return found
    raise LookupError(f"no apigw-mw context on {type(obj).__name__}: is the middleware installed?")
