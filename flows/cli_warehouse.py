"""`ivig-audit review`, `findings` and `export`: the pharmacist's worklist and the analysts' copies."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from checks.outputs import CATEGORIES, SEVERITIES
from flows.cli_app import EXIT_BAD_INPUT, EXIT_FAILURE, app, fail
from pipeline.reporting.files import terminal_safe, write_safe_csv
from pipeline.warehouse import (
    REVIEW_STATUSES,
    StoreError,
    export_parquet,
    record_review,
    worklist,
)

DB_OPTION = typer.Option(help="DuckDB database written by `ivig-audit run`.")

WORKLIST_COLUMNS = [
    "finding_id", "severity", "category", "rule_id", "patient_id", "course_id", "indication", "start",
    "service", "prescriber_id", "message", "expected", "observed", "action", "excess_g", "status",
]


@app.command()
def review(
    finding_id: Annotated[str, typer.Argument(help="The finding's id (from `ivig-audit findings`).")],
    status: Annotated[str, typer.Option(help="acknowledged, actioned, dismissed (or open to reopen).")],
    by: Annotated[str, typer.Option("--by", help="Who decided (name or staff id).")],
    reason: Annotated[Optional[str], typer.Option(help="Disposition code (required to dismiss): a code of the rule pack's [review.dispositions], e.g. data_error, clinically_justified, not_applicable; the database lists them: SELECT * FROM ref_dispositions.")] = None,
    note: Annotated[Optional[str], typer.Option(help="Free-text note.")] = None,
    db: Annotated[Path, DB_OPTION] = Path("ivig_audit.duckdb"),
) -> None:
    """Record a review decision on a finding; its status survives later runs."""
    if status not in REVIEW_STATUSES:
        fail(f"--status must be one of {', '.join(REVIEW_STATUSES)}")
    try:
        event = record_review(db, finding_id, status, by, reason_code=reason, note=note)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    typer.echo(f"{terminal_safe(event.finding_id)}: {event.status}" + (f" ({event.reason_code})" if event.reason_code else ""))


@app.command()
def findings(
    db: Annotated[Path, DB_OPTION] = Path("ivig_audit.duckdb"),
    category: Annotated[Optional[str], typer.Option(help="Only this category: " + ", ".join(CATEGORIES))] = None,
    severity: Annotated[Optional[str], typer.Option(help="Only this severity: " + ", ".join(SEVERITIES))] = None,
    service: Annotated[Optional[str], typer.Option(help="Only courses of this ordering service.")] = None,
    since: Annotated[Optional[datetime], typer.Option(help="Only courses starting on or after this date.", formats=["%Y-%m-%d"])] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write the worklist to this CSV file (spreadsheet-safe).")] = None,
) -> None:
    """List open findings, critical first: the pharmacist's worklist."""
    if category is not None and category not in CATEGORIES:
        fail(f"--category must be one of {', '.join(CATEGORIES)}")
    if severity is not None and severity not in SEVERITIES:
        fail(f"--severity must be one of {', '.join(SEVERITIES)}")
    try:
        rows = worklist(db, category=category, severity=severity, service=service, since=since)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    if csv is not None:
        try:
            write_safe_csv(rows.select(WORKLIST_COLUMNS), csv)
        except OSError as exc:
            fail(f"cannot write {csv}: {exc.strerror or exc}", EXIT_FAILURE)
        typer.echo(f"wrote {rows.height} open findings to {csv}")
        return
    if rows.is_empty():
        typer.echo("no open findings")
        return
    for row in rows.select("finding_id", "severity", "start", "patient_id", "message").to_dicts():
        start = row["start"].strftime("%Y-%m-%d") if row["start"] else "-"
        # Text from the data is shown, never acted on: no escape sequence or bidi override reaches the terminal.
        typer.echo(
            f"[{row['severity']:<8}] {start} {terminal_safe(row['patient_id'])}: {terminal_safe(row['message'])}\n"
            f"           id: {terminal_safe(row['finding_id'])}"
        )
    typer.echo(f"{rows.height} open findings")


@app.command()
def export(
    to: Annotated[Path, typer.Option("--to", help="Folder for the Parquet copies (made owner-only: 0700, files 0600).")],
    db: Annotated[Path, DB_OPTION] = Path("ivig_audit.duckdb"),
    pseudonymize: Annotated[bool, typer.Option("--pseudonymize", help="Replace patient ids with a keyed hash (anon-...) in every table, as the report does.")] = False,
    pseudonym_key: Annotated[Optional[str], typer.Option("--pseudonym-key", help="HMAC key for --pseudonymize (prefer the IVIG_AUDIT_PSEUDONYM_KEY environment variable).")] = None,
) -> None:
    """Write Parquet copies of every table and view, for tools that cannot open the database while the audit runs."""
    from pipeline.reporting import (
        ReportOptions,
        ReportOptionsError,
        resolve_pseudonym_key,
    )

    try:
        key = resolve_pseudonym_key(ReportOptions(pseudonymize=pseudonymize, pseudonym_key=pseudonym_key))
    except ReportOptionsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    try:
        written = export_parquet(db, to, pseudonym_key=key)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        fail(f"cannot write to {to}: {exc.strerror or exc}", EXIT_FAILURE)
    typer.echo(f"wrote {len(written)} Parquet files to {to}" + (" (patient ids pseudonymised)" if key else ""))
