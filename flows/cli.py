"""The `ivig-audit` command line: the command group (flows/cli_app.py) with every subcommand module registered."""

from __future__ import annotations

from flows import cli_report, cli_run, cli_tools, cli_warehouse  # noqa: F401  (each registers its commands)
from flows.cli_app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
