"""The database schema, generated from the table catalog (checks/catalog/): tables, comments, views, migrations.

A database is brought up to date in one step (`bring_up_to_date`), inside the writer's transaction:

1. the catalog's tables are created and its new columns added (additive changes need no migration);
2. the numbered migrations (sql/migrations/NNNN_*.sql) newer than the database's version move data;
3. macros and views (sql/macros.sql, sql/views/*.sql) are recreated and every table, column, view and
   view column gets the catalog's description as its comment.

Steps 1-3 run only when the database's fingerprint (schema version and a hash of the catalog and the
SQL) differs from this ivig-audit's: on an up-to-date database a night pays one query.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import duckdb
import polars as pl

from checks import tables as catalog
from checks.outputs import FRAME_SCHEMAS
from pipeline.warehouse.base import StoreError, _has_table, _literal, _q, _utc_naive, log

SQL_DIR = Path(__file__).parent / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
VIEWS_DIR = SQL_DIR / "views"
MACROS_SQL = SQL_DIR / "macros.sql"

#: Tables of the catalog, in its order (schema_version included).
TABLES: tuple[str, ...] = tuple(catalog.tables())


def _migration_files() -> list[tuple[int, Path]]:
    """(version, path) of every numbered migration, oldest first."""
    found = []
    for path in MIGRATIONS_DIR.glob("*.sql"):
        match = re.fullmatch(r"(\d{4})_[a-z0-9_]+\.sql", path.name)
        if match is None:
            raise StoreError(f"migration file {path.name} must be named NNNN_description.sql")
        found.append((int(match.group(1)), path))
    return sorted(found)


#: The schema version: the newest migration (a database of a lower version has data to move).
SCHEMA_VERSION: int = _migration_files()[-1][0]


def view_sql(name: str) -> str:
    """The SQL that (re)creates one view or table macro of the catalog."""
    return (VIEWS_DIR / f"{name}.sql").read_text(encoding="utf-8")


#: Every view and table macro, in creation order: name -> SQL.
VIEWS: dict[str, str] = {name: view_sql(name) for name in catalog.views()}


@cache
def fingerprint() -> str:
    """What the database records of its schema: a hash of the catalog, the migrations, macros and views."""
    return catalog.fingerprint([*MIGRATIONS_DIR.glob("*.sql"), *VIEWS_DIR.glob("*.sql"), MACROS_SQL])


def create_table_sql(table: catalog.Table) -> str:
    """CREATE TABLE of one catalog table as it is today."""
    parts = []
    for c in table.columns:
        text = f"{_q(c.name)} {c.type}"
        if not c.nullable and c.name not in table.primary_key:
            text += " NOT NULL"
        if c.default is not None:
            text += f" DEFAULT {c.default}"
        parts.append(text)
    if table.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(_q(k) for k in table.primary_key)})")
    return f"CREATE TABLE {_q(table.name)} (\n    " + ",\n    ".join(parts) + "\n)"


def _sync_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the catalog's missing tables and add its missing columns (with their defaults)."""
    present: dict[str, set[str]] = {}
    for table, column in con.execute(
        """SELECT c.table_name, c.column_name FROM duckdb_columns() AS c
           JOIN duckdb_tables() AS t ON t.table_oid = c.table_oid WHERE t.schema_name = 'main' AND NOT t.temporary"""
    ).fetchall():
        present.setdefault(table, set()).add(column)
    for table in catalog.tables().values():
        for sequence in table.sequences:
            con.execute(f"CREATE SEQUENCE IF NOT EXISTS {_q(sequence)} START 1")
        if table.name not in present:
            con.execute(create_table_sql(table))
            continue
        for c in table.columns:
            if c.name in present[table.name]:
                continue
            if not c.nullable and c.default is None:
                raise StoreError(
                    f"catalog column {table.name}.{c.name} is NOT NULL without a default: an existing "
                    "database cannot gain it (give it a default in checks/catalog/tables)"
                )
            default = f" DEFAULT {c.default}" if c.default is not None else ""
            con.execute(f"ALTER TABLE {_q(table.name)} ADD COLUMN {_q(c.name)} {c.type}{default}")
            if not c.nullable:
                con.execute(f"ALTER TABLE {_q(table.name)} ALTER COLUMN {_q(c.name)} SET NOT NULL")


def _rebuild(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Rebuild a table in its catalog shape (e.g. a new primary key), keeping the columns both shapes have."""
    table = catalog.tables()[name]
    present = {c for (c,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ?", [name]
    ).fetchall()}
    kept = ", ".join(_q(c.name) for c in table.columns if c.name in present)
    previous = _q(f"{name}_before_rebuild")
    con.execute(f"ALTER TABLE {_q(name)} RENAME TO {previous}")
    con.execute(create_table_sql(table))
    con.execute(f"INSERT INTO {_q(name)} ({kept}) SELECT {kept} FROM {previous}")
    con.execute(f"DROP TABLE {previous}")


def _ledger_from_source_rows(con: duckdb.DuckDBPyConnection) -> None:
    from pipeline.warehouse.ledger import ledger_from_source_rows

    ledger_from_source_rows(con)


def _ledger_versions_without_nulls(con: duckdb.DuckDBPyConnection) -> None:
    from pipeline.warehouse.ledger import ledger_versions_without_nulls

    ledger_versions_without_nulls(con)


#: Steps a migration runs in Python (`-- python: <step> [argument]`): what SQL alone cannot do.
MIGRATION_STEPS = {
    "ledger_from_source_rows": _ledger_from_source_rows,
    "ledger_versions_without_nulls": _ledger_versions_without_nulls,
    "rebuild": _rebuild,
}

_STEP = re.compile(r"^-- python: (\w+)(?: (\w+))?\s*$", re.M)


def _run_migration(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Execute one migration file: its SQL statements in order, with its Python steps where they stand."""
    text = path.read_text(encoding="utf-8")
    position = 0
    for match in _STEP.finditer(text):
        _execute_script(con, text[position:match.start()])
        step, argument = match.group(1), match.group(2)
        if step not in MIGRATION_STEPS:
            raise StoreError(f"migration {path.name} names an unknown step '{step}'")
        MIGRATION_STEPS[step](con, *([argument] if argument else []))
        position = match.end()
    _execute_script(con, text[position:])


def _execute_script(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Execute the statements of a SQL text (DuckDB runs a multi-statement string in order)."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--")).strip()
    if body:
        con.execute(body)


def _stored_state(con: duckdb.DuckDBPyConnection) -> tuple[int, str | None] | None:
    """(schema version, fingerprint) the database records, or None when it has no schema_version table."""
    if not _has_table(con, "schema_version"):
        return None
    columns = {c for (c,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = 'schema_version'"
    ).fetchall()}
    recorded = "fingerprint" if "fingerprint" in columns else "NULL"
    row = con.execute(f"SELECT MAX(version), MAX({recorded}) FROM schema_version").fetchall()[0]
    return (int(row[0]) if row[0] is not None else 0, row[1])


def _stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """Schema version stored in the file, or None when there is no schema_version table."""
    state = _stored_state(con)
    return None if state is None else state[0]


def is_current(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the database has this ivig-audit's schema, views and comments."""
    return _stored_state(con) == (SCHEMA_VERSION, fingerprint())


def refuse_newer(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """A one-line StoreError when the database was written by a newer ivig-audit."""
    state = _stored_state(con)
    if state is not None and state[0] > SCHEMA_VERSION:
        raise StoreError(
            f"database {db_path} has schema version {state[0]}, newer than this ivig-audit "
            f"supports ({SCHEMA_VERSION}); upgrade ivig-audit"
        )


def bring_up_to_date(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Create or upgrade the schema, views and comments inside the open transaction (nothing when current)."""
    state = _stored_state(con)
    if state == (SCHEMA_VERSION, fingerprint()):
        return
    refuse_newer(con, db_path)
    _sync_tables(con)
    _execute_script(con, MACROS_SQL.read_text(encoding="utf-8"))
    if state is not None:  # a new database is created in today's shape: it has no data to move
        for version, path in _migration_files():
            if version > state[0]:
                log.info("applying schema migration %s", path.name)
                _run_migration(con, path)
    _apply_views_and_comments(con)
    con.execute("DELETE FROM schema_version")
    con.execute(
        "INSERT INTO schema_version (version, applied_at, fingerprint) VALUES (?, ?, ?)",
        [SCHEMA_VERSION, _utc_naive(datetime.now(timezone.utc)), fingerprint()],
    )


def _write_vocabulary(con: duckdb.DuckDBPyConnection) -> None:
    """Fill ref_vocabulary from the catalog's vocabularies (the views read severity ranks and labels there)."""
    con.execute("DELETE FROM ref_vocabulary")
    rows = [(name, value, rank, label) for name in catalog.vocabulary_names()
            for rank, (value, label) in enumerate(catalog.vocabulary_labels(name).items())]
    con.executemany("INSERT INTO ref_vocabulary (vocabulary, value, value_rank, label) VALUES (?, ?, ?, ?)", rows)


def _drop_retired_views(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the views and table macros an earlier ivig-audit created that the catalog no longer holds."""
    wanted = set(catalog.views())
    for (name,) in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
    ).fetchall():
        if name not in wanted:
            con.execute(f"DROP VIEW {_q(name)}")
    for (name,) in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table_macro' "
        "AND NOT internal AND schema_name = 'main'"
    ).fetchall():
        if name not in wanted:
            con.execute(f"DROP MACRO TABLE {_q(name)}")


def _apply_views_and_comments(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the views and table macros, and write the catalog's description of every table, column,
    view and view column as its comment."""
    for table in catalog.tables().values():
        con.execute(f"COMMENT ON TABLE {_q(table.name)} IS {_literal(table.description)}")
        for c in table.columns:
            con.execute(f"COMMENT ON COLUMN {_q(table.name)}.{_q(c.name)} IS {_literal(c.description)}")
    _write_vocabulary(con)
    _drop_retired_views(con)
    for name, view in catalog.views().items():
        _execute_script(con, VIEWS[name])
        if view.is_macro:
            con.execute(f"COMMENT ON MACRO TABLE {_q(name)} IS {_literal(view.description)}")
            continue
        con.execute(f"COMMENT ON VIEW {_q(name)} IS {_literal(view.description)}")
        for column, text in view.columns.items():
            con.execute(f"COMMENT ON COLUMN {_q(name)}.{_q(column)} IS {_literal(text)}")


def _check_frame(table: str, df: pl.DataFrame) -> None:
    """Raise ValueError when a frame's column names or dtypes differ from its contract."""
    schema = FRAME_SCHEMAS[table]
    expected = {name: col.dtype.type for name, col in schema.columns.items()}
    missing = [c for c in expected if c not in df.schema]
    extra = [c for c in df.columns if c not in expected]
    wrong = [
        f"{c} is {df.schema[c]}, expected {expected[c]}"
        for c in expected
        if c in df.schema and df.schema[c] != expected[c] and df.schema[c] != pl.Null
    ]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    if wrong:
        problems.append("; ".join(wrong))
    if problems:
        raise ValueError(f"{table} frame does not match checks.outputs.{schema.name}: " + "; ".join(problems))


def _columns(table: str) -> list[str]:
    """Contract columns of an incoming frame, in schema order."""
    return list(FRAME_SCHEMAS[table].columns)


def order_by(table: str) -> str | None:
    """The catalog's row order of a table (exports and reads list rows in it)."""
    spec = catalog.tables().get(table)
    return spec.order_by if spec is not None else None
