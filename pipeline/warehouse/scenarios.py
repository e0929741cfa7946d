"""Scenarios (ivig-audit replay / diff): what a rule-pack or policy change would do, stored apart from the live tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from pipeline.warehouse.base import (
    StoreError,
    _has_table,
    _owner_only_files,
    _q,
    _utc_naive,
    log,
)
from pipeline.warehouse.connection import _transaction, connect_read_only
from pipeline.warehouse.schema import _check_frame, _columns

SCENARIO_TABLES: tuple[str, ...] = ("scenarios", "scenario_findings", "scenario_courses")


#: Course columns a scenario keeps for comparison (besides scenario_id).
SCENARIO_COURSE_COLUMNS: tuple[str, ...] = (
    "course_id", "patient_id", "indication", "appropriate", "excess_g", "g_per_kg", "dosing_weight_kg", "weight_basis",
)


@dataclass(frozen=True)
class ScenarioRecord:
    """Metadata of one replayed scenario, stored as one row of table `scenarios`."""

    scenario_id: str
    name: str
    base_run_id: str
    created_at: datetime
    profile: str
    rule_pack_version: str
    rule_pack_hash: str
    rules_file: str | None
    courses: int
    findings: int
    history_only: bool = False


@_owner_only_files
def write_scenario(db_path: Path, scenario: ScenarioRecord, findings: pl.DataFrame, courses: pl.DataFrame) -> None:
    """Store a scenario's metadata, findings and courses in one transaction (live tables untouched).

    `findings` is in the checks.outputs.FINDINGS layout; `courses` holds at least SCENARIO_COURSE_COLUMNS.
    """
    _check_frame("findings", findings)
    missing = [c for c in SCENARIO_COURSE_COLUMNS if c not in courses.columns]
    if missing:
        raise ValueError(f"scenario courses frame lacks {', '.join(missing)}")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StoreError(f"database {db_path} does not exist; run the audit first")
    with _transaction(db_path) as con:
        if con.execute("SELECT COUNT(*) FROM scenarios WHERE scenario_id = ?", [scenario.scenario_id]).fetchall()[0][0]:
            raise ValueError(f"scenario {scenario.scenario_id} is already stored")
        con.execute(
            """INSERT INTO scenarios (scenario_id, name, base_run_id, created_at, profile, rule_pack_version,
                   rule_pack_hash, rules_file, courses, findings, history_only)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                scenario.scenario_id, scenario.name, scenario.base_run_id, _utc_naive(scenario.created_at),
                scenario.profile, scenario.rule_pack_version, scenario.rule_pack_hash, scenario.rules_file,
                scenario.courses, scenario.findings, scenario.history_only,
            ],
        )
        con.register("incoming_scenario_findings", findings)
        cols = ", ".join(_q(c) for c in _columns("findings"))
        con.execute(
            f"INSERT INTO scenario_findings (scenario_id, {cols}) SELECT ?, {cols} FROM incoming_scenario_findings",
            [scenario.scenario_id],
        )
        con.register("incoming_scenario_courses", courses.select(SCENARIO_COURSE_COLUMNS))
        course_cols = ", ".join(_q(c) for c in SCENARIO_COURSE_COLUMNS)
        con.execute(
            f"INSERT INTO scenario_courses (scenario_id, {course_cols}) "
            f"SELECT ?, {course_cols} FROM incoming_scenario_courses",
            [scenario.scenario_id],
        )
    log.info("stored scenario %s of run %s: %d courses, %d findings",
             scenario.scenario_id, scenario.base_run_id, courses.height, findings.height)


def read_run_findings(db_path: Path, run_id: str) -> pl.DataFrame:
    """The findings present at a past run, rebuilt from the live findings table.

    Present = first_seen_run <= run AND (resolved_run IS NULL OR resolved_run > run). The content
    (severity, message, expected, observed, excess_g) is the latest stored, not necessarily what
    that run wrote. ValueError when there is no such run.
    """
    con = connect_read_only(Path(db_path))
    try:
        if not con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
            raise ValueError(f"no run with id '{run_id}'")
        cols = ", ".join(_q(c) for c in _columns("findings"))
        return con.sql(
            f"SELECT {cols} FROM findings WHERE first_seen_run <= ? "
            "AND (resolved_run IS NULL OR resolved_run > ?) ORDER BY finding_id",
            params=[run_id, run_id],
        ).pl()
    finally:
        con.close()


def read_scenario_findings(db_path: Path, scenario_id: str) -> pl.DataFrame:
    """The findings a stored scenario raised (FINDINGS layout). ValueError when there is no such scenario."""
    con = connect_read_only(Path(db_path))
    try:
        if not _has_table(con, "scenarios") or not con.execute(
            "SELECT COUNT(*) FROM scenarios WHERE scenario_id = ?", [scenario_id]
        ).fetchall()[0][0]:
            raise ValueError(f"no scenario with id '{scenario_id}'")
        cols = ", ".join(_q(c) for c in _columns("findings"))
        return con.sql(
            f"SELECT {cols} FROM scenario_findings WHERE scenario_id = ? ORDER BY finding_id", params=[scenario_id]
        ).pl()
    finally:
        con.close()


def read_scenarios(db_path: Path) -> pl.DataFrame:
    """Every stored scenario's metadata, oldest first (an empty frame before the first replay)."""
    con = connect_read_only(Path(db_path))
    try:
        if not _has_table(con, "scenarios"):
            return pl.DataFrame(schema={"scenario_id": pl.String, "name": pl.String, "base_run_id": pl.String})
        return con.sql("SELECT * FROM scenarios ORDER BY created_at, scenario_id").pl()
    finally:
        con.close()
