"""`ivig-audit report`: the manager summary and the pharmacists' worklist from what the database holds."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_app import DEFAULT_DB, EXIT_BAD_INPUT, EXIT_FAILURE, DbOption, app, fail, require_database


def _date_option(value: str | None, flag: str) -> date | None:
    """A YYYY-MM-DD option, or a one-line error (exit 2)."""
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        fail(f"{flag} must be a date as YYYY-MM-DD, not {value!r}", EXIT_BAD_INPUT)
    return None  # unreachable


def _cost_option(value: str) -> float:
    """A cost per gram >= 0, or a one-line error (exit 2)."""
    try:
        cost = float(value)
    except ValueError:
        cost = math.nan
    if math.isnan(cost) or math.isinf(cost) or cost < 0:
        fail(f"--cost-per-gram must be a number >= 0, not {value!r}", EXIT_BAD_INPUT)
    return cost


@app.command()
def report(
    db: DbOption = DEFAULT_DB,
    out: Annotated[Path, typer.Option(help="Folder to write index.html, summary.md and worklist.csv to.")] = Path("reports"),
    period_from: Annotated[Optional[str], typer.Option("--from", help="First course start day of the period (YYYY-MM-DD). Default: last full month and month to date.")] = None,
    period_to: Annotated[Optional[str], typer.Option("--to", help="Last course start day of the period (YYYY-MM-DD, inclusive).")] = None,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Reference day of the default periods (YYYY-MM-DD). Default: the day the data runs to.")] = None,
    cost_per_gram: Annotated[Optional[str], typer.Option("--cost-per-gram", help="Cost of one gram of IVIG, for money avoidable. Default: the latest run's (its rule pack's [costs]).")] = None,
    stale_after_days: Annotated[int, typer.Option("--stale-after-days", min=0, help="Warn when the newest data is older than this many days.")] = 7,
    cost_source: Annotated[Optional[str], typer.Option("--cost-source", help="Where the cost per gram comes from (shown beside it).")] = None,
    facility: Annotated[Optional[str], typer.Option(help="Only courses of this facility (courses.facility).")] = None,
    pseudonymize: Annotated[bool, typer.Option("--pseudonymize", help="Replace patient ids with a keyed hash (anon-...) in every output.")] = False,
    pseudonym_key: Annotated[Optional[str], typer.Option("--pseudonym-key", help="HMAC key for --pseudonymize (prefer the IVIG_AUDIT_PSEUDONYM_KEY environment variable).")] = None,
    intervention: Annotated[Optional[str], typer.Option(help="Date of a stewardship intervention (YYYY-MM-DD): marked on the trends, with a before/after table.")] = None,
    intervention_label: Annotated[str, typer.Option(help="Name of the intervention.")] = "Intervention",
) -> None:
    """Write the manager summary (index.html, summary.md) and the open-findings worklist (worklist.csv).

    Exit status: 0 written; 2 bad option or missing database; 3 the database cannot be read or the
    report cannot be written.
    """
    from pipeline.reporting import (
        ReportOptions,
        ReportOptionsError,
        build_report_from_database,
    )
    from pipeline.warehouse import StoreError

    start = _date_option(period_from, "--from")
    end = _date_option(period_to, "--to")
    if start and end and start > end:
        fail(f"--from {start.isoformat()} is after --to {end.isoformat()}", EXIT_BAD_INPUT)
    cost = None if cost_per_gram is None else _cost_option(cost_per_gram)
    options = ReportOptions(
        stale_after_days=stale_after_days,
        cost_per_gram=cost,
        cost_source=cost_source,
        period_from=start,
        period_to=end,
        as_of=_date_option(as_of, "--as-of"),
        facility=facility or None,
        pseudonymize=pseudonymize,
        pseudonym_key=pseudonym_key,
        intervention=_date_option(intervention, "--intervention"),
        intervention_label=intervention_label,
    )
    require_database(db)
    if out.exists() and not out.is_dir():
        fail(f"cannot write the report to {out}: it is a file, not a folder", EXIT_FAILURE)
    try:
        paths, data = build_report_from_database(db, out, options)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    except ReportOptionsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except OSError as exc:
        fail(f"cannot write the report to {out}: {exc.strerror or exc}", EXIT_FAILURE)
    if data.facility_note:
        typer.echo(f"ivig-audit: warning: {data.facility_note}", err=True)
    if data.stale_note:
        typer.echo(f"ivig-audit: warning: {data.stale_note}", err=True)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))
