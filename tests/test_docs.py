"""The documentation builds without warnings, names every public name, and the README's
commands are the ones continuous integration runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import apigw_mw

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

DEMO_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[demo]" && .venv/bin/apigw-mw demo'
)
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
)


def test_docs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the test extra has it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The changelog page includes CHANGELOG.md rather than a copy of it.
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "Unreleased" in changelog


@pytest.mark.parametrize("name", apigw_mw.__all__)
def test_reference_lists_every_public_name(name: str) -> None:
    reference = (DOCS / "reference.md").read_text()
    assert f"`{name}`" in reference, f"docs/reference.md does not describe {name}"


def test_every_page_in_the_nav_exists() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    pages = re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.MULTILINE)
    assert "index.md" in pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert missing == []


def test_readme_gives_the_two_set_up_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert DEMO_COMMAND in readme
    assert TEST_COMMAND in readme


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in script
    assert script.splitlines()[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in script
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def _example(page: str, heading: str) -> dict[str, object]:
    """Run the first Python block after ``heading`` in a docs page; return its namespace.

    Lines that mount the example on an ``app`` the page does not define are left out.
    """
    text = (DOCS / page).read_text()
    after = text.split(f"\n{heading}\n", 1)[1]
    code = after.split("```python\n", 1)[1].split("\n```", 1)[0]
    code = "\n".join(line for line in code.splitlines() if not line.startswith("app."))
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(code, f"docs/{page}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "reached"),
    [
        pytest.param("GET", "/orders", {}, None, 401, False, id="no-tenant"),
        pytest.param("GET", "/orders", {"x-tenant": "nobody"}, None, 403, False, id="unknown"),
        pytest.param("GET", "/orders/1", {"x-tenant": "acme"}, None, 200, True, id="known"),
        pytest.param("POST", "/orders", {"x-tenant": "acme"}, b"[1]", 400, False, id="bad-body"),
        pytest.param("POST", "/orders", {}, b"[1]", 401, False, id="authorize-first"),
        pytest.param("GET", "/ping", {}, None, 200, False, id="answered-by-gateway"),
        pytest.param("GET", "/other", {}, None, 200, True, id="no-policy"),
    ],
)
def test_complete_policy_example_behaves_as_documented(
    make_client: Any,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    reached: bool,
) -> None:
    example = _example("custom-policies.md", "## A complete example")
    client = make_client(example["policies"])
    result = client.request(method, path, headers=headers, content=body)
    assert result.status_code == status
    assert bool(result.seen) is reached
    if path == "/orders/1":
        assert result.headers["x-tenant-plan"] == "gold"
        assert result.seen[0].context.authorizer == {"tenant": "acme", "plan": "gold"}
    if path == "/ping":
        assert result.content == b"pong"


def test_batching_example_costs_one_round_trip(make_client: Any) -> None:
    example = _example("custom-policies.md", "### Batching")
    batcher: Any = example["batcher"]
    client = make_client(example["policies"])
    assert client.get("/x").status_code == 200
    assert batcher.round_trips == 1
    assert client.get("/x", headers={"user-agent": "badbot"}).status_code == 403
    assert client.get("/x", client_ip="10.0.0.9").status_code == 403
    assert batcher.round_trips == 3
