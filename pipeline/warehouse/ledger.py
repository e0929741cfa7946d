"""The history ledger in the database (pipeline.domain.history has the model): what a night reads back, what it remembers, what it prunes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from pipeline.warehouse.base import _has_table, _register
from pipeline.warehouse.connection import _open_existing, connect_read_only
from pipeline.warehouse.runs import RunRecord

if TYPE_CHECKING:
    from pipeline.rules.engine import Window

#: Ledger columns an incoming frame (pipeline.history.ledger_rows) fills, and how.
_LEDGER_INSERT = ("extract", "row_key", "version_hash", "version", "patient_id", "kind", "event_at", "event_until",
                  "source_file", "source_row", "run_seq", "file_pos")


#: The same, selected from an incoming frame aliased i.
_LEDGER_SELECT = (
    "i.extract", "CASE WHEN i.extract = 'orders' THEN i.row_key END", "md5_number(i.version)", "i.version",
    "i.patient_id", "i.kind", "i.event_at", "i.event_until", "i.source_file", "i.source_row", "i.run_seq", "i.file_pos",
)


_LEDGER_STATE = "CASE WHEN i.extract = 'orders' THEN 'in_force' ELSE 'kept' END"


#: An incoming ledger row (alias i) not stored yet: its extract, key and content are new. The
#: ledger is first narrowed to the content numbers coming in (`known_versions`: a semi-join built
#: on the few incoming rows), so a night never hashes the whole ledger. (No key index: on long text
#: keys DuckDB's index was four times the table, and every write paid for it.)
_LEDGER_UNSEEN = (
    "NOT EXISTS (SELECT 1 FROM known_versions AS l WHERE l.extract = i.extract AND l.version_hash = md5_number(i.version) "
    "AND l.row_key = COALESCE(CASE WHEN i.extract = 'orders' THEN i.row_key END, ''))"
)


def _known_versions_sql(incoming: str) -> str:
    """SQL of the temporary `known_versions`: the stored rows whose content number an incoming frame
    (a registered name of this module) also holds."""
    return (
        "CREATE OR REPLACE TEMP TABLE known_versions AS SELECT extract, COALESCE(row_key, '') AS row_key, version_hash "
        f"FROM ledger WHERE version_hash IN (SELECT md5_number(version) FROM {incoming})"
    )


def ledger_from_source_rows(con: duckdb.DuckDBPyConnection) -> None:
    """v5: the IVIG patients' rows of `source_rows` become ledger rows, first seen by the run that stored them."""
    from pipeline.domain.history import ledger_rows, stored_text_rows

    if not _has_table(con, "source_rows"):
        return
    stored = con.sql(
        "SELECT s.extract, s.raw AS version, s.source_file, s.source_row, COALESCE(r.seq, 0) AS run_seq, "
        "0 AS file_pos, s.first_run AS run_id FROM source_rows AS s LEFT JOIN runs AS r ON r.run_id = s.first_run"
    ).pl()
    runs = stored.select("run_seq", "run_id").unique("run_seq")
    for extract in ("orders", "labs", "procedures"):
        part = stored.filter(pl.col("extract") == extract)
        if part.is_empty():
            continue
        # Stored text is as read: a date with an offset is read in UTC (the site's zone is not known here).
        rows = ledger_rows(stored_text_rows(part, extract), extract, "UTC").collect().join(runs, on="run_seq", how="left")
        _register(con, "migrated_ledger", rows)
        con.execute(_known_versions_sql("migrated_ledger"))
        con.execute(
            f"""INSERT INTO ledger ({', '.join(_LEDGER_INSERT)}, run_id, state, state_run)
                SELECT {', '.join(_LEDGER_SELECT)}, i.run_id, {_LEDGER_STATE}, i.run_id FROM migrated_ledger AS i
                WHERE {_LEDGER_UNSEEN}"""
        )
        con.unregister("migrated_ledger")
    con.execute("DROP TABLE source_rows")


def ledger_versions_without_nulls(con: duckdb.DuckDBPyConnection) -> None:
    """v7: stored version texts as `version_text` writes them now (an object of the columns a row fills,
    without its null members), with their content numbers: a row sent again is still a version known."""
    from pipeline.contract.rows import version_text
    from pipeline.domain.history import LEDGER_EXTRACTS, text_struct

    for extract in LEDGER_EXTRACTS:
        stored = con.sql("SELECT DISTINCT version AS stored FROM ledger WHERE extract = ?", params=[extract]).pl()
        rewritten = (
            stored.lazy()
            .with_columns(pl.col("stored").str.json_decode(text_struct(extract)).alias("row"))
            .unnest("row")
            .select("stored", version_text(extract).alias("version"))
            .filter(pl.col("version") != pl.col("stored"))
            .collect()
        )
        if rewritten.is_empty():
            continue
        _register(con, "rewritten_versions", rewritten)
        con.execute(
            "UPDATE ledger SET version = r.version, version_hash = md5_number(r.version) FROM rewritten_versions AS r "
            "WHERE ledger.extract = ? AND ledger.version = r.stored",
            [extract],
        )
        con.unregister("rewritten_versions")


def _write_ledger(
    con: duckdb.DuckDBPyConnection, run: RunRecord, retention: dict[str, int | None] | None = None, grace_days: int = 0,
) -> None:
    """Remember tonight's rows (a version already known keeps its first arrival) and the state of every
    order version the audit saw (in_force, superseded, rejected); with `retention`, forget the evidence
    no rule can reach any more (_FORGOTTEN), tonight's rows included.

    Written after tonight's orders and courses, which decide what is forgotten. A row of tonight that
    is forgotten is not stored at all: inserting and deleting it in one transaction cost the first
    night of a 10M-row extract a second (a third of its ledger rows are old evidence).
    """
    con.execute(_known_versions_sql("incoming_ledger"))
    kept: dict[str, Any] = {}
    joins, forgotten = "", "false"
    if retention is not None:
        kept = _retention_parameters(con, retention, grace_days)
        joins, forgotten = _RETENTION_JOINS, _FORGOTTEN
    con.execute(
        f"""INSERT INTO ledger ({', '.join(_LEDGER_INSERT)}, run_id, state, state_run)
            SELECT {', '.join(_LEDGER_SELECT)}, $run_id, {_LEDGER_STATE}, $run_id FROM incoming_ledger AS i
            {joins}
            WHERE {_LEDGER_UNSEEN} AND NOT ({forgotten})""",
        {"run_id": run.run_id} | kept,
    )
    con.execute(
        """UPDATE ledger SET state = v.state, reason = v.reason, state_run = ?
           FROM incoming_versions AS v
           WHERE ledger.extract = 'orders' AND ledger.row_key = v.order_id AND ledger.version_hash = md5_number(v.version)
             AND (ledger.state IS DISTINCT FROM v.state OR ledger.reason IS DISTINCT FROM v.reason)""",
        [run.run_id],
    )
    if retention is not None:
        _prune_stored(con, kept)
        con.unregister("incoming_retention")


def _may_go(alias: str) -> str:
    """SQL true for a ledger row (of `alias`, a constant) that starts before the prune's `$cutoff`."""
    return f"({alias}.event_at IS NULL OR {alias}.event_at < $cutoff)"


#: SQL true for a ledger row (alias i, joined by _RETENTION_JOINS) no rule can reach any more
#: (pipeline.history.retention_days): it ends before its kind's retention of the newest result of
#: the history (data time, not the clock), or, for a patient with IVIG, of that patient's first
#: course. Versions of IVIG orders, and evidence a rule reads at any distance (retention None), are
#: never forgotten. `$cutoff` (_retention_parameters) is a constant no row ending later can pass:
#: the scans of the ledger skip, by their zone maps, the row groups of recent rows.
_FORGOTTEN = _may_go("i") + """
    AND NOT COALESCE(r.forever, false)
    AND NOT (i.extract = 'orders' AND i.row_key IN (SELECT order_id FROM orders))
    AND (COALESCE(i.event_until, i.event_at) IS NULL
         OR COALESCE(i.event_until, i.event_at)
            < COALESCE(c.first_start, $newest) - to_days(CAST(COALESCE(r.days, $grace) AS INTEGER)))"""


#: The retention of a ledger row's kind (r) and the first course of its patient (c), for _FORGOTTEN.
_RETENTION_JOINS = """LEFT JOIN incoming_retention AS r ON r.kind = i.kind
    LEFT JOIN (SELECT patient_id, MIN(start) AS first_start FROM courses GROUP BY patient_id) AS c
           ON c.patient_id = i.patient_id"""


def _retention_parameters(con: duckdb.DuckDBPyConnection, retention: dict[str, int | None], grace_days: int) -> dict[str, Any]:
    """Register the retention of each kind (`incoming_retention`) and return the parameters of _FORGOTTEN.

    newest  the newest result of the history, tonight's rows included (labs and procedures are never
            dated ahead, unlike a scheduled order; without any, the newest row)
    cutoff  the shortest retention before the latest of `newest` and every course start: a row
            ending later is kept (event_at <= event_until, history.ledger_rows)
    """
    kinds = pl.DataFrame(
        {"kind": list(retention), "days": [d for d in retention.values()], "forever": [d is None for d in retention.values()]},
        schema={"kind": pl.String, "days": pl.Int64, "forever": pl.Boolean},
    )
    con.register("incoming_retention", kinds)
    newest = con.execute(
        """SELECT COALESCE(MAX(event_at) FILTER (WHERE extract <> 'orders'), MAX(event_at))
           FROM (SELECT extract, event_at FROM ledger UNION ALL SELECT extract, event_at FROM incoming_ledger)"""
    ).fetchall()[0][0]
    shortest = min([d for d in retention.values() if d is not None] + [grace_days])
    cutoff = con.execute(
        "SELECT GREATEST(CAST(? AS TIMESTAMP), (SELECT MAX(start) FROM courses)) - to_days(CAST(? AS INTEGER))", [newest, shortest]
    ).fetchall()[0][0]
    return {"newest": newest, "cutoff": cutoff, "grace": grace_days}


def _prune_stored(con: duckdb.DuckDBPyConnection, kept: dict[str, Any]) -> None:
    """Delete the stored ledger rows no rule can reach any more (_FORGOTTEN; `kept`: its parameters)."""
    con.execute(
        f"""DELETE FROM ledger AS l USING (
               SELECT i.extract, i.row_key, i.version_hash FROM ledger AS i
               {_RETENTION_JOINS}
               WHERE {_FORGOTTEN}
           ) AS gone
           WHERE {_may_go('l')}
             AND l.extract = gone.extract AND l.row_key IS NOT DISTINCT FROM gone.row_key AND l.version_hash = gone.version_hash""",
        kept,
    )


def _windows_frame(windows: dict[str, Window]) -> pl.DataFrame:
    """The rules' evidence windows as a frame (kind, before_days, after_days; null: any distance)."""
    return pl.DataFrame(
        {"kind": list(windows), "before_days": [w.before for w in windows.values()], "after_days": [w.after for w in windows.values()]},
        schema={"kind": pl.String, "before_days": pl.Int64, "after_days": pl.Int64},
    )


#: The ledger columns a night reads back (pipeline.history.stored_text_rows).
_LEDGER_READ = "extract, version, patient_id, source_file, source_row, run_seq, file_pos"


#: The same columns of the ledger aliased `l`.
_LEDGER_READ_OF_L = ", ".join(f"l.{c.strip()}" for c in _LEDGER_READ.split(","))


@dataclass(frozen=True)
class History:
    """What a night audits together with tonight's rows.

    ledger    stored rows (pipeline.history layout) of the patients judged tonight, and every stored
              version of tonight's order_ids
    courses   course_id, patient_id, start, order_ids of the stored courses of those patients
    patients  the patients whose orders, courses and findings tonight's audit replaces, with `judged_from`:
              their courses ending then or later are judged and replaced (null: every course)
    extracts_given  the extracts any run (tonight's included) has read: a rule that needs labs is
              judged for every patient once a labs extract was given, even one with no lab
    labs_through  the date the labs extract runs to after tonight (its newest result, any patient)
    """

    ledger: pl.DataFrame
    courses: pl.DataFrame
    patients: pl.DataFrame
    extracts_given: frozenset[str] = frozenset({"orders"})
    labs_through: datetime | None = None


@dataclass(frozen=True)
class HistoryReach:
    """Where tonight's rows can reach the stored history, which narrows what a night judges (read_history).

    touches     every row of tonight: extract, patient_id, kind, event_at, event_until (history.tonight_touches)
    windows     where the rules read each kind of evidence around a course (rules.evidence_windows)
    order_days  how far before an order the stored courses it can change may end (rules.order_reach_days; None: any)
    """

    touches: pl.DataFrame
    windows: dict[str, Window]
    order_days: int | None


def read_history(
    db_path: Path,
    tonight_patients: pl.Series,
    tonight_orders: pl.Series,
    tonight_immunoglobulin: pl.Series,
    everyone: bool = False,
    ended_between: Sequence[tuple[datetime, datetime]] = (),
    reach: HistoryReach | None = None,
) -> History:
    """The stored rows and courses a night needs: those of every patient it judges, and from when.

    A patient is judged tonight when a row of theirs arrived (or a row reusing one of their
    order_ids) and they have IVIG orders or open findings stored, or when tonight brought an
    immunoglobulin row of theirs; `everyone` judges every patient with stored IVIG again (the
    rule pack or product dictionary changed). A patient with a course that ended in one of the
    `ended_between` ranges (both inclusive) is judged too: tonight's labs carried the data past a
    follow-up window of that course (rules.FOLLOW_UP). Every stored version of tonight's order_ids
    is read too, whoever its patient, so the version in force is decided among all of them.

    With `reach` (docs/history.md, "Incremental nights"), a night judges only what its rows can change:
    - a patient whose only rows tonight are labs or procedures, none in a rule's window around one
      of their stored courses, is not judged (no finding can change; the rows still reach the ledger);
    - a judged patient's courses are judged from `judged_from` on (patients.judged_from; null: all):
      the courses ending then or later, which are all a row of tonight can change (an order: the
      courses within the course gap of it and every later one, whose numbering and series it may
      move; a result: the courses whose window after them reaches it); every order of the patient
      is read (to build the same courses), and only the evidence those courses' windows reach.
    An undated row reaches everything.
    """
    empty = History(
        ledger=pl.DataFrame(schema={c.strip(): pl.String for c in _LEDGER_READ.split(",")}),
        courses=pl.DataFrame(schema={"course_id": pl.String, "patient_id": pl.String, "start": pl.Datetime("us"), "order_ids": pl.String}),
        patients=pl.DataFrame({"patient_id": pl.concat([tonight_patients, tonight_immunoglobulin]).unique().sort()})
        .with_columns(judged_from=pl.lit(None, dtype=pl.Datetime("us"))),
    )
    con = _open_existing(db_path)
    if con is None:
        return empty
    from pipeline.domain.history import TOUCHES

    touches = pl.DataFrame(schema=TOUCHES) if reach is None or everyone else reach.touches.select(list(TOUCHES))
    try:
        con.register("tonight_patients", pl.DataFrame({"patient_id": tonight_patients.cast(pl.String)}))
        con.register("tonight_orders", pl.DataFrame({"order_id": tonight_orders.cast(pl.String)}))
        con.register("tonight_ig", pl.DataFrame({"patient_id": tonight_immunoglobulin.cast(pl.String)}))
        con.register("tonight_touches", touches)
        con.register("evidence_windows", _windows_frame(reach.windows if reach is not None else {}))
        audited = "SELECT patient_id FROM judged" if everyone else \
            "SELECT patient_id FROM candidates WHERE patient_id IN (SELECT patient_id FROM judged)"
        params: dict[str, Any] = {"order_days": reach.order_days if reach is not None else None}
        due = "false"
        if ended_between and not everyone:
            due = " OR ".join(f'("end" >= $ended_after_{i} AND "end" <= $ended_by_{i})' for i in range(len(ended_between)))
            audited += f" UNION SELECT patient_id FROM courses WHERE {due}"
            for i, (after, by) in enumerate(ended_between):
                params |= {f"ended_after_{i}": after, f"ended_by_{i}": by}
        judged_from = "NULL" if everyone else "t.judged_from"  # everyone: every course again
        con.execute(
            f"""CREATE TEMP TABLE night_patients AS
                WITH linked AS (
                    SELECT DISTINCT patient_id FROM ledger
                    WHERE extract = 'orders' AND row_key IN (SELECT order_id FROM tonight_orders) AND patient_id IS NOT NULL
                ),
                -- where each of tonight's rows can reach a stored course (an undated row: everywhere)
                reaching AS (
                    SELECT DISTINCT t.patient_id FROM tonight_touches AS t JOIN evidence_windows AS w ON w.kind = t.kind
                    WHERE t.extract <> 'orders' AND (t.event_at IS NULL OR EXISTS (
                        SELECT 1 FROM courses AS c WHERE c.patient_id = t.patient_id
                          AND (w.before_days IS NULL OR COALESCE(t.event_until, t.event_at) >= c.start - to_days(CAST(w.before_days AS INTEGER)))
                          AND (w.after_days IS NULL OR t.event_at <= c."end" + to_days(CAST(w.after_days AS INTEGER)))))
                ),
                quiet AS (
                    SELECT DISTINCT patient_id FROM tonight_touches
                    WHERE patient_id NOT IN (SELECT patient_id FROM tonight_touches WHERE extract = 'orders')
                      AND patient_id IN (SELECT patient_id FROM courses)
                      AND patient_id NOT IN (SELECT patient_id FROM linked)
                      AND patient_id NOT IN (SELECT patient_id FROM reaching)
                ),
                candidates AS (
                    SELECT patient_id FROM tonight_patients WHERE patient_id NOT IN (SELECT patient_id FROM quiet)
                    UNION SELECT patient_id FROM linked
                ),
                judged AS (SELECT patient_id FROM orders UNION SELECT patient_id FROM findings WHERE resolved_run IS NULL),
                audited AS ({audited} UNION SELECT patient_id FROM tonight_ig),
                touch_from AS (
                    SELECT patient_id, event_at - to_days(CAST($order_days AS INTEGER)) AS judged_from,
                           event_at IS NULL OR $order_days IS NULL AS everything
                    FROM tonight_touches WHERE extract = 'orders'
                    UNION ALL
                    SELECT patient_id, event_at - to_days(CAST($order_days AS INTEGER)), event_at IS NULL OR $order_days IS NULL
                    FROM ledger WHERE extract = 'orders' AND row_key IN (SELECT order_id FROM tonight_orders) AND patient_id IS NOT NULL
                    UNION ALL
                    SELECT t.patient_id, t.event_at - to_days(CAST(w.after_days AS INTEGER)), t.event_at IS NULL OR w.after_days IS NULL
                    FROM tonight_touches AS t JOIN evidence_windows AS w ON w.kind = t.kind WHERE t.extract <> 'orders'
                    UNION ALL
                    SELECT patient_id, "end", false FROM courses WHERE {due}
                ),
                touched_from AS (
                    SELECT patient_id, CASE WHEN bool_or(everything) THEN NULL ELSE MIN(judged_from) END AS judged_from
                    FROM touch_from GROUP BY patient_id
                )
                SELECT a.patient_id, true AS audited, {judged_from} AS judged_from
                FROM audited AS a LEFT JOIN touched_from AS t USING (patient_id)
                UNION ALL
                SELECT patient_id, false, NULL FROM candidates WHERE patient_id NOT IN (SELECT patient_id FROM audited)""",
            params,
        )
        # The earliest start of a course judged tonight: the evidence before it that a rule reads is read back.
        con.execute(
            """CREATE TEMP TABLE night_scope AS
               SELECT n.patient_id, n.judged_from, LEAST(n.judged_from, MIN(c.start)) AS evidence_from
               FROM night_patients AS n LEFT JOIN courses AS c ON c.patient_id = n.patient_id AND c."end" >= n.judged_from
               WHERE n.audited GROUP BY n.patient_id, n.judged_from"""
        )
        ledger = con.sql(
            f"""SELECT {_LEDGER_READ_OF_L} FROM ledger AS l
                LEFT JOIN night_scope AS s ON s.patient_id = l.patient_id
                LEFT JOIN evidence_windows AS w ON w.kind = l.kind
                WHERE (s.patient_id IS NOT NULL AND (
                         l.extract = 'orders' OR s.evidence_from IS NULL OR w.before_days IS NULL
                         OR COALESCE(l.event_until, l.event_at) IS NULL
                         OR COALESCE(l.event_until, l.event_at) >= s.evidence_from - to_days(CAST(w.before_days AS INTEGER))))
                   OR (l.extract = 'orders' AND l.row_key IN (SELECT order_id FROM tonight_orders))
                ORDER BY l.extract, l.run_seq, l.file_pos, l.source_row"""
        ).pl()
        courses = con.sql(
            """SELECT course_id, patient_id, start, order_ids FROM courses
               WHERE patient_id IN (SELECT patient_id FROM night_patients WHERE audited)"""
        ).pl()
        patients = con.sql("SELECT patient_id, judged_from FROM night_patients ORDER BY patient_id").pl()
    finally:
        con.close()
    return History(ledger=ledger, courses=courses, patients=patients.cast({"judged_from": pl.Datetime("us")}))


def read_ledger_as_of(db_path: Path, run_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The history a past run could see (every row that arrived by then) and today's courses (for their ids).

    Rows pruned since are not there: only evidence no rule could reach from any course is pruned.
    ValueError when there is no such run.
    """
    con = connect_read_only(Path(db_path))
    try:
        found = con.execute("SELECT seq FROM runs WHERE run_id = ?", [run_id]).fetchall()
        if not found:
            raise ValueError(f"no run with id '{run_id}'")
        ledger = con.sql(
            f"SELECT {_LEDGER_READ} FROM ledger WHERE run_seq <= ? ORDER BY extract, run_seq, file_pos, source_row",
            params=[found[0][0]],
        ).pl()
        courses = con.sql("SELECT course_id, patient_id, start, order_ids FROM courses").pl()
    finally:
        con.close()
    return ledger, courses
