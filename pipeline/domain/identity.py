"""Lasting identity of courses and findings: ids that survive a late dose, a correction and a rerun.

A course is a run of doses, so whatever names it today (its first dose, its start date) can
change tomorrow: a dose charted a day late can become its first. A course therefore *inherits*
the id of the stored course it continues (the one it shares the most orders with), and only a
course that continues none gets a fresh id. Fresh ids are a digest of what first defined the
course (patient, indication group, the order of its first dose), so one run over all the files
mints the same ids as the nights that led to it whenever no earlier dose came late.

A finding is one rule about one course (or one order): `<course_id>.<rule_id>`, so it keeps
its review history for as long as its course keeps its id. Ids use only letters, digits, '.',
'_' and '-': safe to paste into a shell.
"""

from __future__ import annotations

import duckdb
import polars as pl

#: Length of the hex digest in an id: 48 bits, so a clash among a hospital's courses is
#: vanishingly unlikely (and a clash within one audit is resolved, see `lasting_course_ids`).
DIGEST_CHARS = 12
COURSE_PREFIX = "crs-"
ORDER_PREFIX = "ord-"
_SEPARATOR = "\x1f"  # between the parts of a digested key: a character no identifier holds


def digests(keys: pl.Series) -> pl.DataFrame:
    """The sha256 (hex) of each distinct text key: `key`, `digest`.

    Polars' own hash is not stable across its versions, and an id must outlive an upgrade:
    DuckDB's sha256 computes the digests in memory (no database file is involved).
    """
    distinct = pl.DataFrame({"key": keys.cast(pl.String)}).unique()
    con = duckdb.connect()
    try:
        con.register("keys_to_digest", distinct)
        return con.sql("SELECT key, sha256(key) AS digest FROM keys_to_digest").pl()
    finally:
        con.close()


def _joined_key(*columns: str) -> pl.Expr:
    """The text key of several columns (nulls as empty text)."""
    return pl.concat_str([pl.col(c).fill_null("") for c in columns], separator=_SEPARATOR)


def fresh_course_key(patient: str = "patient_id", group: str = "indication_group", anchor: str = "anchor_order_id") -> pl.Expr:
    """The text a new course's id is digested from: its patient, indication group and first dose's order."""
    return _joined_key(patient, group, anchor)


def with_digest(frame: pl.DataFrame, key: pl.Expr, prefix: str, name: str) -> pl.DataFrame:
    """The frame with column `name` = prefix + the first DIGEST_CHARS of the sha256 of `key`."""
    keyed = frame.with_columns(__key=key)
    table = digests(keyed["__key"])
    return (
        keyed.join(table, left_on="__key", right_on="key", how="left")
        .with_columns(pl.format("{}{}", pl.lit(prefix), pl.col("digest").str.slice(0, DIGEST_CHARS)).alias(name))
        .drop("__key", "digest")
    )


def lasting_course_ids(courses: pl.DataFrame, stored: pl.DataFrame | None) -> pl.DataFrame:
    """The lasting course_id of each new course: `course_key` -> `course_id`.

    courses  course_key (its fresh id), patient_id, start, order_ids (comma-separated)
    stored   course_id, patient_id, start, order_ids of the stored courses of the same patients

    Each stored course passes its id to the new course it shares the most orders with (ties: the
    earlier new course). A new course chosen by several stored courses (a dose bridged two
    courses) keeps the id of the earliest of them; a new course chosen by none keeps its fresh id,
    unless another course already took that id this time (then a suffix makes it unique).
    """
    new = courses.select("course_key", "patient_id", "start", "order_ids")
    if stored is None or stored.is_empty() or new.is_empty():
        inherited = new.select("course_key").with_columns(course_id=pl.lit(None, dtype=pl.String))
    else:
        new_orders = new.select("course_key", "patient_id", "start", order_id=pl.col("order_ids").str.split(", ")).explode("order_id")
        old_orders = stored.select(
            "course_id", "patient_id", old_start="start", order_id=pl.col("order_ids").str.split(", ")
        ).explode("order_id")
        overlap = (
            new_orders.join(old_orders, on=["patient_id", "order_id"])
            .group_by("course_key", "course_id", "start", "old_start")
            .agg(shared=pl.len())
        )
        successor = overlap.sort(["course_id", "shared", "start", "course_key"], descending=[False, True, False, False]).unique(
            "course_id", keep="first", maintain_order=True
        )
        inherited = successor.sort(["course_key", "old_start", "course_id"]).unique("course_key", keep="first", maintain_order=True).select(
            "course_key", "course_id"
        )
    ids = new.join(inherited, on="course_key", how="left")
    taken = ids["course_id"].drop_nulls()
    return ids.with_columns(
        course_id=pl.when(pl.col("course_id").is_not_null())
        .then(pl.col("course_id"))
        .when(pl.col("course_key").is_in(taken.implode()))
        .then(pl.format("{}-2", pl.col("course_key")))
        .otherwise(pl.col("course_key"))
    ).select("course_key", "course_id")


def with_finding_ids(findings: pl.DataFrame) -> pl.DataFrame:
    """Findings with `finding_id`: `<course_id>.<rule_id>`, or `ord-<digest of patient and order>.<rule_id>`
    for a finding about an order outside any course (an unrecognised immunoglobulin)."""
    order_level = findings.filter(pl.col("course_id").is_null())
    if order_level.is_empty():
        subject = findings.with_columns(subject=pl.col("course_id"))
    else:
        subject = pl.concat(
            [
                findings.filter(pl.col("course_id").is_not_null()).with_columns(subject=pl.col("course_id")),
                with_digest(order_level, _joined_key("patient_id", "order_ids"), ORDER_PREFIX, "subject"),
            ],
            how="vertical",
        )
    return subject.with_columns(finding_id=pl.format("{}.{}", pl.col("subject"), pl.col("rule_id"))).drop("subject")
