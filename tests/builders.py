"""Builders of in-memory extracts (all-text canonical columns, as `pipeline.ingest.tables.scan_extract` yields).

Every value is turned into text (None stays null) so the frames look exactly like a CSV read with
`infer_schema=False`; missing canonical columns are filled with nulls; `source_file` and
`source_row` are added unless given.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable

import polars as pl

from checks.inputs import EXTRACT_COLUMNS
from pipeline.audit import AuditResult, Extracts, run_audit
from pipeline.config.products import ProductDictionary, load_products
from pipeline.config.rulepack import RulePack, load_rule_pack

SEVERE = ("warning", "critical")


def _text(value: Any) -> str | None:
    """A cell as the text a CSV would hold (None stays null, floats without a trailing .0)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def extract_rows(extract: str, rows: Iterable[dict[str, Any]], source_file: str = "test.csv") -> pl.LazyFrame:
    """Rows of one extract as a lazy frame of text columns in the canonical layout plus provenance."""
    columns = list(EXTRACT_COLUMNS[extract])
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(columns) - {"source_file", "source_row"}
        if unknown:
            raise KeyError(f"not a canonical {extract} column: {', '.join(sorted(unknown))}")
    data: dict[str, list] = {c: [_text(r.get(c)) for r in rows] for c in columns}
    data["source_file"] = [str(r.get("source_file", source_file)) for r in rows]
    data["source_row"] = [int(r.get("source_row", i + 1)) for i, r in enumerate(rows)]
    schema = {c: pl.String for c in columns} | {"source_file": pl.String, "source_row": pl.Int64}
    return pl.DataFrame(data, schema=schema).lazy()


def order_rows(*rows: dict[str, Any]) -> pl.LazyFrame:
    """An orders extract from dicts of canonical column values (missing columns are null)."""
    return extract_rows("orders", rows, "orders.csv")


def lab_rows(*rows: dict[str, Any]) -> pl.LazyFrame:
    """A labs extract from dicts of canonical column values."""
    return extract_rows("labs", rows, "labs.csv")


def procedure_rows(*rows: dict[str, Any]) -> pl.LazyFrame:
    """A procedures extract from dicts of canonical column values."""
    return extract_rows("procedures", rows, "procedures.csv")


def ivig_order(order_id: str = "O1", patient_id: str = "P1", **kw: Any) -> dict[str, Any]:
    """A plausible IVIG order row (lean 70 kg man, 175 cm, GBS, 30 g Privigen); override any column."""
    row = dict(
        order_id=order_id, patient_id=patient_id, encounter_id="E1", facility="North General",
        medication="Privigen 10%", dose="28", dose_unit="g", doses="1", start="2026-06-01 09:00:00",
        route="IV", weight_kg="70", height_cm="175", sex="M", age_years="45",
        indication="GBS", indication_code="G61.0", prescriber_id="DR001", service="Neurology",
    )
    return row | kw


@lru_cache(maxsize=None)
def products() -> ProductDictionary:
    """The shipped product dictionary (loaded once)."""
    return load_products()


@lru_cache(maxsize=None)
def pack(profile: str | None = None) -> RulePack:
    """The shipped rule pack with a profile (loaded once per profile)."""
    return load_rule_pack(profile=profile)


def site_time_zone() -> str:
    """The shipped rule pack's site time zone (what the contract reads dates in)."""
    return pack().settings["site_timezone"]


def audit(
    orders: Iterable[dict[str, Any]],
    labs: Iterable[dict[str, Any]] | None = None,
    procedures: Iterable[dict[str, Any]] | None = None,
    profile: str | None = None,
) -> AuditResult:
    """run_audit over in-memory rows with the shipped dictionary and rule pack."""
    extracts = Extracts(
        orders=order_rows(*orders),
        labs=lab_rows(*labs) if labs is not None else None,
        procedures=procedure_rows(*procedures) if procedures is not None else None,
    )
    return run_audit(extracts, products(), pack(profile), "test-run")


def rule_ids(result: AuditResult, patient_id: str | None = None, severities: Iterable[str] | None = None) -> set[str]:
    """The rule ids found (optionally for one patient and some severities)."""
    findings = result.findings
    if patient_id is not None:
        findings = findings.filter(pl.col("patient_id") == patient_id)
    if severities is not None:
        findings = findings.filter(pl.col("severity").is_in(list(severities)))
    return set(findings["rule_id"].to_list())
