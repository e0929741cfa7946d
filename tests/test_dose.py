"""The dose calculator (`ivig-audit dose`): the audit's own weights, regimens and products, plus a vial plan."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import flows.cli
import flows.cli_tools  # noqa: F401 - registers `dose` and `measure` on the app until cli.py imports it
from pipeline.tools.dose import DoseError, DoseRequest, calculate_dose, daily_split, fewest_vials, format_dose, round_course
from pipeline.config.products import load_products
from pipeline.config.rulepack import load_rule_pack

runner = CliRunner()
PRODUCTS = load_products()
PRIVIGEN = [5.0, 10.0, 20.0, 40.0]


def dose(profile: str | None = None, **kw) -> dict:
    return calculate_dose(DoseRequest(**kw), load_rule_pack(profile=profile), PRODUCTS)


def cli(*args: str):
    return runner.invoke(flows.cli.app, ["dose", *args])


def one_line_error(result) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ the brief's example
def test_obese_man_gbs_is_dosed_on_adjusted_weight_and_rounded_to_5g():
    r = dose(indication="GBS", weight_kg=100, height_cm=175, sex="M", age_years=60, product="Privigen")
    w, reg, rnd = r["weights"], r["regimen"], r["rounding"]
    assert (w["ibw_kg"], w["adjusted_weight_kg"], w["bmi"]) == (70.5, 82.3, 32.7)
    assert w["weight_basis"] == "adjusted" and w["dosing_weight_kg"] == 82.3
    assert "obesity trigger met" in w["reason"]
    assert reg["target_g_per_kg"] == 2.0 and reg["days"] == 5 and reg["g_per_kg_per_day"] == 0.4
    assert reg["calculated_course_g"] == pytest.approx(164.6)
    assert reg["band_g"] == [pytest.approx(148.1), pytest.approx(181.0)]
    assert rnd["rounded_course_g"] == 165 and rnd["rounded_by"] == "step"
    assert r["actual_weight_course_g"] == 200 and r["grams_saved_vs_actual_weight"] == 35
    plan = r["vial_plan"]
    # 35 + 35 + 35 + 30 + 30 g, each day of whole vials: the course needs the vials of its days.
    assert plan["per_day_g"] == [35, 35, 35, 30, 30]
    assert plan["vials"] == [{"size_g": 20.0, "count": 5}, {"size_g": 10.0, "count": 5}, {"size_g": 5.0, "count": 3}]
    assert plan["total_vials"] == 13 and plan["total_g"] == 165


def test_text_output_shows_every_number_a_pharmacist_checks():
    text = format_dose(dose(indication="GBS", weight_kg=100, height_cm=175, sex="M", product="Privigen"))
    for needle in ("70.5 kg", "82.3 kg", "32.7", "adjusted", "0.4 g/kg/day x 5", "165 g", "200 g", "35 g saved",
                   "5 x 20 g + 5 x 10 g + 3 x 5 g = 165 g (13 vials)", "148.1-181 g"):
        assert needle in text, needle


# ------------------------------------------------------------------------------ patients
def test_obese_woman_uses_the_female_ibw():
    r = dose(indication="GBS", weight_kg=90, height_cm=165, sex="F")
    assert r["weights"]["ibw_kg"] == 56.9 and r["weights"]["adjusted_weight_kg"] == 70.1
    assert r["weights"]["weight_basis"] == "adjusted"
    assert r["rounding"]["rounded_course_g"] == 140


def test_child_is_dosed_on_actual_weight():
    r = dose(indication="Kawasaki disease", weight_kg=40, height_cm=140, sex="M", age_years=10)
    assert r["weights"]["weight_basis"] == "actual" and r["weights"]["dosing_weight_kg"] == 40
    assert "age 10" in r["weights"]["reason"]
    assert r["regimen"]["days"] == 1 and r["rounding"]["rounded_course_g"] == 80
    assert r["grams_saved_vs_actual_weight"] == 0


def test_infant_too_small_to_round_gets_the_calculated_dose_and_a_covering_vial():
    r = dose(indication="KD", weight_kg=3.3, height_cm=50, sex="F", age_years=0.2, product="Privigen")
    assert r["weights"]["ibw_kg"] is None  # the Devine formula has no meaning at 50 cm
    assert r["rounding"]["rounded_by"] == "none" and r["rounding"]["rounded_course_g"] == 6.6
    assert r["vial_plan"]["vials"] == [{"size_g": 10.0, "count": 1}] and r["vial_plan"]["total_g"] == 10
    assert "discard" in r["vial_plan"]["note"]


def test_short_patient_is_dosed_on_actual_weight():
    r = dose(indication="ITP", weight_kg=80, height_cm=150, sex="F", age_years=40)
    assert r["weights"]["weight_basis"] == "actual" and "height 150" in r["weights"]["reason"]
    # ITP 1-2 g/kg over 1-2 days: the top of the range over the longest schedule = 1 g/kg/day x 2.
    assert r["regimen"]["target_g_per_kg"] == 2.0 and r["regimen"]["g_per_kg_per_day"] == 1.0
    assert r["rounding"]["rounded_course_g"] == 160


def test_pregnancy_uses_the_pre_pregnancy_weight():
    r = dose(indication="GBS", weight_kg=80, height_cm=165, sex="F", pregnant=True, pre_pregnancy_weight_kg=62)
    assert r["weights"]["actual_weight_kg"] == 62


def test_pregnancy_shows_both_weights_and_names_the_basis():
    r = dose(indication="GBS", weight_kg=84, height_cm=175, sex="F", pregnant=True, pre_pregnancy_weight_kg=70)
    w = r["weights"]
    assert (w["current_weight_kg"], w["pre_pregnancy_weight_kg"], w["actual_weight_kg"]) == (84, 70, 70)
    assert w["actual_weight_source"] == "pre-pregnancy weight" and w["dosing_weight_kg"] == 70
    assert "pre-pregnancy weight 70.0 kg used, not the current 84.0 kg" in w["reason"]
    assert r["rounding"]["rounded_course_g"] == 140
    text = format_dose(r)
    assert "current weight   84 kg" in text and "pre-pregnancy    70 kg" in text
    assert "actual weight    " not in text  # the pre-pregnancy weight is not shown as 'actual'
    not_pregnant = dose(indication="GBS", weight_kg=84, height_cm=175, sex="F", pre_pregnancy_weight_kg=70)
    assert not_pregnant["weights"]["actual_weight_source"] == "current weight" and not_pregnant["weights"]["actual_weight_kg"] == 84


def test_child_without_height_says_why_ibw_is_not_used():
    r = dose(indication="Kawasaki disease", weight_kg=16, age_years=4)
    assert r["weights"]["ibw_kg"] is None
    assert r["weights"]["no_ibw_because"] == "not used: age 4 years, under 18, is dosed on actual weight"
    assert "ideal (IBW)      n/a (not used: age 4 years, under 18" in format_dose(r)
    adult = dose(indication="GBS", weight_kg=70)
    assert adult["weights"]["no_ibw_because"] == "not known: give --height and --sex"


# ------------------------------------------------------------------------------ policy profiles
def test_ontario_uses_bmi_only_where_default_also_uses_the_ibw_ratio():
    # 165 cm, 70 kg woman: BMI 25.7 (not obese by BMI) but 123% of IBW 56.9 kg.
    patient = dict(indication="GBS", weight_kg=70, height_cm=165, sex="F")
    default, ontario = dose(**patient), dose(profile="ontario", **patient)
    assert default["weights"]["weight_basis"] == "adjusted" and default["weights"]["dosing_weight_kg"] == 62.1
    assert ontario["weights"]["weight_basis"] == "actual" and ontario["weights"]["dosing_weight_kg"] == 70
    assert (default["rounding"]["rounded_course_g"], ontario["rounding"]["rounded_course_g"]) == (125, 140)
    assert ontario["rule_pack"]["profile"] == "ontario"


def test_ibw_profile_doses_obese_patients_on_ideal_weight():
    r = dose(profile="ibw", indication="GBS", weight_kg=100, height_cm=175, sex="M")
    assert r["weights"]["weight_basis"] == "ibw" and r["weights"]["dosing_weight_kg"] == 70.5
    assert r["rounding"]["rounded_course_g"] == 140 and r["grams_saved_vs_actual_weight"] == 60


# ------------------------------------------------------------------------------ indications and regimens
@pytest.mark.parametrize(
    ("indication", "phase", "regimen"),
    [
        ("G61.0", None, "gbs"),
        ("Guillain Barre", None, "gbs"),
        ("CIDP", None, "cidp_induction"),
        ("CIDP", "later", "cidp_maintenance"),
        ("CIDP maint", None, "cidp_maintenance"),
        ("CIDP maint", "first", "cidp_induction"),
        ("MG crisis", None, "mg_crisis"),
        ("G70.00", None, "mg_maintenance"),
        ("myasthenia gravis", "later", "mg_maintenance"),
    ],
)
def test_indication_and_phase_pick_the_audit_regimen(indication, phase, regimen):
    r = dose(indication=indication, weight_kg=70, height_cm=175, sex="M", phase=phase)
    assert r["indication"]["regimen"] == regimen


def test_maintenance_range_uses_top_of_range_unless_asked():
    base = dict(indication="CIDP", phase="later", weight_kg=70, height_cm=175, sex="M")
    assert dose(**base)["rounding"]["rounded_course_g"] == 70
    r = dose(g_per_kg=0.4, **base)
    assert r["regimen"]["calculated_course_g"] == 28 and r["rounding"]["rounded_course_g"] == 30
    assert r["regimen"]["band_g_per_kg"] == [0.36, 1.1]
    with pytest.raises(DoseError, match="outside"):
        dose(g_per_kg=1.5, **base)


def test_days_choose_within_the_regimen():
    r = dose(indication="GBS", weight_kg=70, height_cm=175, sex="M", days=2)
    assert r["regimen"]["days"] == 2 and r["regimen"]["g_per_kg_per_day"] == 1.0
    with pytest.raises(DoseError, match="2-5 day"):
        dose(indication="GBS", weight_kg=70, height_cm=175, sex="M", days=7)


def test_ms_is_not_routine_and_explained():
    r = dose(indication="multiple sclerosis", weight_kg=70, height_cm=170, sex="F")
    assert r["status"] == "not_routine" and "regimen" not in r
    assert "not routine" in r["explanation"] and "pregnancy" in r["explanation"]


def test_unrecognised_indication_and_non_ivig_product_are_errors():
    with pytest.raises(DoseError, match="not a recognised"):
        dose(indication="eczema", weight_kg=70)
    with pytest.raises(DoseError, match="not an IVIG product"):
        dose(indication="GBS", weight_kg=70, height_cm=170, sex="M", product="Hizentra")


# ------------------------------------------------------------------------------ vial arithmetic
def test_fewest_vials():
    assert fewest_vials(165, PRIVIGEN) == {40.0: 4, 5.0: 1}
    assert fewest_vials(60, PRIVIGEN) == {40.0: 1, 20.0: 1}
    assert fewest_vials(7.5, [1, 2.5, 5, 10]) == {5.0: 1, 2.5: 1}
    assert fewest_vials(7, [5, 10]) is None
    assert fewest_vials(12, [3, 6, 12]) == {12.0: 1}


def test_rounding_prefers_the_step_then_whole_vials_and_ties_round_down():
    assert round_course(164.6, 148.1, 181.0, 5, PRIVIGEN) == (165, "step")
    assert round_course(162.5, 146.25, 178.75, 5, []) == (160, "step")  # tie: fewer grams
    assert round_course(6.6, 5.94, 7.26, 5, [1, 2.5, 5]) == (6.5, "vials")
    assert round_course(6.6, 5.94, 7.26, 5, PRIVIGEN) == (6.6, "none")


@pytest.mark.parametrize(
    "request_kw",
    [
        dict(indication="GBS", weight_kg=100, height_cm=175, sex="M", product="Privigen"),
        dict(indication="CIDP maintenance", weight_kg=70, height_cm=165, sex="F", product="Gamunex-C"),
        dict(indication="ITP", weight_kg=63, height_cm=170, sex="F", product="Octagam 10%"),
        dict(indication="GBS", weight_kg=58, height_cm=160, sex="F", days=3, product="Gammagard Liquid"),
        dict(indication="KD", weight_kg=16, age_years=4, product="Privigen"),
    ],
)
def test_course_vial_plan_is_the_sum_of_the_daily_plans(request_kw):
    plan = dose(**request_kw)["vial_plan"]
    by_size: dict[float, int] = {}
    for day in plan["per_day_vials"]:
        for vial in day:
            by_size[vial["size_g"]] = by_size.get(vial["size_g"], 0) + vial["count"]
    assert {v["size_g"]: v["count"] for v in plan["vials"]} == by_size
    assert plan["total_vials"] == sum(by_size.values())
    assert plan["total_g"] == pytest.approx(sum(plan["per_day_g"])) == pytest.approx(sum(s * c for s, c in by_size.items()))


def test_mg_maintenance_is_not_routine_but_still_calculated():
    r = dose(indication="G70.00", weight_kg=70, height_cm=175, sex="M")
    assert r["status"] == "not_routine" and r["indication"]["regimen"] == "mg_maintenance"
    assert "refractory" in r["explanation"] and r["rounding"]["rounded_course_g"] == 70


def test_daily_split_uses_whole_vials():
    assert daily_split(165, 5, PRIVIGEN, 5, 0.1) == [35, 35, 35, 30, 30]
    assert daily_split(165, 5, [], 5, 0.1) == [35, 35, 35, 30, 30]
    # Octagam 10% (2, 5, 10, 20, 30 g): 125 g over 2 days in 5 vials (65 + 60 g, each within 10% of
    # 62.5 g), not 10 vials for the most even 63 + 62 g.
    assert daily_split(125, 2, [2, 5, 10, 20, 30], 5, 0.1) == [65, 60]
    assert daily_split(7, 2, [5, 10], 5, 0.1) is None


# ------------------------------------------------------------------------------ command line
def test_cli_text_and_json():
    text = cli("--indication", "GBS", "--weight", "100", "--height", "175", "--sex", "M", "--product", "Privigen")
    assert text.exit_code == 0, text.stderr
    assert "165 g" in text.stdout and "5 x 20 g + 5 x 10 g + 3 x 5 g = 165 g (13 vials)" in text.stdout
    result = cli("--indication", "G61.0", "--weight", "100", "--height", "175", "--sex", "male", "--age", "60",
                 "--profile", "ontario", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["weights"]["ibw_kg"] == 70.5 and payload["rounding"]["rounded_course_g"] == 165
    assert payload["rule_pack"]["profile"] == "ontario"


def test_cli_not_routine_exits_0_with_the_explanation():
    result = cli("--indication", "MS", "--weight", "70", "--height", "170", "--sex", "F")
    assert result.exit_code == 0
    assert "not routine" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--indication", "eczema", "--weight", "70"], "not a recognised IVIG indication"),
        (["--indication", "GBS", "--weight", "heavy"], "--weight must be a number"),
        (["--indication", "GBS", "--weight", "-5"], "not a plausible weight"),
        (["--indication", "GBS", "--weight", "70", "--sex", "X"], "--sex must be M or F"),
        (["--indication", "GBS", "--weight", "70", "--days", "9"], "outside the Guillain-Barre"),
        (["--indication", "GBS", "--weight", "70", "--phase", "later"], "--phase applies only"),
        (["--indication", "GBS", "--weight", "70", "--product", "aspirin"], "not in the product dictionary"),
        (["--indication", "GBS", "--weight", "70", "--profile", "nope"], "unknown profile"),
        (["--indication", "GBS", "--weight", "130"], "give --height and --sex"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, needle):
    result = cli(*args)
    assert result.exit_code == 2
    assert needle in one_line_error(result)
