"""The trace header parsers: what is accepted, and everything that is ignored."""

from __future__ import annotations

import pytest

from apigw_mw.observe.xray import (
    TraceHeader,
    format_xray,
    parse_traceparent,
    parse_xray,
    xray_trace_id,
)

ROOT = "1-5759e988-bd862e3fe1be46a994272793"
TRACE = 0x5759E988BD862E3FE1BE46A994272793
PARENT = 0x53995C3F42CD8AD8


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1",
            TraceHeader(TRACE, PARENT, True),
            id="sampled",
        ),
        pytest.param(
            f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=0",
            TraceHeader(TRACE, PARENT, False),
            id="not-sampled",
        ),
        pytest.param(
            f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=?",
            TraceHeader(TRACE, PARENT, None),
            id="decision-requested",
        ),
        pytest.param(
            f"Root={ROOT};Parent=53995c3f42cd8ad8",
            TraceHeader(TRACE, PARENT, None),
            id="no-sampled",
        ),
        pytest.param(f"Root={ROOT}", TraceHeader(TRACE, 0, None), id="load-balancer-root-only"),
        pytest.param(
            f"Self=1-67891234-12456789abcdef012345678;Root={ROOT};Sampled=1",
            TraceHeader(TRACE, 0, True),
            id="alb-self-and-root",
        ),
        pytest.param(
            f"Root={ROOT}; Parent=53995c3f42cd8ad8 ;Sampled=1;Lineage=a87bd80c:1|68fd508a:5",
            TraceHeader(TRACE, PARENT, True),
            id="spaces-and-extra-keys",
        ),
        pytest.param(
            f"Root={ROOT.upper()};Parent=53995C3F42CD8AD8;Sampled=1",
            TraceHeader(TRACE, PARENT, True),
            id="upper-case-hex",
        ),
        pytest.param(
            f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1;",
            TraceHeader(TRACE, PARENT, True),
            id="trailing-semicolon",
        ),
        pytest.param(
            f"Sampled=0;Parent=53995c3f42cd8ad8;Root={ROOT}",
            TraceHeader(TRACE, PARENT, False),
            id="other-order",
        ),
    ],
)
def test_xray_header_maps_exactly_to_otel_ids(value: str, expected: TraceHeader) -> None:
    assert parse_xray([value]) == expected


BAD_XRAY = [
    pytest.param("", id="empty"),
    pytest.param("Parent=53995c3f42cd8ad8;Sampled=1", id="no-root"),
    pytest.param("Root=2-5759e988-bd862e3fe1be46a994272793", id="wrong-version"),
    pytest.param("Root=1-5759e98-bd862e3fe1be46a994272793", id="short-epoch"),
    pytest.param("Root=1-5759e988-bd862e3fe1be46a99427279", id="short-random"),
    pytest.param("Root=1-5759e988-bd862e3fe1be46a99427279z", id="not-hex"),
    pytest.param("Root=1-00000000-000000000000000000000000", id="all-zero-trace"),
    pytest.param(f"Root={ROOT};Parent=0000000000000000", id="all-zero-parent"),
    pytest.param(
        "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8;Sampled=1",
        id="all-zero-trace-with-parent",
    ),
    pytest.param(f"Root={ROOT};Parent=0000000000000000;Sampled=1", id="all-zero-parent-sampled"),
    pytest.param(f"Root={ROOT};Parent=53995c3f42cd8ad", id="short-parent"),
    pytest.param(f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=2", id="bad-sampled"),
    pytest.param(f"Root={ROOT};Root={ROOT}", id="repeated-root"),
    pytest.param(f"Root={ROOT};garbage", id="key-without-value"),
    pytest.param(f"Root={ROOT};Sampled=1, Root={ROOT};Sampled=1", id="comma-joined-repeat"),
    pytest.param(f"Root={ROOT};Data=" + "x" * 2000, id="oversized"),
]


@pytest.mark.parametrize("value", BAD_XRAY)
def test_malformed_xray_header_is_ignored(value: str) -> None:
    assert parse_xray([value]) is None


def test_repeated_xray_header_is_ignored() -> None:
    good = f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=1"
    assert parse_xray([good, good]) is None
    assert parse_xray([]) is None


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            TP, TraceHeader(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True), id="v00"
        ),
        pytest.param(
            TP[:-2] + "00",
            TraceHeader(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False),
            id="not-sampled",
        ),
        pytest.param(
            "01" + TP[2:] + "-future",
            TraceHeader(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True),
            id="future-version-extra-fields",
        ),
    ],
)
def test_traceparent_is_read(value: str, expected: TraceHeader) -> None:
    assert parse_traceparent([value]) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ff" + TP[2:], id="version-ff"),
        pytest.param(TP + "-extra", id="v00-extra-field"),
        pytest.param(TP.upper(), id="upper-case"),
        pytest.param("00-00000000000000000000000000000000-b7ad6b7169203331-01", id="zero-trace"),
        pytest.param("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", id="zero-span"),
        pytest.param("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01", id="short-span"),
        pytest.param("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", id="no-flags"),
        pytest.param("01-" + TP[3:] + "-" + "x" * 600, id="oversized"),
        pytest.param(f"{TP}, {TP}", id="comma-joined-repeat"),
    ],
)
def test_malformed_traceparent_is_ignored(value: str) -> None:
    assert parse_traceparent([value]) is None


def test_repeated_traceparent_is_ignored() -> None:
    assert parse_traceparent([TP, TP]) is None


def test_xray_header_is_written_from_otel_ids() -> None:
    assert xray_trace_id(TRACE) == ROOT
    assert format_xray(TRACE, PARENT, False) == f"Root={ROOT};Parent=53995c3f42cd8ad8;Sampled=0"
    assert parse_xray([format_xray(TRACE, PARENT, True)]) == TraceHeader(TRACE, PARENT, True)
