"""The table catalog: one TOML document per stored table and per view (checks/catalog/), read once.

Each table declares its grain, keys and columns (type, nullability, default, description, tests:
`unique`, `greater_than`, `at_least`, `vocabulary`); each view and table macro its grain,
parameters and column descriptions. From it come the DuckDB DDL and `COMMENT ON` statements
(pipeline/warehouse/schema.py), the Pandera contracts of the frames the audit hands the writer
(checks/outputs.py), the data tests run on a real database (tests/test_catalog.py) and the
analysts' reference (docs/tables.md, `python -m checks.tables`).
"""

from __future__ import annotations

import functools
import hashlib
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

CATALOG_DIR = Path(__file__).parent / "catalog"


class CatalogError(ValueError):
    """A catalog document that is not what the catalog expects (a developer's mistake, caught by the tests)."""


@dataclass(frozen=True)
class Column:
    """One column of a stored table."""

    name: str
    type: str
    description: str
    nullable: bool = True
    default: str | None = None
    #: False: set by the writer (e.g. the run id stamp), not part of the frame the audit hands over.
    frame: bool = True
    unique: bool = False
    greater_than: float | None = None
    at_least: float | None = None
    vocabulary: str | None = None


@dataclass(frozen=True)
class Table:
    """One stored table: what a row is, its key and its columns."""

    name: str
    description: str
    grain: str
    filled_by: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    order_by: str | None = None
    #: True: the audit hands the writer a Polars frame of this table, checked by a Pandera contract.
    frame: bool = False
    sequences: tuple[str, ...] = ()

    def column(self, name: str) -> Column:
        """The named column (KeyError when the table has none of that name)."""
        return next(c for c in self.columns if c.name == name)

    @property
    def frame_columns(self) -> tuple[Column, ...]:
        """The columns of the frame the audit hands over (every column but those the writer sets)."""
        return tuple(c for c in self.columns if c.frame)


@dataclass(frozen=True)
class View:
    """One view (or table macro, when it has parameters) of the database, defined in pipeline/warehouse/sql/."""

    name: str
    description: str
    grain: str
    columns: dict[str, str]
    parameters: dict[str, str]

    @property
    def is_macro(self) -> bool:
        """A table macro: a view that takes parameters (`SELECT * FROM name(...)`)."""
        return bool(self.parameters)


def _build(cls, data: dict, where: str):
    """A dataclass from a TOML table, refusing unknown or missing keys."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def _read(path: Path) -> dict:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


@functools.cache
def _index() -> dict:
    return _read(CATALOG_DIR / "catalog.toml")


@functools.cache
def tables() -> dict[str, Table]:
    """Every stored table, in the catalog's order (catalog.toml)."""
    out: dict[str, Table] = {}
    for name in _index()["tables"]:
        path = CATALOG_DIR / "tables" / f"{name}.toml"
        doc = _read(path)
        head = dict(doc.get("table", {}))
        columns = tuple(_build(Column, c, f"{path.name} column {c.get('name')}") for c in doc.get("columns", []))
        head["columns"] = columns
        for key in ("primary_key", "sequences"):
            if key in head:
                head[key] = tuple(head[key])
        table = _build(Table, head, path.name)
        if table.name != name:
            raise CatalogError(f"{path.name} names table {table.name}")
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise CatalogError(f"{path.name}: a column is listed twice")
        for column in columns:
            if column.vocabulary is not None and column.vocabulary not in _vocabularies():
                raise CatalogError(f"{path.name} column {column.name}: no vocabulary '{column.vocabulary}'")
        missing = [k for k in table.primary_key if k not in names]
        if missing:
            raise CatalogError(f"{path.name}: primary key column(s) {', '.join(missing)} are not columns")
        out[name] = table
    return out


@functools.cache
def views() -> dict[str, View]:
    """Every view and table macro, in creation order (a view may read those before it)."""
    out: dict[str, View] = {}
    for name in _index()["views"]:
        path = CATALOG_DIR / "views" / f"{name}.toml"
        doc = _read(path)
        head = dict(doc.get("view", {}))
        head["columns"] = dict(doc.get("columns", {}))
        head["parameters"] = dict(doc.get("parameters", {}))
        view = _build(View, head, path.name)
        if view.name != name:
            raise CatalogError(f"{path.name} names view {view.name}")
        out[name] = view
    return out


@functools.cache
def _vocabularies() -> dict[str, dict]:
    return _read(CATALOG_DIR / "vocabulary.toml")


def vocabulary(name: str) -> tuple[str, ...]:
    """The values of a closed vocabulary (e.g. 'severity': critical, warning, info), in display order."""
    return tuple(v["value"] for v in _vocabularies()[name]["values"])


def vocabulary_labels(name: str) -> dict[str, str]:
    """Value -> the words people read, for one vocabulary."""
    return {v["value"]: v["label"] for v in _vocabularies()[name]["values"]}


def vocabulary_names() -> tuple[str, ...]:
    """Every vocabulary of the catalog."""
    return tuple(_vocabularies())


def catalog_files() -> list[Path]:
    """Every document of the catalog (the schema's fingerprint is taken over them)."""
    return sorted(CATALOG_DIR.rglob("*.toml"))


def fingerprint(extra: list[Path] = ()) -> str:
    """sha256 over the catalog's documents and `extra` files (the warehouse adds its SQL)."""
    digest = hashlib.sha256()
    for path in [*catalog_files(), *sorted(extra)]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def frame_schema(name: str):
    """The Pandera contract of the frame the audit hands the writer for table `name`."""
    import pandera.polars as pa
    import polars as pl

    dtypes = {"VARCHAR": pl.String, "BIGINT": pl.Int64, "DOUBLE": pl.Float64, "BOOLEAN": pl.Boolean,
              "TIMESTAMP": pl.Datetime("us"), "DATE": pl.Date, "INTEGER": pl.Int32}
    table = tables()[name]
    if not table.frame:
        raise CatalogError(f"table {name} takes no frame from the audit (frame = true in its catalog)")
    columns = {}
    for c in table.frame_columns:
        checks = []
        if c.greater_than is not None:
            checks.append(pa.Check.gt(c.greater_than))
        if c.at_least is not None:
            checks.append(pa.Check.ge(c.at_least))
        if c.vocabulary is not None:
            checks.append(pa.Check.isin(vocabulary(c.vocabulary)))
        columns[c.name] = pa.Column(
            dtypes[c.type], nullable=c.nullable and c.name not in table.primary_key,
            unique=c.unique, checks=checks or None,
        )
    return pa.DataFrameSchema(columns, strict=True, name=name)


def _markdown() -> str:
    """The analysts' reference of every table and view (docs/tables.md), from the catalog."""
    lines = [
        "# Tables and views of the audit database",
        "",
        "Generated from the table catalog (`checks/catalog/`) by `python -m checks.tables > docs/tables.md`;",
        "a test fails when this file and the catalog disagree. The same words are the database's own",
        "comments (`SELECT table_name, comment FROM duckdb_tables()`, `duckdb_columns()`, `duckdb_views()`).",
        "",
    ]
    for table in tables().values():
        lines += [f"## `{table.name}`", "", table.description + ".", "", f"Grain: {table.grain}.", ""]
        if table.primary_key:
            lines += [f"Key: {', '.join(f'`{k}`' for k in table.primary_key)}.", ""]
        lines += ["| column | type | description |", "|---|---|---|"]
        for c in table.columns:
            values = f" ({', '.join(vocabulary(c.vocabulary))})" if c.vocabulary else ""
            null = "" if c.nullable and c.name not in table.primary_key else ", not null"
            lines.append(f"| `{c.name}` | {c.type}{null} | {c.description}{values} |")
        lines.append("")
    for view in views().values():
        kind = "table macro" if view.is_macro else "view"
        call = f"{view.name}({', '.join(view.parameters)})" if view.is_macro else view.name
        lines += [f"## `{call}` ({kind})", "", view.description + ".", "", f"Grain: {view.grain}.", ""]
        if view.parameters:
            lines += ["| parameter | meaning |", "|---|---|"]
            lines += [f"| `{p}` | {text} |" for p, text in view.parameters.items()]
            lines.append("")
        lines += ["| column | description |", "|---|---|"]
        lines += [f"| `{c}` | {text} |" for c, text in view.columns.items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(_markdown())
