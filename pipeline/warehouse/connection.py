"""Opening the database: transactions (schema migrated and views applied first), atomic creation, read-only connections."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import duckdb

from pipeline.warehouse.base import (
    LOCK_RETRY_SECONDS,
    WRITE_MEMORY_LIMIT,
    StoreError,
    writer_lock,
    _connect,
    _one_line,
    _owner_only_files,
    _store_error,
)
from pipeline.warehouse.schema import _stored_version, bring_up_to_date, is_current, refuse_newer

#: The name the schema step goes by in this module (tests inject faults into it).
_migrate = bring_up_to_date


def _holds_no_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the open database holds no table at all: what a first run killed before its COMMIT leaves behind."""
    return not con.execute("SELECT COUNT(*) FROM duckdb_tables()").fetchall()[0][0]


@_owner_only_files
def upgrade_database(db_path: Path) -> None:
    """Bring an existing database to this schema version before a night reads it.

    A new database is created by the first write (`_create_atomically`: built under a temporary
    name and renamed into place, so a kill at any moment leaves either no database or a valid one).
    """
    db_path = Path(db_path)
    if not db_path.exists() or db_path.stat().st_size == 0:
        return  # created by the night's first write (nothing is created for a night that stops before)
    con = _connect(db_path, read_only=True)
    try:
        # A file DuckDB made but no migration ever committed to is built like a new one.
        empty = _holds_no_table(con)
        if not empty:
            refuse_newer(con, db_path)
        current = not empty and is_current(con)
    finally:
        con.close()
    if not current:
        with _transaction(db_path):
            pass


def _create_atomically(db_path: Path) -> None:
    """A new database with the current schema, built beside its final name and renamed into place."""
    partial = db_path.with_name(f".{db_path.name}.creating-{os.getpid()}")
    for leftover in (partial, partial.with_name(partial.name + ".wal")):
        leftover.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(partial))
    except duckdb.Error as exc:
        raise _store_error(db_path, exc) from exc
    try:
        os.chmod(partial, 0o600)
        con.execute("BEGIN TRANSACTION")
        _migrate(con, db_path)
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    except duckdb.IOException as exc:
        raise StoreError(f"cannot create database {db_path}: {_one_line(exc)}") from exc
    finally:
        con.close()
    try:
        os.replace(partial, db_path)
    except OSError as exc:
        raise StoreError(f"cannot create database {db_path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".wal").unlink(missing_ok=True)


@contextlib.contextmanager
def _transaction(db_path: Path):
    """A read-write connection inside one transaction, schema migrated and views applied: commit on
    success, roll back on any exception (a full disk is a one-line StoreError)."""
    if not db_path.exists() or db_path.stat().st_size == 0:
        _create_atomically(db_path)
    con = _connect(db_path)
    try:
        try:
            con.execute("SET memory_limit = ?", [WRITE_MEMORY_LIMIT])
        except duckdb.Error as exc:
            raise StoreError(f"IVIG_AUDIT_WRITE_MEMORY_LIMIT={WRITE_MEMORY_LIMIT!r} is not a DuckDB memory size: {_one_line(exc)}") from None
        con.execute("BEGIN TRANSACTION")
        try:
            _migrate(con, db_path)
            yield con
            con.execute("COMMIT")
        except BaseException as exc:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:  # transaction already aborted; nothing left to undo
                pass
            if isinstance(exc, duckdb.IOException):  # disk full, file system gone read-only, ...
                raise StoreError(f"cannot write database {db_path}: {_one_line(exc)}") from exc
            raise
    finally:
        con.close()


def connect_read_only(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Open the database read-only after checking it exists and has a supported schema version."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StoreError(f"database {db_path} does not exist; run the audit first")
    return _checked(_connect(db_path, read_only=True), db_path)


def _checked(con: duckdb.DuckDBPyConnection, db_path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection after checking its schema version (brought up to date first when older)."""
    try:
        stored = _stored_version(con)
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot read database {db_path}: {_one_line(exc)}") from exc
    if stored is None:
        con.close()
        raise StoreError(f"database {db_path} holds no audit data (no schema_version table)")
    try:
        refuse_newer(con, db_path)
        current = is_current(con)
    except BaseException:
        con.close()
        raise
    if current:
        return con
    # Written by another version of ivig-audit: its tables, views and comments are brought to this
    # version's first (a short write, under the writer lock), so that every reader sees the same views.
    con.close()
    with writer_lock(db_path, LOCK_RETRY_SECONDS):
        upgrade_database(db_path)
    return _connect(db_path, read_only=True)


def _open_existing(db_path: Path) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection to an audit database, or None when there is none yet (or an empty file)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        return None
    con = _connect(db_path, read_only=True)
    try:
        empty = _holds_no_table(con)
    except BaseException:
        con.close()
        raise
    if empty:
        con.close()
        return None
    return _checked(con, db_path)
