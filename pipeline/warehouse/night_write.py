"""A night's write: the judged patients' orders, courses and findings replaced in one transaction with what the ledger learned."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import duckdb
import polars as pl

from pipeline.warehouse.base import _owner_only_files, _q, _register, log
from pipeline.warehouse.connection import _transaction
from pipeline.warehouse.ledger import _write_ledger
from pipeline.warehouse.runs import RunRecord, _data_through, _sequenced, _write_runs
from pipeline.warehouse.schema import _check_frame, _columns

_AUDITED = "patient_id IN (SELECT patient_id FROM incoming_patients)"


def _write_orders(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Replace the orders of every audited patient (and any order_id coming in), stamping this run_id."""
    _replace_rows(con, "orders", "order_id", run_id)


#: Stored courses the night judged: of an audited patient, ending at or after the patient's judged_from (null: all).
_JUDGED_COURSE = ("EXISTS (SELECT 1 FROM incoming_patients AS p WHERE p.patient_id = courses.patient_id "
                  'AND (p.judged_from IS NULL OR courses."end" >= p.judged_from))')


def _write_courses(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Replace the courses the night judged (of each audited patient, from its judged_from; and any course_id coming in)."""
    # Before the replacement: a judged course that is gone tonight (merged, superseded) takes its findings with it.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE judged_courses AS SELECT course_id FROM courses WHERE {_JUDGED_COURSE} "
        "UNION SELECT course_id FROM incoming_courses"
    )
    _replace_rows(con, "courses", "course_id", run_id, _JUDGED_COURSE)


def _same_row(columns: list[str], left: str, right: str) -> str:
    """SQL true when two rows (table aliases) hold the same value in every one of `columns` (constant names)."""
    return " AND ".join(f"{left}.{_q(c)} IS NOT DISTINCT FROM {right}.{_q(c)}" for c in columns)


def _replace_rows(con: duckdb.DuckDBPyConnection, table: str, key: str, run_id: str, audited: str = _AUDITED) -> None:
    """Make `table`'s rows of the audited patients (`audited`, constant SQL: every row of theirs unless
    narrowed) and of any key coming in those of `incoming_<table>`, stamped with this run_id.

    Only what changed is rewritten: a stored row equal to its incoming row in every column keeps its
    place and only takes the run_id (an UPDATE of that one unindexed column), the others are deleted
    and the new or changed rows inserted. A patient's rows are judged again whole every night one of
    their rows arrives; rewriting all of them made the commit grow with the patient's history
    (bench/nightly.py, issue 13).
    """
    columns = _columns(table)
    cols = ", ".join(_q(c) for c in columns)
    incoming = _q(f"incoming_{table}")
    scope = f"({audited} OR {_q(key)} IN (SELECT {_q(key)} FROM {incoming}))"
    same = f"EXISTS (SELECT 1 FROM {incoming} AS i WHERE {_same_row(columns, 'i', _q(table))})"
    # A key coming in twice is rewritten, so that the primary key refuses it (and the transaction rolls back).
    twice = f"{_q(key)} IN (SELECT {_q(key)} FROM {incoming} GROUP BY {_q(key)} HAVING COUNT(*) > 1)"
    con.execute(f"DELETE FROM {_q(table)} WHERE {scope} AND (NOT {same} OR {twice})")
    con.execute(f"UPDATE {_q(table)} SET run_id = ? WHERE {_q(key)} IN (SELECT {_q(key)} FROM {incoming})", [run_id])
    con.execute(
        f"INSERT INTO {_q(table)} ({cols}, run_id) SELECT {cols}, ? FROM {incoming} AS i "
        f"WHERE NOT EXISTS (SELECT 1 FROM {_q(table)} AS t WHERE t.{_q(key)} = i.{_q(key)})",
        [run_id],
    )


def _write_findings(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Merge the audited patients' findings: keep review status and first sighting, resolve what is no
    longer raised, mark a reviewed finding whose facts changed, and append every change to finding_history."""
    run_id, pack = run.run_id, run.rule_pack_version
    facts = "finding_facts_hash(i.severity, i.expected, i.observed, i.excess_g, i.order_ids)"
    # 1. Cleared: stored, unresolved, of an audited patient and of no course or a judged one, not raised again.
    cleared = f"findings.resolved_run IS NULL AND findings.{_AUDITED} " \
              "AND (findings.course_id IS NULL OR findings.course_id IN (SELECT course_id FROM judged_courses)) AND NOT EXISTS " \
              "(SELECT 1 FROM incoming_findings AS i WHERE i.finding_id = findings.finding_id)"
    con.execute(_history_sql("findings", "resolved", "findings", cleared), [run_id, pack])
    con.execute(f"UPDATE findings SET resolved_run = ? WHERE {cleared}", [run_id])
    # 2. Raised again: history first (it compares with what is stored), then the refresh.
    stored = "findings AS f JOIN incoming_findings AS i USING (finding_id)"
    con.execute(_history_sql("i", "reopened", stored, "f.resolved_run IS NOT NULL"), [run_id, pack])
    con.execute(_history_sql("i", "changed", stored, f"f.resolved_run IS NULL AND f.facts_hash IS DISTINCT FROM {facts}"), [run_id, pack])
    # A finding raised again as it was stored only takes this run and pack (an UPDATE of two unindexed
    # columns); one whose columns changed is replaced (deleted and inserted) rather than updated: an
    # UPDATE of many columns of a few thousand rows of an indexed table took seconds in DuckDB 2.0,
    # the same rows rewritten 0.02 s (bench/nightly.py).
    kept = {"finding_id": "f.finding_id", "status": "f.status", "first_seen_run": "f.first_seen_run",
            "last_seen_run": "$run", "resolved_run": "NULL", "raised_pack_version": "f.raised_pack_version",
            "confirmed_pack_version": "$pack", "facts_hash": facts, "reviewed_facts_hash": "f.reviewed_facts_hash",
            "changed_since_review": f"f.status <> 'open' AND f.reviewed_facts_hash IS DISTINCT FROM {facts}"}
    columns = [*_columns("findings"), *(c for c in kept if c not in _columns("findings"))]
    merged = ", ".join(f"{kept.get(c, 'i.' + _q(c))} AS {_q(c)}" for c in columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE raised_again AS SELECT {merged} FROM {stored}", {"run": run_id, "pack": pack})
    stamped = ("last_seen_run", "confirmed_pack_version")
    same = _same_row([c for c in columns if c not in stamped], "r", "f")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE changed_again AS SELECT r.* FROM raised_again AS r "
        f"JOIN findings AS f USING (finding_id) WHERE NOT ({same})"
    )
    con.execute(
        """UPDATE findings SET last_seen_run = r.last_seen_run, confirmed_pack_version = r.confirmed_pack_version
           FROM raised_again AS r WHERE findings.finding_id = r.finding_id"""
    )
    con.execute("DELETE FROM findings WHERE finding_id IN (SELECT finding_id FROM changed_again)")
    listed = ", ".join(_q(c) for c in columns)
    con.execute(f"INSERT INTO findings ({listed}) SELECT {listed} FROM changed_again")
    # 3. New: inserted as given, raised under this pack.
    new = "NOT EXISTS (SELECT 1 FROM findings AS f WHERE f.finding_id = i.finding_id)"
    con.execute(_history_sql("i", "raised", "incoming_findings AS i", new), [run_id, pack])
    cols = _columns("findings")
    select = ", ".join("?" if c == "last_seen_run" else f"i.{_q(c)}" for c in cols)
    con.execute(
        f"""INSERT INTO findings ({', '.join(_q(c) for c in cols)}, raised_pack_version, confirmed_pack_version,
                facts_hash, changed_since_review)
            SELECT {select}, ?, ?, {facts}, false FROM incoming_findings AS i WHERE {new}""",
        [run_id, pack, pack],
    )


def _history_sql(alias: str, change: str, source: str, where: str) -> str:
    """SQL appending a finding_history row (parameters: run id, pack version) for each finding of
    `alias` in `source` that satisfies `where` (all constant SQL of _write_findings)."""
    return (
        f"INSERT INTO finding_history SELECT ?, {alias}.finding_id, '{change}', {alias}.rule_version, ?, "
        f"{alias}.severity, {alias}.expected, {alias}.observed, {alias}.excess_g, {alias}.message "
        f"FROM {source} WHERE {where}"
    )


def _write_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """Add tonight's rejected rows (a row of one run is never replaced or removed by another run)."""
    cols = ", ".join(_q(c) for c in _columns("quarantine"))
    con.execute(
        f"INSERT INTO quarantine ({cols}) "
        f"SELECT DISTINCT ON (run_id, extract, source_file, source_row, reason) {cols} FROM incoming_quarantine"
    )


def _write_reference(con: duckdb.DuckDBPyConnection, reference: dict[str, pl.DataFrame]) -> None:
    """Replace the reference tables (the rule pack's words and rules, as the views read them)."""
    for table, frame in reference.items():
        _check_frame(table, frame)
        cols = ", ".join(_q(c) for c in _columns(table))
        _register(con, "incoming_reference", frame)
        con.execute(f"DELETE FROM {_q(table)}")
        con.execute(f"INSERT INTO {_q(table)} ({cols}) SELECT {cols} FROM incoming_reference")
        con.unregister("incoming_reference")


@_owner_only_files
def write_run(
    db_path: Path,
    run: RunRecord,
    orders: pl.DataFrame,
    courses: pl.DataFrame,
    findings: pl.DataFrame,
    quarantine: pl.DataFrame,
    *,
    patients: pl.DataFrame | None = None,
    ledger: pl.DataFrame | None = None,
    versions: pl.DataFrame | None = None,
    retention: dict[str, int | None] | None = None,
    grace_days: int = 0,
    reference: dict[str, pl.DataFrame] | None = None,
) -> None:
    """Write one audit run in a single transaction (all or nothing).

    The orders, courses and findings of `patients` (default: the patients of the incoming courses)
    are replaced by the incoming ones: a stored finding of such a patient that is not raised again
    is resolved. A patient's `judged_from` (a column of `patients`; null or absent: all) narrows
    their courses and course findings to those of courses ending then or later. `ledger` and `versions` are what the history learns (pipeline.history); with
    `retention` the evidence no rule can reach any more is forgotten (ledger._write_ledger). `reference` replaces
    the ref_* tables (pipeline.config.reference: the rule pack's words and rules the views read).
    """
    db_path = Path(db_path)
    frames = {"orders": orders, "courses": courses, "findings": findings, "quarantine": quarantine}
    for table, df in frames.items():
        _check_frame(table, df)
    if patients is None:
        patients = courses.select("patient_id").unique()
    with _transaction(db_path) as con:
        run = _sequenced(con, run)
        for table, df in frames.items():
            _register(con, f"incoming_{table}", df)
        judged_from = pl.col("judged_from") if "judged_from" in patients.columns else pl.lit(None)
        _register(con, "incoming_patients", patients.select("patient_id", judged_from.cast(pl.Datetime("us")).alias("judged_from")))
        _write_orders(con, run.run_id)
        _write_courses(con, run.run_id)
        _write_findings(con, run)
        _write_quarantine(con)
        if reference is not None:
            _write_reference(con, reference)
        if ledger is not None:
            # After the orders and courses: they decide which evidence is forgotten (retention).
            _register(con, "incoming_ledger", ledger)
            _register(con, "incoming_versions", (_NO_VERSIONS if versions is None else versions).select(_NO_VERSIONS.columns))
            _write_ledger(con, run, retention, grace_days)
        _write_runs(con, dataclasses.replace(run, data_through=_data_through(con)))
    log.info(
        "stored run %s in %s: %d orders, %d courses, %d findings, %d quarantined",
        run.run_id, db_path, orders.height, courses.height, findings.height, quarantine.height,
    )


#: The columns of `versions` the write reads (the version text only for its content number).
_NO_VERSIONS = pl.DataFrame(schema={"order_id": pl.String, "version": pl.String, "state": pl.String, "reason": pl.String})
