"""Trace headers: AWS X-Ray's ``X-Amzn-Trace-Id`` and W3C ``traceparent``, parsed and written.

No X-Ray SDK is involved: the header is small and its mapping to OpenTelemetry ids is exact.
An X-Ray trace id ``1-5759e988-bd862e3fe1be46a994272793`` is the 32-hex OpenTelemetry trace id
``5759e988bd862e3fe1be46a994272793`` (8 epoch digits, then 24 random ones); ``Parent`` is the
16-hex span id. ``Sampled=1`` / ``Sampled=0`` carry the caller's decision; ``Sampled=?`` or no
``Sampled`` at all leave the decision to the receiver. A load balancer sends ``Root`` without
``Parent``: the trace is known, the parent span is not.

Every parser here returns ``None`` for anything malformed, oversized or repeated: a bad trace
header starts a new trace, it never fails the request.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "TraceHeader",
    "format_xray",
    "parse_traceparent",
    "parse_xray",
    "xray_trace_id",
]

#: Longest ``X-Amzn-Trace-Id`` value read; longer values are ignored.
MAX_XRAY_LENGTH = 1024
#: Longest ``traceparent`` value read (version 00 is exactly 55 characters).
MAX_TRACEPARENT_LENGTH = 512

_HEX = frozenset("0123456789abcdefABCDEF")
# The header as X-Ray SDKs and API Gateway write it; anything else takes the general parser.
_CANONICAL_XRAY = re.compile(
    r"Root=1-([0-9a-fA-F]{8})-([0-9a-fA-F]{24});Parent=([0-9a-fA-F]{16});Sampled=([01?])"
)
_SAMPLED = {"1": True, "0": False, "?": None}


class TraceHeader(NamedTuple):
    """What an incoming trace header says.

    Attributes:
        trace_id: the 128-bit trace id.
        span_id: the caller's span id, or ``0`` when the header names no parent
            (an X-Ray ``Root`` without ``Parent``).
        sampled: ``True``/``False`` for the caller's decision, ``None`` for none
            (``Sampled=?`` or no ``Sampled``): the local sampler decides.
    """

    trace_id: int
    span_id: int
    sampled: bool | None


def _hex(value: str, length: int) -> int | None:
    if len(value) != length or not _HEX.issuperset(value):
        return None
    n = int(value, 16)
    return n or None  # all-zero ids are invalid in both formats


def parse_xray(values: list[str]) -> TraceHeader | None:
    """Parse the ``X-Amzn-Trace-Id`` header's values (every occurrence, in order).

    >>> v = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    >>> h = parse_xray([v])
    >>> f"{h.trace_id:032x}", f"{h.span_id:016x}", h.sampled
    ('5759e988bd862e3fe1be46a994272793', '53995c3f42cd8ad8', True)
    >>> parse_xray(["Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0", "Root=1-..."]) is None
    True
    """
    if len(values) != 1:
        return None  # absent or repeated (a repeated header cannot be trusted)
    value = values[0]
    m = _CANONICAL_XRAY.fullmatch(value)
    if m is not None:
        epoch_hex, random_hex, parent_hex, sampled_flag = m.groups()
        fast_trace, fast_span = int(epoch_hex + random_hex, 16), int(parent_hex, 16)
        if not fast_trace or not fast_span:
            return None  # all-zero ids are invalid
        return TraceHeader(fast_trace, fast_span, _SAMPLED[sampled_flag])
    if len(value) > MAX_XRAY_LENGTH:
        return None
    root = parent = sampled = None
    for part in value.split(";"):
        key, eq, val = part.partition("=")
        key = key.strip()
        val = val.strip()
        if not eq:
            if key:
                return None
            continue  # a trailing or doubled ';'
        if key == "Root":
            if root is not None:
                return None
            root = val
        elif key == "Parent":
            if parent is not None:
                return None
            parent = val
        elif key == "Sampled":
            if sampled is not None:
                return None
            sampled = val
        elif not key or "," in val:
            return None  # servers join repeated headers with ','
    if root is None:
        return None
    version, dash1, rest = root.partition("-")
    epoch, dash2, rand = rest.partition("-")
    if version != "1" or not dash1 or not dash2:
        return None
    trace_id = _hex(epoch + rand, 32) if len(epoch) == 8 else None
    if trace_id is None:
        return None
    span_id = 0
    if parent is not None:
        parsed = _hex(parent, 16)
        if parsed is None:
            return None
        span_id = parsed
    if sampled is None or sampled == "?":
        decision: bool | None = None
    elif sampled in ("0", "1"):
        decision = sampled == "1"
    else:
        return None
    return TraceHeader(trace_id, span_id, decision)


def parse_traceparent(values: list[str]) -> TraceHeader | None:
    """Parse W3C ``traceparent`` values (every occurrence, in order).

    >>> parse_traceparent(["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]).sampled
    True
    """
    if len(values) != 1:
        return None
    value = values[0].strip()
    if len(value) > MAX_TRACEPARENT_LENGTH:
        return None
    parts = value.split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, span_hex, flags = parts[0], parts[1], parts[2], parts[3]
    if len(version) != 2 or not _HEX.issuperset(version) or version.lower() == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    if value != value.lower():
        return None  # the W3C format is lower-case hex only
    trace_id = _hex(trace_hex, 32)
    span_id = _hex(span_hex, 16)
    if trace_id is None or span_id is None or len(flags) != 2 or not _HEX.issuperset(flags):
        return None
    return TraceHeader(trace_id, span_id, bool(int(flags, 16) & 1))


def xray_trace_id(trace_id: int) -> str:
    """The X-Ray form of an OpenTelemetry trace id.

    >>> xray_trace_id(0x5759E988BD862E3FE1BE46A994272793)
    '1-5759e988-bd862e3fe1be46a994272793'
    """
    h = f"{trace_id:032x}"
    return f"1-{h[:8]}-{h[8:]}"


def format_xray(trace_id: int, span_id: int, sampled: bool) -> str:
    """An ``X-Amzn-Trace-Id`` value naming a span.

    >>> format_xray(0x5759E988BD862E3FE1BE46A994272793, 0x53995C3F42CD8AD8, True)
    'Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1'
    """
    return f"Root={xray_trace_id(trace_id)};Parent={span_id:016x};Sampled={1 if sampled else 0}"
