"""The audit's memory across nights: stored source rows merged with tonight's extract.

A nightly extract holds one day while a course spans several. The rows that matter for IVIG
patients (their IVIG orders, other medications as evidence, labs, procedures) are kept as
canonical text in the `source_rows` table; each run re-audits that history together with the new
rows, so a course that started yesterday is judged whole today. A new row with the same key as a
stored one (a corrected order) replaces it: nothing is counted twice.
"""

from __future__ import annotations

import polars as pl

from checks.inputs import EXTRACT_COLUMNS
from pipeline.contract import raw_json


def text_struct(extract: str) -> pl.Struct:
    """The canonical columns of an extract as an all-text struct type."""
    return pl.Struct({column: pl.String for column in EXTRACT_COLUMNS[extract]})


def row_key(extract: str) -> pl.Expr:
    """What identifies a row across nights: order_id for orders, the whole row for labs and procedures."""
    if extract == "orders":
        return pl.col("order_id").str.strip_chars()
    return raw_json(extract)


def stored_text_rows(source_rows: pl.DataFrame, extract: str) -> pl.LazyFrame:
    """Stored rows of one extract back in the canonical text layout, with their provenance."""
    columns = list(EXTRACT_COLUMNS[extract])
    return (
        source_rows.lazy()
        .filter(pl.col("extract") == extract)
        .select(
            pl.col("raw").str.json_decode(text_struct(extract)).alias("row"),
            "source_file",
            "source_row",
        )
        .unnest("row")
        .select([*columns, "source_file", "source_row"])
    )


def merge_history(new_rows: pl.LazyFrame, stored: pl.LazyFrame | None, extract: str) -> pl.LazyFrame:
    """Tonight's rows plus the stored rows they do not replace (a new row wins over a stored one with its key)."""
    if stored is None:
        return new_rows
    keys = new_rows.select(row_key=row_key(extract)).filter(pl.col("row_key").is_not_null()).unique()
    earlier = (
        stored.with_columns(row_key=row_key(extract))
        .join(keys, on="row_key", how="anti")
        .drop("row_key")
    )
    return pl.concat([new_rows, earlier], how="vertical_relaxed")


def rows_to_remember(
    text_rows: pl.LazyFrame,
    extract: str,
    ivig_patients: pl.LazyFrame,
    quarantined: pl.LazyFrame,
) -> pl.LazyFrame:
    """The rows of IVIG patients to keep as history (quarantined rows stay in quarantine only)."""
    rejected = quarantined.filter(pl.col("extract") == extract).select("source_file", "source_row")
    return (
        text_rows.with_columns(patient_key=pl.col("patient_id").str.strip_chars())
        .join(ivig_patients.select(pl.col("patient_id").alias("patient_key")), on="patient_key", how="semi")
        .join(rejected, on=["source_file", "source_row"], how="anti")
        .select(
            pl.lit(extract).alias("extract"),
            row_key(extract).alias("row_key"),
            pl.col("patient_key").alias("patient_id"),
            raw_json(extract).alias("raw"),
            "source_file",
            pl.col("source_row").cast(pl.Int64),
        )
        .unique(subset=["extract", "row_key"], keep="first", maintain_order=True)
    )
