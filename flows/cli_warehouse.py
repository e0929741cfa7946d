"""`ivig-audit review`, `findings` and `export`: the pharmacist's worklist and the analysts' copies."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from checks.tables import vocabulary
from flows.cli_app import (
    DEFAULT_DB,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    DbOption,
    app,
    choice,
    fail,
    require_database,
)

# The vocabularies the options offer, read from the catalog (checks.tables: no Polars or Pandera import).
CATEGORIES, SEVERITIES, REVIEW_STATUSES = vocabulary("category"), vocabulary("severity"), vocabulary("review_status")
#: `findings --status all`: every unresolved finding, whatever its review status.
ANY_STATUS = "all"
LISTED_STATUSES = (*REVIEW_STATUSES, ANY_STATUS)
#: Findings `ivig-audit findings` prints on the terminal unless given --limit (0: all of them).
DEFAULT_LIMIT = 50


@app.command()
def review(
    finding_id: Annotated[str, typer.Argument(help="The finding's id (from `ivig-audit findings`).")],
    status: Annotated[str, typer.Option(help="acknowledged, actioned, dismissed (or open to reopen).")],
    by: Annotated[str, typer.Option("--by", help="Who decided (name or staff id).")],
    reason: Annotated[Optional[str], typer.Option(help="Disposition code, required to dismiss: a code of the rule pack's [review.dispositions] (docs/analysts.md lists the shipped ones; an unknown code is refused with the list).")] = None,
    note: Annotated[Optional[str], typer.Option(help="Free-text note.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Record a review decision on a finding; its status survives later runs.

    Exit status: 0 recorded; 2 bad status or reason, unknown finding, missing database; 3 the database
    cannot be written (in use, unreadable).
    """
    status = choice(status, REVIEW_STATUSES, "--status")
    require_database(db)
    from pipeline.warehouse import StoreError, record_review

    try:
        event = record_review(db, finding_id, status, by, reason_code=reason, note=note)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    # The id is one the database holds: built from digests and a rule id (`crs-<digest>.<rule_id>`,
    # pipeline.domain.identity), so it is shown as it is, without importing the report's text filters.
    typer.echo(f"{event.finding_id}: {event.status}" + (f" ({event.reason_code})" if event.reason_code else ""))


@app.command()
def findings(
    db: DbOption = DEFAULT_DB,
    status: Annotated[str, typer.Option(help="Review status to list: " + ", ".join(LISTED_STATUSES) + " (every unresolved finding).")] = "open",
    category: Annotated[Optional[str], typer.Option(help="Only this category: " + ", ".join(CATEGORIES))] = None,
    severity: Annotated[Optional[str], typer.Option(help="Only this severity: " + ", ".join(SEVERITIES))] = None,
    service: Annotated[Optional[str], typer.Option(help="Only courses of this ordering service.")] = None,
    since: Annotated[Optional[datetime], typer.Option(help="Only courses starting on or after this date.", formats=["%Y-%m-%d"])] = None,
    include_info: Annotated[bool, typer.Option("--include-info", help="Also list info findings of courses already given (hidden on the terminal by default: nothing is left to act on; --json and --csv hold them).")] = False,
    limit: Annotated[Optional[int], typer.Option(min=0, help=f"Show at most this many (0: all). Default: {DEFAULT_LIMIT} on the terminal, all with --json or --csv.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every column of the worklist) instead of text.")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write the worklist to this CSV file (spreadsheet-safe).")] = None,
) -> None:
    """List findings, critical first: the pharmacist's worklist (open ones unless --status).

    Each finding shows its severity, course start, patient, rule, message, what the policy expects,
    what was observed and the suggested action. Filter values are case-insensitive. The terminal
    shows a page (--limit) and hides info findings of courses already given (last dose before now:
    --include-info shows them), saying how many; --json and --csv hold every finding the filters select.

    Exit status: 0 listed (none is not an error); 2 bad option or missing database; 3 the database
    cannot be read or the CSV written.
    """
    status = choice(status, LISTED_STATUSES, "--status")
    category = choice(category, CATEGORIES, "--category")
    severity = choice(severity, SEVERITIES, "--severity")
    require_database(db)
    from pipeline.warehouse import StoreError, read_findings

    try:
        rows, hidden = read_findings(
            db, None if status == ANY_STATUS else status, category=category, severity=severity, service=service, since=since,
            given_before=None if (include_info or as_json or csv is not None) else datetime.now(),
        )
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    total = rows.height
    if limit is None:
        limit = 0 if (as_json or csv is not None) else DEFAULT_LIMIT
    shown = rows.head(limit) if limit else rows
    what = "findings" if status == ANY_STATUS else f"{status} findings"
    if csv is not None:
        _write_worklist_csv(shown, csv)
        typer.echo(f"wrote {shown.height} {what} to {csv}" + _more(total - shown.height, hidden))
        return
    if as_json:
        payload = {"status": status, "total": total, "shown": shown.height, "more": total - shown.height,
                   "hidden_info_of_given_courses": hidden, "findings": shown.to_dicts()}
        typer.echo(json.dumps(payload, indent=2, default=str))  # ASCII only: escapes and control characters stay escaped
        return
    from pipeline.reporting.files import terminal_safe

    # Text from the data is shown, never acted on: no escape sequence or bidi override reaches the terminal.
    for row in shown.to_dicts():
        start = row["start"].strftime("%Y-%m-%d") if row["start"] else "-"
        lines = [f"[{row['severity']:<8}] {start} {terminal_safe(row['patient_id'])}: {terminal_safe(row['message'])}"]
        lines += [f"           {label:<9} {terminal_safe(row[column])}" for label, column in
                  (("expected:", "expected"), ("observed:", "observed"), ("action:", "action")) if row[column]]
        status_note = "" if row["status"] == "open" else f"  status: {row['status']}"
        lines.append(f"           id: {terminal_safe(row['finding_id'])}  rule: {row['rule_id']}{status_note}")
        typer.echo("\n".join(lines))
    if total == 0:
        typer.echo(f"no {what}" + _more(0, hidden))
        return
    typer.echo(f"{total} {what}" + (f", {shown.height} shown" if shown.height < total else "") + _more(total - shown.height, hidden))


def _more(more: int, hidden: int) -> str:
    """What was left out of a findings listing, and how to see it."""
    notes = []
    if more:
        notes.append(f"{more} more: --limit 0 shows all")
    if hidden:
        notes.append(f"{hidden} info findings of courses already given hidden: --include-info shows them")
    return "; " + "; ".join(notes) if notes else ""


def _write_worklist_csv(rows, path: Path) -> None:
    """The findings as a spreadsheet-safe CSV, or a one-line error (exit 3)."""
    from pipeline.reporting.files import worklist_table, write_safe_csv

    try:
        write_safe_csv(worklist_table(rows), path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_FAILURE)


@app.command()
def export(
    to: Annotated[Path, typer.Option("--to", help="Folder for the Parquet copies (made owner-only: 0700, files 0600).")],
    db: DbOption = DEFAULT_DB,
    pseudonymize: Annotated[bool, typer.Option("--pseudonymize", help="Replace patient ids with a keyed hash (anon-...) in every table, as the report does.")] = False,
    pseudonym_key: Annotated[Optional[str], typer.Option("--pseudonym-key", help="HMAC key for --pseudonymize (prefer the IVIG_AUDIT_PSEUDONYM_KEY environment variable).")] = None,
) -> None:
    """Write Parquet copies of every table and view, for tools that cannot open the database while the audit runs."""
    from pipeline.reporting import (
        ReportOptions,
        ReportOptionsError,
        resolve_pseudonym_key,
    )
    from pipeline.warehouse import StoreError, export_parquet

    try:
        key = resolve_pseudonym_key(ReportOptions(pseudonymize=pseudonymize, pseudonym_key=pseudonym_key))
    except ReportOptionsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    require_database(db)
    try:
        written = export_parquet(db, to, pseudonym_key=key)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        fail(f"cannot write to {to}: {exc.strerror or exc}", EXIT_FAILURE)
    typer.echo(f"wrote {len(written)} Parquet files to {to}" + (" (patient ids pseudonymised)" if key else ""))


#: Runs `ivig-audit runs` prints unless given --limit (0: all of them).
DEFAULT_RUNS = 20


@app.command()
def runs(
    db: DbOption = DEFAULT_DB,
    limit: Annotated[int, typer.Option(min=0, help="Show the latest this many runs (0: all).")] = DEFAULT_RUNS,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every column of the runs table) instead of text.")] = False,
) -> None:
    """List the audit runs, newest first: when each ran, its status and report, what it read, its scope.

    The run ids are what `ivig-audit replay RUN_ID` and `ivig-audit diff` take. Counts and file names
    only: no patient data.

    Exit status: 0 listed; 2 missing database; 3 the database cannot be read.
    """
    require_database(db)
    from pipeline.warehouse import StoreError, read_tables

    try:
        table = read_tables(db, ("runs",))["runs"]
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    newest = table.reverse()
    shown = newest.head(limit) if limit else newest
    rows = shown.to_dicts()
    for row in rows:
        for column in ("inputs", "skipped_inputs", "timings", "data_through"):
            row[column] = json.loads(row[column]) if row.get(column) else None
    if as_json:
        typer.echo(json.dumps({"total": table.height, "shown": len(rows), "runs": rows}, indent=2, default=str))
        return
    if not rows:
        typer.echo(f"no runs in {db}: audit with `ivig-audit run --db {db}`")
        return
    for row in rows:
        typer.echo("\n".join(_run_lines(row)))
    older = table.height - len(rows)
    typer.echo(f"{table.height} run(s)" + (f", {len(rows)} shown; {older} older: --limit 0 shows all" if older else ""))


def _run_lines(run: dict) -> list[str]:
    """One run as the lines `ivig-audit runs` prints."""
    started, finished = run["started_at"], run["finished_at"]
    seconds = (finished - started).total_seconds() if started and finished else None
    scope = run.get("audit_scope") or "-"
    if scope == "full" and run.get("reaudit_reason"):
        scope += f" ({run['reaudit_reason']})"
    lines = [
        f"{run['run_id']}  {run['status']:<11} {started:%Y-%m-%d %H:%M:%S} -> {finished:%Y-%m-%d %H:%M:%S} UTC"
        + (f" ({seconds:.0f} s)" if seconds is not None else "")
        + f"  report {run.get('report_status') or '-'}",
        f"    scope {scope}, {run.get('patients_audited') or 0} patients judged; rule pack {run['rule_pack_version']} "
        f"profile {run['profile']}; rows read {run['rows_read']} (IVIG {run['rows_ivig']}, quarantined "
        f"{run['rows_quarantined']}); {run['courses']} courses, {run['findings']} findings",
    ]
    for item in run["inputs"] or []:
        lines.append(f"    read    {item.get('extract', '?'):<10} {item.get('path')} ({_size(item.get('bytes'))})")
    for item in run["skipped_inputs"] or []:
        lines.append(f"    skipped {item.get('extract', '?'):<10} {item.get('path')} ({item.get('why') or 'audited before'})")
    through = {extract: when for extract, when in (run.get("data_through") or {}).items() if when}
    if through:
        lines.append("    data through " + ", ".join(f"{extract} {when[:16]}" for extract, when in through.items()))
    if run.get("error"):
        lines.append(f"    error: {run['error']}")
    return lines


def _size(n: int | None) -> str:
    """A file size for people (bytes, kB, MB, GB)."""
    if n is None:
        return "size unknown"
    for unit in ("bytes", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
