from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from apigw_mw import ApiKey, ApiKeys, UsagePlan
from apigw_mw.cli import main


def test_generate_plain(capsys) -> None:
    assert main(["keys", "generate", "-n", "3"]) == 0
    keys = capsys.readouterr().out.split()
    assert len(keys) == 3
    assert len(set(keys)) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9]{40}", k) for k in keys)


def test_generate_csv_round_trips_through_from_csv(capsys, tmp_path: Path) -> None:
    assert (
        main(
            ["keys", "generate", "-n", "2", "--format", "csv", "--plan", "basic", "--name", "team"]
        )
        == 0
    )
    path = tmp_path / "keys.csv"
    path.write_text(capsys.readouterr().out)
    basic = UsagePlan("basic")
    keys = ApiKeys.from_csv(path, plans={"basic": basic})
    assert sorted(k.name or "" for k in keys) == ["team-1", "team-2"]
    assert all(k.plan is basic and k.enabled for k in keys)


def test_generate_json_gives_the_derived_id(capsys) -> None:
    assert main(["keys", "generate", "--format", "json", "--length", "64"]) == 0
    item = json.loads(capsys.readouterr().out)
    assert len(item["key"]) == 64
    assert item["id"] == ApiKey(item["key"]).id


@pytest.mark.parametrize("argv", [["--length", "19"], ["--length", "129"], ["-n", "0"]])
def test_generate_bad_arguments(capsys, argv) -> None:
    assert main(["keys", "generate", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "must be" in captured.err
