"""Replay a past run under another rule pack or profile into a scenario, and diff runs and scenarios."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

import flows.cli_tools  # noqa: F401 - registers replay, diff and scenarios on the app
from flows.cli import app
from pipeline import warehouse as store
from pipeline.warehouse import base
from pipeline.tools.replay import diff_findings, format_diff, is_scenario_id
from pipeline.warehouse import read_tables, record_review
from tests.reliability_helpers import nightly, write_extract

runner = CliRunner()

RUN1 = "20261106T020000Z-aaaaaa"
RUN2 = "20261107T020000Z-bbbbbb"
WEIGHT_BASIS = "weight_basis.actual_weight_in_obesity"
OVER_DOSE = "course_dose.above_target"

# A 175 cm, 120 kg man with GBS dosed 2 g/kg on actual weight (IBW 70.5 kg, adjusted 90.3 kg).
OBESE = {"patient_id": "P-OBESE", "weight_kg": "120", "height_cm": "175", "sex": "M", "age_years": "50",
         "indication": "GBS", "medication": "Privigen 10%", "dose_unit": "g", "service": "Neurology"}
# A lean 70 kg man with GBS given 175 g (2.5 g/kg: 125% of target).
LEAN = OBESE | {"patient_id": "P-LEAN", "weight_kg": "70", "height_cm": "180"}
# A later patient (second night) over-dosed too.
LATER = LEAN | {"patient_id": "P-LATER"}


def course(patient: dict, prefix: str, grams: float, month_day: int = 1) -> list[dict]:
    """Five daily doses from 2026-11-<month_day>."""
    return [
        patient | {"order_id": f"{prefix}{d}", "dose": str(grams), "start": f"2026-11-{month_day + d - 1:02d} 09:00:00"}
        for d in range(1, 6)
    ]


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("ivig-audit: error: ") and "\n" not in err, err
    assert "Traceback" not in result.stdout + result.stderr
    return err


def replay(db: Path, run_id: str, *args: str) -> str:
    """Run `ivig-audit replay` and return the new scenario id."""
    result = invoke("replay", run_id, "--db", str(db), *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    scenario_id = re.search(r"scenario (scn-\S+)", result.stdout).group(1)
    assert is_scenario_id(scenario_id)
    return scenario_id


def diff_json(db: Path, a: str, b: str) -> dict:
    result = invoke("diff", a, b, "--db", str(db), "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def dump(db: Path, tables: tuple[str, ...]) -> dict[str, list[tuple]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for t in tables}


def one_night(folder: Path) -> tuple[Path, Path]:
    """A database after one night: the obese patient and the lean over-dosed one."""
    db = folder / "audit.duckdb"
    extract = write_extract(folder / "night1.csv", course(OBESE, "OB", 48.0) + course(LEAN, "LE", 35.0))
    nightly(db, extract, RUN1)
    live = read_tables(db, ["findings"])["findings"]
    assert sorted(live["rule_id"].to_list()) == [OVER_DOSE, WEIGHT_BASIS]
    return db, extract


@pytest.fixture(scope="module")
def one_night_template(tmp_path_factory) -> tuple[Path, Path]:
    return one_night(tmp_path_factory.mktemp("one-night"))


@pytest.fixture()
def audited(one_night_template, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the one-night database (its input file is shared: do not modify it)."""
    template_db, extract = one_night_template
    db = tmp_path / "audit.duckdb"
    shutil.copy2(template_db, db)
    return db, extract


@pytest.fixture()
def own_extract(tmp_path: Path) -> tuple[Path, Path]:
    """A one-night database with its own input file (for tests that change the file)."""
    return one_night(tmp_path)


# ------------------------------------------------------------------------------------------
# The pure diff
# ------------------------------------------------------------------------------------------


def _finding(finding_id: str, severity: str = "warning", expected: str = "140 g", excess: float = 10.0) -> dict:
    rule_id = finding_id.split("|")[0]
    return {"finding_id": finding_id, "rule_id": rule_id, "category": rule_id.split(".")[0], "severity": severity,
            "patient_id": "P", "course_id": finding_id.split("|")[1], "message": f"msg {finding_id}",
            "expected": expected, "observed": "175 g", "excess_g": excess}


def test_diff_findings_added_removed_changed_and_counts():
    a = pl.DataFrame([_finding("course_dose.above_target|P:gbs:1"), _finding("weight_basis.x|P:gbs:1"),
                      _finding("course_dose.above_target|P:gbs:2", excess=5.0)])
    b = pl.DataFrame([_finding("course_dose.above_target|P:gbs:1"),
                      _finding("weight_basis.x|P:gbs:1", severity="info", excess=12.5),
                      _finding("monitoring.no_baseline_labs|P:gbs:1", excess=0.0)])
    diff = diff_findings(a, b)
    assert diff.added["finding_id"].to_list() == ["monitoring.no_baseline_labs|P:gbs:1"]
    assert diff.removed["finding_id"].to_list() == ["course_dose.above_target|P:gbs:2"]
    changed = diff.changed.row(0, named=True)
    assert diff.changed.height == 1
    assert (changed["changes"], changed["severity_a"], changed["severity_b"]) == ("severity, excess_g", "warning", "info")
    counts = {r["rule_id"]: r for r in diff.counts_by_rule.iter_rows(named=True)}
    assert counts["course_dose.above_target"] == {
        "rule_id": "course_dose.above_target", "findings_a": 2, "findings_b": 1, "added": 0, "removed": 1,
        "changed": 0, "unchanged": 1, "excess_g_a": 15.0, "excess_g_b": 10.0, "excess_g_delta": -5.0,
    }
    assert counts["weight_basis.x"]["excess_g_delta"] == 2.5
    assert diff.totals["added"] == 1 and diff.totals["removed"] == 1 and diff.totals["changed"] == 1
    text = format_diff(diff, "r1", "scn-1")
    assert text.index("counts by rule") < text.index("added (only in B)") < text.index("changed: 1")
    assert "severity: warning -> info" in text and "msg monitoring.no_baseline_labs|P:gbs:1" in text
    # Identical sides: nothing changes; tiny float noise is not a change.
    same = diff_findings(a, a.with_columns(pl.col("excess_g") + 1e-9))
    assert same.is_empty and "no differences" in format_diff(same, "r1", "r1")
    with pytest.raises(ValueError, match="repeat a finding_id"):
        diff_findings(pl.concat([a, a]), b)


# ------------------------------------------------------------------------------------------
# Replay and diff through the command line
# ------------------------------------------------------------------------------------------


def test_discretionary_profile_turns_weight_basis_into_info(audited):
    db, _ = audited
    scenario = replay(db, RUN1, "--profile", "discretionary", "--name", "prescriber discretion")
    out = diff_json(db, RUN1, scenario)
    assert out["a"] == {"id": RUN1, "kind": "run"} and out["b"]["kind"] == "scenario"
    assert out["added"] == [] and out["removed"] == []
    (changed,) = out["changed"]
    assert changed["rule_id"] == WEIGHT_BASIS and changed["changes"] == "severity"
    assert (changed["severity_a"], changed["severity_b"]) == ("warning", "info")
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT name, base_run_id, profile, rules_file, courses, findings FROM scenarios").fetchall()
        courses = con.execute(
            "SELECT patient_id, appropriate, weight_basis FROM scenario_courses ORDER BY patient_id"
        ).fetchall()
        same_ids = con.execute(
            "SELECT (SELECT list(course_id ORDER BY course_id) FROM scenario_courses) = (SELECT list(course_id ORDER BY course_id) FROM courses)"
        ).fetchall()
    assert row == [("prescriber discretion", RUN1, "discretionary", None, 2, 2)]
    # With the weight basis only informative, the obese patient's course becomes appropriate.
    assert courses == [("P-LEAN", False, "actual"), ("P-OBESE", True, "adjusted")]
    assert same_ids == [(True,)]  # a replayed course keeps the live course's id
    text = invoke("diff", RUN1, scenario, "--db", str(db))
    assert text.exit_code == 0
    assert text.stdout.index("counts by rule") < text.stdout.index("severity: warning -> info")


def test_ibw_profile_changes_expected_and_excess(audited):
    db, _ = audited
    scenario = replay(db, RUN1, "--profile", "ibw")
    out = diff_json(db, RUN1, scenario)
    (changed,) = out["changed"]
    assert changed["rule_id"] == WEIGHT_BASIS
    assert changed["changes"] == "expected, excess_g"
    assert "90.3 kg" in changed["expected_a"] and "70.5 kg" in changed["expected_b"]
    assert changed["excess_g_b"] > changed["excess_g_a"] > 0
    counts = {r["rule_id"]: r for r in out["counts_by_rule"]}
    assert counts[WEIGHT_BASIS]["excess_g_delta"] == pytest.approx(changed["excess_g_b"] - changed["excess_g_a"])
    assert counts[OVER_DOSE]["unchanged"] == 1


def test_site_rules_with_wider_tolerance_remove_the_over_dose(audited, tmp_path: Path):
    db, _ = audited
    site = tmp_path / "site_rules.toml"
    site.write_text("[settings]\ndose_tolerance = 0.5\n", encoding="utf-8")
    scenario = replay(db, RUN1, "--rules", str(site))
    out = diff_json(db, RUN1, scenario)
    # The lean patient's 125% is now within tolerance; so is the obese patient's 133% of the
    # adjusted-weight dose (the weight-basis rule claims grams beyond the same tolerance).
    assert [(f["rule_id"], f["patient_id"]) for f in out["removed"]] == [(OVER_DOSE, "P-LEAN"), (WEIGHT_BASIS, "P-OBESE")]
    # Within the wider tolerance, rounding down would still save grams: info findings only.
    assert {(f["rule_id"], f["severity"]) for f in out["added"]} == {("course_dose.rounding_opportunity", "info")}
    counts = {r["rule_id"]: r for r in out["counts_by_rule"]}
    assert counts[OVER_DOSE]["removed"] == 1 and counts[OVER_DOSE]["excess_g_delta"] == -35.0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT rules_file FROM scenarios").fetchall() == [(str(site),)]
    # Scenario against scenario works too (a 50% tolerance also covers the obese patient's 133%).
    other = replay(db, RUN1, "--profile", "discretionary")
    both = diff_json(db, scenario, other)
    assert [(f["rule_id"], f["patient_id"], f["severity"]) for f in both["added"]] == [
        (OVER_DOSE, "P-LEAN", "warning"), (WEIGHT_BASIS, "P-OBESE", "info"),
    ]
    listing = invoke("scenarios", "--db", str(db))
    assert listing.exit_code == 0 and scenario in listing.stdout and other in listing.stdout


def test_live_tables_are_never_modified(audited):
    db, _ = audited
    finding_id = read_tables(db, ["findings"])["findings"]["finding_id"][0]
    record_review(db, finding_id, "acknowledged", "A. Pharmacist", note="called neurology")
    live = ("runs", "orders", "courses", "findings", "quarantine", "ledger", "finding_history", "review_events")
    before = dump(db, live)
    first = replay(db, RUN1, "--profile", "ibw")
    replay(db, RUN1, "--profile", "discretionary")
    replay(db, RUN1)
    diff_json(db, RUN1, first)
    assert dump(db, live) == before
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT MAX(version) FROM schema_version").fetchall() == [(store.SCHEMA_VERSION,)]
        assert con.execute("SELECT COUNT(*) FROM scenarios").fetchall() == [(3,)]
        uncommented = con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE table_name LIKE 'scenario%' AND comment IS NULL"
        ).fetchall()
    assert uncommented == []


def test_replay_of_an_earlier_run_sees_only_its_own_history(tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    nightly(db, write_extract(tmp_path / "n1.csv", course(OBESE, "OB", 48.0) + course(LEAN, "LE", 35.0)), RUN1)
    nightly(db, write_extract(tmp_path / "n2.csv", course(LATER, "LA", 35.0, month_day=10)), RUN2)
    # Same rule pack and profile as the live runs: each replay reproduces its run exactly.
    for run_id in (RUN1, RUN2):
        out = diff_json(db, run_id, replay(db, run_id))
        assert (out["added"], out["removed"], out["changed"]) == ([], [], []), run_id
    assert not any("P-LATER" in f for f in read_tables(db, ["findings"])["findings"].filter(
        pl.col("first_seen_run") == RUN1)["finding_id"].to_list())
    # Run 1 against run 2: what the second night added (no labs were ever given, so no monitoring).
    out = diff_json(db, RUN1, RUN2)
    assert {f["patient_id"] for f in out["added"]} == {"P-LATER"} and out["removed"] == []
    assert not any(f["rule_id"].startswith("monitoring.") for f in out["added"])


def test_replay_reads_the_history_not_the_input_files(own_extract):
    db, extract = own_extract
    extract.write_text("changed\n", encoding="utf-8")
    scenario = replay(db, RUN1, "--profile", "ibw")
    extract.unlink()
    again = replay(db, RUN1, "--profile", "ibw")
    for side in (scenario, again):
        out = diff_json(db, RUN1, side)
        assert [c["rule_id"] for c in out["changed"]] == [WEIGHT_BASIS]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT DISTINCT history_only FROM scenarios").fetchall() == [(True,)]


# ------------------------------------------------------------------------------------------
# Errors: one line, exit 2 (bad input) or 3 (database)
# ------------------------------------------------------------------------------------------


def test_unknown_ids_are_one_line_exit_2(audited):
    db, _ = audited
    assert "no run with id 'nope'" in one_line_error(invoke("replay", "nope", "--db", str(db)), 2)
    assert "no scenario with id 'scn-nope'" in one_line_error(invoke("diff", RUN1, "scn-nope", "--db", str(db)), 2)
    assert "no run with id 'nope'" in one_line_error(invoke("diff", "nope", RUN1, "--db", str(db)), 2)
    assert "scenario id" in one_line_error(invoke("replay", "scn-x", "--db", str(db)), 2)
    assert "database not found" in one_line_error(invoke("diff", RUN1, RUN1, "--db", str(db.with_name("x.duckdb"))), 2)


def test_bad_rule_pack_or_profile_is_exit_2(audited, tmp_path: Path):
    db, _ = audited
    assert "unknown profile" in one_line_error(invoke("replay", RUN1, "--db", str(db), "--profile", "lax"), 2)
    broken = tmp_path / "broken.toml"
    broken.write_text("[settings\n", encoding="utf-8")
    assert "not valid TOML" in one_line_error(invoke("replay", RUN1, "--db", str(db), "--rules", str(broken)), 2)


def test_locked_database_is_exit_3(audited, monkeypatch):
    db, _ = audited
    monkeypatch.setattr(base, "LOCK_RETRY_SECONDS", 0.5)  # how long an open waits for a short transaction
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(30)",
         str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        assert "in use" in one_line_error(invoke("diff", RUN1, RUN1, "--db", str(db)), 3)
        assert "in use" in one_line_error(invoke("replay", RUN1, "--db", str(db)), 3)
        assert time.perf_counter() - started < 10
    finally:
        holder.kill()
        holder.wait()
