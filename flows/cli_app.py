"""The `ivig-audit` command group every subcommand module registers on: one-line errors, exit codes, shared options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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

from pipeline.config.products import ProductDictionaryError, load_products  # noqa: E402
from pipeline.config.rulepack import RulePackError, load_rule_pack  # noqa: E402

EXIT_OK, EXIT_CRITICAL, EXIT_BAD_INPUT, EXIT_FAILURE = 0, 1, 2, 3


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


def configuration(rules: Path | None, profile: str | None, products: Path | None = None):
    """The effective rule pack and product dictionary, or a one-line error and exit 2."""
    try:
        return load_rule_pack(rules, profile), load_products(products)
    except (RulePackError, ProductDictionaryError) as exc:
        fail(str(exc))
