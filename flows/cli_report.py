"""`ivig-audit report`: the manager summary from what the database holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import EXIT_FAILURE, _fail, app
from pipeline.store import StoreError


@app.command()
def report(
    db: Annotated[Path, typer.Option(help="DuckDB database written by `ivig-audit run`.")] = Path("ivig_audit.duckdb"),
    out: Annotated[Path, typer.Option(help="Folder to write index.html and summary.md to.")] = Path("reports"),
    cost_per_gram: Annotated[float, typer.Option(help="Cost of one gram of IVIG, for money avoidable.")] = 80.0,
) -> None:
    """Write the manager summary (HTML and Markdown) from what the database holds."""
    from pipeline.report import ReportOptions, write_report
    from pipeline.store import read_tables

    if not db.exists():
        _fail(f"database not found: {db}")
    try:
        paths = write_report(read_tables(db), out, ReportOptions(cost_per_gram=cost_per_gram))
    except StoreError as exc:
        _fail(str(exc), EXIT_FAILURE)
    except OSError as exc:
        _fail(f"cannot write the report to {out}: {exc.strerror or exc}", EXIT_FAILURE)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))
