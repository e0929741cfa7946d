"""Pandera contracts of the tables the audit writes to DuckDB (grain and columns of each)."""

from __future__ import annotations

import polars as pl
import pandera.polars as pa

CATEGORIES = (
    "indication",
    "weight_basis",
    "course_dose",
    "repeat_justification",
    "combination",
    "product_safety",
    "monitoring",
    "data_quality",
)
SEVERITIES = ("info", "warning", "critical")
STATUSES = ("open", "acknowledged", "actioned", "dismissed")
WEIGHT_BASES = ("actual", "adjusted", "ibw", "unknown")
#: What stands for the actual weight of a course (pipeline.domain.weights.with_actual_weight).
ACTUAL_WEIGHT_SOURCES = ("current weight", "pre-pregnancy weight")

DT = pl.Datetime("us")


def _col(dtype, nullable: bool = True, **kw) -> pa.Column:
    """A column with the project's default of nullable values."""
    return pa.Column(dtype, nullable=nullable, **kw)


# Grain: one row per IVIG order (an order may cover several daily doses).
ORDERS = pa.DataFrameSchema(
    {
        "order_id": _col(pl.String, nullable=False, unique=True),
        "patient_id": _col(pl.String, nullable=False),
        "encounter_id": _col(pl.String),
        "facility": _col(pl.String),
        "service": _col(pl.String),
        "prescriber_id": _col(pl.String),
        "medication": _col(pl.String, nullable=False),
        "product": _col(pl.String, nullable=False),
        "concentration_g_per_ml": _col(pl.Float64),
        "contains_sucrose": _col(pl.Boolean),
        "iga_depleted": _col(pl.Boolean),
        "dose": _col(pl.Float64, nullable=False, checks=pa.Check.gt(0)),
        "dose_unit": _col(pl.String, nullable=False),
        "doses": _col(pl.Int64, nullable=False, checks=pa.Check.ge(1)),
        "grams_per_dose": _col(pl.Float64, checks=pa.Check.gt(0)),
        "total_g": _col(pl.Float64, checks=pa.Check.gt(0)),
        "start": _col(DT, nullable=False),
        "route": _col(pl.String),
        "weight_kg": _col(pl.Float64),
        "height_cm": _col(pl.Float64),
        "sex": _col(pl.String),
        "age_years": _col(pl.Float64),
        "pregnant": _col(pl.Boolean),
        "indication_text": _col(pl.String),
        "indication_code": _col(pl.String),
        "indication": _col(pl.String, nullable=False),
        "indication_source": _col(pl.String, nullable=False),
        "justification": _col(pl.String),
        "course_id": _col(pl.String),
        "source_file": _col(pl.String, nullable=False),
        "source_row": _col(pl.Int64, nullable=False),
        # Added by schema migration 5 (stored after run_id).
        "justification_code": _col(pl.String),
        "pre_pregnancy_weight_kg": _col(pl.Float64),
    },
    strict=True,
    name="orders",
)

# Grain: one row per course (one patient, one indication group, no gap longer than the course gap).
COURSES = pa.DataFrameSchema(
    {
        "course_id": _col(pl.String, nullable=False, unique=True),
        "patient_id": _col(pl.String, nullable=False),
        "facility": _col(pl.String),
        "service": _col(pl.String),
        "prescriber_id": _col(pl.String),
        "indication_group": _col(pl.String, nullable=False),
        "indication": _col(pl.String, nullable=False),
        "course_number": _col(pl.Int64, nullable=False, checks=pa.Check.ge(1)),
        "start": _col(DT, nullable=False),
        "end": _col(DT, nullable=False),
        "n_days": _col(pl.Int64, nullable=False, checks=pa.Check.ge(1)),
        "span_days": _col(pl.Int64, nullable=False, checks=pa.Check.ge(1)),
        "doses": _col(pl.Int64, nullable=False, checks=pa.Check.ge(1)),
        "total_g": _col(pl.Float64, checks=pa.Check.ge(0)),
        "order_ids": _col(pl.String, nullable=False),
        "products": _col(pl.String, nullable=False),
        "actual_weight_kg": _col(pl.Float64),
        "height_cm": _col(pl.Float64),
        "sex": _col(pl.String),
        "age_years": _col(pl.Float64),
        "pregnant": _col(pl.Boolean),
        "bmi": _col(pl.Float64),
        "ibw_kg": _col(pl.Float64),
        "adjusted_weight_kg": _col(pl.Float64),
        "obese": _col(pl.Boolean),
        "dosing_weight_kg": _col(pl.Float64),
        "weight_basis": _col(pl.String, nullable=False, checks=pa.Check.isin(WEIGHT_BASES)),
        "weight_basis_reason": _col(pl.String, nullable=False),
        "g_per_kg": _col(pl.Float64),
        "interval_days": _col(pl.Float64),
        "justification": _col(pl.String),
        "rejected_corrections": _col(pl.String),
        "appropriate": _col(pl.Boolean, nullable=False),
        "excess_g": _col(pl.Float64, nullable=False, checks=pa.Check.ge(0)),
        # Added by schema migration 5 (stored after run_id).
        "current_weight_kg": _col(pl.Float64),
        "pre_pregnancy_weight_kg": _col(pl.Float64),
        "actual_weight_source": _col(pl.String, nullable=False, checks=pa.Check.isin(ACTUAL_WEIGHT_SOURCES)),
        "justification_code": _col(pl.String),
    },
    strict=True,
    name="courses",
)

# Grain: one row per problem found (rule x course), identified by a stable finding_id.
FINDINGS = pa.DataFrameSchema(
    {
        "finding_id": _col(pl.String, nullable=False, unique=True),
        "rule_id": _col(pl.String, nullable=False),
        "rule_version": _col(pl.String, nullable=False),
        "category": _col(pl.String, nullable=False, checks=pa.Check.isin(CATEGORIES)),
        "severity": _col(pl.String, nullable=False, checks=pa.Check.isin(SEVERITIES)),
        "status": _col(pl.String, nullable=False, checks=pa.Check.isin(STATUSES)),
        "patient_id": _col(pl.String, nullable=False),
        "course_id": _col(pl.String),
        "order_ids": _col(pl.String),
        "indication": _col(pl.String),
        "message": _col(pl.String, nullable=False),
        "expected": _col(pl.String),
        "observed": _col(pl.String),
        "action": _col(pl.String),
        "evidence": _col(pl.String),
        "excess_g": _col(pl.Float64, nullable=False, checks=pa.Check.ge(0)),
        "first_seen_run": _col(pl.String, nullable=False),
        "last_seen_run": _col(pl.String, nullable=False),
        "resolved_run": _col(pl.String),
    },
    strict=True,
    name="findings",
)

# Grain: one row per rejected input row.
QUARANTINE = pa.DataFrameSchema(
    {
        "run_id": _col(pl.String, nullable=False),
        "extract": _col(pl.String, nullable=False),
        "source_file": _col(pl.String, nullable=False),
        "source_row": _col(pl.Int64, nullable=False),
        "order_id": _col(pl.String),
        "patient_id": _col(pl.String),
        "reason": _col(pl.String, nullable=False),
        "raw": _col(pl.String, nullable=False),
    },
    strict=True,
    name="quarantine",
)
