"""Keyed pseudonyms (HMAC) for patient ids in every output that leaves the database."""

from __future__ import annotations

import hashlib
import hmac
import os

import polars as pl

from pipeline.reporting.options import PSEUDONYM_ENV, ReportOptions, ReportOptionsError

PSEUDONYM_PREFIX = "anon-"


PSEUDONYM_HEX = 16  # 64 bits of the HMAC: collisions are negligible for any hospital's patient count


# Shorter identifiers are replaced in the id columns only, never inside free text (a short numeric
# id such as "140" would otherwise rewrite doses inside messages).
PSEUDONYM_MIN_TEXT_LEN = 4


def resolve_pseudonym_key(options: ReportOptions) -> bytes | None:
    """The HMAC key when pseudonymising (option, else environment); error when there is none."""
    if not options.pseudonymize:
        return None
    key = options.pseudonym_key or os.environ.get(PSEUDONYM_ENV)
    if not key:
        raise ReportOptionsError(
            f"--pseudonymize needs a key: pass --pseudonym-key or set {PSEUDONYM_ENV}"
        )
    return key.encode("utf-8")


def pseudonym_map(ids: pl.Series, key: bytes) -> pl.DataFrame:
    """patient_id -> 'anon-' + truncated HMAC-SHA256(key, id), for the UNIQUE ids only.

    Polars has no HMAC expression, so the digest is computed in Python with hashlib, once per
    distinct patient id (a few thousand per hospital, not one per row); the result is joined
    back to every table, which keeps the per-row work vectorised.
    """
    unique = ids.drop_nulls().unique().sort().to_list()
    anon = [
        PSEUDONYM_PREFIX + hmac.new(key, str(pid).encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]
        for pid in unique
    ]
    return pl.DataFrame({"patient_id": unique, "pseudonym": anon}, schema={"patient_id": pl.String, "pseudonym": pl.String})


def pseudonymize_tables(tables: dict[str, pl.DataFrame], key: bytes) -> dict[str, pl.DataFrame]:
    """Every patient id replaced by its keyed pseudonym, also inside course and finding ids.

    `patient_id` columns are replaced by a join; ids embedded in other text (a quarantined row's raw
    text, a ledger row's version, messages; course ids written before schema v5 held the patient id)
    by one Aho-Corasick pass (`str.replace_many`, longest id first so 'P1' never rewrites part of 'P12').
    """
    frames = [df.select(pl.col("patient_id").cast(pl.String)) for df in tables.values()
              if isinstance(df, pl.DataFrame) and "patient_id" in df.columns]
    if not frames:
        return dict(tables)
    mapping = pseudonym_map(pl.concat(frames)["patient_id"], key)
    if mapping.height == 0:
        return dict(tables)
    by_len = mapping.sort(pl.col("patient_id").str.len_chars(), descending=True)
    ids, anon = by_len["patient_id"].to_list(), by_len["pseudonym"].to_list()
    long_ids = by_len.filter(pl.col("patient_id").str.len_chars() >= PSEUDONYM_MIN_TEXT_LEN)
    text_ids, text_anon = long_ids["patient_id"].to_list(), long_ids["pseudonym"].to_list()
    id_cols = {"course_id", "finding_id"}
    text_cols = {"message", "expected", "observed", "action", "evidence", "raw", "version", "order_ids", "reason",
                 "rejected_corrections"}

    out: dict[str, pl.DataFrame] = {}
    for name, df in tables.items():
        if not isinstance(df, pl.DataFrame):
            out[name] = df
            continue
        if "patient_id" in df.columns:
            df = (
                df.with_columns(pl.col("patient_id").cast(pl.String))
                .join(mapping, on="patient_id", how="left", maintain_order="left")
                .with_columns(pl.col("pseudonym").alias("patient_id"))
                .drop("pseudonym")
            )
        exprs = []
        for col, dtype in df.schema.items():
            if dtype != pl.String:
                continue
            if col in id_cols:
                exprs.append(pl.col(col).str.replace_many(ids, anon, leftmost=True))
            elif col in text_cols and text_ids:
                exprs.append(pl.col(col).str.replace_many(text_ids, text_anon, leftmost=True))
        out[name] = df.with_columns(exprs) if exprs else df
    return out
