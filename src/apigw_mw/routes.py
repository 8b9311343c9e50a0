"""Route templates, stages and stage variables.

Route patterns are written as API Gateway route keys: ``"GET /pets/{petId}"``,
``"ANY /admin/{proxy+}"`` or ``"$default"``. They are compiled once, when the middleware is
built; a request is matched against all of them at once and the result is cached per
``(method, path)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from .exceptions import ConfigurationError

__all__ = ["RouteMatch", "RoutePattern", "Router", "Stage"]

_METHODS: Final = frozenset(
    {"ANY", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_VAR_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_VAR_VALUE = re.compile(r"^[A-Za-z0-9\-._~:/?#&=,]{1,512}$")
_PARAM = re.compile(r"^\{([A-Za-z0-9_.\-]+)(\+?)\}$")
_API_ID = re.compile(r"^[a-z0-9]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")

# Segment kinds, ordered from most to least specific.
_STATIC, _PARAM_KIND, _GREEDY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Stage:
    """A deployment stage: its name, stage variables and the identifiers in ARNs.

    Args:
        name: the stage name (``$default`` or 1-128 letters, digits, ``-`` and ``_``).
        variables: stage variables; at most 100, names of letters, digits and ``_``, values
            of the characters API Gateway allows (``[A-Za-z0-9-._~:/?#&=,]``).
        region: the AWS region written into ``methodArn``s.
        account_id: the 12-digit account id written into ``methodArn``s.
        api_id: the API id written into ``methodArn``s and the context.
        base_path: a path prefix (a custom-domain base path mapping such as ``/v1``) that is
            stripped before routes are matched.

    Example::

        Stage("prod", variables={"color": "blue"}, region="eu-west-1", base_path="/v1")
    """

    name: str = "$default"
    variables: Mapping[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    account_id: str = "123456789012"
    api_id: str = "local"
    base_path: str | None = None

    def __post_init__(self) -> None:
        if self.name != "$default" and not (
            isinstance(self.name, str) and _STAGE_NAME.fullmatch(self.name)
        ):
            raise ConfigurationError(
                "stage.name", f"{self.name!r} is not $default or 1-128 of [A-Za-z0-9_-]"
            )
        if not isinstance(self.variables, Mapping):
            raise ConfigurationError("stage.variables", "must be a mapping of names to values")
        if len(self.variables) > 100:
            raise ConfigurationError("stage.variables", "at most 100 stage variables")
        for key, value in self.variables.items():
            if not isinstance(key, str) or not _VAR_NAME.fullmatch(key):
                raise ConfigurationError(
                    "stage.variables", f"name {key!r} must be 1-64 of [A-Za-z0-9_]"
                )
            if not isinstance(value, str) or not _VAR_VALUE.fullmatch(value):
                raise ConfigurationError(
                    f"stage.variables.{key}",
                    f"value {value!r} must be 1-512 of [A-Za-z0-9-._~:/?#&=,]",
                )
        object.__setattr__(self, "variables", MappingProxyType(dict(self.variables)))
        if not isinstance(self.region, str) or not _REGION.fullmatch(self.region):
            raise ConfigurationError("stage.region", f"{self.region!r} is not an AWS region")
        if not isinstance(self.account_id, str) or not _ACCOUNT_ID.fullmatch(self.account_id):
            raise ConfigurationError("stage.account_id", "must be a string of 12 digits")
        if not isinstance(self.api_id, str) or not _API_ID.fullmatch(self.api_id):
            raise ConfigurationError("stage.api_id", "must be lower-case letters and digits")
        if self.base_path is not None:
            if not isinstance(self.base_path, str):
                raise ConfigurationError("stage.base_path", "must be a path such as '/v1'")
            bp = self.base_path.rstrip("/")
            if not bp.startswith("/") or "//" in bp or any(c in bp for c in "?#{}"):
                raise ConfigurationError(
                    "stage.base_path", f"{self.base_path!r} must be a path such as '/v1'"
                )
            object.__setattr__(self, "base_path", bp or None)

    def route_path(self, path: str) -> str | None:
        """``path`` with the base path removed, or ``None`` when it lies outside it.

        >>> Stage(base_path="/v1").route_path("/v1/pets")
        '/pets'
        """
        base = self.base_path
        if base is None:
            return path
        if path == base:
            return "/"
        if path.startswith(base) and path[len(base)] == "/":
            return path[len(base) :]
        return None

    def method_arn(self, method: str, path: str) -> str:
        """The ``execute-api`` ARN of a request, as authorizers receive it.

        >>> Stage("prod").method_arn("GET", "/pets/1")
        'arn:aws:execute-api:us-east-1:123456789012:local/prod/GET/pets/1'
        """
        return (
            f"arn:aws:execute-api:{self.region}:{self.account_id}:{self.api_id}/"
            f"{self.name}/{method}/{path.lstrip('/')}"
        )


@dataclass(frozen=True, slots=True)
class RoutePattern:
    """A compiled route key such as ``GET /pets/{petId}``.

    ``{name}`` matches one non-empty path segment, a final ``{name+}`` matches one or more
    segments, ``ANY`` matches every method and ``$default`` matches every request.
    """

    key: str
    method: str
    path: str
    segments: tuple[tuple[int, str], ...]
    specificity: tuple[int, ...]

    @classmethod
    def parse(cls, key: str, *, field_name: str = "routes") -> RoutePattern:
        if not isinstance(key, str):
            raise ConfigurationError(field_name, f"route {key!r} must be a string")
        if key == "$default":
            return cls("$default", "ANY", "", (), (3,))
        method, sep, path = key.strip().partition(" ")
        path = path.strip()
        method = method.upper()
        if not sep or method not in _METHODS:
            raise ConfigurationError(
                field_name, f"route {key!r} must be 'METHOD /path' (or 'ANY /path', '$default')"
            )
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ConfigurationError(field_name, f"route {key!r}: path must start with '/'")
        segments: list[tuple[int, str]] = []
        raw = path.split("/")[1:]
        if raw == [""]:
            raw = []
        for i, seg in enumerate(raw):
            if not seg:
                raise ConfigurationError(field_name, f"route {key!r}: empty path segment")
            m = _PARAM.match(seg)
            if m:
                if m.group(2):
                    if i != len(raw) - 1:
                        raise ConfigurationError(
                            field_name, f"route {key!r}: a greedy {{{m.group(1)}+}} must be last"
                        )
                    segments.append((_GREEDY, m.group(1)))
                else:
                    segments.append((_PARAM_KIND, m.group(1)))
            elif "{" in seg or "}" in seg:
                raise ConfigurationError(field_name, f"route {key!r}: bad segment {seg!r}")
            else:
                segments.append((_STATIC, seg))
        names = [name for kind, name in segments if kind != _STATIC]
        if len(names) != len(set(names)):
            raise ConfigurationError(field_name, f"route {key!r}: a parameter name repeats")
        # Lower sorts first = more specific: per segment static < {param} < {proxy+}, then a
        # longer static prefix, then a named method over ANY.
        spec = (*(kind for kind, _ in segments), 9 - min(len(segments), 9), method == "ANY")
        normalized = "/" + "/".join(
            seg if kind == _STATIC else "{" + seg + ("+}" if kind == _GREEDY else "}")
            for kind, seg in segments
        )
        return cls(f"{method} {normalized}", method, normalized, tuple(segments), (0, *spec))

    def match(self, method: str, parts: list[str]) -> dict[str, str] | None:
        """Path parameters when this pattern matches, else ``None``."""
        if self.method != "ANY" and self.method != method:
            return None
        if self.key == "$default":
            return {}
        params: dict[str, str] = {}
        segs = self.segments
        n = len(parts)
        for i, (kind, value) in enumerate(segs):
            if kind == _GREEDY:
                rest = parts[i:]
                if not rest or not rest[0]:
                    return None
                params[value] = "/".join(rest)
                return params
            if i >= n:
                return None
            part = parts[i]
            if kind == _STATIC:
                if part != value:
                    return None
            elif not part:
                return None
            else:
                params[value] = part
        if n != len(segs):
            return None
        return params


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The outcome of matching one request against every declared route.

    ``matched`` holds the indices of every pattern that matched; ``best`` is the most
    specific of them (the request's route key), ``path_parameters`` its parameters.
    """

    matched: frozenset[int]
    best: RoutePattern | None
    path_parameters: Mapping[str, str]


_NO_MATCH = RouteMatch(frozenset(), None, MappingProxyType({}))


class Router:
    """Matches requests against a fixed set of route patterns.

    Results are cached per ``(method, path)`` in a bounded table, so a busy route costs one
    dictionary lookup.
    """

    __slots__ = ("_by_first", "_cache", "_cache_size", "_loose", "patterns")

    def __init__(self, patterns: Iterable[RoutePattern], *, cache_size: int = 4096) -> None:
        unique: dict[str, RoutePattern] = {}
        for p in patterns:
            unique.setdefault(p.key, p)
        self.patterns: tuple[RoutePattern, ...] = tuple(unique.values())
        # Patterns whose first segment is static are indexed by it; the rest are always tried.
        self._by_first: dict[str, list[int]] = {}
        self._loose: list[int] = []
        for i, p in enumerate(self.patterns):
            if p.segments and p.segments[0][0] == _STATIC:
                self._by_first.setdefault(p.segments[0][1], []).append(i)
            else:
                self._loose.append(i)
        self._cache: dict[tuple[str, str], RouteMatch] = {}
        self._cache_size = cache_size

    def index(self, key: str) -> int:
        for i, p in enumerate(self.patterns):
            if p.key == key:
                return i
        raise KeyError(key)

    def match(self, method: str, path: str) -> RouteMatch:
        cache_key = (method, path)
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        result = self._match(method, path)
        cache = self._cache
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[cache_key] = result
        return result

    def _match(self, method: str, path: str) -> RouteMatch:
        if not self.patterns:
            return _NO_MATCH
        parts = path.split("/")[1:] if path.startswith("/") else path.split("/")
        if parts == [""]:
            parts = []
        candidates = self._loose
        if parts:
            first = self._by_first.get(parts[0])
            if first:
                candidates = [*first, *self._loose]
        matched: list[int] = []
        best: RoutePattern | None = None
        best_params: dict[str, str] = {}
        for i in candidates:
            pattern = self.patterns[i]
            params = pattern.match(method, parts)
            if params is None:
                continue
            matched.append(i)
            if best is None or pattern.specificity < best.specificity:
                best, best_params = pattern, params
        if not matched:
            return _NO_MATCH
        return RouteMatch(frozenset(matched), best, MappingProxyType(best_params))
