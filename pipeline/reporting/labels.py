"""Words for codes: indications, categories, severities, as the report and worklist show them."""

from __future__ import annotations

import polars as pl

from checks.outputs import SEVERITIES as _SEVERITIES
from checks.outputs import STATUSES
from checks.tables import vocabulary_labels

INDICATION_LABELS: dict[str, str] = {
    "gbs": "Guillain-Barré syndrome",
    "cidp_induction": "CIDP induction",
    "cidp_maintenance": "CIDP maintenance",
    "mg_crisis": "Myasthenia gravis crisis",
    "mg_maintenance": "Myasthenia gravis maintenance",
    "kawasaki": "Kawasaki disease",
    "itp": "Immune thrombocytopenia",
    "ms": "Multiple sclerosis",
    "unrecognised": "Unrecognised indication",
    "missing": "Indication missing",
}


CATEGORY_LABELS: dict[str, str] = vocabulary_labels("category")


SEVERITIES: tuple[str, ...] = _SEVERITIES
REVIEW_STATUSES: tuple[str, ...] = STATUSES


def indication_label(key: str | None) -> str:
    """Human label of an indication key; unknown keys are shown as they are."""
    if key is None:
        return INDICATION_LABELS["missing"]
    return INDICATION_LABELS.get(key, key)


def category_label(key: str | None) -> str:
    """Human label of a finding category; unknown keys are shown as they are."""
    if key is None:
        return "(none)"
    return CATEGORY_LABELS.get(key, key)


def _label_col(column: str, mapping: dict[str, str], missing: str) -> pl.Expr:
    """Vectorised label lookup: mapped keys get their label, others are shown as they are."""
    col = pl.col(column)
    return pl.when(col.is_null()).then(pl.lit(missing)).otherwise(
        col.replace_strict(mapping, default=col, return_dtype=pl.String)
    )


def _indication_label_expr(column: str = "indication") -> pl.Expr:
    return _label_col(column, INDICATION_LABELS, INDICATION_LABELS["missing"])


def _category_label_expr(column: str = "category") -> pl.Expr:
    return _label_col(column, CATEGORY_LABELS, "(none)")
