"""What every part of the warehouse shares: its one-line error, quoting, the short wait for a commit in progress, owner-only files, the night's writer lock."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

log = logging.getLogger(__name__)


class StoreError(Exception):
    """One-line, user-facing problem with the database file (locked, unreadable, wrong version)."""


def _q(name: str) -> str:
    """Quote an identifier (names come from this module's constants, never from data)."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """SQL string literal of a constant comment (COMMENT ON takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _utc_naive(value: datetime) -> datetime:
    """A datetime as naive UTC (aware values are converted, naive ones are taken as UTC)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _one_line(exc: BaseException) -> str:
    """First line of an exception message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _store_error(db_path: Path, exc: BaseException) -> StoreError:
    """Turn a DuckDB error raised while opening the file into a one-line StoreError."""
    text = str(exc)
    if "lock" in text.lower():
        match = re.search(r"PID (\d+)", text)
        pid = f" (PID {match.group(1)})" if match else ""
        return StoreError(
            f"database {db_path} is in use by another process{pid}; try again when it finishes"
        )
    return StoreError(f"cannot open database {db_path}: {_one_line(exc)}")


def _owner_only_files(function):
    """Run a database writer with umask 077: every file DuckDB creates meanwhile is readable by its owner only.

    DuckDB creates the write-ahead log (`<db>.wal`, which holds the transaction's patient rows until the
    checkpoint) and spill files with the process umask, typically 0644; a run killed after COMMIT leaves
    that .wal behind. The umask is process-wide, so for the duration of the write other files created by
    this process are private too (never less private).
    """

    @functools.wraps(function)
    def private(*args, **kwargs):
        previous = os.umask(0o077)
        try:
            return function(*args, **kwargs)
        finally:
            os.umask(previous)

    return private


#: How long an open waits for another process's short transaction (a review, a night's commit).
LOCK_RETRY_SECONDS = float(os.environ.get("IVIG_AUDIT_LOCK_RETRY_SECONDS", "5"))

#: DuckDB's memory limit on a write connection (a DuckDB size: 128MB, 1GB). Beyond it DuckDB writes
#: its buffers to a spill folder beside the database (`<db>.tmp`, removed when the write ends) instead
#: of holding them: without it, a 10M-row first night's write held 700 MB more than its frames.
WRITE_MEMORY_LIMIT = os.environ.get("IVIG_AUDIT_WRITE_MEMORY_LIMIT", "128MB")


def _register(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    """Make a Polars frame readable as `name` on a connection, without copying its strings."""
    # DuckDB's own conversion of a Polars frame copies every string into the oldest Arrow layout
    # (+170 MB for the ledger of a 10M-row night); it reads the string views of the newest as they are.
    con.register(name, frame.to_arrow(compat_level=pl.CompatLevel.newest()))


def _connect(db_path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting up to LOCK_RETRY_SECONDS while another process holds it; else a one-line StoreError."""
    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    while True:
        try:
            return duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.Error as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise _store_error(db_path, exc) from exc
            time.sleep(0.1)


@contextlib.contextmanager
def writer_lock(db_path: Path, timeout_seconds: float):
    """Hold the database's writer lock (`<db>.lock`, owner-only) for a whole night: from reading the
    history to the commit, so a second run waits and then reads what the first wrote (no lost update).

    Waits up to `timeout_seconds`, then a one-line StoreError naming the process that holds it.
    """
    db_path = Path(db_path)
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {lock_path}: {exc.strerror or exc}") from exc
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
                    raise StoreError(
                        f"database {db_path} is being audited by another run ({holder}); "
                        f"waited {timeout_seconds:g} s: try again when it finishes"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the main schema holds a table of that name."""
    return bool(
        con.execute(
            "SELECT COUNT(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ?", [name]
        ).fetchall()[0][0]
    )
