"""Read extracts (CSV, Parquet or FHIR NDJSON files, or folders of them) as text columns with provenance.

This is the only input IO. Whatever the files look like (a mapping profile says how a site's columns,
codes, units and dates map onto the canonical ones), the result is one lazy frame per extract with
every canonical column as text plus `source_file` and `source_row` (1 = the first data row).

Text files are checked once, in the same pass that hashes them: UTF-8 (with or without BOM) is read
as is; a file that is not UTF-8 is read as Windows-1252 (which covers Latin-1 text) through an
in-memory UTF-8 copy; a file that is neither, or that holds NUL bytes (binary), stops the run with
a one-line ExtractError. Characters are never silently replaced.
"""

from __future__ import annotations

import codecs
import gzip
import functools
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import polars as pl

from checks.inputs import EXTRACT_COLUMNS, required_columns

if TYPE_CHECKING:
    from pipeline.mapping import Mapping

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl")
_BLOCK = 1 << 20


class ExtractError(Exception):
    """An extract that cannot be read or lacks required columns (one-line, user-facing)."""


@dataclass(frozen=True)
class SourceFile:
    """One input file of a run, with its content hash."""

    extract: str
    path: str
    sha256: str


def _is_extract_file(path: Path, suffixes: tuple[str, ...] = CSV_SUFFIXES + PARQUET_SUFFIXES) -> bool:
    """Whether a file name looks like an extract of the given kinds."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(suffixes)


def discover(paths: Sequence[Path], suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Expand files and folders into the sorted list of extract files they hold."""
    suffixes = suffixes or CSV_SUFFIXES + PARQUET_SUFFIXES
    kinds = "NDJSON" if suffixes == NDJSON_SUFFIXES else "CSV or Parquet"
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_extract_file(p, suffixes))
            if not files:
                raise ExtractError(f"folder {path} holds no {kinds} files")
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
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _TextCheck:
    """What one pass over a text file found: its hash and whether it is clean UTF-8."""

    sha256: str
    utf8: bool
    utf16: bool
    first_bad_offset: int | None


def _check_text(path: Path) -> _TextCheck:
    """Hash a text file and check it is UTF-8 text, once per file version (see `_check_text_of`)."""
    stat = path.stat()
    return _check_text_of(str(path), stat.st_size, stat.st_mtime_ns)


def content_sha256(path: Path) -> str:
    """The content hash of an extract file; for text files the same read also checks the encoding,
    so the scan that follows does not read the file again."""
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        return file_sha256(path)
    return _check_text(path).sha256


@functools.lru_cache(maxsize=256)
def _check_text_of(name: str, size: int, mtime_ns: int) -> _TextCheck:
    """Hash a text file and check it is UTF-8 text (gzip is looked into), in one streaming pass
    (two for gzip: the hash is of the compressed bytes, the text check of the content). Cached by
    path, size and modification time: deciding which files are new and scanning them read it once."""
    path = Path(name)
    digest = hashlib.sha256()
    gzipped = path.name.lower().endswith(".gz")
    if gzipped:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
    opener = gzip.open if gzipped else open
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, first, bad = 0, True, None
    try:
        with opener(path, "rb") as handle:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                if not gzipped:
                    digest.update(block)
                if first:
                    first = False
                    if block[:2] in (b"\xff\xfe", b"\xfe\xff"):
                        return _TextCheck(_finish_hash(digest, handle, gzipped), False, True, None)
                    if b"\x00" in block[:65536]:
                        raise ExtractError(f"cannot read {path}: it holds NUL bytes (a binary file, not CSV text)")
                if bad is None:
                    try:
                        decoder.decode(block, final=False)
                    except UnicodeDecodeError as exc:
                        bad = offset + exc.start
                        if gzipped:
                            break
                offset += len(block)
            if bad is None:
                decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        bad = offset + exc.start
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ExtractError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return _TextCheck(digest.hexdigest(), bad is None, False, bad)


def _finish_hash(digest, handle, gzipped: bool) -> str:
    """Complete the hash of a file whose text check stopped early."""
    if not gzipped:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _transcoded(path: Path, encoding: str) -> io.BytesIO:
    """The file's text re-encoded as UTF-8 in memory (strict: a byte the encoding lacks is an error)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ExtractError(
            f"cannot read {path}: neither UTF-8 nor {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    if "\x00" in text:
        raise ExtractError(f"cannot read {path}: it holds NUL characters (a binary file, not CSV text)")
    return io.BytesIO(text.encode("utf-8"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _scan_one(path: Path, separator: str | None = None, encoding: str = "auto") -> tuple[pl.LazyFrame, str]:
    """Scan one file with every column as text; return it and the file's sha256. Errors are ExtractError."""
    name = path.name.lower()
    try:
        if name.endswith(PARQUET_SUFFIXES):
            lf = pl.scan_parquet(path)
            schema = lf.collect_schema()
            return lf.select(pl.col(c).cast(pl.String) for c in schema.names()), file_sha256(path)
        if separator is None:
            separator = "\t" if name.endswith(".tsv") else ","
        check = _check_text(path)
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
        lf = pl.scan_csv(
            source,
            infer_schema=False,
            separator=separator,
            encoding="utf8",
            truncate_ragged_lines=False,
        )
        lf.collect_schema()
        return lf, check.sha256
    except ExtractError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise ExtractError(f"cannot read {path}: {_first_line(exc)}") from None


def _validate_rows(lf: pl.LazyFrame, path: Path) -> None:
    """Parse every field of the file once: a ragged row or broken quote is a clear error now, not mid-audit."""
    try:
        lf.select(pl.all().null_count()).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ExtractError(f"cannot read {path}: {_first_line(exc)}") from None


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


def _normalised_names(lf: pl.LazyFrame) -> list[str]:
    """Header names trimmed, without a byte-order mark, lower-cased."""
    return [n.strip().lstrip("\ufeff").strip().lower() for n in lf.collect_schema().names()]


def _with_provenance(lf: pl.LazyFrame, path: Path) -> pl.LazyFrame:
    return lf.with_row_index("source_row", offset=1).with_columns(
        pl.col("source_row").cast(pl.Int64),
        pl.lit(str(path)).alias("source_file"),
    )


def scan_extract(
    paths: Sequence[Path],
    extract: str,
    mapping: "Mapping | str | Path | None" = None,
    *,
    validate_rows: bool = True,
) -> tuple[pl.LazyFrame, list[SourceFile]]:
    """All files of one extract as one lazy frame of text columns plus source_file and source_row.

    `mapping` (a Mapping, or a shipped profile name / TOML path for `pipeline.mapping.load_mapping`)
    turns a site's own layout into the canonical columns; None reads the canonical layout as is.
    `validate_rows` parses every field once up front, so a ragged or broken file stops the run here
    with a one-line ExtractError instead of failing later in the audit.
    """
    if mapping is not None and not hasattr(mapping, "for_extract"):
        from pipeline.mapping import load_mapping

        mapping = load_mapping(mapping)
    if mapping is not None and mapping.format == "fhir" and extract == "orders":
        return _scan_fhir(paths, mapping)
    files = discover(paths)
    frames: list[pl.LazyFrame] = []
    sources: list[SourceFile] = []
    known = EXTRACT_COLUMNS[extract]
    separator = mapping.separator if mapping is not None else None
    encoding = mapping.encoding if mapping is not None else "auto"
    for path in files:
        if path.stat().st_size == 0:
            raise ExtractError(f"{extract} extract {path} is empty")
        lf, sha = _scan_one(path, separator, encoding)
        original = lf.collect_schema().names()
        if mapping is None:
            names = _check_columns(lf, extract, path)
        else:
            names = _normalised_names(lf)
        if len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise ExtractError(f"{extract} extract {path} has duplicated column(s): {', '.join(duplicated)}")
        if validate_rows:
            _validate_rows(lf, path)
        renamed = _with_provenance(lf.rename(dict(zip(original, names))), path)
        if mapping is None:
            present = [n for n in names if n in known]
            frames.append(renamed.select(*present, "source_file", "source_row"))
        else:
            from pipeline.mapping import apply_table_mapping

            frames.append(apply_table_mapping(renamed, extract, mapping, path))
        sources.append(SourceFile(extract=extract, path=str(path), sha256=sha))
    combined = pl.concat(frames, how="diagonal") if len(frames) > 1 else frames[0]
    missing_optional = [c for c in known if c not in combined.collect_schema().names()]
    combined = combined.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing_optional)
    return combined.select([*known, "source_file", "source_row"]), sources


def _scan_fhir(paths: Sequence[Path], mapping: "Mapping") -> tuple[pl.LazyFrame, list[SourceFile]]:
    """FHIR R4 NDJSON files (medication resources, Observations, Patients) as canonical order rows."""
    from pipeline.mapping import fhir_orders

    files = discover(paths, NDJSON_SUFFIXES)
    sources: list[SourceFile] = []
    for path in files:
        if path.stat().st_size == 0:
            raise ExtractError(f"orders extract {path} is empty")
        check = _check_text(path)
        if not check.utf8:
            raise ExtractError(f"cannot read {path}: FHIR NDJSON must be UTF-8 text")
        sources.append(SourceFile(extract="orders", path=str(path), sha256=check.sha256))
    return fhir_orders(files, mapping), sources
