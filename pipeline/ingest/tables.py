"""Read extracts (CSV or Parquet files, or folders of them; FHIR NDJSON through pipeline.ingest.fhir) as text columns with provenance.

Whatever the files look like (a mapping profile says how a site's columns, codes, units and dates map
onto the canonical ones), the result is one lazy frame per extract with every canonical column as
text plus `source_file` and `source_row` (1 = the first data row).
"""

from __future__ import annotations

import csv
import gzip
import io
from concurrent.futures import Future
from pathlib import Path
from typing import Sequence

import polars as pl

from checks.inputs import EXTRACT_COLUMNS, required_columns
from pipeline.ingest.errors import ExtractError, parse_error_message
from pipeline.ingest.files import (
    _BLOCK,
    PARQUET_SUFFIXES,
    SourceFile,
    _check_text,
    _refuse_nul,
    _transcoded,
    discover,
    hash_in_background,
    log,
)
from pipeline.ingest.mappings import (
    Mapping,
    apply_table_mapping,
    load_mapping,
    source_columns,
)


def _scan_one(path: Path, separator: str | None = None, encoding: str = "auto") -> tuple[pl.LazyFrame, "Future[str]"]:
    """Scan one file as it is (CSV: every column text; Parquet: its own types, nothing cast yet); return it
    and its sha256 (hashed in the background, alongside the encoding check and the parse). Errors are
    ExtractError."""
    name = path.name.lower()
    digest = hash_in_background(path)
    try:
        if name.endswith(PARQUET_SUFFIXES):
            lf = pl.scan_parquet(path)
            lf.collect_schema()
            return lf, digest
        if separator is None:
            separator = "\t" if name.endswith(".tsv") else ","
        check = _check_text(path)
        _refuse_nul(path, check)
        source: Path | io.BytesIO = path
        if check.utf16:
            source = _transcoded(path, "utf-16")
        elif encoding in ("cp1252", "latin-1"):
            source = _transcoded(path, encoding)
        elif not check.utf8:
            if encoding == "utf-8":
                raise ExtractError(f"cannot read {path}: not UTF-8 text (invalid byte at offset {check.first_bad_offset})")
            source = _transcoded(path, "cp1252")
            log.info("%s is not UTF-8: read as Windows-1252", path)
        _refuse_duplicate_header(source, separator, path)
        lf = pl.scan_csv(
            source,
            infer_schema=False,
            separator=separator,
            encoding="utf8",
            truncate_ragged_lines=False,
        )
        lf.collect_schema()
        return lf, digest
    except ExtractError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise ExtractError(f"cannot read {path}: {parse_error_message(exc)}") from None


def _header(source: "Path | io.BytesIO", separator: str) -> list[str]:
    """The header row of a CSV as written (Polars renames a repeated name to 'dose_duplicated_0').

    Read from the file's first megabyte with the csv module (a quoted name may hold the separator or a
    line break): a few microseconds, where a Polars read of one row costs tens of milliseconds.
    """
    if isinstance(source, io.BytesIO):
        head = bytes(source.getbuffer()[:_BLOCK])
    else:
        opener = gzip.open if source.name.lower().endswith(".gz") else open
        with opener(source, "rb") as handle:
            head = handle.read(_BLOCK)
    # Only the header's names are compared here; the text itself is decoded strictly by the reader.
    text = head.decode("utf-8", errors="replace")
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=separator), [])


def _refuse_duplicate_header(source: "Path | io.BytesIO", separator: str, path: Path) -> None:
    """Stop on a header that names a column twice (in any case or spacing): which one holds the data?"""
    names = [_normalised_name(n) for n in _header(source, separator)]
    duplicated = sorted({n for n in names if names.count(n) > 1 and n})
    if duplicated:
        raise ExtractError(
            f"cannot read {path}: its header names column(s) {', '.join(duplicated)} more than once; "
            "keep one column of each name"
        )


def _as_text(column: str, dtype: pl.DataType, path: Path) -> pl.Expr:
    """One typed (Parquet) column the audit reads, as text; a nested or binary column is a one-line error.

    A cast writes a date-time as ISO 8601 ('2026-06-01 09:30:00.000000', and a time-zone-aware one with
    its offset, '+01:00', which the contract converts to the site's time zone), a date as 2026-06-01.
    """
    if isinstance(dtype, (pl.List, pl.Array, pl.Struct, pl.Binary, pl.Object)):
        raise ExtractError(
            f"cannot read {path}: column {column} is {dtype} (nested or binary), not text, a number or a date"
        )
    return pl.col(column).cast(pl.String)


def refuse_unparseable_rows(lf: pl.LazyFrame, path: Path) -> None:
    """Parse every field of the file once: a ragged row or broken quote is a clear error now, not mid-audit."""
    try:
        lf.select(pl.all().null_count()).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ExtractError(f"cannot read {path}: {parse_error_message(exc)}") from None


def _check_columns(lf: pl.LazyFrame, extract: str, path: Path) -> list[str]:
    """Stop with a clear message when a required column is missing; return the known columns present."""
    names = _normalised_names(lf)
    missing = [c for c in required_columns(extract) if c not in names]
    if missing:
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in (";", "\t", "|")):
            hint = " (the file seems to use another delimiter than a comma)"
        raise ExtractError(
            f"{extract} extract {path} lacks required column(s): {', '.join(missing)}{hint}"
        )
    return names


def _normalised_name(name: str) -> str:
    """A header name trimmed, without a byte-order mark, lower-cased."""
    return name.strip().lstrip("\ufeff").strip().lower()


def _normalised_names(lf: pl.LazyFrame) -> list[str]:
    """Header names trimmed, without a byte-order mark, lower-cased."""
    return [_normalised_name(n) for n in lf.collect_schema().names()]


def _with_provenance(lf: pl.LazyFrame, read: list[pl.Expr], path: Path) -> pl.LazyFrame:
    """The columns `read` of a scanned file, then source_row (1 = the first data row) and source_file."""
    # The row number is taken on the scan itself, before any column is selected: a count of the
    # rows (audit._relevant_orders) stays Polars' fast count (0.1 s for a 10M-row CSV, where a row
    # index over selected columns parsed a column of every row: 1.1 s).
    index = "source_row"
    while index in lf.collect_schema().names():  # a column of the file with that name is not ours
        index = f"_{index}"
    return lf.with_row_index(index, offset=1).select(
        *read, pl.col(index).cast(pl.Int64).alias("source_row"), pl.lit(str(path)).alias("source_file")
    )


def scan_extract(
    paths: Sequence[Path],
    extract: str,
    mapping: "Mapping | str | Path | None" = None,
    *,
    validate_rows: bool = True,
) -> tuple[pl.LazyFrame, list[SourceFile]]:
    """All files of one extract as one lazy frame of text columns plus source_file and source_row.

    `mapping` (a Mapping, or a shipped profile name / TOML path for `pipeline.ingest.mappings.load_mapping`)
    turns a site's own layout into the canonical columns; None reads the canonical layout as is.
    `validate_rows` parses every field once up front, so a ragged or broken file stops the run here
    with a one-line ExtractError instead of failing later in the audit.
    """
    if mapping is not None and not hasattr(mapping, "for_extract"):

        mapping = load_mapping(mapping)
    if mapping is not None and mapping.format == "fhir" and extract == "orders":
        from pipeline.ingest.fhir import scan_fhir

        return scan_fhir(paths, mapping)
    files = discover(paths)
    frames: list[pl.LazyFrame] = []
    sources: list[SourceFile] = []
    known = EXTRACT_COLUMNS[extract]
    separator = mapping.separator if mapping is not None else None
    encoding = mapping.encoding if mapping is not None else "auto"
    if mapping is None:
        needed = set(known)
    else:

        needed = source_columns(mapping, extract)
    for path in files:
        if path.stat().st_size == 0:
            raise ExtractError(f"{extract} extract {path} is empty")
        lf, digest = _scan_one(path, separator, encoding)
        schema = lf.collect_schema()
        if mapping is None:
            names = _check_columns(lf, extract, path)
        else:
            names = _normalised_names(lf)
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise ExtractError(f"{extract} extract {path} has duplicated column(s): {', '.join(duplicated)}")
        if validate_rows:
            refuse_unparseable_rows(lf, path)
        # Only the columns the audit reads are selected and turned into text: any other column, of any
        # type (a Parquet list or struct), is never parsed or cast.
        read = [
            _as_text(original, dtype, path).alias(name)
            for (original, dtype), name in zip(schema.items(), names)
            if name in needed
        ]
        selected = _with_provenance(lf, read, path)
        if mapping is None:
            frames.append(selected)
        else:

            frames.append(apply_table_mapping(selected, extract, mapping, path, names))
        sources.append(SourceFile.of(extract, path, digest))
    combined = pl.concat(frames, how="diagonal") if len(frames) > 1 else frames[0]
    missing_optional = [c for c in known if c not in combined.collect_schema().names()]
    combined = combined.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing_optional)
    return combined.select([*known, "source_file", "source_row"]), sources
