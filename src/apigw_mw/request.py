"""The request view that policies read.

A :class:`Request` is built once per request from an ASGI scope or a WSGI environ. It is
cheap to build: headers, query parameters, the client address and the body are parsed
only when a policy first asks for them. Policies never mutate it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

from .effects import ReadBody

__all__ = ["Headers", "Request", "TrustedProxies"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_NAMES: dict[bytes, str] = {}


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only request headers.

    ``headers["x-api-key"]`` gives the first value of a header; :meth:`getlist` gives every
    value in the order received (duplicates matter: several ``x-api-key`` headers are an
    error for the API-key policy). Names and values are decoded as Latin-1, as HTTP allows,
    so no header byte can make decoding fail.
    """

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        mapping: dict[str, str] = {}
        for name, value in items:
            if name not in mapping:  # the first value of a repeated header wins
                mapping[name] = value
        self._map = mapping

    @classmethod
    def from_raw(cls, raw: Any) -> Headers:
        """From ASGI's ``[(name_bytes, value_bytes), ...]``."""
        names = _NAMES
        items = []
        for k, v in raw:
            name = names.get(k)
            if name is None:
                name = k.decode("latin-1").lower()
                if len(names) < 512:  # header names repeat: decode each once
                    names[k] = name
            items.append((name, v.decode("latin-1")))
        return cls(items)

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._map.get(name.lower(), default)

    def getlist(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def items_list(self) -> list[tuple[str, str]]:
        """All ``(lower-case name, value)`` pairs in order, duplicates included."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({sorted(self._map)!r})"


class TrustedProxies:
    """Addresses whose ``X-Forwarded-For`` hops are believed.

    The client address is the rightmost hop in ``X-Forwarded-For`` that is not a trusted
    proxy, reached by walking from the socket peer leftwards; with no trusted proxies, it is
    the socket peer, whatever the header says.
    """

    __slots__ = ("_exact", "_networks")

    def __init__(self, entries: tuple[str, ...] | list[str] = ()) -> None:
        from .exceptions import ConfigurationError

        self._networks: list[IPNetwork] = []
        self._exact: set[str] = set()
        for entry in entries:
            if not isinstance(entry, str):
                raise ConfigurationError("trusted_proxies", f"{entry!r} is not an address or CIDR")
            try:
                net = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError as exc:
                raise ConfigurationError(
                    "trusted_proxies", f"{entry!r} is not an address or CIDR"
                ) from exc
            self._networks.append(net)
            if net.num_addresses == 1:
                self._exact.add(str(net.network_address))

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str) -> bool:
        if address in self._exact:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_address(self, peer: str | None, forwarded_for: list[str]) -> str | None:
        if peer is None or not self._networks or not self.trusts(peer):
            return peer
        hops = [h.strip() for value in forwarded_for for h in value.split(",")]
        client = peer
        for hop in reversed(hops):
            if not hop:
                break
            # Accept "1.2.3.4:5678" and "[::1]:80" forms some proxies write.
            candidate = hop
            if candidate.startswith("["):
                candidate = candidate[1:].partition("]")[0]
            elif candidate.count(":") == 1:
                candidate = candidate.partition(":")[0]
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                break
            client = candidate
            if not self.trusts(candidate):
                break
        return client


class Request:
    """An immutable view of one HTTP request, shared by every policy.

    Attributes:
        method: the upper-case HTTP method.
        path: the decoded path the app routes on, after ``root_path``/``SCRIPT_NAME`` are
            stripped; a stage ``base_path`` is still part of it (routes match without it, see
            ``context.resource_path``).
        raw_path: the path as received, percent-encoding intact (bytes).
        query_string: the raw query string (bytes, without ``?``).
        scheme: ``http`` or ``https``.
        peer: the socket peer address, or ``None``.
        raw: the ASGI scope or WSGI environ the view was built from.

    Example, in a custom policy::

        def flow(self, request, context):
            if request.headers.get("x-tenant") is None:
                return Deny("BAD_REQUEST_PARAMETERS",
                            "Missing required request parameters: [x-tenant]")
            return None
    """

    __slots__ = (
        "_body",
        "_body_reader",
        "_client",
        "_headers",
        "_proxies",
        "_query",
        "_raw_headers",
        "content_length",
        "method",
        "path",
        "peer",
        "query_string",
        "raw",
        "raw_path",
        "scheme",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        raw_path: bytes,
        query_string: bytes,
        scheme: str,
        peer: str | None,
        raw: Any,
        raw_headers: Any = None,
        headers: Headers | None = None,
        proxies: TrustedProxies | None = None,
        content_length: int | None = None,
        body_reader: Any = None,
    ) -> None:
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query_string = query_string
        self.scheme = scheme
        self.peer = peer
        self.raw = raw
        self.content_length = content_length
        self._raw_headers = raw_headers
        self._headers = headers
        self._proxies = proxies
        self._query: dict[str, list[str]] | None = None
        self._client: str | bool | None = False
        self._body: bytes | None = None
        self._body_reader = body_reader

    @classmethod
    def _from_scope(
        cls, scope: Any, path: str, proxies: TrustedProxies | None, body_reader: Any
    ) -> Request:
        """The ASGI adapter's constructor: the scope's fields, without keyword parsing."""
        self = cls.__new__(cls)
        self.method = scope["method"]
        self.path = path
        self.raw_path = scope.get("raw_path") or path.encode("utf-8", "surrogateescape")
        self.query_string = scope.get("query_string", b"")
        self.scheme = scope.get("scheme", "http")
        client = scope.get("client")
        self.peer = client[0] if client else None
        self.raw = scope
        self.content_length = None
        self._raw_headers = scope.get("headers") or ()
        self._headers = None
        self._proxies = proxies
        self._query = None
        self._client = False
        self._body = None
        self._body_reader = body_reader
        return self

    @property
    def headers(self) -> Headers:
        """The request headers (case-insensitive)."""
        h = self._headers
        if h is None:
            raw = self._raw_headers
            h = self._headers = raw() if callable(raw) else Headers.from_raw(raw or ())
        return h

    def header(self, name: str) -> str | None:
        """The first value of one header, or ``None``.

        Cheaper than ``request.headers.get(name)`` when a policy needs a single header: it
        reads the server's raw headers without building the whole mapping.
        """
        h = self._headers
        if h is not None:
            return h.get(name)  # type: ignore[no-any-return]
        raw = self._raw_headers
        if callable(raw):  # WSGI: look the CGI variable up
            key = name.upper().replace("-", "_")
            env = self.raw
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                value = env.get(key) or None
            else:
                value = env.get("HTTP_" + key)
            if value is not None and key == "X_API_KEY" and "," in value:
                return self.headers.get(name)  # type: ignore[no-any-return]
            return value
        wanted = name.lower().encode("latin-1")
        for k, v in raw or ():
            if k == wanted:
                return v.decode("latin-1")  # type: ignore[no-any-return]
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of one header, in order, without building the whole mapping."""
        h = self._headers
        if h is not None:
            return h.getlist(name)
        raw = self._raw_headers
        if callable(raw):  # WSGI: the server joined repeated headers with commas
            return self.headers.getlist(name)
        wanted = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in raw or () if k == wanted]

    @property
    def query(self) -> Mapping[str, list[str]]:
        """Query parameters: name to every value, in order (``?q=`` gives ``[""]``)."""
        q = self._query
        if q is None:
            q = {}
            if self.query_string:
                text = self.query_string.decode("latin-1")
                for k, v in parse_qsl(text, keep_blank_values=True, errors="replace"):
                    q.setdefault(k, []).append(v)
            self._query = q
        return q

    @property
    def source_ip(self) -> str | None:
        """The client address: the peer, or through trusted proxies' ``X-Forwarded-For``."""
        c = self._client
        if c is False:
            proxies = self._proxies
            if proxies:
                c = proxies.client_address(self.peer, self.header_values("x-forwarded-for"))
            else:
                c = self.peer
            self._client = c
        return c  # type: ignore[return-value]

    @property
    def body(self) -> bytes | None:
        """The body, once a policy has read it with :meth:`read_body`; else ``None``."""
        return self._body

    def read_body(self) -> ReadBody:
        """An effect that reads the whole body; yield it from a policy flow::

        body = yield request.read_body()
        """
        return ReadBody(self)

    # Used by the effect drivers.
    def _set_body(self, body: bytes) -> None:
        self._body = body

    def _reader(self) -> Any:
        return self._body_reader

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


def header_value(raw_headers: Any, name: bytes) -> bytes | None:
    """First value of a header from ASGI raw headers, without building a mapping."""
    for k, v in raw_headers:
        if k == name or k.lower() == name:
            return v  # type: ignore[no-any-return]
    return None


BodyReader = Callable[[], bytes]
