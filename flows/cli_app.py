"""The `ivig-audit` command group every subcommand module registers on: one-line errors, exit codes, shared options."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

# Hospital hosts are offline: no telemetry, and a patient-data tool never persists task results.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

try:  # typer vendors click (typer._click) in the versions we pin; older ones used click itself
    from typer._click import exceptions as click_errors  # noqa: E402
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]  # noqa: E402

# Nothing heavy is imported here or by the command modules at import time (polars, duckdb, pandera,
# prefect, altair): `--help`, `findings`, `review` and `dose` start fast; each command imports what it uses.

#: Exit statuses of every command (docs/operations.md). A missing database is bad input (2) everywhere.
EXIT_OK, EXIT_CRITICAL, EXIT_BAD_INPUT, EXIT_FAILURE = 0, 1, 2, 3

#: The database every command reads or writes unless given --db.
DEFAULT_DB = Path("ivig_audit.duckdb")

#: --db of the commands that read the database (`run` and `serve` write it: their help says so).
DbOption = Annotated[Path, typer.Option("--db", help="DuckDB database written by `ivig-audit run`.")]

# The site options `run` and `serve` share (and `dose` the configuration ones): one definition each.
RulesOption = Annotated[Optional[Path], typer.Option("--rules", help="Site rule-pack TOML overriding the shipped defaults.")]
ProfileOption = Annotated[Optional[str], typer.Option("--profile", help="Dosing-weight policy profile: default, ontario, ibw, discretionary.")]
ProductsOption = Annotated[Optional[Path], typer.Option("--products", help="Site product dictionary TOML (replaces the shipped one).")]
MappingOption = Annotated[Optional[str], typer.Option("--mapping", help="Column-mapping profile of the site's extract: canonical, epic_clarity, fhir_medication_request, fhir_medication_administration, mimic3, mimic4, or a TOML file (docs/ingest.md).")]
CostPerGramOption = Annotated[Optional[float], typer.Option("--cost-per-gram", min=0, help="Cost of one gram of IVIG, for money avoidable. Default: the rule pack's [costs] cost_per_gram.")]


class OneLineErrors(TyperGroup):
    """The command group: every error is one line on stderr with the documented exit status.

    A bad option (typer would draw a multi-line usage box) exits 2; an unexpected exception (a bug,
    never a user's mistake) exits 3 with its type, its stack going to the debug log without data.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(
                args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
            )
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()  # the help text, as asked for
            code = exc.exit_code
        except click_errors.UsageError as exc:
            where = f" (see: ivig-audit {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else " (see: ivig-audit --help)"
            code = _print_error(f"{' '.join(exc.format_message().split())}{where}", EXIT_BAD_INPUT)
        except click_errors.ClickException as exc:
            code = _print_error(" ".join(exc.format_message().split()), exc.exit_code)
        except typer.Abort:
            code = _print_error("aborted", 130)
        except Exception as exc:  # noqa: BLE001 - a bug: one line, the stack (frames only) to the debug log
            from flows.prefect_runtime import quiet_console, to_stage_failure

            quiet_console()
            failure = to_stage_failure(exc.__class__.__name__, exc)
            code = _print_error(failure.detail or type(exc).__name__, failure.exit_status)
        else:
            code = result if isinstance(result, int) else EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code


def _print_error(message: str, code: int) -> int:
    typer.echo(f"ivig-audit: error: {message}", err=True)
    return code


app = typer.Typer(
    help=(
        "ivig-audit: the nightly stewardship audit of intravenous immunoglobulin (IVIG) orders.\n\n"
        "It reads the pharmacy's order extract (and optional labs and procedures), builds each "
        "patient's IVIG courses, checks them against the rule pack (indication, dosing weight, "
        "course dose, repeat courses, combinations, product safety, monitoring) and writes the "
        "findings to a DuckDB database and a summary report.\n\n"
        "Start with `ivig-audit run` (no options: the shipped sample data), then "
        "`ivig-audit findings` for the worklist."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print a one-line error on stderr and exit with the code."""
    raise typer.Exit(_print_error(" ".join(str(message).split()), code))


def default_sample_dir() -> Path:
    """The sample_data/ folder: in the current folder, else the one shipped beside the code."""
    here = Path.cwd() / "sample_data"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "sample_data"


def choice(value: str | None, allowed: tuple[str, ...], flag: str) -> str | None:
    """The allowed value an option names, compared case-insensitively, or a one-line error (exit 2)."""
    if value is None:
        return None
    for name in allowed:
        if value.strip().casefold() == name.casefold():
            return name
    fail(f"{flag} must be one of {', '.join(allowed)}, not {value!r}", EXIT_BAD_INPUT)
    return None  # unreachable: fail exits


def require_database(db: Path) -> None:
    """A one-line error and exit 2 (bad input) when the database to read does not exist: the same for every command."""
    if not Path(db).is_file():
        fail(f"database not found: {db} (audit into it first with `ivig-audit run --db {db}`)", EXIT_BAD_INPUT)


def configuration(rules: Path | None, profile: str | None, products: Path | None = None):
    """The effective rule pack and product dictionary, or a one-line error and exit 2."""
    from pipeline.config.products import ProductDictionaryError, load_products
    from pipeline.config.rulepack import RulePackError, load_rule_pack

    try:
        return load_rule_pack(rules, profile), load_products(products)
    except (RulePackError, ProductDictionaryError) as exc:
        fail(str(exc))
