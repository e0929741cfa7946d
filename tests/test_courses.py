"""Tests of course building: the course gap, course numbers, phases, grams conserved, order -> course map."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from tests.builders import audit, ivig_order

T0 = datetime(2026, 6, 1, 9, 0)


def _at(days: float) -> str:
    return (T0 + timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S")


def _gbs_dose(order_id: str, day: float, patient_id: str = "P1", **kw) -> dict:
    return ivig_order(order_id, patient_id, dose="28", dose_unit="g", start=_at(day), **kw)


@pytest.mark.parametrize(("gap", "n_courses"), [(1, 1), (6, 1), (7, 1), (8, 2), (30, 2)])
def test_course_gap(gap: int, n_courses: int):
    """Doses further apart than course_gap_days (7) start a new course; exactly 7 days does not."""
    result = audit([_gbs_dose("O1", 0), _gbs_dose("O2", 1), _gbs_dose("O3", 1 + gap)])
    assert result.courses.height == n_courses


def test_gap_of_exactly_seven_days_counts_calendar_days_not_hours():
    # Day 2 at 23:00, then day 9 at 08:00: 6 days 9 hours apart, 7 calendar days: one course.
    result = audit([
        ivig_order("O1", start="2026-06-03 23:00:00"),
        ivig_order("O2", start="2026-06-10 08:00:00"),
    ])
    assert result.courses.height == 1


def test_second_course_after_eight_days():
    result = audit([
        _gbs_dose("O1", 0, doses="3"),
        _gbs_dose("O2", 10, doses="2"),  # last dose day 2, next day 10: 8 days
    ])
    courses = result.courses.sort("start")
    assert courses["course_number"].to_list() == [1, 2]
    assert courses["doses"].to_list() == [3, 2]
    assert courses["n_days"].to_list() == [3, 2]
    assert courses["interval_days"].to_list() == [None, 10.0]  # start to start
    assert courses["total_g"].to_list() == [84.0, 56.0]
    assert courses["course_id"].n_unique() == 2


def test_two_indications_give_two_first_courses():
    result = audit([
        ivig_order("O1", indication="ITP", indication_code="D69.3", dose="70", start=_at(0)),
        ivig_order("O2", indication="GBS", indication_code="G61.0", start=_at(60), doses="5"),
    ])
    courses = result.courses.sort("start")
    assert courses["indication_group"].to_list() == ["itp", "gbs"]
    assert courses["course_number"].to_list() == [1, 1]
    assert courses["interval_days"].to_list() == [None, None]
    assert not any(r.startswith("repeat_justification") for r in result.findings["rule_id"].to_list())


def test_interleaved_indications_do_not_break_each_others_courses():
    # GBS days 0-4 and an ITP dose on day 2: two courses, the GBS one keeps its 5 days.
    result = audit([
        _gbs_dose("G1", 0, doses="5"),
        ivig_order("I1", indication="ITP", indication_code="D69.3", dose="70", start=_at(2)),
    ])
    by_group = {r["indication_group"]: r for r in result.courses.iter_rows(named=True)}
    assert by_group["gbs"]["n_days"] == 5 and by_group["gbs"]["total_g"] == 140.0
    assert by_group["itp"]["n_days"] == 1


def test_patients_never_share_a_course():
    result = audit([_gbs_dose("O1", 0, "PA"), _gbs_dose("O2", 0, "PB")])
    assert sorted(result.courses["patient_id"].to_list()) == ["PA", "PB"]


def _cidp(order_id: str, day: float, text: str | None = "CIDP", **kw) -> dict:
    return ivig_order(order_id, indication=text, indication_code="G61.81", dose="70", start=_at(day), **kw)


def test_cidp_first_course_is_induction_and_later_ones_maintenance():
    result = audit([
        _cidp("O1", 0, doses="2"),
        _cidp("O2", 28, justification="INCAT improved"),
        _cidp("O3", 56, justification="grip strength up"),
    ])
    courses = result.courses.sort("start")
    assert courses["indication"].to_list() == ["cidp_induction", "cidp_maintenance", "cidp_maintenance"]
    assert courses["course_number"].to_list() == [1, 2, 3]
    assert courses["indication_group"].unique().to_list() == ["cidp"]


@pytest.mark.parametrize(
    ("text", "regimen"),
    [
        ("CIDP maint", "cidp_maintenance"),
        ("CIDP maintenance", "cidp_maintenance"),
        ("CIDP", "cidp_induction"),
        ("CIDP loading", "cidp_induction"),
    ],
)
def test_cidp_first_course_text_sets_the_phase(text, regimen):
    result = audit([_cidp("O1", 0, text=text, justification="stable")])
    assert result.courses["indication"].to_list() == [regimen]


def test_cidp_later_course_saying_induction_is_induction():
    result = audit([_cidp("O1", 0, doses="2"), _cidp("O2", 60, text="CIDP re-induction", doses="2")])
    assert result.courses.sort("start")["indication"].to_list() == ["cidp_induction", "cidp_induction"]


@pytest.mark.parametrize(
    ("code", "text", "regimen"),
    [("G70.01", None, "mg_crisis"), ("G70.00", None, "mg_maintenance"), (None, "MG crisis", "mg_crisis")],
)
def test_mg_phase(code, text, regimen):
    result = audit([ivig_order("O1", indication=text, indication_code=code, justification="refractory")])
    assert result.courses["indication"].to_list() == [regimen]


def test_grams_are_conserved_and_every_ivig_order_has_one_course():
    orders = [
        _gbs_dose("A1", 0, doses="3"),
        _gbs_dose("A2", 3, doses="2"),
        _gbs_dose("A3", 20),
        ivig_order("B1", "P2", dose="30000", dose_unit="mg", start=_at(1)),
        ivig_order("B2", "P2", dose="300", dose_unit="mL", medication="Privigen 10%", start=_at(2)),
        ivig_order("C1", "P3", dose="0.4", dose_unit="g/kg", weight_kg="80", doses="5", start=_at(5)),
        _cidp("D1", 0, patient_id="P4"),
        _cidp("D2", 25, patient_id="P4", text="CIDP maint", justification="INCAT better"),
        ivig_order("X1", "P5", medication="Aspirin 81 mg", dose="81", dose_unit="mg"),
        ivig_order("X2", "P6", medication="Hizentra", route="SC"),
    ]
    result = audit(orders)
    assert result.orders["order_id"].sort().to_list() == ["A1", "A2", "A3", "B1", "B2", "C1", "D1", "D2"]
    assert result.orders["course_id"].null_count() == 0
    assert set(result.orders["course_id"]) == set(result.courses["course_id"])
    assert result.orders["total_g"].sum() == pytest.approx(result.courses["total_g"].sum())
    per_course = result.orders.group_by("course_id").agg(pl.col("total_g").sum())
    joined = result.courses.join(per_course, on="course_id", suffix="_orders")
    assert joined.height == result.courses.height
    for row in joined.iter_rows(named=True):
        assert row["total_g"] == pytest.approx(row["total_g_orders"])
    # course order_ids list exactly the orders mapped to the course
    for row in result.courses.iter_rows(named=True):
        mapped = result.orders.filter(pl.col("course_id") == row["course_id"])["order_id"].sort().to_list()
        assert row["order_ids"].split(", ") == mapped


def test_course_with_an_unconvertible_dose_has_no_total():
    result = audit([
        _gbs_dose("O1", 0, doses="2"),
        ivig_order("O2", dose="300", dose_unit="mL", medication="Octagam", start=_at(2)),
    ])
    course = result.courses.row(0, named=True)
    assert course["total_g"] is None and course["g_per_kg"] is None
    assert "data_quality.dose_not_assessable" in set(result.findings["rule_id"])


def test_course_weight_and_g_per_kg():
    result = audit([ivig_order("O1", weight_kg="100", height_cm="175", sex="M", dose="33", doses="5")])
    course = result.courses.row(0, named=True)
    assert course["weight_basis"] == "adjusted"
    assert course["dosing_weight_kg"] == pytest.approx(82.3, abs=0.1)
    assert course["g_per_kg"] == pytest.approx(165 / course["dosing_weight_kg"], abs=0.001)
    assert (course["n_days"], course["span_days"], course["doses"]) == (5, 5, 5)
