"""The console helpers the demo's ``--trace`` uses: spans and access-log lines as text."""

from __future__ import annotations

import io
from typing import Any

from apigw_mw import RouteTable, Tracing
from apigw_mw.observe import console_access_log, console_tracer_provider

from .conftest import DenyWhen


def test_console_prints_spans_and_access_lines(make_client: Any) -> None:
    out = io.StringIO()
    provider = console_tracer_provider(out)
    client = make_client(
        [
            Tracing(provider, policy_spans=True),
            console_access_log(out=out),
            DenyWhen(),
            RouteTable(["GET /pets/{petId}"]),
        ]
    )
    ok = client.get("/pets/1")
    denied = client.get("/pets/1", headers={"x-deny": "THROTTLED"})
    provider.shutdown()
    text = out.getvalue().splitlines()
    spans = [line for line in text if line.startswith("span ")]
    access = [line for line in text if line.startswith("[access] ")]
    root = ok.headers["x-amzn-trace-id"].split(";")[0].removeprefix("Root=1-").replace("-", "")
    assert any(f"'GET /pets/{{petId}}' trace={root}" in line for line in spans)
    assert any("'DenyWhen'" in line and "ERROR" in line for line in spans)
    assert len(access) == 2
    assert ok.headers["x-amzn-requestid"] in access[0]
    assert '"GET /pets/{petId} HTTP/1.1" 429' in access[1]
    assert denied.status_code == 429
