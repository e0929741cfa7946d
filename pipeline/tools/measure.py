"""IVIG appropriateness as a FHIR R4 MeasureReport that other sites and registries can compare.

`build_measure_report` is pure: frames in (the stored `courses` and `findings` tables), a dict out.
The report is a summary (type `summary`): counts, proportions and grams only. It never carries a
patient, course, order or prescriber identifier (course ids embed the patient id, so they are not
used either).

Population: the IVIG courses that started in the period (inclusive dates). Numerator: those the
audit judged appropriate (`courses.appropriate`). Stratifiers: by indication (the regimen the course
was judged against) and by finding category (the courses with at least one open warning or
critical finding of that category; a course can sit in several of these strata). Two more groups
carry the grams used and the grams avoidable (sum of `courses.excess_g`) with the same indication
strata.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

import polars as pl

from checks.outputs import CATEGORIES

MEASURE_URL = "https://github.com/ivig-audit/measures/ivig-appropriateness"
_BASE = "https://github.com/ivig-audit/measures"
GROUP_SYSTEM = f"{_BASE}/CodeSystem/measure-group"
INDICATION_SYSTEM = f"{_BASE}/CodeSystem/ivig-indication"
CATEGORY_SYSTEM = f"{_BASE}/CodeSystem/finding-category"
STRATIFIER_SYSTEM = f"{_BASE}/CodeSystem/stratifier"
RULE_PACK_EXTENSION = f"{_BASE}/StructureDefinition/rule-pack"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
IMPROVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
UCUM = "http://unitsofmeasure.org"
SERIOUS = ("warning", "critical")


def _concept(system: str, code: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code}]}
    if text:
        concept["text"] = text
    return concept


def _population(code: str, count: int) -> dict[str, Any]:
    return {"code": _concept(POPULATION_SYSTEM, code), "count": int(count)}


def _proportion(numerator: int, denominator: int) -> dict[str, Any] | None:
    return {"value": round(numerator / denominator, 4), "unit": "1", "system": UCUM, "code": "1"} if denominator else None


def _grams(value: float | None) -> dict[str, Any]:
    return {"value": round(float(value or 0.0), 1), "unit": "g", "system": UCUM, "code": "g"}


def courses_in_period(courses: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """The courses that started between start and end (both inclusive)."""
    return courses.filter(pl.col("start").cast(pl.Date).is_between(start, end, closed="both"))


def open_serious_findings(findings: pl.DataFrame) -> pl.DataFrame:
    """Findings still open (review status open and not resolved by a later run) of warning or critical severity."""
    keep = (pl.col("status") == "open") & pl.col("severity").is_in(SERIOUS) & pl.col("course_id").is_not_null()
    if "resolved_run" in findings.columns:
        keep = keep & pl.col("resolved_run").is_null()
    return findings.filter(keep)


def _stratum(value: dict[str, Any], members: pl.DataFrame) -> dict[str, Any]:
    n = members.height
    appropriate = int(members["appropriate"].sum()) if n else 0
    stratum: dict[str, Any] = {
        "value": value,
        "population": [_population("initial-population", n), _population("denominator", n), _population("numerator", appropriate)],
    }
    score = _proportion(appropriate, n)
    if score is not None:
        stratum["measureScore"] = score
    return stratum


def _grams_stratum(value: dict[str, Any], members: pl.DataFrame, column: str) -> dict[str, Any]:
    return {
        "value": value,
        "population": [_population("initial-population", members.height)],
        "measureScore": _grams(members[column].sum() if members.height else 0.0),
    }


def build_measure_report(
    courses: pl.DataFrame,
    findings: pl.DataFrame,
    start: date,
    end: date,
    *,
    generated_at: datetime | None = None,
    rule_packs: list[str] | None = None,
) -> dict[str, Any]:
    """A FHIR R4 summary MeasureReport of IVIG appropriateness for courses started in [start, end].

    `generated_at` becomes `date` (omitted when None); `rule_packs` (for example
    '2026.11.1 (profile default)') are recorded as extensions so readers know what was applied.
    """
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    period = courses_in_period(courses, start, end).with_columns(pl.col("appropriate").fill_null(False))
    indications = sorted(period["indication"].unique().to_list())
    serious = open_serious_findings(findings).filter(pl.col("course_id").is_in(period["course_id"].implode()))

    n = period.height
    appropriate = int(period["appropriate"].sum()) if n else 0
    by_indication = {ind: period.filter(pl.col("indication") == ind) for ind in indications}
    indication_value = {ind: _concept(INDICATION_SYSTEM, ind, ind) for ind in indications}
    appropriateness: dict[str, Any] = {
        "code": _concept(GROUP_SYSTEM, "appropriateness", "IVIG courses judged appropriate by the audit"),
        "population": [_population("initial-population", n), _population("denominator", n), _population("numerator", appropriate)],
        "stratifier": [
            {
                "code": [_concept(STRATIFIER_SYSTEM, "indication", "indication (regimen judged against)")],
                "stratum": [_stratum(indication_value[ind], by_indication[ind]) for ind in indications],
            },
            {
                "code": [_concept(STRATIFIER_SYSTEM, "finding-category", "courses with an open warning or critical finding of the category")],
                "stratum": [
                    _stratum(
                        _concept(CATEGORY_SYSTEM, category, category),
                        period.filter(pl.col("course_id").is_in(serious.filter(pl.col("category") == category)["course_id"].implode())),
                    )
                    for category in CATEGORIES
                ],
            },
        ],
    }
    score = _proportion(appropriate, n)
    if score is not None:
        appropriateness["measureScore"] = score

    def grams_group(code: str, text: str, column: str) -> dict[str, Any]:
        return {
            "code": _concept(GROUP_SYSTEM, code, text),
            "population": [_population("initial-population", n)],
            "measureScore": _grams(period[column].sum() if n else 0.0),
            "stratifier": [
                {
                    "code": [_concept(STRATIFIER_SYSTEM, "indication", "indication (regimen judged against)")],
                    "stratum": [_grams_stratum(indication_value[ind], by_indication[ind], column) for ind in indications],
                }
            ],
        }

    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "id": f"ivig-appropriateness-{start.isoformat()}-{end.isoformat()}",
        "status": "complete",
        "type": "summary",
        "measure": MEASURE_URL,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "improvementNotation": _concept(IMPROVEMENT_SYSTEM, "increase", "a higher share of appropriate courses is better"),
        "group": [
            appropriateness,
            grams_group("grams-used", "grams of IVIG in the courses (known grams only)", "total_g"),
            grams_group("grams-avoidable", "grams above target or not indicated (sum of courses.excess_g)", "excess_g"),
        ],
    }
    if generated_at is not None:
        stamp = generated_at if generated_at.tzinfo else generated_at.replace(tzinfo=timezone.utc)
        report["date"] = stamp.isoformat(timespec="seconds")
    if rule_packs:
        report["extension"] = [{"url": RULE_PACK_EXTENSION, "valueString": text} for text in rule_packs]
    return report


def rule_packs_of(courses: pl.DataFrame, runs: pl.DataFrame, start: date, end: date) -> list[str]:
    """'version (profile name)' of the runs that wrote the period's courses (all runs when that is not known)."""
    if runs.is_empty() or not {"rule_pack_version", "profile"} <= set(runs.columns):
        return []
    if "run_id" in courses.columns and "run_id" in runs.columns:
        ids = courses_in_period(courses, start, end)["run_id"].unique()
        runs = runs.filter(pl.col("run_id").is_in(ids.implode()))
    pairs = runs.select("rule_pack_version", "profile").unique().sort("rule_pack_version", "profile")
    return [f"{v} (profile {p})" for v, p in pairs.iter_rows()]
