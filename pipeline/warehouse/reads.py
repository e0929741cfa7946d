"""Whole tables and views read back (the report, the measure), the worklist and open criticals, and Parquet copies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

import duckdb
import polars as pl

from pipeline.warehouse.base import StoreError, _one_line, _q
from pipeline.warehouse.connection import connect_read_only
from checks import tables as catalog
from pipeline.warehouse.schema import TABLES, order_by


def read_tables(
    db_path: Path,
    tables: Sequence[str] = ("runs", "orders", "courses", "findings", "quarantine"),
) -> dict[str, pl.DataFrame]:
    """Read whole tables read-only as Polars frames (for the report)."""
    if isinstance(tables, str):
        tables = (tables,)
    known = set(TABLES) | {name for name, view in catalog.views().items() if not view.is_macro} | {"schema_version"}
    unknown = [t for t in tables if t not in known]
    if unknown:
        raise ValueError(f"unknown table or view: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    con = connect_read_only(Path(db_path))
    try:
        out: dict[str, pl.DataFrame] = {}
        for name in tables:
            order = f" ORDER BY {order_by(name)}" if order_by(name) else ""
            try:
                out[name] = con.sql(f"SELECT * FROM {_q(name)}{order}").pl()
            except duckdb.CatalogException as exc:
                raise StoreError(f"database {db_path} has no {name}: {_one_line(exc)}") from exc
        return out
    finally:
        con.close()


def export_parquet(db_path: Path, out_dir: Path, pseudonym_key: bytes | None = None) -> list[Path]:
    """Parquet copies of every table and view, for tools that cannot open the file while the audit runs.

    The folder is 0700 and every file 0600 (they hold patient ids and raw history). With a
    `pseudonym_key`, patient ids are replaced as the report does (pipeline.reporting.pseudonymize_tables).
    """
    from pipeline.reporting.files import private_folder, write_owner_only

    out_dir = private_folder(Path(out_dir))
    con = connect_read_only(Path(db_path))
    written = []
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                "UNION ALL SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
                "ORDER BY 1"
            ).fetchall()
        ]
        if pseudonym_key is not None:
            from pipeline.reporting import pseudonymize_tables

            # Every patient id of the database, so that ids inside other columns (finding_id, raw JSON)
            # of a table without a patient_id column are replaced too; tables are then done one by one.
            holders = [
                r[0] for r in con.execute(
                    "SELECT table_name FROM duckdb_columns() WHERE schema_name = 'main' AND column_name = 'patient_id'"
                ).fetchall()
            ]
            ids = pl.concat(
                [con.sql(f"SELECT DISTINCT CAST(patient_id AS VARCHAR) AS patient_id FROM {_q(name)}").pl() for name in holders]
                or [pl.DataFrame(schema={"patient_id": pl.String})]
            ).unique()
        for name in names:
            frame = con.sql(f"SELECT * FROM {_q(name)}").pl()
            if pseudonym_key is not None:
                frame = pseudonymize_tables({name: frame, "_every_patient_id": ids}, pseudonym_key)[name]
            written.append(write_owner_only(out_dir / f"{name}.parquet", frame.write_parquet))
    finally:
        con.close()
    return written


def measure_summaries(con: duckdb.DuckDBPyConnection, start: date, end: date) -> dict[str, pl.DataFrame]:
    """What the FHIR measure counts for courses started in [start, end]: course_summary overall and per
    indication, category_summary, and the rule packs of the runs that wrote those courses."""
    def query(sql: str, params: list) -> pl.DataFrame:
        return con.sql(sql, params=params).pl()

    return {
        "overall": query("SELECT * FROM course_summary('all', ?, ?, NULL)", [start, end]),
        "by_indication": query("SELECT * FROM course_summary('indication', ?, ?, NULL) ORDER BY group_key", [start, end]),
        "by_category": query("SELECT * FROM category_summary(?, ?, NULL)", [start, end]),
        "rule_packs": query(
            "SELECT DISTINCT rule_pack_version, profile FROM runs WHERE run_id IN (SELECT c.run_id FROM courses AS c "
            "JOIN course_outcomes(?, ?, NULL) USING (course_id)) ORDER BY 1, 2", [start, end]),
    }


def open_critical_findings(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Open critical findings nobody has reviewed yet (v_open_findings): finding id, rule and category."""
    return con.sql(
        "SELECT finding_id, rule_id, category FROM v_open_findings WHERE severity = 'critical' ORDER BY rule_id, finding_id"
    ).pl()


def read_findings(
    db_path: Path,
    status: str | None = "open",
    category: str | None = None,
    severity: str | None = None,
    service: str | None = None,
    since: datetime | None = None,
    given_before: datetime | None = None,
) -> tuple[pl.DataFrame, int]:
    """Unresolved findings of a review status, worst first, and how many were left out as already given.

    Every status reads v_unresolved_findings (v_open_findings is its open part), in the worklist's order
    (critical first, then the newest course); None: every status. Filters are query parameters compared
    case-insensitively. With `given_before`, info findings of courses
    whose last dose was before it (nothing left to act on) are left out; their number is the second value.
    """
    conditions, params = ["TRUE"], []
    for column, value in (("status", status), ("category", category), ("severity", severity), ("service", service)):
        if value is not None:
            conditions.append(f"lower({column}) = lower(?)")
            params.append(value)
    if since is not None:
        conditions.append("start >= ?")
        params.append(since)
    con = connect_read_only(Path(db_path))
    try:
        rows = con.sql(
            f"SELECT * FROM v_unresolved_findings WHERE {' AND '.join(conditions)} ORDER BY worklist_rank", params=params
        ).pl()
        given = (
            con.sql('SELECT course_id FROM courses WHERE "end" < ?', params=[given_before]).pl()["course_id"]
            if given_before is not None else pl.Series("course_id", [], pl.String)
        )
    finally:
        con.close()
    hidden = (pl.col("severity") == "info") & pl.col("course_id").is_in(given.implode()).fill_null(False)
    return rows.filter(~hidden), rows.filter(hidden).height
