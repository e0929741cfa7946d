"""The same extract audited under each policy profile gives the differences docs/rules.md documents."""

from __future__ import annotations

import polars as pl
import pytest

from tests.builders import audit

# Four men of 175 cm (IBW 70.47 kg), GBS 2 g/kg over 5 days.
PATIENTS = {
    # 100 kg, BMI 32.7, adjusted 82.3 kg: 165 g = 2 g/kg of adjusted weight.
    "obese_on_adjusted": {"weight_kg": 100, "dose": 33},
    # 100 kg dosed on actual weight: 200 g.
    "obese_on_actual": {"weight_kg": 100, "dose": 40},
    # 91.875 kg: BMI exactly 30.0, 130% of IBW; dosed on actual weight: 183.75 g.
    "bmi_30_on_actual": {"weight_kg": 91.875, "dose": 36.75},
    # 70 kg, lean: 140 g on actual weight.
    "lean_on_actual": {"weight_kg": 70, "dose": 28},
}

WEIGHT = "weight_basis.actual_weight_in_obesity"
ABOVE = "course_dose.above_target"

# Documented in docs/rules.md ("Policy profiles"): the serious or weight findings each patient gets.
EXPECTED: dict[str, dict[str, set[tuple[str, str]]]] = {
    "default": {
        "obese_on_adjusted": set(),
        "obese_on_actual": {(WEIGHT, "warning")},
        "bmi_30_on_actual": {(WEIGHT, "warning")},
        "lean_on_actual": set(),
    },
    "ontario": {
        "obese_on_adjusted": set(),
        "obese_on_actual": {(WEIGHT, "warning")},
        "bmi_30_on_actual": set(),
        "lean_on_actual": set(),
    },
    "ibw": {
        "obese_on_adjusted": {(ABOVE, "warning")},
        "obese_on_actual": {(WEIGHT, "warning")},
        "bmi_30_on_actual": {(WEIGHT, "warning")},
        "lean_on_actual": set(),
    },
    "discretionary": {
        "obese_on_adjusted": set(),
        "obese_on_actual": {(WEIGHT, "info")},
        "bmi_30_on_actual": {(WEIGHT, "info")},
        "lean_on_actual": set(),
    },
}

# Grams the weight-basis finding says dosing on the profile's weight would have saved.
SAVED_G = {"default": 35.4, "ontario": 35.4, "ibw": 59.1, "discretionary": 35.4}


def _extract() -> list[dict]:
    rows = []
    for name, patient in PATIENTS.items():
        rows.append({
            "order_id": name, "patient_id": name, "medication": "Privigen 10%", "dose": patient["dose"],
            "dose_unit": "g", "doses": 5, "start": "2026-06-01 09:00:00", "weight_kg": patient["weight_kg"],
            "height_cm": 175, "sex": "M", "age_years": 45, "indication": "GBS",
        })
    return rows


@pytest.fixture(scope="module", params=list(EXPECTED))
def audited(request):
    return request.param, audit(_extract(), profile=request.param)


def test_profile_gives_the_documented_findings(audited):
    profile, result = audited
    relevant = result.findings.filter(
        pl.col("rule_id").is_in([WEIGHT, ABOVE, "course_dose.below_target"])
    )
    for patient, expected in EXPECTED[profile].items():
        got = set(relevant.filter(pl.col("patient_id") == patient).select("rule_id", "severity").iter_rows())
        assert got == expected, (profile, patient)


def test_profile_weight_basis_saving(audited):
    profile, result = audited
    saved = result.findings.filter(pl.col("patient_id") == "obese_on_actual", pl.col("rule_id") == WEIGHT)["excess_g"]
    assert saved.to_list() == [pytest.approx(SAVED_G[profile], abs=0.2)]


def test_profile_is_recorded_on_the_courses(audited):
    profile, result = audited
    basis = dict(result.courses.select("patient_id", "weight_basis").iter_rows())
    assert basis["lean_on_actual"] == "actual"
    assert basis["obese_on_actual"] == ("ibw" if profile == "ibw" else "adjusted")
    assert basis["bmi_30_on_actual"] == {"ontario": "actual", "ibw": "ibw"}.get(profile, "adjusted")


def test_docs_list_every_rule():
    from pipeline.config.rulepack import load_rule_pack
    from tests.conftest import REPO

    page = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    missing = [rule_id for rule_id in load_rule_pack().rules if f"`{rule_id}`" not in page]
    assert not missing
