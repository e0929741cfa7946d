"""The table catalog (checks/catalog/) against a real audited database: the catalog's tests as data.

Like dbt's schema tests: each column's declared tests (not null, unique key, vocabulary, bounds) run as
queries on the sample audited into a new database; every view and view column is documented, and the
analysts' reference (docs/tables.md) and the code that fills `runs` agree with the catalog.
"""

from __future__ import annotations

import dataclasses

import duckdb
import pytest

from checks import tables as catalog
from checks.tables import CatalogError, _markdown, vocabulary
from pipeline.night import NightRequest, run_night
from pipeline.warehouse import RunRecord, read_tables, record_review
from tests.conftest import REPO, SAMPLE

TABLES = list(catalog.tables().values())
COLUMNS = [(t.name, c) for t in TABLES for c in t.columns]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """The sample audited into a new database (one review decision recorded), opened read-only."""
    root = tmp_path_factory.mktemp("catalog")
    db = root / "audit.duckdb"
    inputs = {"orders": [SAMPLE / "orders"], "labs": [SAMPLE / "labs.csv"], "procedures": [SAMPLE / "procedures.csv"]}
    run_night(NightRequest(db=db, inputs=inputs))
    finding = read_tables(db, ["findings"])["findings"]["finding_id"][0]
    record_review(db, finding, "dismissed", "A. Pharmacist", reason_code="data_error")
    with duckdb.connect(str(db), read_only=True) as connection:
        yield connection


def test_the_sample_fills_the_tables_the_tests_read(con):
    for name in ("runs", "orders", "courses", "findings", "quarantine", "ledger", "finding_history", "review_events"):
        assert con.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] > 0, name


@pytest.mark.parametrize("table, column", COLUMNS, ids=[f"{t}.{c.name}" for t, c in COLUMNS])
def test_column_holds_what_the_catalog_declares(con, table: str, column: catalog.Column):
    spec = catalog.tables()[table]
    q = f'"{column.name}"'
    problems = []
    if not column.nullable or column.name in spec.primary_key:
        problems.append(("nulls", f"{q} IS NULL"))
    if column.vocabulary:
        allowed = ", ".join("'" + v.replace("'", "''") + "'" for v in vocabulary(column.vocabulary))
        problems.append((f"values outside vocabulary {column.vocabulary}", f"{q} NOT IN ({allowed})"))
    if column.greater_than is not None:
        problems.append((f"values <= {column.greater_than}", f"{q} <= {column.greater_than}"))
    if column.at_least is not None:
        problems.append((f"values < {column.at_least}", f"{q} < {column.at_least}"))
    for what, condition in problems:
        bad = con.execute(f'SELECT COUNT(*) FROM "{table}" WHERE {condition}').fetchone()[0]
        assert bad == 0, f"{table}.{column.name}: {bad} {what}"
    if column.unique:
        dupes = con.execute(f'SELECT COUNT(*) - COUNT(DISTINCT {q}) FROM "{table}"').fetchone()[0]
        assert dupes == 0, f"{table}.{column.name}: {dupes} duplicates"


def test_tables_and_columns_are_the_catalogs_with_its_descriptions(con):
    stored = {
        (t, c): (dtype, comment)
        for t, c, dtype, comment in con.execute(
            """SELECT c.table_name, c.column_name, c.data_type, c.comment FROM duckdb_columns() AS c
               JOIN duckdb_tables() AS t USING (table_oid) WHERE t.schema_name = 'main'"""
        ).fetchall()
    }
    declared = {(t.name, c.name): (c.type, c.description) for t in TABLES for c in t.columns}
    assert stored == declared
    comments = dict(con.execute("SELECT table_name, comment FROM duckdb_tables()").fetchall())
    assert comments == {t.name: t.description for t in TABLES}


def test_every_view_and_view_column_is_documented(con):
    stored: dict[str, dict[str, str | None]] = {}
    for view, column, comment in con.execute(
        """SELECT c.table_name, c.column_name, c.comment FROM duckdb_columns() AS c
           JOIN duckdb_views() AS v ON v.view_oid = c.table_oid WHERE NOT v.internal ORDER BY c.column_index"""
    ).fetchall():
        stored.setdefault(view, {})[column] = comment
    plain = {name: view for name, view in catalog.views().items() if not view.is_macro}
    assert set(stored) == set(plain)
    for name, view in plain.items():
        assert stored[name] == view.columns, name  # every column, in the catalog's words, nothing extra
    macros = {name for (name,) in con.execute(
        "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table_macro' AND NOT internal").fetchall()}
    assert macros == {name for name, view in catalog.views().items() if view.is_macro}


def test_the_analysts_reference_is_generated_from_the_catalog():
    written = (REPO / "docs" / "tables.md").read_text(encoding="utf-8")
    assert written == _markdown(), "docs/tables.md is stale: python -m checks.tables > docs/tables.md"


def test_the_analysts_guide_names_every_view_it_lists_and_no_other():
    guide = (REPO / "docs" / "analysts.md").read_text(encoding="utf-8")
    for name in catalog.views():
        assert f"`{name}" in guide, f"docs/analysts.md does not describe {name}"


def test_a_run_record_is_a_runs_row():
    """`RunRecord` is the code that fills `runs`: one field per column of the catalog, nothing else."""
    fields = [f.name for f in dataclasses.fields(RunRecord)]
    assert sorted(fields) == sorted(c.name for c in catalog.tables()["runs"].columns)


def test_a_mistyped_catalog_key_is_refused():
    with pytest.raises(CatalogError, match="unknown key.*nulable"):
        catalog._build(catalog.Column, {"name": "x", "type": "VARCHAR", "description": "d", "nulable": False}, "t.toml")


def test_every_column_and_table_has_words():
    for table in TABLES:
        assert table.description and table.grain and table.filled_by, table.name
        for column in table.columns:
            assert column.description.strip(), f"{table.name}.{column.name}"
    for name, view in catalog.views().items():
        assert view.description and view.grain and view.columns, name
        assert all(text.strip() for text in view.columns.values()), name


def test_frame_contracts_come_from_the_catalog():
    from checks.outputs import FINDINGS

    spec = catalog.tables()["findings"]
    assert list(FINDINGS.columns) == [c.name for c in spec.frame_columns]
    assert "facts_hash" not in FINDINGS.columns  # set by the writer, not the audit
    assert list(FINDINGS.columns["severity"].checks[0].statistics["allowed_values"]) == list(vocabulary("severity"))
