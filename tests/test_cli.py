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


def _flow_inputs(monkeypatch, args: list[str]) -> dict:
    """The inputs `ivig-audit run ARGS` passes to the flow (the flow itself replaced: no Prefect started)."""
    import flows.audit
    from pipeline.night import NightSummary

    seen = {}

    def flow(**kwargs):
        seen.update(kwargs)
        return NightSummary(run_id="r", db=kwargs["db"], status="nothing_new", audit_scope="none")

    monkeypatch.setattr(flows.audit, "audit_flow", flow)
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 0, result.output
    return seen


def test_the_sample_data_is_audited_only_when_no_input_is_given(monkeypatch, tmp_path: Path):
    labs_only = _flow_inputs(monkeypatch, ["--labs", str(SAMPLE / "labs.csv"), "--db", str(tmp_path / "a.duckdb")])
    assert (labs_only["orders"], labs_only["labs"], labs_only["procedures"]) == ([], [str(SAMPLE / "labs.csv")], [])
    nothing = _flow_inputs(monkeypatch, ["--db", str(tmp_path / "a.duckdb")])
    assert nothing["orders"] and nothing["labs"] and nothing["procedures"]  # the shipped sample, all three


def test_labs_and_procedures_take_several_paths(monkeypatch, tmp_path: Path):
    second = tmp_path / "labs2.csv"
    second.write_bytes((SAMPLE / "labs.csv").read_bytes())
    given = _flow_inputs(monkeypatch, [
        "--orders", str(SAMPLE / "orders"), "--labs", str(SAMPLE / "labs.csv"), "--labs", str(second),
        "--procedures", str(SAMPLE / "procedures.csv"), "--procedures", str(SAMPLE / "procedures.csv"),
        "--db", str(tmp_path / "a.duckdb"),
    ])
    assert given["labs"] == [str(SAMPLE / "labs.csv"), str(second)]
    assert given["procedures"] == [str(SAMPLE / "procedures.csv")] * 2  # read once: the night drops a repeated path
