"""API Gateway resource policies: who may invoke the API, decided before anything else.

A resource policy is an IAM policy document attached to the API: ``execute-api:Invoke``
statements that allow or deny requests by method ARN and by condition, most often on the
client's address (``aws:SourceIp``). It runs in the first phase after CORS, on the client
address the gateway's ``trusted_proxies`` yields.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigurationError
from ..pipeline import BasePolicy, Decision, GatewaySettings, Phase, Policy
from ..responses import Deny
from ..routes import Stage
from .iam_policy import IamPolicy

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..request import Request

__all__ = ["ResourcePolicy"]

_FIELD = "ResourcePolicy.document"
# Condition keys whose values a request carries; any other key makes decisions depend on
# more than the route and the address, so they are not cached.
_REQUEST_KEYS = frozenset(
    {
        "aws:sourceip",
        "aws:useragent",
        "aws:referer",
        "aws:securetransport",
        "aws:currenttime",
        "aws:epochtime",
    }
)
_CACHE_MAX = 4096


def _is_anyone(principal: Any) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping) and set(principal) == {"AWS"}:
        aws = principal["AWS"]
        return aws == "*" or (isinstance(aws, list) and aws == ["*"])
    return False


def _expand(document: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
    """The document with ``execute-api:/...`` resources written out as ARNs, and the
    statements that name specific principals left out (an anonymous caller never matches
    them)."""
    prefix = f"arn:aws:execute-api:{stage.region}:{stage.account_id}:{stage.api_id}/"
    raw = document.get("Statement")
    if not isinstance(raw, (Mapping, list, tuple)):
        return dict(document)  # IamPolicy reports it
    statements = [raw] if isinstance(raw, Mapping) else list(raw)
    kept: list[Any] = []
    for st in statements:
        if not isinstance(st, Mapping):
            kept.append(st)  # IamPolicy reports it
            continue
        if "NotPrincipal" in st or ("Principal" in st and not _is_anyone(st["Principal"])):
            continue
        st = dict(st)
        for key in ("Resource", "NotResource"):
            value = st.get(key)
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list):
                st[key] = [
                    prefix + r[len("execute-api:/") :]
                    if isinstance(r, str) and r.startswith("execute-api:/")
                    else r
                    for r in value
                ]
        kept.append(st)
    return {**document, "Statement": kept}


def _condition_keys(document: Mapping[str, Any]) -> set[str]:
    keys: set[str] = set()
    raw = document.get("Statement")
    for st in [raw] if isinstance(raw, Mapping) else list(raw or []):
        cond = st.get("Condition") if isinstance(st, Mapping) else None
        if isinstance(cond, Mapping):
            for tests in cond.values():
                if isinstance(tests, Mapping):
                    keys.update(str(k).lower() for k in tests)
    return keys


class ResourcePolicy(BasePolicy):
    """An API Gateway resource policy, evaluated before authorizers.

    Args:
        document: the policy (a mapping or its JSON text): ``execute-api:Invoke``
            statements with ``Allow``/``Deny``, resources as ARNs or the
            ``execute-api:/stage/METHOD/path`` short form, ``*``/``?`` wildcards and
            conditions such as ``IpAddress``/``NotIpAddress`` on ``aws:SourceIp``. An
            explicit ``Deny`` wins; with no ``Allow`` the request is refused.
        routes: route patterns it applies to (default: every request).

    Requests are refused with 403 ``ACCESS_DENIED`` and AWS's message, ``User: anonymous
    is not authorized to perform: execute-api:Invoke on resource: <method ARN>``.
    Statements naming a specific principal never match (the caller is anonymous at this
    phase). Unknown condition keys raise :class:`~apigw_mw.ConfigurationError`.

    Example::

        ResourcePolicy({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke",
                 "Resource": "execute-api:/*"},
                {"Effect": "Deny", "Principal": "*", "Action": "execute-api:Invoke",
                 "Resource": "execute-api:/*",
                 "Condition": {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8"]}}},
            ],
        })
    """

    phase = Phase.RESOURCE_POLICY

    def __init__(
        self, document: Mapping[str, Any] | str, *, routes: Iterable[str] | None = None
    ) -> None:
        super().__init__(routes=routes)
        if isinstance(document, str):
            try:
                document = json.loads(document)
            except ValueError as exc:
                raise ConfigurationError(_FIELD, f"not valid JSON: {exc}") from exc
        if not isinstance(document, Mapping):
            raise ConfigurationError(_FIELD, "a policy document must be an object")
        self.document: Mapping[str, Any] = document
        # Compile once now, so configuration errors surface at construction.
        self._policy = IamPolicy(_expand(document, Stage()), field=_FIELD)
        keys = _condition_keys(document)
        self._cacheable = keys <= {"aws:sourceip"}
        self._uses = keys & _REQUEST_KEYS
        self._stage = Stage()
        self._cache: dict[tuple[str, str, str | None], Deny | None] = {}

    def bind(self, settings: GatewaySettings) -> Policy:
        bound = copy.copy(self)
        bound._stage = settings.stage
        bound._policy = IamPolicy(_expand(self.document, settings.stage), field=_FIELD)
        bound._cache = {}
        return bound

    def flow(self, request: Request, context: RequestContext) -> Decision:
        ip = request.source_ip
        if self._cacheable:
            key = (request.method, request.path, ip)
            cache = self._cache
            try:
                return cache[key]
            except KeyError:
                pass
            decision = self._decide(request, ip)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[key] = decision
            return decision
        return self._decide(request, ip)

    def _decide(self, request: Request, ip: str | None) -> Deny | None:
        stage = self._stage
        path = request.path
        base = stage.base_path
        if base is not None and (path == base or path.startswith(base + "/")):
            path = path[len(base) :] or "/"
        arn = stage.method_arn(request.method, path)
        values: dict[str, Any] = {"aws:sourceip": ip}
        uses = self._uses
        if len(uses) > 1 or "aws:sourceip" not in uses:
            now = time.time()
            values["aws:useragent"] = request.headers.get("user-agent")
            values["aws:referer"] = request.headers.get("referer")
            values["aws:securetransport"] = "true" if request.scheme == "https" else "false"
            values["aws:currenttime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            values["aws:epochtime"] = str(int(now))
        verdict = self._policy.evaluate("execute-api:Invoke", arn, values)
        if verdict == "Allow":
            return None
        suffix = " with an explicit deny" if verdict == "Deny" else ""
        return Deny(
            "ACCESS_DENIED",
            f"User: anonymous is not authorized to perform: execute-api:Invoke on resource: "
            f"{arn}{suffix}",
        )
