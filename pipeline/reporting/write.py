"""Writing the report files (index.html, summary.md, worklist.csv), owner-only and atomic."""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import polars as pl

from pipeline.reporting.files import private_folder, spreadsheet_safe, worklist_table, write_owner_only
from pipeline.reporting.options import ReportData, ReportOptions
from pipeline.reporting.render import render_html, render_markdown
from pipeline.reporting.summary import summarise

logger = logging.getLogger(__name__)

def worklist_frame(data: ReportData) -> pl.DataFrame:
    """Every open finding for pharmacists, critical first; every text cell formula-safe, numbers stay numbers."""
    return spreadsheet_safe(worklist_table(data.worklist))


def build_report(
    tables: "dict[str, pl.DataFrame] | duckdb.DuckDBPyConnection", out_dir: Path, options: ReportOptions = ReportOptions()
) -> tuple[list[Path], ReportData]:
    """Write index.html, summary.md and worklist.csv to out_dir; return their paths and the data.

    The data gives the Prefect artifacts: `headline_markdown(data)`, `aggregate_table(data)`.
    """
    data = summarise(tables, options)
    out_dir = private_folder(out_dir)
    html_path, md_path, csv_path = out_dir / "index.html", out_dir / "summary.md", out_dir / "worklist.csv"
    html, md = render_html(data), render_markdown(data)
    write_owner_only(html_path, lambda p: p.write_text(html, encoding="utf-8"))
    write_owner_only(md_path, lambda p: p.write_text(md, encoding="utf-8"))
    # UTF-8 with a byte-order mark so that Excel shows accented text correctly.
    worklist = worklist_frame(data)
    write_owner_only(csv_path, lambda p: worklist.write_csv(p, include_bom=True, date_format="%Y-%m-%d"))
    logger.info("report: wrote %s, %s and %s", html_path, md_path, csv_path)
    return [html_path, md_path, csv_path], data


def build_report_from_database(
    db_path: Path, out_dir: Path, options: ReportOptions = ReportOptions()
) -> tuple[list[Path], ReportData]:
    """build_report on the database file, read-only (its views compute every number)."""
    from pipeline.warehouse.connection import connect_read_only

    con = connect_read_only(Path(db_path))
    try:
        return build_report(con, out_dir, options)
    finally:
        con.close()


def write_report(
    tables: "dict[str, pl.DataFrame] | duckdb.DuckDBPyConnection", out_dir: Path, options: ReportOptions = ReportOptions()
) -> list[Path]:
    """Write index.html, summary.md and worklist.csv to out_dir; return their paths."""
    return build_report(tables, out_dir, options)[0]

