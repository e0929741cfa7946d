"""The FHIR MeasureReport (`ivig-audit measure`): counts, score, strata, grams, FHIR shape, no identifiers."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from fhir.resources.R4B.measurereport import MeasureReport
from typer.testing import CliRunner

import flows.cli
import flows.cli_tools  # noqa: F401 - registers `dose` and `measure` on the app until cli.py imports it
from checks.outputs import CATEGORIES, COURSES, FINDINGS
from pipeline.config.reference import reference_tables
from pipeline.config.rulepack import load_rule_pack
from pipeline.tools.measure import MEASURE_URL, build_measure_report
from pipeline.warehouse import measure_summaries
from pipeline.warehouse.scratch import scratch_database

runner = CliRunner()
START, END = date(2026, 1, 1), date(2026, 3, 31)


def course(course_id: str, patient_id: str, indication: str, start: datetime, appropriate: bool, total_g: float, excess_g: float = 0.0) -> dict:
    group = indication.split("_")[0]
    return {
        "course_id": course_id, "patient_id": patient_id, "facility": "North", "service": "Neurology",
        "prescriber_id": "DR-SECRET-1", "indication_group": group, "indication": indication, "course_number": 1,
        "start": start, "end": start, "n_days": 1, "span_days": 1, "doses": 1, "total_g": total_g,
        "order_ids": f"ORD-{course_id}", "products": "Privigen", "actual_weight_kg": 80.0, "current_weight_kg": 80.0,
        "pre_pregnancy_weight_kg": None, "actual_weight_source": "current weight", "height_cm": 175.0,
        "sex": "M", "age_years": 50.0, "pregnant": False, "bmi": 26.1, "ibw_kg": 70.5, "adjusted_weight_kg": 74.3,
        "obese": False, "dosing_weight_kg": 80.0, "weight_basis": "actual", "weight_basis_reason": "not obese",
        "g_per_kg": total_g / 80.0, "interval_days": None, "justification": None, "justification_code": None,
        "rejected_corrections": None, "appropriate": appropriate,
        "excess_g": excess_g,
    }


def finding(finding_id: str, course_id: str, patient_id: str, category: str, severity: str, status: str = "open", resolved: str | None = None) -> dict:
    return {
        "finding_id": finding_id, "rule_id": f"{category}.x", "rule_version": "1.0", "category": category,
        "severity": severity, "status": status, "patient_id": patient_id, "course_id": course_id,
        "order_ids": f"ORD-{course_id}", "indication": "gbs", "message": f"message about {patient_id}",
        "expected": None, "observed": None, "action": None, "evidence": None, "excess_g": 0.0,
        "first_seen_run": "R1", "last_seen_run": "R1", "resolved_run": resolved,
        "counts_against_course": severity != "info",
    }


@pytest.fixture()
def frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    courses = pl.DataFrame(
        [
            course("PT-AAA1:gbs:20260105", "PT-AAA1", "gbs", datetime(2026, 1, 5, 9), True, 165.0),
            course("PT-BBB2:gbs:20260210", "PT-BBB2", "gbs", datetime(2026, 2, 10), False, 200.0, 35.0),
            course("PT-CCC3:itp:20260331", "PT-CCC3", "itp", datetime(2026, 3, 31, 23, 30), True, 140.0),
            course("PT-DDD4:ms:20260315", "PT-DDD4", "ms", datetime(2026, 3, 15), False, 120.0, 120.0),
            course("PT-EEE5:gbs:20260401", "PT-EEE5", "gbs", datetime(2026, 4, 1), False, 300.0, 100.0),  # after the period
            course("PT-FFF6:gbs:20251231", "PT-FFF6", "gbs", datetime(2025, 12, 31, 23), False, 300.0, 100.0),  # before it
        ],
        schema_overrides={"start": pl.Datetime("us"), "end": pl.Datetime("us"), "interval_days": pl.Float64, "justification": pl.String,
                          "justification_code": pl.String, "pre_pregnancy_weight_kg": pl.Float64, "rejected_corrections": pl.String},
    )
    findings = pl.DataFrame(
        [
            finding("F1", "PT-BBB2:gbs:20260210", "PT-BBB2", "weight_basis", "warning"),
            finding("F2", "PT-BBB2:gbs:20260210", "PT-BBB2", "course_dose", "info"),  # info: not counted
            finding("F3", "PT-DDD4:ms:20260315", "PT-DDD4", "indication", "critical"),
            finding("F4", "PT-DDD4:ms:20260315", "PT-DDD4", "course_dose", "warning", status="dismissed"),  # reviewed
            finding("F5", "PT-AAA1:gbs:20260105", "PT-AAA1", "monitoring", "warning", resolved="R2"),  # resolved
            finding("F6", "PT-EEE5:gbs:20260401", "PT-EEE5", "course_dose", "critical"),  # course outside period
        ],
        schema_overrides={c: pl.String for c in ("expected", "observed", "action", "evidence", "resolved_run")},
    )
    return COURSES.validate(courses), FINDINGS.validate(findings)


RUNS = pl.DataFrame({"run_id": ["R1"], "rule_pack_version": ["2026.11.1"], "profile": ["default"]})


def measure(frames, start: date, end: date, **kw) -> dict:
    """The measure of the frames, through the database's views (as `ivig-audit measure` reads them)."""
    courses, findings = frames
    reviews = pl.DataFrame([{"event_id": 1, "finding_id": "F4", "status": "dismissed", "reason_code": "data_error",
                             "note": None, "reviewed_by": "A. Pharmacist", "reviewed_at": datetime(2026, 3, 20)}])
    tables = {**reference_tables(load_rule_pack()), "courses": courses.with_columns(run_id=pl.lit("R1")),
              "findings": findings, "runs": RUNS, "review_events": reviews}
    with scratch_database(tables) as con:
        return build_measure_report(measure_summaries(con, start, end), start, end, **kw)


def population(element: dict) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in element["population"]}


def strata(group: dict, stratifier: str) -> dict[str, dict]:
    by_code = {s["code"][0]["coding"][0]["code"]: s for s in group["stratifier"]}
    return {s["value"]["coding"][0]["code"]: s for s in by_code[stratifier]["stratum"]}


def test_measure_report_is_valid_fhir_with_the_right_counts(frames):
    report = measure(frames, START, END, generated_at=datetime(2026, 4, 2, 6, 0))
    resource = MeasureReport.model_validate(report)  # FHIR R4 (R4B models, wire-compatible for MeasureReport)
    assert resource.status == "complete" and resource.type == "summary" and resource.measure == MEASURE_URL
    assert report["period"] == {"start": "2026-01-01", "end": "2026-03-31"}
    appropriateness, after_review, used, avoidable = report["group"]
    assert population(appropriateness) == {"initial-population": 4, "denominator": 4, "numerator": 2}
    assert appropriateness["measureScore"]["value"] == 0.5
    # DDD4's dismissed course-dose finding (data error) is cleared, but its critical indication finding stands.
    assert population(after_review)["numerator"] == 2

    by_indication = strata(appropriateness, "indication")
    assert {k: population(v)["denominator"] for k, v in by_indication.items()} == {"gbs": 2, "itp": 1, "ms": 1}
    assert by_indication["gbs"]["measureScore"]["value"] == 0.5 and by_indication["ms"]["measureScore"]["value"] == 0

    by_category = strata(appropriateness, "finding-category")
    assert set(by_category) == set(CATEGORIES)
    counts = {k: population(v)["denominator"] for k, v in by_category.items() if population(v)["denominator"]}
    # info, resolved and out-of-period findings left out; the dismissed one counts as flagged
    assert counts == {"weight_basis": 1, "indication": 1, "course_dose": 1}
    assert "measureScore" not in by_category["monitoring"]

    assert used["measureScore"] == {"value": 625.0, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}
    # grams avoidable after review come from the findings' claims (courses.excess_g is as flagged): these claim none
    assert avoidable["measureScore"]["value"] == 0.0
    assert report["extension"][0]["valueString"] == "2026.11.1 (profile default)"
    assert report["date"].startswith("2026-04-02T06:00:00")


def test_no_patient_identifiers_anywhere(frames):
    courses, _ = frames
    text = json.dumps(measure(frames, START, END))
    for column in ("patient_id", "course_id", "order_ids", "prescriber_id"):
        for value in courses[column].to_list():
            assert value not in text, value
    assert "PT-" not in text and "ORD-" not in text and "DR-SECRET" not in text and "message about" not in text


def test_empty_period_is_still_valid(frames):
    report = measure(frames, date(2030, 1, 1), date(2030, 1, 31))
    MeasureReport.model_validate(report)
    assert population(report["group"][0]) == {"initial-population": 0, "denominator": 0, "numerator": 0}
    assert "measureScore" not in report["group"][0]
    with pytest.raises(ValueError):
        measure(frames, END, START)


def test_cli_writes_the_report(frames, tmp_path: Path, monkeypatch):
    courses, findings = frames
    db = tmp_path / "audit.duckdb"
    scratch_database({"courses": courses.with_columns(run_id=pl.lit("R1")), "findings": findings, "runs": RUNS},
                     path=db).close()
    out = tmp_path / "measure.json"
    result = runner.invoke(flows.cli.app, ["measure", "--db", str(db), "--from", "2026-01-01", "--to", "2026-03-31", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "4 courses" in result.stdout and "2 appropriate (50.0%) as flagged" in result.stdout
    report = json.loads(out.read_text())
    MeasureReport.model_validate(report)
    assert report["extension"][0]["valueString"] == "2026.11.1 (profile default)"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--from", "2026-02-30", "--to", "2026-03-31"], 2, "--from must be a date"),
        (["--from", "2026-03-01", "--to", "2026-01-31"], 2, "is before --from"),
        (["--from", "2026-01-01", "--to", "2026-03-31", "--db", "missing.duckdb"], 2, "database not found"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path: Path, args, code, needle):
    result = runner.invoke(flows.cli.app, ["measure", "--out", str(tmp_path / "m.json"), *args])
    assert result.exit_code == code
    err = result.stderr.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_unreadable_database_is_one_line_exit_3(tmp_path: Path):
    db = tmp_path / "not-a-db.duckdb"
    db.write_text("this is not a database")
    result = runner.invoke(flows.cli.app, ["measure", "--db", str(db), "--from", "2026-01-01", "--to", "2026-03-31",
                                           "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 3
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(db) in err
    assert not (tmp_path / "m.json").exists()
