"""Tests of normalisation: product matching, grams per dose, indication mapping, daily doses."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from tests.builders import ivig_order, order_rows, pack, products, site_time_zone
from pipeline.contract.rows import check_orders
from pipeline.domain.normalise import classify_medications, expand_daily_doses, map_indications, split_orders


def _classified(*rows) -> pl.DataFrame:
    valid, rejected = check_orders(order_rows(*rows), site_time_zone())
    assert rejected.collect().height == 0
    return classify_medications(valid, products()).collect()


def _split(*rows):
    valid, _ = check_orders(order_rows(*rows), site_time_zone())
    return split_orders(classify_medications(valid, products()))


def _ivig(*rows) -> pl.DataFrame:
    return map_indications(_split(*rows).ivig, pack()).collect()


# ------------------------------------------------------------------------------------ products
@pytest.mark.parametrize(
    ("medication", "route", "product", "scope"),
    [
        ("PRIVIGEN 10%", "IV", "Privigen", "ivig"),
        ("Privigen", "iv", "Privigen", "ivig"),
        ("Gammagard S/D", "IV", "Gammagard S/D", "ivig"),
        ("Gammagard Liquid 10%", "IV", "Gammagard Liquid", "ivig"),
        ("Octagam 5%", "IV", "Octagam 5%", "ivig"),
        ("Octagam 10%", "IV", "Octagam 10%", "ivig"),
        ("Carimune NF", "IV", "Carimune NF", "ivig"),
        ("Hizentra", "SC", "Hizentra", "subcutaneous"),
        ("Hizentra", None, "Hizentra", "subcutaneous"),
        ("Gamunex-C", "SC", "Gamunex-C", "subcutaneous"),
        ("Gamunex-C", "IV", "Gamunex-C", "ivig"),
        ("Hepatitis B Immune Globulin (Nabi-HB)", "IM", "Hepatitis B immune globulin", "other_ig"),
        ("Rho(D) immune globulin", "IM", "Rho(D) immune globulin", "other_ig"),
        ("Thymoglobulin", "IV", "Anti-thymocyte globulin", "other_ig"),
        ("immune globulin IV", "IV", "Immune globulin intravenous (generic)", "ivig"),
        ("Immune Globulin Intravenous (Human)", "IV", "Immune globulin intravenous (generic)", "ivig"),
        ("IVIG", "IV", "Immune globulin intravenous (generic)", "ivig"),
        ("Immune globulin XYZ", "IV", None, "unrecognised_ig"),
        ("Aspirin 81 mg", "PO", None, "other"),
        ("Heparin 25,000 units/250 mL", "IV", None, "other"),
    ],
)
def test_product_matching(medication, route, product, scope):
    row = _classified(ivig_order(medication=medication, route=route)).row(0, named=True)
    assert (row["product"], row["scope"]) == (product, scope)


@pytest.mark.parametrize(
    ("medication", "concentration", "iga_depleted", "sucrose"),
    [
        ("PRIVIGEN 10%", 0.10, False, False),
        ("Octagam 5%", 0.05, False, False),
        ("Gammagard S/D", 0.05, True, False),
        ("Carimune NF", None, False, True),
        ("Octagam", None, False, False),  # strength not stated: never guessed
    ],
)
def test_product_properties(medication, concentration, iga_depleted, sucrose):
    row = _classified(ivig_order(medication=medication)).row(0, named=True)
    assert row["concentration_g_per_ml"] == (pytest.approx(concentration) if concentration else None)
    assert row["iga_depleted"] is iga_depleted
    assert row["contains_sucrose"] is sucrose


def test_split_sends_each_scope_to_its_place():
    split = _split(
        ivig_order("IV1", medication="Privigen"),
        ivig_order("SC1", medication="Hizentra", route="SC"),
        ivig_order("OIG", medication="Rho(D) immune globulin", dose="300", dose_unit="mcg"),
        ivig_order("UIG", medication="Immune globulin XYZ"),
        ivig_order("ASA", medication="Aspirin 81 mg", dose="81", dose_unit="mg"),
        ivig_order("BAD", medication="Privigen", dose_unit="vials"),
    )
    ivig, evidence, oos, unrec, quarantine = pl.collect_all(
        [split.ivig, split.evidence, split.out_of_scope, split.unrecognised_ig, split.quarantine]
    )
    assert ivig["order_id"].to_list() == ["IV1"]
    assert evidence["order_id"].to_list() == ["ASA"]
    assert sorted(oos["order_id"].to_list()) == ["OIG", "SC1"]
    assert unrec["order_id"].to_list() == ["UIG"]
    assert quarantine["order_id"].to_list() == ["BAD"]
    assert quarantine["reason"][0] == "IVIG order: unknown dose unit 'vials'"


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        (dict(dose="0"), "dose must be above zero"),
        (dict(dose="-20"), "dose must be above zero"),
        (dict(dose="1-2"), "dose is not a number: '1-2'"),
        (dict(dose=None), "dose missing"),
        (dict(dose_unit="tabs"), "unknown dose unit 'tabs'"),
        (dict(dose_unit=None), "dose_unit missing"),
    ],
)
def test_ivig_dose_problems_are_quarantined(override, reason):
    split = _split(ivig_order("O1") | override)
    assert split.ivig.collect().height == 0
    quarantine = split.quarantine.collect()
    assert quarantine["order_id"].to_list() == ["O1"]
    assert reason in quarantine["reason"][0]


# ------------------------------------------------------------------------------------ grams
@pytest.mark.parametrize(
    ("override", "grams"),
    [
        (dict(dose="30", dose_unit="g"), 30.0),
        (dict(dose="30", dose_unit="GM"), 30.0),
        (dict(dose="30000", dose_unit="mg"), 30.0),
        (dict(dose="30,000", dose_unit="mg"), 30.0),
        (dict(dose="300", dose_unit="mL", medication="Privigen 10%"), 30.0),
        (dict(dose="300", dose_unit="cc", medication="Gamunex-C"), 30.0),
        (dict(dose="600", dose_unit="mL", medication="Octagam 5%"), 30.0),
        (dict(dose="0.4", dose_unit="g/kg", weight_kg="80"), 32.0),
    ],
)
def test_grams_per_dose(override, grams):
    row = _ivig(ivig_order("O1", doses="1") | override).row(0, named=True)
    assert row["grams_per_dose"] == pytest.approx(grams)
    assert row["total_g"] == pytest.approx(grams)
    assert row["grams_problem"] is None


def test_total_grams_of_an_order_with_several_doses():
    row = _ivig(ivig_order("O1", dose="0.4", dose_unit="g/kg", weight_kg="80", doses="5")).row(0, named=True)
    assert row["grams_per_dose"] == pytest.approx(32.0)
    assert row["total_g"] == pytest.approx(160.0)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (dict(dose="300", dose_unit="mL", medication="Octagam"), "strength of 'Octagam' is not known"),
        (dict(dose="300", dose_unit="mL", medication="Carimune NF"), "strength of 'Carimune NF' is not known"),
        (dict(dose="0.4", dose_unit="g/kg", weight_kg=None), "no weight on the order"),
    ],
)
def test_unconvertible_dose_has_no_grams_and_a_problem(override, problem):
    row = _ivig(ivig_order("O1") | override).row(0, named=True)
    assert row["grams_per_dose"] is None
    assert row["total_g"] is None
    assert problem in row["grams_problem"]


# ------------------------------------------------------------------------------------ indications
@pytest.mark.parametrize(
    ("text", "code", "group", "phase_hint"),
    [
        (None, "G61.0", "gbs", None),
        (None, "G610", "gbs", None),
        (None, "g61.0", "gbs", None),
        ("AIDP", None, "gbs", None),
        ("Guillain-Barre", None, "gbs", None),
        ("GBS", None, "gbs", None),
        ("CIDP maint", None, "cidp", "later"),
        ("CIDP loading", None, "cidp", "first"),
        ("CIDP", "G61.81", "cidp", None),
        (None, "G70.01", "mg", "first"),
        (None, "G70.00", "mg", "later"),
        ("MG crisis", None, "mg", "first"),
        ("Kawasaki", None, "kawasaki", None),
        (None, "M30.3", "kawasaki", None),
        ("ITP", None, "itp", None),
        ("immune thrombocytopenia", None, "itp", None),
        ("MS relapse", None, "ms", None),
        (None, "G35", "ms", None),
        ("ITP", "G61.0", "gbs", None),  # a recognised code wins over the text
        ("ITP", "A41.9", "itp", None),  # an unrecognised code does not hide recognised text
        ("sepsis", None, "unrecognised", None),
        (None, "A41.9", "unrecognised", None),
        ("Smith", None, "unrecognised", None),  # 'ms' only as a whole word
        (None, None, "missing", None),
        ("  ", " ", "missing", None),
    ],
)
def test_indication_mapping(text, code, group, phase_hint):
    row = _ivig(ivig_order("O1", indication=text, indication_code=code)).row(0, named=True)
    assert row["indication_group"] == group
    assert row["phase_hint"] == phase_hint


@pytest.mark.parametrize(
    ("text", "code", "source"),
    [("ITP", "G61.0", "code"), ("ITP", None, "text"), ("ITP", "A41.9", "text"), ("sepsis", None, "none")],
)
def test_indication_source(text, code, source):
    row = _ivig(ivig_order("O1", indication=text, indication_code=code)).row(0, named=True)
    assert row["indication_source"] == source


# ------------------------------------------------------------------------------------ daily doses
def test_expand_daily_doses_gives_one_row_per_consecutive_day():
    orders = _ivig(
        ivig_order("O5", doses="5", start="2026-06-28 22:30:00"),
        ivig_order("O1", patient_id="P2", doses=None),
    )
    days = expand_daily_doses(orders.lazy()).collect().sort("order_id", "dose_at")
    five = days.filter(pl.col("order_id") == "O5")
    assert five.height == 5
    start = datetime(2026, 6, 28, 22, 30)
    assert five["dose_at"].to_list() == [start + timedelta(days=i) for i in range(5)]
    assert [d.isoformat() for d in five["dose_day"].to_list()] == [
        "2026-06-28", "2026-06-29", "2026-06-30", "2026-07-01", "2026-07-02"
    ]
    assert days.filter(pl.col("order_id") == "O1").height == 1
    # grams per dose are per day: the five rows carry the order's per-dose grams
    assert five["grams_per_dose"].sum() == pytest.approx(five["total_g"][0])


# ------------------------------------------------------------------------------------ the pass over an extract
def test_the_pass_keeps_ig_rows_whole_evidence_of_every_patient_narrow_and_counts_every_row():
    from pipeline.audit import EVIDENCE_COLUMNS, Extracts, select_relevant

    extract = order_rows(
        ivig_order("O1", "P1", indication="GBS", justification="first course"),
        {"order_id": "O2", "patient_id": "P1", "medication": "Aspirin 81 mg", "dose": "81", "dose_unit": "mg",
         "start": "2026-06-01 09:00:00", "route": "PO", "service": "Neurology"},
        # Evidence of a patient without IVIG (yet): an aspirin order often comes before the first IVIG dose.
        {"order_id": "O3", "patient_id": "P2", "medication": "aspirin", "start": "2026-06-01 09:00:00"},
        {"order_id": "O4", "patient_id": "P2", "medication": "heparin", "start": "2026-06-01 09:00:00"},
        {"order_id": "O5", "patient_id": "P3", "medication": "   ", "start": "2026-06-01 09:00:00"},  # to quarantine
        {"order_id": "O6", "patient_id": "P4", "medication": "Hizentra", "route": "SC", "start": "2026-06-01"},
    )
    selected, rows_read = select_relevant(Extracts(orders=extract), products(), pack())
    kept = selected.orders.collect().sort("order_id")
    assert rows_read == 6
    assert kept["order_id"].to_list() == ["O1", "O2", "O3", "O5", "O6"]
    assert all(dtype == pl.String for name, dtype in kept.schema.items() if name != "source_row")
    ig = kept.filter(pl.col("order_id") == "O1").row(0, named=True)
    assert (ig["indication"], ig["justification"], ig["medication"]) == ("GBS", "first course", "Privigen 10%")
    evidence = kept.filter(pl.col("order_id") == "O2").row(0, named=True)
    assert evidence["medication"] == "Aspirin 81 mg" and evidence["service"] is None  # narrowed to what rules read
    assert all(evidence[c] is not None for c in ("order_id", "patient_id", "start", "source_file", "source_row"))
    assert {"order_id", "patient_id", "medication", "start", "doses"} <= set(EVIDENCE_COLUMNS)
