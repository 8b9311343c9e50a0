"""CORS, with API Gateway HTTP API semantics."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .exceptions import ConfigurationError
from .pipeline import BasePolicy, Decision, Phase, ResponseHead
from .responses import Respond

if TYPE_CHECKING:
    from .context import RequestContext
    from .request import Request

__all__ = ["Cors"]

_ORIGIN = re.compile(r"^(\*|https?://(\*\.)?[A-Za-z0-9.\-]+(:\d+)?|null)$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CORS_PREFIX = b"access-control-"


class Cors(BasePolicy):
    """Cross-origin resource sharing as API Gateway's HTTP API does it.

    The gateway answers preflight requests (``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``) itself with 204, before any authorizer runs, and adds
    CORS headers to every response to an allowed origin, gateway error responses included.
    The app's own ``Access-Control-*`` headers are replaced by the gateway's.

    Args:
        allow_origins: allowed origins: exact (``https://app.example.com``), ``*``, or a
            subdomain wildcard (``https://*.example.com``).
        allow_methods: methods a preflight may ask for (``*`` for any); empty: the preflight
            answer names no methods and the browser allows only simple ones.
        allow_headers: request headers a preflight may ask for (``*`` for any).
        expose_headers: response headers the browser may read.
        max_age: seconds a browser may cache the preflight answer.
        allow_credentials: allow cookies and credentials; not allowed with origin ``*``.
        routes: route patterns it applies to (default: every request); the preflights of
            those routes (``OPTIONS`` on the same paths) are covered too.

    Example::

        Cors(allow_origins=["https://app.example.com"], allow_methods=["GET", "POST"],
             allow_headers=["authorization", "content-type"], max_age=600)
    """

    phase = Phase.CORS
    flow_methods = frozenset({"OPTIONS"})  # the flow answers preflights only

    def __init__(
        self,
        allow_origins: Iterable[str] = (),
        allow_methods: Iterable[str] = (),
        allow_headers: Iterable[str] = (),
        expose_headers: Iterable[str] = (),
        max_age: int | None = None,
        allow_credentials: bool = False,
        *,
        routes: Iterable[str] | None = None,
    ) -> None:
        super().__init__(routes=routes)
        if self.routes is not None:
            # A preflight is an OPTIONS request to the route's path, whatever method the
            # route names: cover it too.
            extra = []
            for route in self.routes:
                method, _, path = route.strip().partition(" ")
                if path and method.upper() not in ("ANY", "OPTIONS"):
                    extra.append(f"OPTIONS {path.strip()}")
            self.routes = tuple(dict.fromkeys((*self.routes, *extra)))
        origins = _strings(allow_origins, "Cors.allow_origins")
        for o in origins:
            if not _ORIGIN.match(o):
                raise ConfigurationError(
                    "Cors.allow_origins", f"{o!r} is not an origin such as https://example.com"
                )
        methods = [m.upper() for m in _strings(allow_methods, "Cors.allow_methods")]
        for m in methods:
            if m != "*" and not _TOKEN.match(m):
                raise ConfigurationError("Cors.allow_methods", f"{m!r} is not a method")
        headers = [h.lower() for h in _strings(allow_headers, "Cors.allow_headers")]
        expose = _strings(expose_headers, "Cors.expose_headers")
        for field_name, names in (("Cors.allow_headers", headers), ("Cors.expose_headers", expose)):
            for h in names:
                if h != "*" and not _TOKEN.match(h):
                    raise ConfigurationError(field_name, f"{h!r} is not a header name")
        if max_age is not None and (
            not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0
        ):
            raise ConfigurationError("Cors.max_age", "must be a non-negative number of seconds")
        if allow_credentials and "*" in origins:
            raise ConfigurationError(
                "Cors.allow_credentials", "cannot be combined with allow_origins=['*']"
            )
        self.allow_origins = tuple(origins)
        self.allow_methods = tuple(methods)
        self.allow_headers = tuple(headers)
        self.expose_headers = tuple(expose)
        self.max_age = max_age
        self.allow_credentials = bool(allow_credentials)

        self._any_origin = "*" in origins
        self._exact = frozenset(o.lower() for o in origins if "*" not in o)
        self._wildcards = tuple(
            re.compile(
                "^"
                + re.escape(o.lower()).replace(r"\*\.", r"[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.")
                + "$"
            )
            for o in origins
            if o != "*" and "*" in o
        )
        self._answers: dict[str, bytes] = {}
        self._any_method = "*" in methods
        self._methods = frozenset(methods)
        self._any_header = "*" in headers
        self._headers = frozenset(headers)
        # The answer depends on the origin unless it is a bare '*' without credentials.
        self._vary = not (self._any_origin and not allow_credentials)
        common: list[tuple[bytes, bytes]] = []
        if allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self._simple_extra = [*common]
        if expose:
            self._simple_extra.append(
                (b"access-control-expose-headers", ", ".join(expose).encode("latin-1"))
            )
        self._preflight_extra = [*common]
        if methods:
            self._preflight_extra.append(
                (b"access-control-allow-methods", ", ".join(methods).encode("latin-1"))
            )
        if headers:
            self._preflight_extra.append(
                (b"access-control-allow-headers", ", ".join(headers).encode("latin-1"))
            )
        if max_age is not None:
            self._preflight_extra.append((b"access-control-max-age", str(max_age).encode()))

    def origin_allowed(self, origin: str) -> bool:
        """Whether a request from ``origin`` gets CORS headers."""
        if self._any_origin:
            return True
        low = origin.lower()
        if low in self._exact:
            return True
        return any(w.match(low) for w in self._wildcards)

    def _allow_origin_value(self, origin: str) -> bytes:
        if self._any_origin and not self.allow_credentials:
            return b"*"
        return origin.encode("latin-1")

    def flow(self, request: Request, context: RequestContext) -> Decision:
        if request.method != "OPTIONS":
            return None
        origin = request.header("origin")
        wanted = request.header("access-control-request-method")
        if origin is None or wanted is None:
            return None  # a plain OPTIONS request: the app answers it
        out: list[tuple[bytes, bytes]] = []
        if self._vary:
            out.append((b"vary", b"Origin"))
        if self.origin_allowed(origin) and self._preflight_ok(
            wanted, request.header("access-control-request-headers") or ""
        ):
            out.append((b"access-control-allow-origin", self._allow_origin_value(origin)))
            out.extend(self._preflight_extra)
        return Respond(204, out)

    def _preflight_ok(self, method: str, requested: str) -> bool:
        if self._methods and not self._any_method and method.strip().upper() not in self._methods:
            return False
        if requested.strip() and self._headers and not self._any_header:
            for h in requested.split(","):
                name = h.strip().lower()
                if name and name not in self._headers:
                    return False
        return True

    def on_response(self, request: Request, context: RequestContext, head: ResponseHead) -> None:
        if head.from_gateway and head.status == 204 and _is_preflight(request):
            # The preflight answer made in ``flow``: complete, or refused on purpose without
            # CORS headers (a disallowed origin, method or header).
            return
        headers = head.headers
        for k, _ in headers:
            if k.startswith(_CORS_PREFIX):  # the app's own CORS headers: replaced
                headers = head.headers = [
                    (k, v) for k, v in headers if not k.startswith(_CORS_PREFIX)
                ]
                break
        origin = request.header("origin")
        if origin is None:
            return
        allow = self._answers.get(origin)
        if allow is None:
            allow = self._answer_for(origin)
        if allow:
            headers.append((b"access-control-allow-origin", allow))
            headers.extend(self._simple_extra)
        if self._vary:
            _add_vary(headers)

    def _answer_for(self, origin: str) -> bytes:
        """``Access-Control-Allow-Origin`` for ``origin`` (empty: not allowed), remembered
        for the next requests from it (up to 256 origins)."""
        allow = self._allow_origin_value(origin) if self.origin_allowed(origin) else b""
        if len(self._answers) < 256:
            self._answers[origin] = allow
        return allow


def _is_preflight(request: Request) -> bool:
    return (
        request.method == "OPTIONS"
        and request.header("origin") is not None
        and request.header("access-control-request-method") is not None
    )


def _add_vary(headers: list[tuple[bytes, bytes]]) -> None:
    for i, (k, v) in enumerate(headers):
        if k == b"vary":
            tokens = [t.strip().lower() for t in v.split(b",")]
            if b"origin" not in tokens and b"*" not in tokens:
                headers[i] = (k, v + b", Origin")
            return
    headers.append((b"vary", b"Origin"))


def _strings(values: Iterable[str], field: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ConfigurationError(field, f"{v!r} is not a non-empty string")
        out.append(v.strip())
    return out
