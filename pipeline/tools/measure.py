"""IVIG appropriateness as a FHIR R4 MeasureReport that other sites and registries can compare.

`build_measure_report` is pure: the database's metric answers in (`pipeline.warehouse.measure_summaries`:
`course_summary` overall and per indication, `category_summary`), a dict out. The report is a summary
(type `summary`): counts, proportions and grams only; it never carries a patient, course, order or
prescriber identifier.

Population: the IVIG courses that started in the period (inclusive dates). Two appropriateness groups:
as the audit flagged them (`appropriate_flagged`) and after review (`appropriate_after_review`: findings
dismissed with a reason that clears them no longer count). Stratifiers: by indication and by finding
category (courses with a finding of that category counting against them; a course can sit in several).
Two more groups carry the grams used and the grams avoidable after review, with the same indication strata.
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


def _stratum(value: dict[str, Any], courses: int, appropriate: int) -> dict[str, Any]:
    stratum: dict[str, Any] = {
        "value": value,
        "population": [_population("initial-population", courses), _population("denominator", courses),
                       _population("numerator", appropriate)],
    }
    score = _proportion(appropriate, courses)
    if score is not None:
        stratum["measureScore"] = score
    return stratum


def _count(frame: pl.DataFrame, column: str) -> int:
    return int(frame[column].sum()) if frame.height else 0


def build_measure_report(
    summaries: dict[str, pl.DataFrame],
    start: date,
    end: date,
    *,
    generated_at: datetime | None = None,
) -> dict[str, Any]:
    """A FHIR R4 summary MeasureReport of IVIG appropriateness for courses started in [start, end].

    `summaries` are `pipeline.warehouse.measure_summaries(con, start, end)`; `generated_at` becomes `date`
    (omitted when None); the rule packs of the period's runs are recorded as extensions.
    """
    if end < start:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    overall, by_indication = summaries["overall"], summaries["by_indication"]
    by_category = {r["group_key"]: r for r in summaries["by_category"].to_dicts()}
    n = _count(overall, "courses")
    indications = by_indication.to_dicts()

    def indication_value(row: dict) -> dict[str, Any]:
        return _concept(INDICATION_SYSTEM, row["group_key"], row["group_label"])

    def appropriateness(code: str, text: str, numerator: str) -> dict[str, Any]:
        group: dict[str, Any] = {
            "code": _concept(GROUP_SYSTEM, code, text),
            "population": [_population("initial-population", n), _population("denominator", n),
                           _population("numerator", _count(overall, numerator))],
            "stratifier": [
                {
                    "code": [_concept(STRATIFIER_SYSTEM, "indication", "indication (regimen judged against)")],
                    "stratum": [_stratum(indication_value(r), r["courses"], r[numerator]) for r in indications],
                },
                {
                    "code": [_concept(STRATIFIER_SYSTEM, "finding-category", "courses with a finding of the category counting against them")],
                    "stratum": [
                        _stratum(_concept(CATEGORY_SYSTEM, category, category),
                                 by_category.get(category, {}).get("courses", 0),
                                 by_category.get(category, {}).get(numerator, 0))
                        for category in CATEGORIES
                    ],
                },
            ],
        }
        score = _proportion(_count(overall, numerator), n)
        if score is not None:
            group["measureScore"] = score
        return group

    def grams_group(code: str, text: str, column: str) -> dict[str, Any]:
        return {
            "code": _concept(GROUP_SYSTEM, code, text),
            "population": [_population("initial-population", n)],
            "measureScore": _grams(overall[column].sum() if overall.height else 0.0),
            "stratifier": [
                {
                    "code": [_concept(STRATIFIER_SYSTEM, "indication", "indication (regimen judged against)")],
                    "stratum": [
                        {"value": indication_value(r), "population": [_population("initial-population", r["courses"])],
                         "measureScore": _grams(r[column])}
                        for r in indications
                    ],
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
            appropriateness("appropriateness", "IVIG courses judged appropriate by the audit (as flagged)", "appropriate_flagged"),
            appropriateness("appropriateness-after-review", "IVIG courses appropriate once reviews count", "appropriate_after_review"),
            grams_group("grams-used", "grams of IVIG in the courses (known grams only)", "grams_used"),
            grams_group("grams-avoidable", "grams avoidable after review, each course once under its first lever", "grams_avoidable"),
        ],
    }
    if generated_at is not None:
        stamp = generated_at if generated_at.tzinfo else generated_at.replace(tzinfo=timezone.utc)
        report["date"] = stamp.isoformat(timespec="seconds")
    packs = summaries.get("rule_packs")
    if packs is not None and packs.height:
        report["extension"] = [{"url": RULE_PACK_EXTENSION, "valueString": f"{v} (profile {p})"}
                               for v, p in packs.iter_rows()]
    return report
