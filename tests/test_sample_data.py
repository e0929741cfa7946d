"""The whole audit on the shipped synthetic sample_data/, checked against sample_data/scenarios.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.audit import AuditResult, Extracts, run_audit
from pipeline.ingest.tables import scan_extract
from tests.builders import SEVERE, pack, products

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
SCENARIOS = json.loads((SAMPLE / "scenarios.json").read_text(encoding="utf-8"))
BY_KEY = {s["key"]: s for s in SCENARIOS["scenarios"]}

# Scenario -> rule ids (with the allowed severities) every patient of the scenario must have.
# Design choice: an obese patient dosed on actual weight gets the weight-basis finding and NOT
# an additional course_dose.above_target finding (the excess is explained once).
MUST_HAVE: dict[str, dict[str, set[str]]] = {
    "weight_basis_actual": {"weight_basis.actual_weight_in_obesity": {"warning"}},
    "overdose_110": {"course_dose.above_target": {"warning"}},
    "overdose_150": {"course_dose.above_target": {"critical"}},
    "underdose": {"course_dose.below_target": {"info"}},
    "gbs_one_day": {"course_dose.days_outside_regimen": {"warning"}},
    "kawasaki_three_days": {"course_dose.days_outside_regimen": {"warning"}},
    "gbs_second_course_unjustified": {"repeat_justification.repeat_without_justification": {"warning"}},
    "cidp_maintenance_too_frequent": {"repeat_justification.interval_too_short": {"warning"}},
    "cidp_maintenance_unjustified": {"repeat_justification.maintenance_without_response": {"warning"}},
    "mg_maintenance_unjustified": {
        "repeat_justification.maintenance_without_response": {"warning"},
        "indication.not_routine": {"critical"},
    },
    "itp_repeat_unjustified": {"repeat_justification.repeat_without_justification": {"warning"}},
    "kawasaki_no_aspirin": {"combination.kawasaki_without_aspirin": {"warning"}},
    "kawasaki_aspirin_late": {"combination.kawasaki_without_aspirin": {"warning"}},
    "ms_not_routine": {"indication.not_routine": {"critical"}},
    "ms_pregnant_unjustified": {"indication.not_routine": {"critical"}},
    "indication_unrecognised": {"indication.unrecognised": {"critical"}},
    "indication_missing": {"indication.missing": {"warning"}},
    "missing_weight": {"data_quality.dose_not_assessable": {"warning"}},
    "missing_height_heavy": {"data_quality.dose_not_assessable": {"warning"}},
    "gap_8_days": {
        "repeat_justification.repeat_without_justification": {"warning"},
        "course_dose.below_target": {"info"},
    },
    "plex_within_14_days": {"combination.ivig_with_plasma_exchange": {"warning"}},
    "sucrose_elderly": {"product_safety.sucrose_risk": {"critical"}, "product_safety.slow_rate_reminder": {"info"}},
    "sucrose_renal": {"product_safety.sucrose_risk": {"critical"}, "product_safety.slow_rate_reminder": {"info"}},
    "iga_deficiency_wrong_product": {"product_safety.iga_deficiency": {"critical"}},
    "no_baseline_labs": {"monitoring.no_baseline_labs": {"warning"}},
    "renal_non_sucrose": {"product_safety.slow_rate_reminder": {"info"}},
    "cidp_review_overdue": {"repeat_justification.maintenance_review_due": {"warning"}},
    "no_hemoglobin_after_high_dose": {"monitoring.no_hemoglobin_after_course": {"warning"}},
    "no_renal_function_after_course": {"monitoring.no_renal_function_after_course": {"warning"}},
}

# Scenario -> rule ids (or rule-id prefixes ending in '.') none of its patients may have.
MUST_NOT_HAVE: dict[str, set[str]] = {
    "weight_basis_actual": {"course_dose.above_target"},
    "overdose_110": {"weight_basis.actual_weight_in_obesity"},
    "gbs_second_course_justified": {"repeat_justification."},
    "itp_repeat_justified": {"repeat_justification."},
    "ms_pregnancy_justified": {"indication."},
    "plex_far_control": {"combination."},
    "sucrose_control": {"product_safety."},
    "iga_deficiency_sd": {"product_safety.iga_deficiency"},
    "renal_non_sucrose": {"product_safety.sucrose_risk"},
    "baseline_29_days": {"monitoring."},
    "two_indications": {"repeat_justification."},
    "gap_7_days": {"course_dose.above_target", "course_dose.below_target", "course_dose.days_outside_regimen", "repeat_justification."},
    "child_missing_height": {"data_quality."},
    "missing_height_heavy": {"weight_basis.actual_weight_in_obesity"},
    "cidp_review_overdue": {"repeat_justification.maintenance_without_response"},
    "cidp_review_documented": {"repeat_justification."},
    "mg_maintenance_justified": {"indication."},
    "no_hemoglobin_after_high_dose": {"monitoring.no_renal_function_after_course"},
    "no_renal_function_after_course": {"monitoring.no_hemoglobin_after_course"},
    "follow_up_not_yet_due": {"monitoring.no_hemoglobin_after_course", "monitoring.no_renal_function_after_course"},
}

# Scenarios whose patients may have info findings at most.
NO_WARNING_OR_CRITICAL = {
    "background_appropriate", "reference_appropriate", "gbs_second_course_justified",
    "text_escaping_and_month_split", "mg_maintenance_justified", "itp_repeat_justified",
    "ms_pregnancy_justified", "child_missing_height", "two_indications", "gap_7_days",
    "plex_far_control", "sucrose_control", "iga_deficiency_sd", "renal_non_sucrose", "baseline_29_days",
    "cidp_review_documented",
}

# Scenarios whose patients have no IVIG course and no finding at all.
NOT_AUDITED = {"subcutaneous_out_of_scope", "other_immune_globulins", "non_ivig_only", "bad_rows"}

# Scenarios checked by their own test below.
OWN_TEST = {"kawasaki_repeat"}


@pytest.fixture(scope="module")
def result() -> AuditResult:
    orders, _ = scan_extract([SAMPLE / "orders"], "orders")
    labs, _ = scan_extract([SAMPLE / "labs.csv"], "labs")
    procedures, _ = scan_extract([SAMPLE / "procedures.csv"], "procedures")
    return run_audit(Extracts(orders, labs, procedures), products(), pack(), "sample-run")


def _findings(result: AuditResult, patient_id: str) -> pl.DataFrame:
    return result.findings.filter(pl.col("patient_id") == patient_id)


def _matches(rule_id: str, pattern: str) -> bool:
    return rule_id.startswith(pattern) if pattern.endswith(".") else rule_id == pattern


def test_every_scenario_has_expectations():
    covered = set(MUST_HAVE) | set(MUST_NOT_HAVE) | NO_WARNING_OR_CRITICAL | NOT_AUDITED | OWN_TEST
    assert covered == set(BY_KEY), f"scenarios without expectations: {sorted(set(BY_KEY) - covered)}"


@pytest.mark.parametrize("key", sorted(MUST_HAVE))
def test_scenario_is_flagged(result: AuditResult, key: str):
    for patient_id in BY_KEY[key]["patient_ids"]:
        findings = _findings(result, patient_id)
        for rule_id, severities in MUST_HAVE[key].items():
            found = findings.filter(pl.col("rule_id") == rule_id)
            assert found.height > 0, f"{key} {patient_id}: no {rule_id}; has {findings['rule_id'].to_list()}"
            assert set(found["severity"]) <= severities, f"{key} {patient_id}: {rule_id} {set(found['severity'])}"


@pytest.mark.parametrize("key", sorted(MUST_NOT_HAVE))
def test_scenario_lacks_the_relevant_rule(result: AuditResult, key: str):
    for patient_id in BY_KEY[key]["patient_ids"]:
        rules = _findings(result, patient_id)["rule_id"].to_list()
        bad = [r for r in rules for p in MUST_NOT_HAVE[key] if _matches(r, p)]
        assert not bad, f"{key} {patient_id}: unexpected {bad}"


@pytest.mark.parametrize("key", sorted(NO_WARNING_OR_CRITICAL))
def test_scenario_has_no_warning_or_critical(result: AuditResult, key: str):
    patients = BY_KEY[key]["patient_ids"]
    serious = result.findings.filter(pl.col("patient_id").is_in(patients), pl.col("severity").is_in(SEVERE))
    assert serious.is_empty(), serious.select("patient_id", "rule_id", "severity", "message").rows()
    assert result.courses.filter(pl.col("patient_id").is_in(patients))["patient_id"].n_unique() == len(patients)


@pytest.mark.parametrize("key", sorted(NOT_AUDITED))
def test_scenario_is_not_audited(result: AuditResult, key: str):
    patients = BY_KEY[key]["patient_ids"]
    assert result.courses.filter(pl.col("patient_id").is_in(patients)).is_empty()
    assert result.orders.filter(pl.col("patient_id").is_in(patients)).is_empty()
    assert result.findings.filter(pl.col("patient_id").is_in(patients)).is_empty()


def test_weight_basis_findings_report_grams_saved(result: AuditResult):
    found = result.findings.filter(
        pl.col("patient_id").is_in(BY_KEY["weight_basis_actual"]["patient_ids"]),
        pl.col("rule_id") == "weight_basis.actual_weight_in_obesity",
    )
    assert (found["excess_g"] > 0).all()
    assert found["message"].str.contains("would have saved").all()


def test_kawasaki_repeat(result: AuditResult):
    separate, merged = BY_KEY["kawasaki_repeat"]["patient_ids"]
    assert result.courses.filter(pl.col("patient_id") == separate).height == 2
    assert "repeat_justification.repeat_without_justification" in set(_findings(result, separate)["rule_id"])
    courses = result.courses.filter(pl.col("patient_id") == merged)
    assert courses.height == 1
    assert courses["g_per_kg"][0] == pytest.approx(4.0, rel=0.1)
    findings = _findings(result, merged)
    above = findings.filter(pl.col("rule_id") == "course_dose.above_target")
    assert above["severity"].to_list() == ["critical"]
    assert "course_dose.days_outside_regimen" in set(findings["rule_id"])


def test_reference_elderly_gets_the_reminder(result: AuditResult):
    elderly = BY_KEY["reference_appropriate"]["patient_ids"][-1]
    assert "product_safety.slow_rate_reminder" in set(_findings(result, elderly)["rule_id"])


def test_gap_scenarios_build_the_right_courses(result: AuditResult):
    (seven,) = BY_KEY["gap_7_days"]["patient_ids"]
    one = result.courses.filter(pl.col("patient_id") == seven)
    assert one.height == 1
    assert one["doses"][0] == 5
    assert one["g_per_kg"][0] == pytest.approx(2.0, rel=0.1)
    (eight,) = BY_KEY["gap_8_days"]["patient_ids"]
    two = result.courses.filter(pl.col("patient_id") == eight).sort("start")
    assert two["course_number"].to_list() == [1, 2]


def test_two_indications_are_two_first_courses(result: AuditResult):
    for patient_id in BY_KEY["two_indications"]["patient_ids"]:
        courses = result.courses.filter(pl.col("patient_id") == patient_id)
        assert courses.height == 2
        assert courses["indication_group"].n_unique() == 2
        assert courses["course_number"].to_list() == [1, 1]


def test_course_across_two_monthly_files_is_one_course(result: AuditResult):
    (patient_id,) = BY_KEY["text_escaping_and_month_split"]["patient_ids"]
    orders = result.orders.filter(pl.col("patient_id") == patient_id)
    last = orders.filter(pl.col("start") >= pl.datetime(2026, 10, 30))
    assert last["source_file"].n_unique() == 2
    assert last["course_id"].n_unique() == 1


# ------------------------------------------------------------------------------------ quarantine
def test_bad_rows_are_all_quarantined(result: AuditResult):
    bad = SCENARIOS["bad_rows"]
    orders_q = result.quarantine.filter(pl.col("extract") == "orders")
    assert orders_q.height == len(bad) == 12
    expected = sorted((b["order_id"], b["patient_id"], Path(b["file"]).name) for b in bad)
    got = sorted(
        (r["order_id"] or "", r["patient_id"] or "", Path(r["source_file"]).name) for r in orders_q.iter_rows(named=True)
    )
    assert got == expected
    quarantined_ids = {b["order_id"] for b in bad if b["order_id"]}
    assert not set(result.orders["order_id"]) & quarantined_ids


def test_every_quarantined_row_has_a_reason_and_its_text(result: AuditResult):
    q = result.quarantine
    assert q["reason"].null_count() == 0
    assert (q["reason"].str.strip_chars().str.len_chars() > 0).all()
    assert (q["raw"].str.starts_with("{")).all()
    assert q["source_row"].null_count() == 0


@pytest.mark.parametrize(
    ("defect", "reason_part"),
    [
        ("empty order_id", "order_id missing"),
        ("empty patient_id", "patient_id missing"),
        ("dose 0", "dose must be above zero"),
        ("dose negative", "dose must be above zero"),
        ("dose_unit tabs", "unknown dose unit 'tabs'"),
        ("dose_unit vials", "unknown dose unit 'vials'"),
        ("start 31/31/2026", "start is not a date"),
        ("start yesterday", "start is not a date"),
        ("dose non-numeric", "dose is not a number"),
        ("start empty", "start missing"),
        ("duplicated order_id (original)", "different content"),
    ],
)
def test_bad_row_reason(result: AuditResult, defect: str, reason_part: str):
    (row,) = [b for b in SCENARIOS["bad_rows"] if b["defect"] == defect]
    q = result.quarantine.filter(
        pl.col("order_id").eq_missing(row["order_id"] or None), pl.col("patient_id").eq_missing(row["patient_id"] or None)
    )
    assert q.height >= 1
    assert q["reason"].str.contains(reason_part, literal=True).all(), q["reason"].to_list()


# ------------------------------------------------------------------------------------ accounting
def test_row_accounting(result: AuditResult):
    files = sorted((SAMPLE / "orders").glob("*.csv"))
    lines = sum(sum(1 for _ in csv.DictReader(f.open(newline="", encoding="utf-8"))) for f in files)
    assert result.rows_read == lines
    quarantined = result.quarantine.filter(pl.col("extract") == "orders").height
    unrecognised = result.findings.filter(pl.col("rule_id") == "data_quality.unrecognised_immunoglobulin").height
    assert result.rows_read == (
        result.rows_ivig + result.rows_passed_through + result.rows_out_of_scope + quarantined + unrecognised
    )
    assert result.rows_ivig == result.orders.height


def test_every_ivig_order_has_one_course_and_grams_are_conserved(result: AuditResult):
    assert result.orders["course_id"].null_count() == 0
    assert result.orders["order_id"].is_unique().all()
    assert set(result.orders["course_id"]) == set(result.courses["course_id"])
    assert result.orders["total_g"].sum() == pytest.approx(result.courses["total_g"].sum())


def test_findings_are_well_formed(result: AuditResult):
    f = result.findings
    assert f["finding_id"].is_unique().all()
    assert set(f["rule_id"]) <= set(pack().rules)
    course_ids = set(result.courses["course_id"])
    with_course = f.filter(pl.col("course_id").is_not_null())
    assert set(with_course["course_id"]) <= course_ids
    assert f.filter(pl.col("rule_id") != "data_quality.unrecognised_immunoglobulin")["course_id"].null_count() == 0
    assert (f["message"].str.len_chars() > 0).all()
