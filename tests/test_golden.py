"""Golden patients (pipeline/data/golden_patients.toml, beside the rule pack): each case is run through the whole audit on its own."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.builders import SEVERE, audit, pack

GOLDEN = Path(__file__).resolve().parents[1] / "pipeline" / "data" / "golden_patients.toml"
DATA = tomllib.loads(GOLDEN.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = DATA["case"]
CASE_KEYS = {
    "name", "description", "orders", "labs", "procedures", "expect_rules", "forbid_rules",
    "expect_severity", "expect_excess_g", "expect_courses", "expect_quarantined", "profile",
}


def _orders(case: dict[str, Any]) -> list[dict[str, Any]]:
    """The case's order rows over the file's defaults, with generated order ids."""
    return [
        DATA["order_defaults"] | {"order_id": f"{case['name']}-{n}"} | row
        for n, row in enumerate(case["orders"], start=1)
    ]


def _others(case: dict[str, Any], key: str, defaults: str) -> list[dict[str, Any]] | None:
    """Lab or procedure rows over their defaults (None when the case gives no such extract)."""
    if key not in case:
        return None
    return [DATA[defaults] | row for row in case[key]]


def _run(case: dict[str, Any]):
    return audit(
        _orders(case),
        labs=_others(case, "labs", "lab_defaults"),
        procedures=_others(case, "procedures", "procedure_defaults"),
        profile=case.get("profile"),
    )


# ------------------------------------------------------------------------------------ the file itself
def test_case_names_are_unique_and_described():
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        assert set(case) <= CASE_KEYS, f"{case['name']}: unknown keys {set(case) - CASE_KEYS}"
        assert case.get("description"), case["name"]
        assert case.get("orders"), case["name"]
        assert "expect_rules" in case and "forbid_rules" in case, case["name"]


def test_cases_name_only_rules_of_the_pack():
    known = set(pack().rules)
    for case in CASES:
        named = set(case["expect_rules"]) | set(case["forbid_rules"])
        named |= set(case.get("expect_severity", {})) | set(case.get("expect_excess_g", {}))
        assert named <= known, f"{case['name']}: unknown rule ids {sorted(named - known)}"
        assert not set(case["expect_rules"]) & set(case["forbid_rules"]), case["name"]
        # numbers are only checked for rules the case expects
        assert set(case.get("expect_severity", {})) <= set(case["expect_rules"]), case["name"]
        assert set(case.get("expect_excess_g", {})) <= set(case["expect_rules"]), case["name"]


def test_every_rule_has_a_flagged_and_a_not_flagged_golden_patient():
    """Adding a rule to the pack without golden cases fails here."""
    flagged = {r for c in CASES for r in c["expect_rules"]}
    not_flagged = {r for c in CASES for r in c["forbid_rules"]}
    rules = set(pack().rules)
    assert sorted(rules - flagged) == [], "rules with no golden patient that must be flagged"
    assert sorted(rules - not_flagged) == [], "rules with no golden patient that must not be flagged"


# ------------------------------------------------------------------------------------ each case
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_patient(case: dict[str, Any]):
    result = _run(case)
    findings = result.findings
    found = set(findings["rule_id"].to_list())
    summary = findings.select("rule_id", "severity", "excess_g", "message").rows()

    missing = set(case["expect_rules"]) - found
    assert not missing, f"expected rules not found: {sorted(missing)}; findings: {summary}"
    unwanted = set(case["forbid_rules"]) & found
    assert not unwanted, f"forbidden rules found: {sorted(unwanted)}; findings: {summary}"

    for rule_id, severity in case.get("expect_severity", {}).items():
        severities = set(findings.filter(pl.col("rule_id") == rule_id)["severity"].to_list())
        assert severities == {severity}, f"{rule_id}: severity {severities}, expected {severity}"

    for rule_id, spec in case.get("expect_excess_g", {}).items():
        values = findings.filter(pl.col("rule_id") == rule_id)["excess_g"].to_list()
        assert values, rule_id
        assert max(values) == pytest.approx(spec["value"], abs=spec.get("tolerance", 0.1)), f"{rule_id}: {values}"

    if "expect_courses" in case:
        assert result.courses.height == case["expect_courses"]

    # Whatever the case: no order vanishes, findings carry their evidence, and the course table
    # agrees with the findings on what is appropriate.
    quarantined = result.quarantine.select("order_id", "reason").rows()
    assert len(quarantined) == case.get("expect_quarantined", 0), quarantined
    assert result.rows_read == (
        result.rows_ivig + result.rows_passed_through + result.rows_out_of_scope + result.rows_quarantined_orders
        + findings.filter(pl.col("rule_id") == "data_quality.unrecognised_immunoglobulin").height
    )
    rules = pack(case.get("profile")).rules
    for row in findings.iter_rows(named=True):
        assert row["message"], row
        assert (row["rule_version"], row["category"]) == (rules[row["rule_id"]].version, rules[row["rule_id"]].category)
    serious_courses = set(
        findings.filter(pl.col("severity").is_in(SEVERE), pl.col("course_id").is_not_null())["course_id"].to_list()
    )
    inappropriate = set(result.courses.filter(~pl.col("appropriate"))["course_id"].to_list())
    assert inappropriate == serious_courses
