"""Read extracts (CSV or Parquet files, or folders of them) lazily, as text columns with provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl

from checks.inputs import EXTRACT_COLUMNS, required_columns

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")


class ExtractError(Exception):
    """An extract that cannot be read or lacks required columns (one-line, user-facing)."""


@dataclass(frozen=True)
class SourceFile:
    """One input file of a run, with its content hash."""

    extract: str
    path: str
    sha256: str


def _is_extract_file(path: Path) -> bool:
    """Whether a file name looks like a CSV or Parquet extract."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)


def discover(paths: Sequence[Path]) -> list[Path]:
    """Expand files and folders into the sorted list of extract files they hold."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_extract_file(p))
            if not files:
                raise ExtractError(f"folder {path} holds no CSV or Parquet files")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise ExtractError(f"input not found: {path}")
    return found


def file_sha256(path: Path) -> str:
    """Content hash of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scan_one(path: Path) -> pl.LazyFrame:
    """Scan one file with every column as text; parse errors surface as ExtractError."""
    name = path.name.lower()
    try:
        if name.endswith(PARQUET_SUFFIXES):
            lf = pl.scan_parquet(path)
            schema = lf.collect_schema()
            return lf.select(pl.col(c).cast(pl.String) for c in schema.names())
        separator = "\t" if name.endswith(".tsv") else ","
        lf = pl.scan_csv(
            path,
            infer_schema=False,
            separator=separator,
            encoding="utf8-lossy",
            truncate_ragged_lines=False,
        )
        lf.collect_schema()
        return lf
    except (pl.exceptions.PolarsError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExtractError(f"cannot read {path}: {first_line}") from None


def _check_columns(lf: pl.LazyFrame, extract: str, path: Path) -> list[str]:
    """Stop with a clear message when a required column is missing; return the known columns present."""
    names = [n.strip().lstrip("\ufeff").lower() for n in lf.collect_schema().names()]
    missing = [c for c in required_columns(extract) if c not in names]
    if missing:
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in (";", "\t", "|")):
            hint = " (the file seems to use another delimiter than a comma)"
        raise ExtractError(
            f"{extract} extract {path} lacks required column(s): {', '.join(missing)}{hint}"
        )
    return names


def scan_extract(paths: Sequence[Path], extract: str) -> tuple[pl.LazyFrame, list[SourceFile]]:
    """All files of one extract as one lazy frame of text columns plus source_file and source_row."""
    files = discover(paths)
    frames: list[pl.LazyFrame] = []
    sources: list[SourceFile] = []
    known = EXTRACT_COLUMNS[extract]
    for path in files:
        if path.stat().st_size == 0:
            raise ExtractError(f"{extract} extract {path} is empty")
        lf = _scan_one(path)
        original = lf.collect_schema().names()
        names = _check_columns(lf, extract, path)
        renamed = lf.rename(dict(zip(original, names)))
        present = [n for n in names if n in known]
        frames.append(
            renamed.select(present)
            .with_row_index("source_row", offset=1)
            .with_columns(
                pl.col("source_row").cast(pl.Int64),
                pl.lit(str(path)).alias("source_file"),
            )
        )
        sources.append(SourceFile(extract=extract, path=str(path), sha256=file_sha256(path)))
    combined = pl.concat(frames, how="diagonal") if len(frames) > 1 else frames[0]
    missing_optional = [c for c in known if c not in combined.collect_schema().names()]
    combined = combined.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing_optional)
    return combined.select([*known, "source_file", "source_row"]), sources
