"""Files of patient data written safely: owner-only folders and files (written whole, then renamed), and
spreadsheet-safe CSV (text cells that a spreadsheet would run as a formula are defused)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl

#: A cell starting with one of these is treated as a formula by Excel, LibreOffice and Sheets.
FORMULA_PREFIX = r"^[=+\-@\t\r]"


#: What a terminal would act on rather than show: escape sequences (CSI such as colours or a cleared
#: screen, OSC such as a window title or a hyperlink), other C0 and C1 control characters and DEL, and
#: the bidirectional overrides and isolates that reorder what is shown (U+202A-U+202E, U+2066-U+2069).
TERMINAL_UNSAFE = re.compile(
    "\x1b\\[[0-?]*[ -/]*[@-~]"            # CSI ... final byte
    "|\x1b\\][^\x07\x1b]*(?:\x07|\x1b\\\\)?"  # OSC ... BEL or ST
    "|\x1b[@-_]?"                         # any other escape
    "|[\x00-\x08\x0b-\x1f\x7f-\x9f]"        # C0 (but tab and newline), DEL, C1
    "|[\u202a-\u202e\u2066-\u2069]"         # bidi embeddings, overrides, isolates
)


def terminal_safe(text: object) -> str:
    """Text from the data as a terminal shows it and nothing more: escape sequences, control characters
    and bidirectional overrides removed; a tab or line break becomes a space (one finding, one line)."""
    cleaned = TERMINAL_UNSAFE.sub("", "" if text is None else str(text))
    return cleaned.replace("\t", " ").replace("\n", " ")


def formula_safe(column: str) -> pl.Expr:
    """A text column with a leading apostrophe on cells a spreadsheet would evaluate."""
    text = pl.col(column)
    return pl.when(text.str.contains(FORMULA_PREFIX)).then(pl.lit("'") + text).otherwise(text).alias(column)


def spreadsheet_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Every text column made formula-safe; numbers, dates and booleans stay as they are."""
    text_columns = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(formula_safe(c) for c in text_columns)


#: The worklist's columns, for the report's worklist.csv and `ivig-audit findings --csv` alike: those of
#: v_unresolved_findings, the category and indication in words.
WORKLIST_COLUMNS: tuple[str, ...] = (
    "finding_id", "severity", "category", "rule_title", "rule_id", "patient_id", "course_id", "indication",
    "course_start", "facility", "service", "prescriber_id", "message", "expected", "observed", "action", "excess_g",
    "status",
)


def worklist_table(findings: pl.DataFrame) -> pl.DataFrame:
    """Rows of v_unresolved_findings (or v_open_findings) as the worklist's columns."""
    worded = findings.with_columns(category=pl.col("category_label"), indication=pl.col("indication_label"))
    return worded.select(list(WORKLIST_COLUMNS))


def private_folder(path: Path) -> Path:
    """A folder readable by its owner only (0700), also when it existed (mkdir's mode is masked by the umask)."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_owner_only(path: Path, write) -> Path:
    """Write a file readable by its owner only (0600) through a temporary file in the same folder, then
    rename: readers never see half a file, and no one else can read it at any moment (the temporary file
    is created 0600 before `write(tmp)` fills it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(tmp, 0o600)  # the file may have existed (a crashed write) with other modes
        write(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_safe_csv(frame: pl.DataFrame, path: Path) -> Path:
    """Write a spreadsheet-safe CSV readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safe = spreadsheet_safe(frame)
    return write_owner_only(path, lambda tmp: safe.write_csv(tmp))
