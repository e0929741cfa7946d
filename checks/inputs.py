"""Contracts of the input extracts: required columns, and Pandera schemas of the parsed rows."""

from __future__ import annotations

import polars as pl
import pandera.polars as pa

DT = pl.Datetime("us")

#: Canonical order columns (contract.md) and whether each is required.
ORDER_COLUMNS: dict[str, bool] = {
    "order_id": True,
    "patient_id": True,
    "encounter_id": False,
    "facility": False,
    "medication": True,
    "dose": True,
    "dose_unit": True,
    "doses": False,
    "start": True,
    "route": False,
    "weight_kg": False,
    "height_cm": False,
    "sex": False,
    "age_years": False,
    "birth_date": False,
    "indication": False,
    "indication_code": False,
    "pregnant": False,
    "pre_pregnancy_weight_kg": False,
    "justification": False,
    # A site's code for the justification (vocabulary in the rule pack's [justification.codes]); used before the text.
    "justification_code": False,
    "prescriber_id": False,
    "service": False,
    # National Drug Code of the product dispensed (any of 4-4-2, 5-3-2, 5-4-1 with dashes, or 11 digits):
    # matched by prefix against `ndc_prefixes` of the product dictionary before the name.
    "ndc": False,
    # When this version of the order was recorded (the source system's last-modified time): when
    # given, the latest version of an order_id is in force whatever order the files arrive in.
    "updated_at": False,
}

LAB_COLUMNS: dict[str, bool] = {
    "patient_id": True,
    "collected_at": True,
    "test": True,
    "value": True,
    "unit": False,
    "ref_low": False,
    "ref_high": False,
}

PROCEDURE_COLUMNS: dict[str, bool] = {
    "patient_id": True,
    "performed_at": True,
    "procedure": True,
}

EXTRACT_COLUMNS: dict[str, dict[str, bool]] = {
    "orders": ORDER_COLUMNS,
    "labs": LAB_COLUMNS,
    "procedures": PROCEDURE_COLUMNS,
}

DOSE_UNITS = ("g", "mg", "ml", "g/kg")

#: Plausibility limits of every numeric canonical value (data, documented; a site may change them here).
#: These live here, not in rulepack.toml, because they decide whether a row can be audited at all
#: (quarantine), not whether a course is appropriate (findings). A value outside its limits is not
#: a clinical judgement but an impossible number (a weight in grams or pounds entered as kg, a course
#: total entered as a daily dose, a volume entered as grams): the row goes to quarantine with the
#: reason and the limit, and is never audited on a guessed value. NaN and inf are never a number.
#: Limits are inclusive. Checked on IVIG rows unless said otherwise:
#:   weight_kg, pre_pregnancy_weight_kg  kilograms (0.3 kg: the smallest viable neonate)
#:   height_cm          centimetres
#:   age_years          years, as given or from birth_date at the order start
#:   doses              daily doses of one order, on every row the audit reads (an order is expanded
#:                      into one row per daily dose: the limit is checked first, so no row can exhaust
#:                      memory; aspirin orders are read as evidence over their doses too)
#:   dose               the amount as written, in any unit (above zero)
#:   grams_per_day      grams of one daily dose after conversion: a dose that rounds to 0 g
#:                      (1e-323 mg) is below the lower limit
#:   g_per_kg_per_day   grams per kilogram of actual weight of one daily dose (when the weight is known)
#:   start_year         calendar year of the order start (a typo such as 0206 or 9999 would otherwise
#:                      stretch the report's month-by-month trend over thousands of years); wide enough
#:                      for de-identified research extracts, whose dates are shifted (MIMIC: 2100-2210)
#:   lab_value          a lab result of a test the audit uses, in the lab's unit (platelets may be
#:                      written per microlitre: 450000)
#:   lab_reference      ref_low and ref_high of a lab result
PLAUSIBILITY: dict[str, tuple[float, float]] = {
    "weight_kg": (0.3, 350.0),
    "pre_pregnancy_weight_kg": (0.3, 350.0),
    "height_cm": (30.0, 250.0),
    "age_years": (0.0, 130.0),
    "doses": (1.0, 366.0),
    "dose": (0.0, 1_000_000.0),
    "grams_per_day": (0.01, 300.0),
    "g_per_kg_per_day": (0.0, 3.0),
    "start_year": (1900.0, 2300.0),
    "lab_value": (0.0, 10_000_000.0),
    "lab_reference": (0.0, 10_000_000.0),
}
LAB_TESTS = ("creatinine", "egfr", "crcl", "hemoglobin", "platelets", "iga", "igg")


def required_columns(extract: str) -> list[str]:
    """The columns an extract of this kind must have."""
    return [name for name, required in EXTRACT_COLUMNS[extract].items() if required]


# Grain: one parsed order row (any medication) that passed the structural row checks.
ORDER_ROWS = pa.DataFrameSchema(
    {
        # Not unique: an order_id has one row per version (pipeline.history); the version in
        # force is unique (checks.outputs.ORDERS).
        "order_id": pa.Column(pl.String, nullable=False),
        "patient_id": pa.Column(pl.String, nullable=False),
        "medication": pa.Column(pl.String, nullable=False),
        "start": pa.Column(DT, nullable=False),
        "dose": pa.Column(pl.Float64, nullable=True),
        "dose_unit": pa.Column(pl.String, nullable=True),
        "doses": pa.Column(pl.Int64, nullable=False, checks=pa.Check.ge(1)),
        "weight_kg": pa.Column(pl.Float64, nullable=True, checks=pa.Check.gt(0)),
        "height_cm": pa.Column(pl.Float64, nullable=True, checks=pa.Check.gt(0)),
        "age_years": pa.Column(pl.Float64, nullable=True, checks=pa.Check.ge(0)),
        "sex": pa.Column(pl.String, nullable=True, checks=pa.Check.isin(["M", "F"])),
        "pregnant": pa.Column(pl.Boolean, nullable=True),
        "source_file": pa.Column(pl.String, nullable=False),
        "source_row": pa.Column(pl.Int64, nullable=False),
    },
    strict=False,
    name="order rows",
)

# Grain: one IVIG order ready for dosing (dose and unit checked).
IVIG_ORDER_ROWS = ORDER_ROWS.update_columns(
    {
        "dose": {"nullable": False, "checks": [pa.Check.gt(0)]},
        "dose_unit": {"nullable": False, "checks": [pa.Check.isin(list(DOSE_UNITS))]},
    }
)

# Grain: one lab result.
LAB_ROWS = pa.DataFrameSchema(
    {
        "patient_id": pa.Column(pl.String, nullable=False),
        "collected_at": pa.Column(DT, nullable=False),
        "test": pa.Column(pl.String, nullable=False, checks=pa.Check.isin(list(LAB_TESTS))),
        "value": pa.Column(pl.Float64, nullable=False),
        "ref_low": pa.Column(pl.Float64, nullable=True),
        "ref_high": pa.Column(pl.Float64, nullable=True),
    },
    strict=False,
    name="lab rows",
)

# Grain: one procedure performed.
PROCEDURE_ROWS = pa.DataFrameSchema(
    {
        "patient_id": pa.Column(pl.String, nullable=False),
        "performed_at": pa.Column(DT, nullable=False),
        "procedure": pa.Column(pl.String, nullable=False),
    },
    strict=False,
    name="procedure rows",
)
