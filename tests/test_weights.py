"""Tests of the dosing weight: Devine IBW, adjusted weight, BMI, obesity trigger, exceptions, profiles."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.config.rulepack import load_rule_pack
from pipeline.domain.weights import with_dosing_weight


def _weigh(profile: str | None = None, **patient) -> dict:
    """One course's dosing-weight columns under a profile of the shipped rule pack."""
    pack = load_rule_pack(profile=profile)
    row = dict(actual_weight_kg=None, height_cm=None, sex=None, age_years=45.0) | patient
    frame = pl.DataFrame(
        [row],
        schema={"actual_weight_kg": pl.Float64, "height_cm": pl.Float64, "sex": pl.String, "age_years": pl.Float64},
    )
    return with_dosing_weight(frame.lazy(), pack.weights, pack.profile, pack.settings).collect().row(0, named=True)


def test_brief_example_obese_man_is_dosed_on_adjusted_weight():
    w = _weigh(actual_weight_kg=100.0, height_cm=175.0, sex="M")
    assert w["ibw_kg"] == pytest.approx(70.5, abs=0.1)
    assert w["adjusted_weight_kg"] == pytest.approx(82.3, abs=0.1)
    assert w["bmi"] == pytest.approx(32.7, abs=0.05)
    assert w["obese"] is True
    assert w["weight_basis"] == "adjusted"
    assert w["dosing_weight_kg"] == pytest.approx(82.3, abs=0.1)
    assert "obesity trigger met" in w["weight_basis_reason"]


def test_female_ibw_uses_the_female_base():
    w = _weigh(actual_weight_kg=60.0, height_cm=165.0, sex="F")
    # 45.5 + 2.3 x (165 / 2.54 - 60) = 56.91
    assert w["ibw_kg"] == pytest.approx(56.9, abs=0.05)
    assert w["obese"] is False
    assert w["weight_basis"] == "actual"
    assert w["dosing_weight_kg"] == 60.0


def test_ibw_at_exactly_five_feet_is_the_base():
    assert _weigh(actual_weight_kg=60.0, height_cm=152.4, sex="M")["ibw_kg"] == pytest.approx(50.0)
    assert _weigh(actual_weight_kg=60.0, height_cm=152.4, sex="F")["ibw_kg"] == pytest.approx(45.5)


def test_lean_patient_is_dosed_on_actual_weight():
    w = _weigh(actual_weight_kg=72.0, height_cm=178.0, sex="M")
    assert w["obese"] is False
    assert (w["weight_basis"], w["dosing_weight_kg"]) == ("actual", 72.0)


@pytest.mark.parametrize(
    ("patient", "reason_part"),
    [
        # shorter than 152.4 cm: actual weight even when obese
        (dict(actual_weight_kg=90.0, height_cm=150.0, sex="F"), "under 152.4 cm"),
        # under 18: actual weight even when obese
        (dict(actual_weight_kg=95.0, height_cm=165.0, sex="M", age_years=16.0), "age 16"),
        # actual below IBW
        (dict(actual_weight_kg=60.0, height_cm=185.0, sex="M"), "below IBW"),
        # no height, weight not above 100 kg: not obese-looking
        (dict(actual_weight_kg=70.0, height_cm=None, sex="M"), "height missing"),
        # no sex: no IBW, weight not above 100 kg
        (dict(actual_weight_kg=70.0, height_cm=170.0, sex=None), "sex missing"),
    ],
)
def test_exceptions_use_actual_weight(patient, reason_part):
    w = _weigh(**patient)
    assert w["weight_basis"] == "actual"
    assert w["dosing_weight_kg"] == patient["actual_weight_kg"]
    assert reason_part in w["weight_basis_reason"]


def test_short_obese_patient_is_dosed_on_actual_weight_with_bmi_shown():
    w = _weigh(actual_weight_kg=90.0, height_cm=150.0, sex="F")
    assert w["bmi"] == pytest.approx(40.0)
    assert (w["weight_basis"], w["dosing_weight_kg"]) == ("actual", 90.0)
    assert "under 152.4 cm" in w["weight_basis_reason"]


@pytest.mark.parametrize("age", [0.5, 12.0, 17.0, 17.9])
def test_children_use_actual_weight(age):
    w = _weigh(actual_weight_kg=95.0, height_cm=165.0, sex="M", age_years=age)
    assert w["weight_basis"] == "actual"


def test_adult_of_eighteen_uses_adjusted_weight_when_obese():
    w = _weigh(actual_weight_kg=95.0, height_cm=165.0, sex="M", age_years=18.0)
    assert w["weight_basis"] == "adjusted"


def test_no_weight_is_unknown():
    w = _weigh(actual_weight_kg=None, height_cm=175.0, sex="M")
    assert w["weight_basis"] == "unknown"
    assert w["dosing_weight_kg"] is None
    assert w["weight_basis_reason"] == "no weight recorded"


@pytest.mark.parametrize(("weight", "basis"), [(120.0, "unknown"), (100.5, "unknown"), (100.0, "actual"), (70.0, "actual")])
def test_no_height_depends_on_whether_the_weight_looks_obese(weight, basis):
    w = _weigh(actual_weight_kg=weight, height_cm=None, sex="M")
    assert w["ibw_kg"] is None and w["bmi"] is None
    assert w["weight_basis"] == basis
    assert w["dosing_weight_kg"] == (weight if basis == "actual" else None)
    if basis == "unknown":
        assert "obesity cannot be ruled out" in w["weight_basis_reason"]


def test_child_with_no_height_is_assessable_on_actual_weight():
    w = _weigh(actual_weight_kg=18.0, height_cm=None, sex="F", age_years=4.0)
    assert (w["weight_basis"], w["dosing_weight_kg"]) == ("actual", 18.0)


# ------------------------------------------------------------------------------------ obesity trigger
def test_obesity_by_ibw_ratio_only_in_the_default_profile():
    # Woman 155 cm, 70 kg: BMI 29.1 (< 30) but 146% of IBW 47.9 kg.
    patient = dict(actual_weight_kg=70.0, height_cm=155.0, sex="F")
    default = _weigh(**patient)
    assert default["bmi"] < 30
    assert default["actual_weight_kg"] > 1.2 * default["ibw_kg"]
    assert (default["obese"], default["weight_basis"]) == (True, "adjusted")
    ontario = _weigh("ontario", **patient)
    assert (ontario["obese"], ontario["weight_basis"], ontario["dosing_weight_kg"]) == (False, "actual", 70.0)


def test_bmi_exactly_thirty():
    # Man 200 cm, 120 kg: BMI exactly 30.0, 129% of IBW 93.1 kg.
    patient = dict(actual_weight_kg=120.0, height_cm=200.0, sex="M")
    default = _weigh(**patient)
    assert default["bmi"] == 30.0
    assert default["obese"] is True  # bmi_inclusive = true (and over 120% of IBW)
    ontario = _weigh("ontario", **patient)
    assert ontario["obese"] is False  # Ontario: above 30 only, and BMI only
    assert ontario["weight_basis"] == "actual"


def test_ontario_obese_above_thirty():
    w = _weigh("ontario", actual_weight_kg=100.0, height_cm=175.0, sex="M")
    assert (w["obese"], w["weight_basis"]) == (True, "adjusted")
    assert w["dosing_weight_kg"] == pytest.approx(82.3, abs=0.1)


def test_ibw_profile_doses_obese_patients_on_ibw():
    w = _weigh("ibw", actual_weight_kg=100.0, height_cm=175.0, sex="M")
    assert w["weight_basis"] == "ibw"
    assert w["dosing_weight_kg"] == pytest.approx(w["ibw_kg"])
    assert w["dosing_weight_kg"] == pytest.approx(70.5, abs=0.1)
    assert "ideal body weight" in w["weight_basis_reason"]


def test_ibw_profile_keeps_actual_weight_for_lean_patients():
    w = _weigh("ibw", actual_weight_kg=72.0, height_cm=178.0, sex="M")
    assert (w["weight_basis"], w["dosing_weight_kg"]) == ("actual", 72.0)
