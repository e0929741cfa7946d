"""The command line: bad input fails fast with one line and exit 2, before Prefect starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import SAMPLE

runner = CliRunner()


def _one_line_error(result) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--orders", "does/not/exist.csv"], "input not found"),
        (["--orders", str(SAMPLE / "labs.csv")], "lacks required column"),
        (["--orders", str(SAMPLE / "orders"), "--profile", "nope"], "unknown profile"),
        (["--orders", str(SAMPLE / "orders"), "--rules", "missing.toml"], "rule pack file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args, needle):
    db = tmp_path / "audit.duckdb"
    result = runner.invoke(app, ["run", *args, "--db", str(db)])
    assert result.exit_code == 2
    assert needle in _one_line_error(result)
    assert not db.exists()


def test_rules_lists_every_rule_as_json():
    result = runner.invoke(app, ["rules", "--json"])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    ids = {r["id"] for r in payload["rules"]}
    assert {"indication.unrecognised", "weight_basis.actual_weight_in_obesity", "course_dose.above_target"} <= ids
    assert all(r["source"] and r["version"] for r in payload["rules"])


def test_report_on_missing_database_is_one_line(tmp_path: Path):
    result = runner.invoke(app, ["report", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "database not found" in _one_line_error(result)


def test_serve_without_server_explains(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "prefect server start" in _one_line_error(result)


def test_missing_product_dictionary_is_one_line(tmp_path: Path):
    result = runner.invoke(app, ["run", "--orders", str(SAMPLE / "orders"), "--products", str(tmp_path / "none.toml"),
                                 "--db", str(tmp_path / "a.duckdb")])
    assert result.exit_code == 2
    assert "product dictionary not found" in _one_line_error(result)
