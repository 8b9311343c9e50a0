"""IAM policy documents, compiled once and evaluated per request.

Shared by custom (Lambda-style) authorizers, IAM (SigV4) authorization and resource
policies. Evaluation follows IAM's rules for what API Gateway uses: an explicit ``Deny``
wins, then an ``Allow``, else the request is implicitly denied; ``*`` and ``?`` wildcards in
actions (case-insensitive) and resources (case-sensitive); ``NotAction``/``NotResource``;
conditions on the request context (``IpAddress``/``NotIpAddress`` on ``aws:SourceIp``,
string and boolean operators).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..exceptions import ConfigurationError

__all__ = ["IamPolicy", "PolicyError"]

Effect = Literal["Allow", "Deny"]

KNOWN_CONDITION_KEYS = frozenset(
    k.lower()
    for k in (
        "aws:SourceIp",
        "aws:SourceVpc",
        "aws:SourceVpce",
        "aws:VpcSourceIp",
        "aws:PrincipalArn",
        "aws:PrincipalAccount",
        "aws:PrincipalOrgID",
        "aws:PrincipalType",
        "aws:userid",
        "aws:username",
        "aws:UserAgent",
        "aws:Referer",
        "aws:SecureTransport",
        "aws:CurrentTime",
        "aws:EpochTime",
        "aws:RequestedRegion",
        "aws:MultiFactorAuthPresent",
    )
)


class PolicyError(ConfigurationError):
    """An IAM policy document is malformed (raised by :class:`IamPolicy`)."""


def _as_list(value: Any, field: str) -> list[Any]:
    if isinstance(value, (str, dict)):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise PolicyError(field, f"expected a string or a list, got {type(value).__name__}")


def _wildcard(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{regex}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _networks(values: list[Any], field: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(str(v).strip(), strict=False))
        except ValueError as exc:
            raise PolicyError(field, f"{v!r} is not an IP address or CIDR range") from exc
    return out


def _ip_in(value: Any, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in nets)


Test = Callable[[Mapping[str, Any]], bool]


def _condition(op: str, key: str, values: list[Any], field: str) -> Test:
    """Compile one ``{op: {key: values}}`` test."""
    base = op[:-8] if op.endswith("IfExists") else op
    if_exists = base != op
    negated = base.startswith("Not") or base in (
        "StringNotEquals",
        "StringNotLike",
        "StringNotEqualsIgnoreCase",
        "NotIpAddress",
    )
    lkey = key.lower()
    if lkey not in KNOWN_CONDITION_KEYS and not lkey.startswith(("aws:", "execute-api:")):
        raise PolicyError(field, f"unknown condition key {key!r}")
    if lkey.startswith("aws:") and lkey not in KNOWN_CONDITION_KEYS:
        raise PolicyError(field, f"unknown condition key {key!r}")
    strs = [str(v) for v in values]
    match: Callable[[Any], bool]
    if base in ("IpAddress", "NotIpAddress"):
        nets = _networks(values, field)
        match = lambda v: _ip_in(v, nets)  # noqa: E731
    elif base in ("StringEquals", "StringNotEquals"):
        allowed = set(strs)
        match = lambda v: str(v) in allowed  # noqa: E731
    elif base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        lowered = {s.lower() for s in strs}
        match = lambda v: str(v).lower() in lowered  # noqa: E731
    elif base in ("StringLike", "StringNotLike"):
        pats = [_wildcard(s, ignore_case=False) for s in strs]
        match = lambda v: any(p.match(str(v)) for p in pats)  # noqa: E731
    elif base == "Bool":
        wanted = {s.lower() for s in strs}
        match = lambda v: str(v).lower() in wanted  # noqa: E731
    elif base == "Null":
        want_null = {s.lower() for s in strs} == {"true"}
        return lambda ctx: (ctx.get(key) is None) == want_null
    else:
        raise PolicyError(field, f"unsupported condition operator {op!r}")

    def test(ctx: Mapping[str, Any]) -> bool:
        value = ctx.get(key)
        if value is None:
            value = ctx.get(lkey)
        if value is None:
            return if_exists or negated
        values_ = value if isinstance(value, (list, tuple, set)) else [value]
        hit = any(match(v) for v in values_)
        return not hit if negated else hit

    return test


@dataclass(frozen=True, slots=True)
class _Statement:
    effect: Effect
    actions: tuple[re.Pattern[str], ...]
    not_action: bool
    resources: tuple[re.Pattern[str], ...]
    not_resource: bool
    conditions: tuple[Test, ...]

    def applies(self, action: str, resource: str, ctx: Mapping[str, Any]) -> bool:
        hit = any(p.match(action) for p in self.actions)
        if hit == self.not_action:
            return False
        hit = any(p.match(resource) for p in self.resources)
        if hit == self.not_resource:
            return False
        return all(test(ctx) for test in self.conditions)


class IamPolicy:
    """A compiled IAM policy document.

    Args:
        document: the policy as a mapping (or a JSON string): ``Version`` and ``Statement``
            (one statement or a list).
        field: the option name used in :class:`ConfigurationError` messages.

    Example::

        policy = IamPolicy({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke",
                           "Resource": "arn:aws:execute-api:*:*:*/prod/GET/pets/*"}],
        })
        policy.evaluate("execute-api:Invoke", "arn:aws:execute-api:us-east-1:1:a/prod/GET/pets/1")
        # -> "Allow"
    """

    __slots__ = ("document", "statements")

    def __init__(self, document: Mapping[str, Any] | str, *, field: str = "policy") -> None:
        if isinstance(document, str):
            import json

            try:
                document = json.loads(document)
            except ValueError as exc:
                raise PolicyError(field, f"not valid JSON: {exc}") from exc
        if not isinstance(document, Mapping):
            raise PolicyError(field, "a policy document must be an object")
        self.document = document
        raw = document.get("Statement")
        if raw is None:
            raise PolicyError(field, "a policy document needs a Statement")
        statements = []
        for i, st in enumerate(_as_list(raw, f"{field}.Statement")):
            statements.append(self._statement(st, f"{field}.Statement[{i}]"))
        self.statements: tuple[_Statement, ...] = tuple(statements)

    @staticmethod
    def _statement(st: Any, field: str) -> _Statement:
        if not isinstance(st, Mapping):
            raise PolicyError(field, "a statement must be an object")
        effect = st.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"{field}.Effect", f"must be 'Allow' or 'Deny', not {effect!r}")
        if ("Action" in st) == ("NotAction" in st):
            raise PolicyError(field, "needs exactly one of Action and NotAction")
        if ("Resource" in st) == ("NotResource" in st):
            raise PolicyError(field, "needs exactly one of Resource and NotResource")
        akey = "Action" if "Action" in st else "NotAction"
        rkey = "Resource" if "Resource" in st else "NotResource"
        actions = []
        for a in _as_list(st[akey], f"{field}.{akey}"):
            if not isinstance(a, str):
                raise PolicyError(f"{field}.{akey}", f"{a!r} is not a string")
            actions.append(_wildcard(a, ignore_case=True))
        resources = []
        for r in _as_list(st[rkey], f"{field}.{rkey}"):
            if not isinstance(r, str):
                raise PolicyError(f"{field}.{rkey}", f"{r!r} is not a string")
            resources.append(_wildcard(r, ignore_case=False))
        conditions: list[Test] = []
        cond = st.get("Condition") or {}
        if not isinstance(cond, Mapping):
            raise PolicyError(f"{field}.Condition", "must be an object")
        for op, tests in cond.items():
            if not isinstance(tests, Mapping):
                raise PolicyError(f"{field}.Condition.{op}", "must map keys to values")
            for key, values in tests.items():
                conditions.append(
                    _condition(
                        str(op),
                        str(key),
                        _as_list(values, f"{field}.Condition.{op}.{key}"),
                        f"{field}.Condition.{op}.{key}",
                    )
                )
        return _Statement(
            effect,
            tuple(actions),
            akey == "NotAction",
            tuple(resources),
            rkey == "NotResource",
            tuple(conditions),
        )

    def evaluate(
        self, action: str, resource: str, context: Mapping[str, Any] | None = None
    ) -> Effect | None:
        """``"Deny"`` if a statement explicitly denies, else ``"Allow"`` if one allows,
        else ``None`` (an implicit deny)."""
        ctx = context or {}
        allowed = False
        for st in self.statements:
            if st.applies(action, resource, ctx):
                if st.effect == "Deny":
                    return "Deny"
                allowed = True
        return "Allow" if allowed else None

    def allows(self, action: str, resource: str, context: Mapping[str, Any] | None = None) -> bool:
        """Whether the policy allows ``action`` on ``resource`` (no explicit deny)."""
        return self.evaluate(action, resource, context) == "Allow"

    def mentions(self, resource: str, action: str = "execute-api:Invoke") -> bool:
        """Whether any statement's resource patterns cover ``resource`` for ``action``."""
        for st in self.statements:
            hit_a = any(p.match(action) for p in st.actions) != st.not_action
            hit_r = any(p.match(resource) for p in st.resources) != st.not_resource
            if hit_a and hit_r:
                return True
        return False
