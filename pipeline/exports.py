"""Spreadsheet-safe CSV export: text cells that a spreadsheet would run as a formula are defused."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

#: A cell starting with one of these is treated as a formula by Excel, LibreOffice and Sheets.
FORMULA_PREFIX = r"^[=+\-@\t\r]"


def formula_safe(column: str) -> pl.Expr:
    """A text column with a leading apostrophe on cells a spreadsheet would evaluate."""
    text = pl.col(column)
    return pl.when(text.str.contains(FORMULA_PREFIX)).then(pl.lit("'") + text).otherwise(text).alias(column)


def spreadsheet_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Every text column made formula-safe; numbers, dates and booleans stay as they are."""
    text_columns = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(formula_safe(c) for c in text_columns)


def write_safe_csv(frame: pl.DataFrame, path: Path) -> Path:
    """Write a spreadsheet-safe CSV readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spreadsheet_safe(frame).write_csv(path)
    os.chmod(path, 0o600)
    return path
