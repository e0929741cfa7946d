"""DuckDB storage of audit runs: schema migrations, transactional writes, read-only reads."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandera.polars as pa
import polars as pl

from checks.outputs import COURSES, FINDINGS, ORDERS, QUARANTINE
from pipeline.levers import lever_sql

log = logging.getLogger(__name__)

__all__ = [
    "StoreError",
    "RunRecord",
    "write_run",
    "read_tables",
    "connect_read_only",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "VIEWS",
    "TABLE_COMMENTS",
    "COLUMN_COMMENTS",
    "VIEW_COMMENTS",
]


class StoreError(Exception):
    """One-line, user-facing problem with the database file (locked, unreadable, wrong version)."""


#: What a run did: `succeeded` (audited), `nothing_new` (every input already audited and the
#: configuration unchanged: nothing to judge again), `failed` (stopped before its commit).
RUN_STATUSES = ("succeeded", "nothing_new", "failed")

#: What happened to a run's report: written, failed, not asked for, or already up to date.
REPORT_STATUSES = ("written", "failed", "not_requested", "up_to_date")


@dataclass(frozen=True)
class RunRecord:
    """Metadata of one audit run, stored as one row of table `runs` (lists and dicts as JSON)."""

    run_id: str
    started_at: datetime
    finished_at: datetime
    status: str
    profile: str
    rule_pack_version: str
    rule_pack_hash: str
    inputs: list[dict]
    rows_read: int
    rows_quarantined: int
    rows_ivig: int
    rows_passed_through: int
    rows_out_of_scope: int
    courses: int
    findings: int
    timings: dict[str, float] = field(default_factory=dict)
    skipped_inputs: list[dict] = field(default_factory=list)
    cost_per_gram: float | None = None
    rows_unrecognised_ig: int = 0
    rows_quarantined_orders: int = 0
    seq: int | None = None
    audit_scope: str = "incremental"
    patients_audited: int = 0
    reaudit_reason: str | None = None
    products_hash: str | None = None
    report_status: str | None = None
    error: str | None = None
    data_through: dict[str, str | None] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Schema: ordered migrations. Never edit a released migration; append a new one instead.
# --------------------------------------------------------------------------------------------

_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)"
)

#: What makes a finding's facts differ (a reviewed finding whose facts change is marked changed since review).
_FACTS_HASH = (
    "sha256(concat_ws(chr(31), {t}.severity, COALESCE({t}.expected, ''), COALESCE({t}.observed, ''), "
    "CAST(round({t}.excess_g, 3) AS VARCHAR), COALESCE({t}.order_ids, '')))"
)

#: Ledger columns an incoming frame (pipeline.history.ledger_rows) fills, and how.
_LEDGER_INSERT = ("extract", "row_key", "version_hash", "version", "patient_id", "kind", "event_at", "event_until",
                  "source_file", "source_row", "run_seq", "file_pos")
_LEDGER_SELECT = (
    "extract", "CASE WHEN extract = 'orders' THEN row_key END", "md5_number(version)", "version",
    "patient_id", "kind", "event_at", "event_until", "source_file", "source_row", "run_seq", "file_pos",
)
_LEDGER_STATE = "CASE WHEN extract = 'orders' THEN 'in_force' ELSE 'kept' END"
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

MIGRATIONS: list[tuple[int, str, list]] = [
    (
        1,
        "initial tables: runs, orders, courses, findings, quarantine",
        [
            """CREATE TABLE IF NOT EXISTS runs (
                run_id VARCHAR PRIMARY KEY,
                started_at TIMESTAMP NOT NULL,
                finished_at TIMESTAMP NOT NULL,
                status VARCHAR NOT NULL,
                profile VARCHAR NOT NULL,
                rule_pack_version VARCHAR NOT NULL,
                rule_pack_hash VARCHAR NOT NULL,
                inputs VARCHAR NOT NULL,
                rows_read BIGINT NOT NULL,
                rows_quarantined BIGINT NOT NULL,
                rows_ivig BIGINT NOT NULL,
                rows_passed_through BIGINT NOT NULL,
                rows_out_of_scope BIGINT NOT NULL,
                courses BIGINT NOT NULL,
                findings BIGINT NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS orders (
                order_id VARCHAR PRIMARY KEY,
                patient_id VARCHAR NOT NULL,
                encounter_id VARCHAR,
                facility VARCHAR,
                service VARCHAR,
                prescriber_id VARCHAR,
                medication VARCHAR NOT NULL,
                product VARCHAR NOT NULL,
                concentration_g_per_ml DOUBLE,
                contains_sucrose BOOLEAN,
                iga_depleted BOOLEAN,
                dose DOUBLE NOT NULL,
                dose_unit VARCHAR NOT NULL,
                doses BIGINT NOT NULL,
                grams_per_dose DOUBLE,
                total_g DOUBLE,
                start TIMESTAMP NOT NULL,
                route VARCHAR,
                weight_kg DOUBLE,
                height_cm DOUBLE,
                sex VARCHAR,
                age_years DOUBLE,
                pregnant BOOLEAN,
                indication_text VARCHAR,
                indication_code VARCHAR,
                indication VARCHAR NOT NULL,
                indication_source VARCHAR NOT NULL,
                justification VARCHAR,
                course_id VARCHAR,
                source_file VARCHAR NOT NULL,
                source_row BIGINT NOT NULL,
                run_id VARCHAR NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS courses (
                course_id VARCHAR PRIMARY KEY,
                patient_id VARCHAR NOT NULL,
                facility VARCHAR,
                service VARCHAR,
                prescriber_id VARCHAR,
                indication_group VARCHAR NOT NULL,
                indication VARCHAR NOT NULL,
                course_number BIGINT NOT NULL,
                start TIMESTAMP NOT NULL,
                "end" TIMESTAMP NOT NULL,
                n_days BIGINT NOT NULL,
                span_days BIGINT NOT NULL,
                doses BIGINT NOT NULL,
                total_g DOUBLE,
                order_ids VARCHAR NOT NULL,
                products VARCHAR NOT NULL,
                actual_weight_kg DOUBLE,
                height_cm DOUBLE,
                sex VARCHAR,
                age_years DOUBLE,
                pregnant BOOLEAN,
                bmi DOUBLE,
                ibw_kg DOUBLE,
                adjusted_weight_kg DOUBLE,
                obese BOOLEAN,
                dosing_weight_kg DOUBLE,
                weight_basis VARCHAR NOT NULL,
                weight_basis_reason VARCHAR NOT NULL,
                g_per_kg DOUBLE,
                interval_days DOUBLE,
                justification VARCHAR,
                appropriate BOOLEAN NOT NULL,
                excess_g DOUBLE NOT NULL,
                run_id VARCHAR NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS findings (
                finding_id VARCHAR PRIMARY KEY,
                rule_id VARCHAR NOT NULL,
                rule_version VARCHAR NOT NULL,
                category VARCHAR NOT NULL,
                severity VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                patient_id VARCHAR NOT NULL,
                course_id VARCHAR,
                order_ids VARCHAR,
                indication VARCHAR,
                message VARCHAR NOT NULL,
                expected VARCHAR,
                observed VARCHAR,
                action VARCHAR,
                evidence VARCHAR,
                excess_g DOUBLE NOT NULL,
                first_seen_run VARCHAR NOT NULL,
                last_seen_run VARCHAR NOT NULL,
                resolved_run VARCHAR
            )""",
            """CREATE TABLE IF NOT EXISTS quarantine (
                run_id VARCHAR NOT NULL,
                extract VARCHAR NOT NULL,
                source_file VARCHAR NOT NULL,
                source_row BIGINT NOT NULL,
                order_id VARCHAR,
                patient_id VARCHAR,
                reason VARCHAR NOT NULL,
                raw VARCHAR NOT NULL,
                PRIMARY KEY (source_file, source_row, reason)
            )""",
        ],
    ),
    (
        2,
        "history of source rows, review events, run timings and cost",
        [
            """CREATE TABLE IF NOT EXISTS source_rows (
                extract VARCHAR NOT NULL,
                row_key VARCHAR NOT NULL,
                patient_id VARCHAR,
                raw VARCHAR NOT NULL,
                source_file VARCHAR NOT NULL,
                source_row BIGINT NOT NULL,
                first_run VARCHAR NOT NULL,
                last_run VARCHAR NOT NULL,
                PRIMARY KEY (extract, row_key)
            )""",
            "CREATE SEQUENCE IF NOT EXISTS review_event_seq START 1",
            """CREATE TABLE IF NOT EXISTS review_events (
                event_id BIGINT PRIMARY KEY DEFAULT nextval('review_event_seq'),
                finding_id VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                reason_code VARCHAR,
                note VARCHAR,
                reviewed_by VARCHAR NOT NULL,
                reviewed_at TIMESTAMP NOT NULL
            )""",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS timings VARCHAR DEFAULT '{}'",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS skipped_inputs VARCHAR DEFAULT '[]'",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS cost_per_gram DOUBLE",
        ],
    ),
    (
        3,
        "scenarios: past runs replayed under another rule pack or profile (never touching live tables)",
        [
            """CREATE TABLE IF NOT EXISTS scenarios (
                scenario_id VARCHAR PRIMARY KEY,
                name VARCHAR NOT NULL,
                base_run_id VARCHAR NOT NULL,
                created_at TIMESTAMP NOT NULL,
                profile VARCHAR NOT NULL,
                rule_pack_version VARCHAR NOT NULL,
                rule_pack_hash VARCHAR NOT NULL,
                rules_file VARCHAR,
                courses BIGINT NOT NULL,
                findings BIGINT NOT NULL,
                history_only BOOLEAN NOT NULL DEFAULT false
            )""",
            """CREATE TABLE IF NOT EXISTS scenario_findings (
                scenario_id VARCHAR NOT NULL,
                finding_id VARCHAR NOT NULL,
                rule_id VARCHAR NOT NULL,
                rule_version VARCHAR NOT NULL,
                category VARCHAR NOT NULL,
                severity VARCHAR NOT NULL,
                status VARCHAR NOT NULL,
                patient_id VARCHAR NOT NULL,
                course_id VARCHAR,
                order_ids VARCHAR,
                indication VARCHAR,
                message VARCHAR NOT NULL,
                expected VARCHAR,
                observed VARCHAR,
                action VARCHAR,
                evidence VARCHAR,
                excess_g DOUBLE NOT NULL,
                first_seen_run VARCHAR NOT NULL,
                last_seen_run VARCHAR NOT NULL,
                resolved_run VARCHAR,
                PRIMARY KEY (scenario_id, finding_id)
            )""",
            """CREATE TABLE IF NOT EXISTS scenario_courses (
                scenario_id VARCHAR NOT NULL,
                course_id VARCHAR NOT NULL,
                patient_id VARCHAR NOT NULL,
                indication VARCHAR NOT NULL,
                appropriate BOOLEAN NOT NULL,
                excess_g DOUBLE NOT NULL,
                g_per_kg DOUBLE,
                dosing_weight_kg DOUBLE,
                weight_basis VARCHAR NOT NULL,
                PRIMARY KEY (scenario_id, course_id)
            )""",
        ],
    ),
    (
        4,
        "runs count unrecognised immunoglobulin rows and orders quarantined (the full row accounting)",
        [
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS rows_unrecognised_ig BIGINT DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS rows_quarantined_orders BIGINT DEFAULT 0",
        ],
    ),
]


def _ledger_from_source_rows(con: duckdb.DuckDBPyConnection) -> None:
    """v5: the IVIG patients' rows of `source_rows` become ledger rows, first seen by the run that stored them."""
    from pipeline.history import ledger_rows, stored_text_rows

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
        con.register("migrated_ledger", rows)
        con.execute(_known_versions_sql("migrated_ledger"))
        con.execute(
            f"""INSERT INTO ledger ({', '.join(_LEDGER_INSERT)}, run_id, state, state_run)
                SELECT {', '.join(_LEDGER_SELECT)}, run_id, {_LEDGER_STATE}, run_id FROM migrated_ledger AS i
                WHERE {_LEDGER_UNSEEN}"""
        )
        con.unregister("migrated_ledger")
    con.execute("DROP TABLE source_rows")


MIGRATIONS.append(
    (
        5,
        "history ledger (rows keyed on what they are, versions of orders, every patient's evidence), "
        "lasting course and finding ids, run sequence and status, finding history and pack versions; "
        "coded justification and the weights a course was dosed on (current and pre-pregnancy weight)",
        [
            "ALTER TABLE orders ADD COLUMN IF NOT EXISTS justification_code VARCHAR",
            "ALTER TABLE orders ADD COLUMN IF NOT EXISTS pre_pregnancy_weight_kg DOUBLE",
            "ALTER TABLE courses ADD COLUMN IF NOT EXISTS current_weight_kg DOUBLE",
            "ALTER TABLE courses ADD COLUMN IF NOT EXISTS pre_pregnancy_weight_kg DOUBLE",
            "ALTER TABLE courses ADD COLUMN IF NOT EXISTS actual_weight_source VARCHAR DEFAULT 'current weight'",
            "ALTER TABLE courses ALTER COLUMN actual_weight_source SET NOT NULL",
            "ALTER TABLE courses ADD COLUMN IF NOT EXISTS justification_code VARCHAR",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS seq BIGINT",
            """UPDATE runs SET seq = n.seq FROM (
                   SELECT run_id, row_number() OVER (ORDER BY started_at, run_id) AS seq FROM runs) AS n
               WHERE runs.run_id = n.run_id""",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS audit_scope VARCHAR DEFAULT 'full'",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS patients_audited BIGINT DEFAULT 0",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS reaudit_reason VARCHAR",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS products_hash VARCHAR",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS report_status VARCHAR",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS error VARCHAR",
            "ALTER TABLE runs ADD COLUMN IF NOT EXISTS data_through VARCHAR DEFAULT '{}'",
            """CREATE TABLE IF NOT EXISTS ledger (
                extract VARCHAR NOT NULL,
                row_key VARCHAR,
                version_hash UHUGEINT NOT NULL,
                version VARCHAR NOT NULL,
                patient_id VARCHAR,
                kind VARCHAR,
                event_at TIMESTAMP,
                event_until TIMESTAMP,
                source_file VARCHAR NOT NULL,
                source_row BIGINT NOT NULL,
                run_id VARCHAR NOT NULL,
                run_seq BIGINT NOT NULL,
                file_pos BIGINT NOT NULL,
                state VARCHAR NOT NULL,
                state_run VARCHAR NOT NULL,
                reason VARCHAR
            )""",
            _ledger_from_source_rows,
            "ALTER TABLE courses ADD COLUMN IF NOT EXISTS rejected_corrections VARCHAR",
            # Lasting ids (pipeline.identity): a course is named by a digest of its patient, indication
            # group and the order of its first dose; a finding by its course (or order) and rule.
            """CREATE TEMP TABLE course_id_map AS
               SELECT c.course_id AS old_id,
                      'crs-' || substr(sha256(c.patient_id || chr(31) || c.indication_group || chr(31)
                          || COALESCE(first(o.order_id ORDER BY o.start, o.order_id), c.course_id)), 1, 12) AS new_id
               FROM courses AS c LEFT JOIN orders AS o ON o.course_id = c.course_id
               GROUP BY c.course_id, c.patient_id, c.indication_group""",
            """CREATE TEMP TABLE finding_id_map AS
               SELECT f.finding_id AS old_id, m.new_id AS course_id,
                      CASE WHEN f.course_id IS NULL
                           THEN 'ord-' || substr(sha256(f.patient_id || chr(31) || COALESCE(f.order_ids, '')), 1, 12)
                           ELSE COALESCE(m.new_id, f.course_id) END || '.' || f.rule_id AS new_id
               FROM findings AS f LEFT JOIN course_id_map AS m ON m.old_id = f.course_id""",
            "UPDATE orders SET course_id = m.new_id FROM course_id_map AS m WHERE orders.course_id = m.old_id",
            "UPDATE courses SET course_id = m.new_id FROM course_id_map AS m WHERE courses.course_id = m.old_id",
            "UPDATE review_events SET finding_id = m.new_id FROM finding_id_map AS m WHERE review_events.finding_id = m.old_id",
            """UPDATE findings SET finding_id = m.new_id, course_id = m.course_id
               FROM finding_id_map AS m WHERE findings.finding_id = m.old_id""",
            "DROP TABLE course_id_map",
            "DROP TABLE finding_id_map",
            "ALTER TABLE findings ADD COLUMN IF NOT EXISTS raised_pack_version VARCHAR",
            "ALTER TABLE findings ADD COLUMN IF NOT EXISTS confirmed_pack_version VARCHAR",
            "ALTER TABLE findings ADD COLUMN IF NOT EXISTS facts_hash VARCHAR",
            "ALTER TABLE findings ADD COLUMN IF NOT EXISTS reviewed_facts_hash VARCHAR",
            "ALTER TABLE findings ADD COLUMN IF NOT EXISTS changed_since_review BOOLEAN DEFAULT false",
            """UPDATE findings SET
                   raised_pack_version = (SELECT r.rule_pack_version FROM runs AS r WHERE r.run_id = findings.first_seen_run),
                   confirmed_pack_version = (SELECT r.rule_pack_version FROM runs AS r WHERE r.run_id = findings.last_seen_run)""",
            f"UPDATE findings SET facts_hash = {_FACTS_HASH.format(t='findings')}",
            "UPDATE findings SET reviewed_facts_hash = facts_hash WHERE status <> 'open'",
            """CREATE TABLE IF NOT EXISTS finding_history (
                run_id VARCHAR NOT NULL,
                finding_id VARCHAR NOT NULL,
                change VARCHAR NOT NULL,
                rule_version VARCHAR,
                pack_version VARCHAR,
                severity VARCHAR,
                expected VARCHAR,
                observed VARCHAR,
                excess_g DOUBLE,
                message VARCHAR,
                PRIMARY KEY (run_id, finding_id)
            )""",
            """INSERT INTO finding_history
               SELECT first_seen_run, finding_id, 'raised', rule_version, raised_pack_version, severity, expected,
                      observed, excess_g, message FROM findings""",
            """INSERT INTO finding_history
               SELECT resolved_run, finding_id, 'resolved', rule_version, confirmed_pack_version, severity, expected,
                      observed, excess_g, message FROM findings WHERE resolved_run IS NOT NULL
               ON CONFLICT DO NOTHING""",
            # Quarantine rows belong to the run that saw them: keyed by run, never replaced by a later run.
            """CREATE TABLE quarantine_v5 (
                run_id VARCHAR NOT NULL,
                extract VARCHAR NOT NULL,
                source_file VARCHAR NOT NULL,
                source_row BIGINT NOT NULL,
                order_id VARCHAR,
                patient_id VARCHAR,
                reason VARCHAR NOT NULL,
                raw VARCHAR NOT NULL,
                PRIMARY KEY (run_id, extract, source_file, source_row, reason)
            )""",
            "INSERT INTO quarantine_v5 SELECT run_id, extract, source_file, source_row, order_id, patient_id, reason, raw FROM quarantine",
            "DROP TABLE quarantine",
            "ALTER TABLE quarantine_v5 RENAME TO quarantine",
        ],
    )
)

SCHEMA_VERSION: int = MIGRATIONS[-1][0]

TABLES: tuple[str, ...] = (
    "runs", "orders", "courses", "findings", "quarantine", "ledger", "finding_history", "review_events",
    "scenarios", "scenario_findings", "scenario_courses",
)

# Incoming frame contracts (column names and Polars dtypes) per stored table.
_FRAME_SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "orders": ORDERS,
    "courses": COURSES,
    "findings": FINDINGS,
    "quarantine": QUARANTINE,
}

# --------------------------------------------------------------------------------------------
# Catalog comments (data, applied on every write so wording fixes need no migration).
# --------------------------------------------------------------------------------------------

TABLE_COMMENTS: dict[str, str] = {
    "schema_version": "Schema version of this database (one row) and when it was applied",
    "runs": "One row per succeeded audit run: inputs with hashes, row counts, rule pack",
    "orders": "Normalised IVIG orders (grams, product, dosing inputs), one row per order_id; upserted by later runs",
    "courses": "IVIG courses (patient x indication group, doses without long gaps) with weights and g/kg; rebuilt per patient each run",
    "findings": "Problems found by the audit rules, one row per stable finding_id; review status kept across runs",
    "quarantine": "Rejected input rows with the file they came from and the reason",
    "ledger": "History ledger (docs/history.md): one row per extract x row_key x version; orders keyed by order_id (each distinct content a version), labs and procedures by content; every patient's evidence, pruned when no rule can reach it",
    "finding_history": "Append-only: what each run did to each finding (raised, changed, resolved, reopened) with the facts and the rule-pack version at that run",
    "review_events": "Append-only log of review decisions on findings; findings.status follows the latest event",
    "scenarios": "What-if replays of a past run's inputs under another rule pack or profile (ivig-audit replay); live tables untouched",
    "scenario_findings": "Findings a scenario raised, one row per scenario x finding_id (same columns as findings)",
    "scenario_courses": "Courses of a scenario with the figures compared across rule packs, one row per scenario x course_id",
}

_RUN_COL = "audit run that last wrote this row (runs.run_id)"

COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    "schema_version": {
        "version": "schema migration number applied to this database",
        "applied_at": "when that version was applied (UTC)",
    },
    "runs": {
        "run_id": "run identifier, e.g. 20261128T021500Z-3f2a1c",
        "started_at": "run start (UTC)",
        "finished_at": "run end (UTC)",
        "status": "run outcome: succeeded (audited), nothing_new (every input already audited, configuration unchanged), failed",
        "profile": "policy profile name used for the rules",
        "rule_pack_version": "version of the rule pack",
        "rule_pack_hash": "sha256 of the effective rule configuration",
        "inputs": "JSON list of input extracts: extract, path, sha256, bytes (file size)",
        "rows_read": "input rows read (all extracts)",
        "rows_quarantined": "input rows rejected to quarantine",
        "rows_ivig": "IVIG order rows audited",
        "rows_passed_through": "non-IVIG rows kept as evidence only",
        "rows_out_of_scope": "immunoglobulin rows that are not IVIG (SC, hyperimmune)",
        "courses": "courses built in this run",
        "findings": "findings raised in this run",
        "timings": "JSON: seconds spent per stage of the run",
        "skipped_inputs": "JSON list of input files skipped because their content hash was already audited",
        "cost_per_gram": "cost of one gram of IVIG used for money avoidable in this run's report",
        "rows_unrecognised_ig": "order rows whose name looks like an immunoglobulin but matches no product (data-quality findings)",
        "rows_quarantined_orders": "order rows quarantined (rows_quarantined counts every extract); rows_read = rows_ivig + rows_passed_through + rows_out_of_scope + rows_unrecognised_ig + rows_quarantined_orders",
        "seq": "sequence number of the run among the database's runs (commit order)",
        "audit_scope": "incremental (the patients tonight's rows touch), full (every patient: the rule pack or product dictionary changed) or none (nothing new)",
        "patients_audited": "patients the run judged who have IVIG orders, courses or findings after it",
        "reaudit_reason": "why the run judged every patient again (e.g. the rule pack changed)",
        "products_hash": "sha256 of the product dictionary used",
        "report_status": "written, failed, not_requested or up_to_date (the next run rewrites a missing or stale report)",
        "error": "one-line reason a run failed (no patient data)",
        "data_through": "JSON: the newest clinical time per extract in the history after the run (what the data runs to)",
    },
    "orders": {
        "order_id": "order identifier from the extract (unique)",
        "patient_id": "patient identifier",
        "encounter_id": "encounter or admission identifier",
        "facility": "site or hospital",
        "service": "ordering service or unit",
        "prescriber_id": "prescriber identifier",
        "medication": "product or drug name as the source wrote it",
        "product": "normalised IVIG product name",
        "concentration_g_per_ml": "product concentration in g/mL",
        "contains_sucrose": "product contains sucrose (renal risk)",
        "iga_depleted": "product is IgA-depleted",
        "dose": "amount per dose as ordered",
        "dose_unit": "unit of dose: g, mg, mL or g/kg",
        "doses": "number of daily doses of this amount from start",
        "grams_per_dose": "dose converted to grams",
        "total_g": "grams of the whole order (grams_per_dose x doses)",
        "start": "first dose given or scheduled",
        "route": "route of administration (IV, SC)",
        "weight_kg": "patient weight at order (kg)",
        "height_cm": "patient height (cm)",
        "sex": "patient sex (M or F)",
        "age_years": "patient age at order (years)",
        "pregnant": "patient pregnant at order",
        "indication_text": "indication free text as ordered",
        "indication_code": "ICD-10(-CM) indication code as ordered",
        "indication": "normalised indication",
        "indication_source": "where the normalised indication came from (code, text, ...)",
        "justification": "free text justifying a repeat or maintenance course",
        "justification_code": "site code of the justification (rule pack [justification.codes]); used before the text",
        "pre_pregnancy_weight_kg": "pre-pregnancy weight on the order (kg)",
        "course_id": "course this order belongs to (courses.course_id)",
        "source_file": "extract file the row came from",
        "source_row": "row number in the source file",
        "run_id": _RUN_COL,
    },
    "courses": {
        "course_id": "course identifier",
        "patient_id": "patient identifier",
        "facility": "site or hospital",
        "service": "ordering service or unit",
        "prescriber_id": "prescriber identifier",
        "indication_group": "indication group used to build the course",
        "indication": "normalised indication of the course",
        "course_number": "course number for this patient and indication (1 = first)",
        "start": "first dose of the course",
        "end": "last dose of the course",
        "n_days": "days with a dose",
        "span_days": "days from first to last dose, inclusive",
        "doses": "number of doses in the course",
        "total_g": "course total grams",
        "order_ids": "orders of the course (comma-separated order_id)",
        "products": "products given in the course",
        "actual_weight_kg": "weight standing for the actual body weight (kg): the pre-pregnancy weight in pregnancy when given, else the current weight",
        "current_weight_kg": "weight at order (kg), the first recorded in the course",
        "pre_pregnancy_weight_kg": "pre-pregnancy weight on the orders (kg)",
        "actual_weight_source": "what stands for the actual weight: current weight or pre-pregnancy weight",
        "height_cm": "height (cm)",
        "sex": "sex (M or F)",
        "age_years": "age at course start (years)",
        "pregnant": "pregnant during the course",
        "bmi": "body mass index (kg/m2)",
        "ibw_kg": "ideal body weight (kg)",
        "adjusted_weight_kg": "adjusted body weight (kg)",
        "obese": "obese by the policy threshold",
        "dosing_weight_kg": "weight the dose should be based on (kg)",
        "weight_basis": "basis of dosing weight: actual, adjusted, ibw or unknown",
        "weight_basis_reason": "why that weight basis was chosen",
        "g_per_kg": "course total grams / dosing weight",
        "interval_days": "days since the previous course of the same indication",
        "justification": "documented justification for a repeat or maintenance course",
        "rejected_corrections": "orders of the course whose later version failed the contract (the earlier version is in force), and why",
        "justification_code": "site justification codes of the course's orders (comma-separated)",
        "appropriate": "course passed every dose and indication rule",
        "excess_g": "grams above the policy maximum for this course",
        "run_id": _RUN_COL,
    },
    "findings": {
        "finding_id": "stable identifier of the problem across runs",
        "rule_id": "rule that raised the finding",
        "rule_version": "version of that rule",
        "category": "indication, weight_basis, course_dose, repeat_justification, combination, product_safety, monitoring or data_quality",
        "severity": "info, warning or critical",
        "status": "review state: open, acknowledged, actioned or dismissed (kept across runs)",
        "patient_id": "patient identifier",
        "course_id": "course concerned (courses.course_id)",
        "order_ids": "orders concerned (comma-separated order_id)",
        "indication": "normalised indication",
        "message": "what is wrong, for the reviewer",
        "expected": "what the policy expects",
        "observed": "what was found",
        "action": "suggested action",
        "evidence": "supporting data (labs, procedures, values)",
        "excess_g": "grams avoidable by fixing this problem",
        "first_seen_run": "run that first raised the finding",
        "last_seen_run": "latest run that raised the finding",
        "resolved_run": "run in which the finding was no longer raised (null while present)",
        "raised_pack_version": "rule-pack version under which the finding was first raised",
        "confirmed_pack_version": "rule-pack version under which it was last raised",
        "facts_hash": "sha256 of the facts (severity, expected, observed, excess_g, order_ids)",
        "reviewed_facts_hash": "facts_hash when it was last reviewed",
        "changed_since_review": "reviewed, and its facts have changed since: look again (the status is kept)",
    },
    "quarantine": {
        "run_id": "run that read and rejected this row (a later run never replaces it)",
        "extract": "extract kind: orders, labs or procedures",
        "source_file": "file the row came from",
        "source_row": "row number in the source file",
        "order_id": "order identifier, if readable",
        "patient_id": "patient identifier, if readable",
        "reason": "why the row was rejected",
        "raw": "the row as read",
    },
    "ledger": {
        "extract": "extract kind: orders, labs or procedures",
        "row_key": "what the row is: the order_id of an order; null for a lab or procedure (it is its content: version_hash)",
        "version_hash": "md5 of version (a 128-bit number): one row per extract, row_key and distinct content",
        "version": "the row's canonical columns as JSON text (trimmed, blank as null): what it says, whatever file it came in",
        "patient_id": "patient identifier",
        "kind": "what retention applies: the canonical lab test, 'procedure' or 'order'",
        "event_at": "the row's clinical time (order start, collected_at, performed_at); null when it is not a date",
        "event_until": "the last moment the row covers (an order of n daily doses covers n days)",
        "source_file": "file this version first arrived in",
        "source_row": "row number in that file",
        "run_id": "run this version first arrived in (runs.run_id)",
        "run_seq": "that run's sequence number (runs.seq): versions of an order are ordered by updated_at, then (run_seq, file_pos, source_row)",
        "file_pos": "position of the file among that run's inputs",
        "state": "orders: in_force (the version audited), superseded (an older version), rejected (a later version that failed the contract: the earlier one stays in force); labs and procedures: kept",
        "state_run": "run that last set the state",
        "reason": "why a rejected version failed the contract",
    },
    "finding_history": {
        "run_id": "run that made the change (runs.run_id)",
        "finding_id": "finding changed (findings.finding_id)",
        "change": "raised (first time), changed (its facts differ), resolved (no longer raised), reopened (raised again after resolved)",
        "rule_version": "version of the rule at that run",
        "pack_version": "rule-pack version of that run",
        "severity": "severity at that run",
        "expected": "what the policy expected at that run",
        "observed": "what was found at that run",
        "excess_g": "grams above target at that run",
        "message": "the finding's message at that run",
    },
    "review_events": {
        "event_id": "event number (increasing)",
        "finding_id": "finding reviewed (findings.finding_id)",
        "status": "status set: open, acknowledged, actioned or dismissed",
        "reason_code": "structured disposition code (see docs/analysts.md); required for dismissed",
        "note": "free-text note of the reviewer",
        "reviewed_by": "who decided",
        "reviewed_at": "when (UTC)",
    },
    "scenarios": {
        "scenario_id": "scenario identifier: 'scn-' + UTC time + random suffix, e.g. scn-20261128T091500Z-4b1e0a",
        "name": "name given with ivig-audit replay --name (or a default describing the replay)",
        "base_run_id": "run whose recorded inputs were replayed (runs.run_id)",
        "created_at": "when the scenario was computed (UTC)",
        "profile": "policy profile used by the scenario",
        "rule_pack_version": "version of the rule pack used by the scenario",
        "rule_pack_hash": "sha256 of the scenario's effective rule configuration",
        "rules_file": "site rule-pack TOML given with --rules (null: the shipped pack)",
        "courses": "courses the scenario built",
        "findings": "findings the scenario raised",
        "history_only": "true when replayed from the stored history without re-reading the input files (every scenario since schema v5)",
    },
    "scenario_findings": {
        "scenario_id": "scenario that raised the finding (scenarios.scenario_id)",
        "finding_id": "stable identifier of the problem (same as findings.finding_id for the same rule and course)",
        "rule_id": "rule that raised the finding",
        "rule_version": "version of that rule in the scenario's rule pack",
        "category": "finding category",
        "severity": "info, warning or critical under the scenario's rule pack",
        "status": "always open: scenarios are not reviewed",
        "patient_id": "patient identifier",
        "course_id": "course concerned (scenario_courses.course_id)",
        "order_ids": "orders concerned (comma-separated order_id)",
        "indication": "normalised indication",
        "message": "what is wrong, for the reviewer",
        "expected": "what the scenario's policy expects",
        "observed": "what was found",
        "action": "suggested action",
        "evidence": "supporting data (labs, procedures, values)",
        "excess_g": "grams avoidable by fixing this problem under the scenario",
        "first_seen_run": "the scenario id (a scenario is a single audit)",
        "last_seen_run": "the scenario id",
        "resolved_run": "always null in a scenario",
    },
    "scenario_courses": {
        "scenario_id": "scenario that built the course (scenarios.scenario_id)",
        "course_id": "course identifier (same as courses.course_id)",
        "patient_id": "patient identifier",
        "indication": "normalised indication of the course",
        "appropriate": "course passed every dose and indication rule under the scenario",
        "excess_g": "grams above target under the scenario",
        "g_per_kg": "course total grams / the scenario's dosing weight",
        "dosing_weight_kg": "weight the dose should be based on under the scenario (kg)",
        "weight_basis": "basis of the scenario's dosing weight: actual, adjusted, ibw or unknown",
    },
}

# --------------------------------------------------------------------------------------------
# Analyst views (recreated on every write).
# --------------------------------------------------------------------------------------------

_OPEN = "status = 'open' AND resolved_run IS NULL"

_SUMMARY_MEASURES = """
    CAST(COUNT(*) AS BIGINT) AS courses,
    CAST(COUNT(DISTINCT patient_id) AS BIGINT) AS patients,
    CAST(COUNT(*) FILTER (WHERE appropriate) AS BIGINT) AS appropriate_courses,
    CAST(100.0 * COUNT(*) FILTER (WHERE appropriate) / COUNT(*) AS DOUBLE) AS pct_appropriate,
    CAST(SUM(total_g) AS DOUBLE) AS total_g,
    CAST(SUM(excess_g) AS DOUBLE) AS excess_g"""


def _summary_view(name: str, key_sql: str, key_name: str) -> str:
    """SQL of one summary view grouping courses by one key."""
    return (
        f"CREATE OR REPLACE VIEW {name} AS SELECT {key_sql} AS {key_name},{_SUMMARY_MEASURES} "
        f"FROM courses GROUP BY ALL ORDER BY {key_name} NULLS LAST"
    )


VIEWS: dict[str, str] = {
    "v_open_findings": """CREATE OR REPLACE VIEW v_open_findings AS
        SELECT f.finding_id, f.severity, f.category, f.rule_id, f.rule_version, f.status,
               f.patient_id, f.course_id, f.order_ids, f.indication, f.message, f.expected,
               f.observed, f.action, f.excess_g, f.first_seen_run, f.last_seen_run,
               c.start, c.total_g, c.g_per_kg, c.dosing_weight_kg, c.service, c.prescriber_id
        FROM findings AS f LEFT JOIN courses AS c ON c.course_id = f.course_id
        WHERE f.status = 'open' AND f.resolved_run IS NULL
        ORDER BY CASE f.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 WHEN 'info' THEN 2 ELSE 3 END,
                 c.start NULLS LAST, f.finding_id""",
    "v_summary_by_indication": _summary_view("v_summary_by_indication", "indication", "indication"),
    "v_summary_by_month": _summary_view(
        "v_summary_by_month", "CAST(date_trunc('month', start) AS DATE)", "month"
    ),
    "v_summary_by_service": _summary_view("v_summary_by_service", "service", "service"),
    "v_summary_by_prescriber": _summary_view("v_summary_by_prescriber", "prescriber_id", "prescriber_id"),
    "v_grams_avoidable": f"""CREATE OR REPLACE VIEW v_grams_avoidable AS
        WITH open_findings AS (
            SELECT *, COALESCE(course_id, 'finding:' || finding_id) AS course_key
            FROM findings WHERE {_OPEN}
        ),
        per_category AS (
            SELECT category, CAST(COUNT(*) AS BIGINT) AS findings,
                   CAST(COUNT(DISTINCT course_id) AS BIGINT) AS courses,
                   CAST(SUM(excess_g) AS DOUBLE) AS excess_g, 0 AS sort_key
            FROM open_findings GROUP BY category
        ),
        per_course AS (
            SELECT course_key, MAX(course_id) AS course_id, COUNT(*) AS findings,
                   MAX(excess_g) AS excess_g
            FROM open_findings GROUP BY course_key
        ),
        total AS (
            SELECT 'all (max per course)' AS category,
                   CAST(COALESCE(SUM(findings), 0) AS BIGINT) AS findings,
                   CAST(COUNT(DISTINCT course_id) AS BIGINT) AS courses,
                   CAST(COALESCE(SUM(excess_g), 0) AS DOUBLE) AS excess_g, 1 AS sort_key
            FROM per_course
        )
        SELECT category, findings, courses, excess_g FROM (
            SELECT * FROM per_category UNION ALL SELECT * FROM total
        ) ORDER BY sort_key, excess_g DESC, category""",
}

_LEVER_CASE, _LEVER_NAME = lever_sql("rule_id")

VIEWS |= {
    "v_course_summary": """CREATE OR REPLACE VIEW v_course_summary AS
        SELECT c.course_id, c.patient_id, c.facility, c.service, c.prescriber_id, c.indication,
               c.course_number, c.start, c."end", c.n_days, c.total_g, c.dosing_weight_kg, c.weight_basis,
               c.g_per_kg, c.interval_days, c.appropriate, c.excess_g,
               CAST(COUNT(f.finding_id) AS BIGINT) AS findings,
               CAST(COUNT(f.finding_id) FILTER (WHERE f.severity = 'critical') AS BIGINT) AS critical_findings,
               CAST(COUNT(f.finding_id) FILTER (WHERE f.severity = 'warning') AS BIGINT) AS warning_findings,
               string_agg(DISTINCT f.category, ', ' ORDER BY f.category) AS categories
        FROM courses AS c
        LEFT JOIN findings AS f ON f.course_id = c.course_id AND f.resolved_run IS NULL
        GROUP BY ALL ORDER BY c.start, c.course_id""",
    "v_appropriateness_by_indication_month": """CREATE OR REPLACE VIEW v_appropriateness_by_indication_month AS
        SELECT CAST(date_trunc('month', start) AS DATE) AS month, indication,""" + _SUMMARY_MEASURES + """
        FROM courses GROUP BY ALL ORDER BY month, indication""",
    "v_grams_avoidable_by_lever": f"""CREATE OR REPLACE VIEW v_grams_avoidable_by_lever AS
        WITH lever_findings AS (
            SELECT course_id, excess_g, {_LEVER_CASE} AS lever_rank, {_LEVER_NAME} AS lever
            FROM findings
            WHERE resolved_run IS NULL AND status <> 'dismissed' AND course_id IS NOT NULL AND excess_g > 0
        ),
        per_course AS (
            SELECT course_id, arg_min(lever, lever_rank) AS lever, MAX(excess_g) AS excess_g
            FROM lever_findings WHERE lever IS NOT NULL GROUP BY course_id
        ),
        cost AS (SELECT cost_per_gram FROM runs WHERE cost_per_gram IS NOT NULL ORDER BY started_at DESC LIMIT 1)
        SELECT lever, CAST(COUNT(*) AS BIGINT) AS courses, CAST(SUM(excess_g) AS DOUBLE) AS grams_avoidable,
               CAST(SUM(excess_g) * (SELECT cost_per_gram FROM cost) AS DOUBLE) AS cost_avoidable
        FROM per_course GROUP BY lever ORDER BY grams_avoidable DESC""",
    "v_review_yield": """CREATE OR REPLACE VIEW v_review_yield AS
        WITH latest AS (
            SELECT e.finding_id, arg_max(e.status, e.event_id) AS status,
                   arg_max(e.reason_code, e.event_id) AS reason_code, MIN(e.reviewed_at) AS first_decision_at
            FROM review_events AS e GROUP BY e.finding_id
        ),
        decided AS (
            SELECT f.category, f.severity, l.status, l.reason_code,
                   date_diff('hour', r.started_at, l.first_decision_at) / 24.0 AS days_to_decision
            FROM findings AS f
            JOIN latest AS l USING (finding_id)
            LEFT JOIN runs AS r ON r.run_id = f.first_seen_run
        ),
        totals AS (SELECT category, CAST(COUNT(*) AS BIGINT) AS findings FROM findings GROUP BY category)
        SELECT t.category, t.findings,
               CAST(COUNT(d.status) AS BIGINT) AS reviewed,
               CAST(COUNT(*) FILTER (WHERE d.status = 'actioned') AS BIGINT) AS actioned,
               CAST(COUNT(*) FILTER (WHERE d.status = 'dismissed') AS BIGINT) AS dismissed,
               CAST(100.0 * COUNT(*) FILTER (WHERE d.status = 'actioned') / NULLIF(COUNT(d.status), 0) AS DOUBLE) AS pct_actioned_of_reviewed,
               CAST(median(d.days_to_decision) AS DOUBLE) AS median_days_to_decision
        FROM totals AS t LEFT JOIN decided AS d USING (category)
        GROUP BY t.category, t.findings ORDER BY t.category""",
    "v_dismissals_by_reason": """CREATE OR REPLACE VIEW v_dismissals_by_reason AS
        WITH latest AS (
            SELECT finding_id, arg_max(status, event_id) AS status, arg_max(reason_code, event_id) AS reason_code
            FROM review_events GROUP BY finding_id
        )
        SELECT f.category, l.reason_code, CAST(COUNT(*) AS BIGINT) AS dismissed
        FROM latest AS l JOIN findings AS f USING (finding_id)
        WHERE l.status = 'dismissed' GROUP BY ALL ORDER BY dismissed DESC""",
}

VIEW_COMMENTS: dict[str, str] = {
    "v_course_summary": "One row per course with its unresolved findings counted by severity and the categories concerned",
    "v_appropriateness_by_indication_month": "Courses per month of start and indication: appropriate share, total and excess grams",
    "v_grams_avoidable_by_lever": "Grams (and cost at the latest run's cost per gram) avoidable per lever (pipeline/levers.py); each course counts once, in its first lever: indication > repeat > weight_basis > over_dose > rounding",
    "v_review_yield": "Per finding category: findings, reviewed, actioned, dismissed, share actioned, median days from first sighting to first decision",
    "v_dismissals_by_reason": "Dismissed findings per category and disposition code",
    "v_open_findings": "Open, unresolved findings with their course figures, critical first, then by course start",
    "v_summary_by_indication": "Courses per indication: patients, appropriate share, total and excess grams",
    "v_summary_by_month": "Courses per month of course start: appropriate share, total and excess grams",
    "v_summary_by_service": "Courses per ordering service: appropriate share, total and excess grams",
    "v_summary_by_prescriber": "Courses per prescriber: appropriate share, total and excess grams",
    "v_grams_avoidable": "Excess grams of open findings per category; the 'all (max per course)' row counts each course once (its largest excess)",
}

_ORDER_BY: dict[str, str] = {
    "schema_version": "version",
    "runs": "seq, started_at, run_id",
    "orders": "order_id",
    "courses": "patient_id, start, course_id",
    "findings": "finding_id",
    "quarantine": "run_id, source_file, source_row, reason",
    "ledger": "extract, row_key, run_seq, file_pos, source_row",
    "finding_history": "run_id, finding_id",
    "review_events": "event_id",
    "scenarios": "created_at, scenario_id",
    "scenario_findings": "scenario_id, finding_id",
    "scenario_courses": "scenario_id, course_id",
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


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


def _empty_database(db_path: Path) -> bool:
    """Whether a DuckDB file holds no table at all: what a first run killed before its COMMIT leaves behind."""
    con = _connect(db_path, read_only=True)
    try:
        return not con.execute("SELECT COUNT(*) FROM duckdb_tables()").fetchall()[0][0]
    finally:
        con.close()


def _check_frame(table: str, df: pl.DataFrame) -> None:
    """Raise ValueError when a frame's column names or dtypes differ from its contract."""
    schema = _FRAME_SCHEMAS[table]
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


def _stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """Schema version stored in the file, or None when there is no schema_version table."""
    exists = con.execute(
        "SELECT COUNT(*) FROM duckdb_tables() WHERE table_name = 'schema_version' AND schema_name = 'main'"
    ).fetchall()[0][0]
    if not exists:
        return None
    row = con.execute("SELECT MAX(version) FROM schema_version").fetchall()[0][0]
    return int(row) if row is not None else 0


def _migrate(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Create or upgrade the schema inside the open transaction."""
    con.execute(_SCHEMA_VERSION_DDL)
    stored = _stored_version(con) or 0
    if stored > SCHEMA_VERSION:
        raise StoreError(
            f"database {db_path} has schema version {stored}, newer than this ivig-audit "
            f"supports ({SCHEMA_VERSION}); upgrade ivig-audit"
        )
    if stored == SCHEMA_VERSION:
        return
    for version, description, statements in MIGRATIONS:
        if version > stored:
            log.info("applying schema migration %d: %s", version, description)
            for statement in statements:
                if callable(statement):  # a step that needs the pipeline's own code (e.g. parsing stored text)
                    statement(con)
                else:
                    con.execute(statement)
    con.execute("DELETE FROM schema_version")
    con.execute(
        "INSERT INTO schema_version VALUES (?, ?)",
        [SCHEMA_VERSION, _utc_naive(datetime.now(timezone.utc))],
    )


def _apply_views_and_comments(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the analyst views and write every table, column and view comment."""
    for table, text in TABLE_COMMENTS.items():
        con.execute(f"COMMENT ON TABLE {_q(table)} IS {_literal(text)}")
    for table, columns in COLUMN_COMMENTS.items():
        for column, text in columns.items():
            con.execute(f"COMMENT ON COLUMN {_q(table)}.{_q(column)} IS {_literal(text)}")
    for view, sql in VIEWS.items():
        con.execute(sql)
        con.execute(f"COMMENT ON VIEW {_q(view)} IS {_literal(VIEW_COMMENTS[view])}")


_JSON_FIELDS = ("inputs", "timings", "skipped_inputs", "data_through")


def _write_runs(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Insert the run row (every RunRecord field, lists and dicts as JSON); a run_id already stored is an error."""
    if con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchall()[0][0]:
        raise ValueError(f"run {run.run_id} is already stored; every run needs a new run_id")
    if run.status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not '{run.status}'")
    names = [f.name for f in fields(RunRecord)]
    values = []
    for name in names:
        value = getattr(run, name)
        if name in _JSON_FIELDS:
            value = json.dumps(value)
        elif isinstance(value, datetime):
            value = _utc_naive(value)
        values.append(value)
    con.execute(
        f"INSERT INTO runs ({', '.join(_q(n) for n in names)}) VALUES ({', '.join('?' for _ in names)})", values
    )


def _columns(table: str) -> list[str]:
    """Contract columns of an incoming frame, in schema order."""
    return list(_FRAME_SCHEMAS[table].columns)


_AUDITED = "patient_id IN (SELECT patient_id FROM incoming_patients)"


def _write_orders(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Replace the orders of every audited patient (and any order_id coming in), stamping this run_id."""
    cols = ", ".join(_q(c) for c in _columns("orders"))
    con.execute(f"DELETE FROM orders WHERE {_AUDITED} OR order_id IN (SELECT order_id FROM incoming_orders)")
    con.execute(f"INSERT INTO orders ({cols}, run_id) SELECT {cols}, ? FROM incoming_orders", [run_id])


def _write_courses(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Replace the courses of every audited patient (and any course_id coming in)."""
    cols = ", ".join(_q(c) for c in _columns("courses"))
    con.execute(f"DELETE FROM courses WHERE {_AUDITED} OR course_id IN (SELECT course_id FROM incoming_courses)")
    con.execute(f"INSERT INTO courses ({cols}, run_id) SELECT {cols}, ? FROM incoming_courses", [run_id])


def _write_findings(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Merge the audited patients' findings: keep review status and first sighting, resolve what is no
    longer raised, mark a reviewed finding whose facts changed, and append every change to finding_history."""
    run_id, pack = run.run_id, run.rule_pack_version
    facts = _FACTS_HASH.format(t="i")
    # 1. Cleared: stored, unresolved, of an audited patient, not raised again.
    cleared = f"findings.resolved_run IS NULL AND findings.{_AUDITED} AND NOT EXISTS " \
              "(SELECT 1 FROM incoming_findings AS i WHERE i.finding_id = findings.finding_id)"
    con.execute(_history_sql("findings", "resolved", "findings", cleared), [run_id, pack])
    con.execute(f"UPDATE findings SET resolved_run = ? WHERE {cleared}", [run_id])
    # 2. Raised again: history first (it compares with what is stored), then the refresh.
    stored = "findings AS f JOIN incoming_findings AS i USING (finding_id)"
    con.execute(_history_sql("i", "reopened", stored, "f.resolved_run IS NOT NULL"), [run_id, pack])
    con.execute(_history_sql("i", "changed", stored, f"f.resolved_run IS NULL AND f.facts_hash IS DISTINCT FROM {facts}"), [run_id, pack])
    # Replaced (deleted and inserted) rather than updated: an UPDATE of a few thousand rows of an
    # indexed table took seconds in DuckDB 2.0 (bench/nightly.py), the same rows rewritten 0.02 s.
    kept = {"finding_id": "f.finding_id", "status": "f.status", "first_seen_run": "f.first_seen_run",
            "last_seen_run": "$run", "resolved_run": "NULL", "raised_pack_version": "f.raised_pack_version",
            "confirmed_pack_version": "$pack", "facts_hash": facts, "reviewed_facts_hash": "f.reviewed_facts_hash",
            "changed_since_review": f"f.status <> 'open' AND f.reviewed_facts_hash IS DISTINCT FROM {facts}"}
    columns = [*_columns("findings"), *(c for c in kept if c not in _columns("findings"))]
    merged = ", ".join(f"{kept.get(c, 'i.' + _q(c))} AS {_q(c)}" for c in columns)
    con.execute(f"CREATE OR REPLACE TEMP TABLE raised_again AS SELECT {merged} FROM {stored}", {"run": run_id, "pack": pack})
    con.execute("DELETE FROM findings WHERE finding_id IN (SELECT finding_id FROM raised_again)")
    listed = ", ".join(_q(c) for c in columns)
    con.execute(f"INSERT INTO findings ({listed}) SELECT {listed} FROM raised_again")
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


def _write_ledger(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Remember tonight's rows (a version already known keeps its first arrival) and the state of every
    order version the audit saw (in_force, superseded, rejected)."""
    con.execute(_known_versions_sql("incoming_ledger"))
    con.execute(
        f"""INSERT INTO ledger ({', '.join(_LEDGER_INSERT)}, run_id, state, state_run)
            SELECT {', '.join(_LEDGER_SELECT)}, ?, {_LEDGER_STATE}, ? FROM incoming_ledger AS i
            WHERE {_LEDGER_UNSEEN}""",
        [run.run_id, run.run_id],
    )
    con.execute(
        """UPDATE ledger SET state = v.state, reason = v.reason, state_run = ?
           FROM incoming_versions AS v
           WHERE ledger.extract = 'orders' AND ledger.row_key = v.order_id AND ledger.version_hash = md5_number(v.version)
             AND (ledger.state IS DISTINCT FROM v.state OR ledger.reason IS DISTINCT FROM v.reason)""",
        [run.run_id],
    )


def _prune_ledger(con: duckdb.DuckDBPyConnection, retention: dict[str, int | None], grace_days: int) -> None:
    """Forget evidence no rule can reach any more (pipeline.history.retention_days).

    A row is kept while it is within its kind's retention of the newest result of the history
    (data time, not the clock: a lab or procedure, which is never dated ahead as a scheduled order
    may be), or, for a patient with IVIG, of that patient's first course. Versions of
    IVIG orders, and evidence a rule reads at any distance (retention None), are never pruned.
    """
    kinds = pl.DataFrame(
        {"kind": list(retention), "days": [d for d in retention.values()], "forever": [d is None for d in retention.values()]},
        schema={"kind": pl.String, "days": pl.Int64, "forever": pl.Boolean},
    )
    con.register("incoming_retention", kinds)
    con.execute(
        """DELETE FROM ledger AS l USING (
               SELECT l2.extract, l2.row_key, l2.version_hash
               FROM ledger AS l2
               LEFT JOIN incoming_retention AS r ON r.kind = l2.kind
               LEFT JOIN (SELECT patient_id, MIN(start) AS first_start FROM courses GROUP BY patient_id) AS c
                      ON c.patient_id = l2.patient_id
               CROSS JOIN (
                   -- Results (labs, procedures) are never dated ahead, unlike a scheduled order.
                   SELECT COALESCE(MAX(event_at) FILTER (WHERE extract <> 'orders'), MAX(event_at)) AS newest FROM ledger
               ) AS h
               WHERE NOT COALESCE(r.forever, false)
                 AND NOT (l2.extract = 'orders' AND l2.row_key IN (SELECT order_id FROM orders))
                 AND (COALESCE(l2.event_until, l2.event_at) IS NULL
                      OR COALESCE(l2.event_until, l2.event_at)
                         < COALESCE(c.first_start, h.newest) - to_days(CAST(COALESCE(r.days, ?) AS INTEGER)))
           ) AS gone
           WHERE l.extract = gone.extract AND l.row_key IS NOT DISTINCT FROM gone.row_key AND l.version_hash = gone.version_hash""",
        [grace_days],
    )
    con.unregister("incoming_retention")


def _data_through(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    """The newest clinical time of each extract the history holds (what the data runs to)."""
    rows = dict(con.execute("SELECT extract, CAST(MAX(event_at) AS VARCHAR) FROM ledger GROUP BY extract").fetchall())
    return {extract: rows.get(extract) for extract in ("orders", "labs", "procedures")}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
) -> None:
    """Write one audit run in a single transaction (all or nothing).

    The orders, courses and findings of `patients` (default: the patients of the incoming courses)
    are replaced by the incoming ones: a stored finding of such a patient that is not raised again
    is resolved. `ledger` and `versions` are what the history learns (pipeline.history); with
    `retention` the evidence no rule can reach any more is pruned after the write.
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
            con.register(f"incoming_{table}", df)
        con.register("incoming_patients", patients.select("patient_id"))
        if ledger is not None:
            con.register("incoming_ledger", ledger)
            con.register("incoming_versions", versions if versions is not None else _NO_VERSIONS)
            _write_ledger(con, run)
        _write_orders(con, run.run_id)
        _write_courses(con, run.run_id)
        _write_findings(con, run)
        _write_quarantine(con)
        if retention is not None:
            _prune_ledger(con, retention, grace_days)
        _write_runs(con, dataclasses.replace(run, data_through=_data_through(con)))
    log.info(
        "stored run %s in %s: %d orders, %d courses, %d findings, %d quarantined",
        run.run_id, db_path, orders.height, courses.height, findings.height, quarantine.height,
    )


_NO_VERSIONS = pl.DataFrame(schema={"order_id": pl.String, "version": pl.String, "state": pl.String, "reason": pl.String})


@_owner_only_files
def write_run_record(db_path: Path, run: RunRecord) -> None:
    """Record a run that changed no audit table (nothing new) in its own transaction."""
    with _transaction(db_path) as con:
        run = _sequenced(con, run)
        _write_runs(con, dataclasses.replace(run, data_through=_data_through(con)))


def _sequenced(con: duckdb.DuckDBPyConnection, run: RunRecord) -> RunRecord:
    """The run with its sequence number: the next one. A run planned with another number lost a race
    (another run committed after it read the history) and must not overwrite that run's work."""
    if con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchall()[0][0]:
        raise ValueError(f"run {run.run_id} is already stored; every run needs a new run_id")
    following = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchall()[0][0]
    if run.seq is None:
        return dataclasses.replace(run, seq=following)
    if run.seq != following:
        raise StoreError(
            f"another run committed to the database while run {run.run_id} was auditing; "
            "nothing was written: run it again"
        )
    return run


@_owner_only_files
def set_report_status(db_path: Path, run_id: str, status: str) -> None:
    """Record what happened to a run's report (after the run's own commit)."""
    if status not in REPORT_STATUSES:
        raise ValueError(f"report status must be one of {', '.join(REPORT_STATUSES)}, not '{status}'")
    with _transaction(db_path) as con:
        con.execute("UPDATE runs SET report_status = ? WHERE run_id = ?", [status, run_id])


@_owner_only_files
def upgrade_database(db_path: Path) -> None:
    """Bring an existing database to this schema version before a night reads it.

    A new database is created by the first write (`_create_atomically`: built under a temporary
    name and renamed into place, so a kill at any moment leaves either no database or a valid one).
    """
    db_path = Path(db_path)
    if not db_path.exists() or db_path.stat().st_size == 0:
        return  # created by the night's first write (nothing is created for a night that stops before)
    if _empty_database(db_path):  # a file DuckDB made but no migration ever committed to
        with _transaction(db_path):
            pass
        return
    con = connect_read_only(db_path)  # refuses a schema newer than this ivig-audit
    try:
        current = _stored_version(con) == SCHEMA_VERSION
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
        _apply_views_and_comments(con)
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
        con.execute("BEGIN TRANSACTION")
        try:
            _migrate(con, db_path)
            _apply_views_and_comments(con)
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
    con = _connect(db_path, read_only=True)
    try:
        stored = _stored_version(con)
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot read database {db_path}: {_one_line(exc)}") from exc
    if stored is None:
        con.close()
        raise StoreError(f"database {db_path} holds no audit data (no schema_version table)")
    if stored > SCHEMA_VERSION:
        con.close()
        raise StoreError(
            f"database {db_path} has schema version {stored}, newer than this ivig-audit "
            f"supports ({SCHEMA_VERSION}); upgrade ivig-audit"
        )
    return con


def read_tables(
    db_path: Path,
    tables: Sequence[str] = ("runs", "orders", "courses", "findings", "quarantine"),
) -> dict[str, pl.DataFrame]:
    """Read whole tables read-only as Polars frames (for the report)."""
    if isinstance(tables, str):
        tables = (tables,)
    known = set(TABLES) | set(VIEWS) | {"schema_version"}
    unknown = [t for t in tables if t not in known]
    if unknown:
        raise ValueError(f"unknown table or view: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    con = connect_read_only(Path(db_path))
    try:
        out: dict[str, pl.DataFrame] = {}
        for name in tables:
            order = f" ORDER BY {_ORDER_BY[name]}" if name in _ORDER_BY else ""
            try:
                out[name] = con.sql(f"SELECT * FROM {_q(name)}{order}").pl()
            except duckdb.CatalogException as exc:
                raise StoreError(f"database {db_path} has no {name}: {_one_line(exc)}") from exc
        return out
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# History, review workflow, worklist and export
# --------------------------------------------------------------------------------------------

REVIEW_STATUSES = ("open", "acknowledged", "actioned", "dismissed")

#: Structured disposition codes of a review decision (data: a site may extend this list).
DISPOSITION_CODES: dict[str, str] = {
    "prescriber_contacted": "prescriber contacted; decision pending",
    "dose_changed": "dose or remaining doses changed",
    "order_cancelled": "order or remaining doses cancelled",
    "documentation_added": "justification or indication documented after review",
    "clinically_justified": "clinically justified (specialist decision, exceptional case)",
    "approved_exception": "approved exception (committee or policy exception)",
    "data_error": "the extract data was wrong (weight, height, indication, unit)",
    "duplicate": "duplicate of another finding",
    "not_applicable": "rule does not apply to this patient",
    "other": "other (explain in the note)",
}


@dataclass(frozen=True)
class ReviewEvent:
    """One review decision on a finding."""

    finding_id: str
    status: str
    reason_code: str | None
    note: str | None
    reviewed_by: str
    reviewed_at: datetime


#: The ledger columns a night reads back (pipeline.history.stored_text_rows).
_LEDGER_READ = "extract, version, patient_id, source_file, source_row, run_seq, file_pos"


@dataclass(frozen=True)
class NightState:
    """What the database says before a night reads its inputs."""

    last_seq: int
    rule_pack_hash: str | None  # of the latest run that audited (None: no run has)
    products_hash: str | None
    has_history: bool
    extracts_given: frozenset[str] = frozenset()  # extracts any run has read (a labs extract once given is always judged)
    labs_through: datetime | None = None  # the newest lab result the history holds


@dataclass(frozen=True)
class History:
    """What a night audits together with tonight's rows.

    ledger    stored rows (pipeline.history layout) of the patients judged tonight, and every stored
              version of tonight's order_ids
    courses   course_id, patient_id, start, order_ids of the stored courses of those patients
    patients  the patients whose orders, courses and findings tonight's audit replaces
    extracts_given  the extracts any run (tonight's included) has read: a rule that needs labs is
              judged for every patient once a labs extract was given, even one with no lab
    labs_through  the date the labs extract runs to after tonight (its newest result, any patient)
    """

    ledger: pl.DataFrame
    courses: pl.DataFrame
    patients: pl.DataFrame
    extracts_given: frozenset[str] = frozenset({"orders"})
    labs_through: datetime | None = None


def _open_existing(db_path: Path) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection to an audit database, or None when there is none yet (or an empty file)."""
    db_path = Path(db_path)
    if not db_path.exists() or _empty_database(db_path):
        return None
    return connect_read_only(db_path)


def latest_audit_seq(db_path: Path) -> int | None:
    """The sequence number of the latest run that audited (None: no run has)."""
    con = _open_existing(db_path)
    if con is None:
        return None
    try:
        return con.execute("SELECT MAX(seq) FROM runs WHERE status = 'succeeded'").fetchall()[0][0]
    finally:
        con.close()


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


def read_night_state(db_path: Path) -> NightState:
    """The last run's sequence number and configuration, before a night starts."""
    con = _open_existing(db_path)
    if con is None:
        return NightState(0, None, None, False)
    try:
        last_seq = con.execute("SELECT COALESCE(MAX(seq), 0) FROM runs").fetchall()[0][0]
        latest = con.execute(
            "SELECT rule_pack_hash, products_hash FROM runs WHERE status = 'succeeded' ORDER BY seq DESC LIMIT 1"
        ).fetchall()
        has_history = con.execute("SELECT COUNT(*) > 0 FROM ledger").fetchall()[0][0]
        given = con.execute(
            "SELECT DISTINCT json_extract_string(i.value, '$.extract') FROM runs, json_each(runs.inputs) AS i"
        ).fetchall()
        labs_through = con.execute("SELECT MAX(event_at) FROM ledger WHERE extract = 'labs'").fetchall()[0][0]
    finally:
        con.close()
    pack_hash, products_hash = latest[0] if latest else (None, None)
    extracts = frozenset(row[0] for row in given if row[0])
    return NightState(int(last_seq), pack_hash, products_hash, bool(has_history), extracts, labs_through)


def read_history(
    db_path: Path,
    tonight_patients: pl.Series,
    tonight_orders: pl.Series,
    tonight_immunoglobulin: pl.Series,
    everyone: bool = False,
    ended_between: tuple[datetime, datetime] | None = None,
) -> History:
    """The stored rows and courses a night needs: those of every patient it judges.

    A patient is judged tonight when a row of theirs arrived (or a row reusing one of their
    order_ids) and they have IVIG orders or open findings stored, or when tonight brought an
    immunoglobulin row of theirs; `everyone` judges every patient with stored IVIG again (the
    rule pack or product dictionary changed). A patient with a course that ended in
    `ended_between` (both inclusive) is judged too: tonight's labs carried the data past a
    follow-up window of that course (rules.FOLLOW_UP). Every stored version of tonight's order_ids
    is read too, whoever its patient, so the version in force is decided among all of them.
    """
    empty = History(
        ledger=pl.DataFrame(schema={c.strip(): pl.String for c in _LEDGER_READ.split(",")}),
        courses=pl.DataFrame(schema={"course_id": pl.String, "patient_id": pl.String, "start": pl.Datetime("us"), "order_ids": pl.String}),
        patients=pl.DataFrame({"patient_id": pl.concat([tonight_patients, tonight_immunoglobulin]).unique().sort()}),
    )
    con = _open_existing(db_path)
    if con is None:
        return empty
    try:
        con.register("tonight_patients", pl.DataFrame({"patient_id": tonight_patients.cast(pl.String)}))
        con.register("tonight_orders", pl.DataFrame({"order_id": tonight_orders.cast(pl.String)}))
        con.register("tonight_ig", pl.DataFrame({"patient_id": tonight_immunoglobulin.cast(pl.String)}))
        audited = "SELECT patient_id FROM judged" if everyone else \
            "SELECT patient_id FROM candidates WHERE patient_id IN (SELECT patient_id FROM judged)"
        if ended_between is not None and not everyone:
            audited += ' UNION SELECT patient_id FROM courses WHERE "end" >= $ended_after AND "end" <= $ended_by'
        params = {"ended_after": ended_between[0], "ended_by": ended_between[1]} if ended_between and not everyone else {}
        con.execute(
            f"""CREATE TEMP TABLE night_patients AS
                WITH linked AS (
                    SELECT DISTINCT patient_id FROM ledger
                    WHERE extract = 'orders' AND row_key IN (SELECT order_id FROM tonight_orders) AND patient_id IS NOT NULL
                ),
                candidates AS (SELECT patient_id FROM tonight_patients UNION SELECT patient_id FROM linked),
                judged AS (SELECT patient_id FROM orders UNION SELECT patient_id FROM findings WHERE resolved_run IS NULL),
                audited AS ({audited} UNION SELECT patient_id FROM tonight_ig)
                SELECT patient_id, true AS audited FROM audited
                UNION ALL
                SELECT patient_id, false FROM candidates WHERE patient_id NOT IN (SELECT patient_id FROM audited)""",
            params,
        )
        ledger = con.sql(
            f"""SELECT {_LEDGER_READ} FROM ledger
                WHERE patient_id IN (SELECT patient_id FROM night_patients WHERE audited)
                   OR (extract = 'orders' AND row_key IN (SELECT order_id FROM tonight_orders))
                ORDER BY extract, run_seq, file_pos, source_row"""
        ).pl()
        courses = con.sql(
            """SELECT course_id, patient_id, start, order_ids FROM courses
               WHERE patient_id IN (SELECT patient_id FROM night_patients WHERE audited)"""
        ).pl()
        patients = con.sql("SELECT DISTINCT patient_id FROM night_patients ORDER BY patient_id").pl()
    finally:
        con.close()
    return History(ledger=ledger, courses=courses, patients=patients)


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


def processed_hashes(db_path: Path) -> set[str]:
    """Content hashes of every input file a stored run has audited."""
    return audited_inputs(db_path)[0]


def audited_inputs(db_path: Path) -> tuple[set[str], set[int] | None]:
    """Content hashes and byte sizes of every input file stored runs audited.

    The sizes are None when a stored input lacks its size (runs written before sizes were
    recorded): then no file can be called new by its size alone.
    """
    db_path = Path(db_path)
    if not db_path.exists() or _empty_database(db_path):
        return set(), set()
    con = connect_read_only(db_path)
    try:
        rows = con.execute(
            "SELECT DISTINCT json_extract_string(i.value, '$.sha256'), TRY_CAST(json_extract(i.value, '$.bytes') AS BIGINT) "
            "FROM runs, json_each(runs.inputs) AS i"
        ).fetchall()
    finally:
        con.close()
    hashes = {digest for digest, _ in rows if digest}
    sizes = {size for _, size in rows}
    return hashes, (None if None in sizes else sizes)


@_owner_only_files
def record_review(
    db_path: Path,
    finding_id: str,
    status: str,
    reviewed_by: str,
    reason_code: str | None = None,
    note: str | None = None,
    reviewed_at: datetime | None = None,
) -> ReviewEvent:
    """Append a review decision and set the finding's status to it (one transaction)."""
    if status not in REVIEW_STATUSES:
        raise ValueError(f"status must be one of {', '.join(REVIEW_STATUSES)}, not '{status}'")
    if reason_code is not None and reason_code not in DISPOSITION_CODES:
        raise ValueError(f"unknown reason code '{reason_code}'; use one of {', '.join(DISPOSITION_CODES)}")
    if status == "dismissed" and reason_code is None:
        raise ValueError("dismissing a finding needs a --reason code")
    if not reviewed_by.strip():
        raise ValueError("a review needs the reviewer's name (--by)")
    event = ReviewEvent(
        finding_id=finding_id,
        status=status,
        reason_code=reason_code,
        note=note,
        reviewed_by=reviewed_by.strip(),
        reviewed_at=_utc_naive(reviewed_at or datetime.now(timezone.utc)),
    )
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StoreError(f"database {db_path} does not exist; run the audit first")
    with _transaction(db_path) as con:
        if not con.execute("SELECT COUNT(*) FROM findings WHERE finding_id = ?", [finding_id]).fetchall()[0][0]:
            raise ValueError(f"no finding with id '{finding_id}'")
        con.execute(
            "INSERT INTO review_events (finding_id, status, reason_code, note, reviewed_by, reviewed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [event.finding_id, event.status, event.reason_code, event.note, event.reviewed_by, event.reviewed_at],
        )
        # The facts the reviewer saw: if they change later, the finding is marked changed since review.
        con.execute(
            "UPDATE findings SET status = ?, reviewed_facts_hash = facts_hash, changed_since_review = false "
            "WHERE finding_id = ?",
            [status, finding_id],
        )
    return event


def worklist(
    db_path: Path,
    category: str | None = None,
    severity: str | None = None,
    service: str | None = None,
    since: datetime | None = None,
) -> pl.DataFrame:
    """Open findings for a pharmacist's worklist, filtered (every filter is a query parameter)."""
    conditions, params = ["TRUE"], []
    for column, value in (("category", category), ("severity", severity), ("service", service)):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        conditions.append("start >= ?")
        params.append(since)
    con = connect_read_only(Path(db_path))
    try:
        return con.sql(f"SELECT * FROM v_open_findings WHERE {' AND '.join(conditions)}", params=params).pl()
    finally:
        con.close()


def export_parquet(db_path: Path, out_dir: Path, pseudonym_key: bytes | None = None) -> list[Path]:
    """Parquet copies of every table and view, for tools that cannot open the file while the audit runs.

    The folder is 0700 and every file 0600 (they hold patient ids and raw history). With a
    `pseudonym_key`, patient ids are replaced as the report does (pipeline.report.pseudonymize_tables).
    """
    from pipeline.exports import private_folder, write_owner_only

    out_dir = private_folder(Path(out_dir))
    con = connect_read_only(Path(db_path))
    written = []
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
                "UNION ALL SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal "
                "ORDER BY 1"
            ).fetchall()
        ]
        if pseudonym_key is not None:
            from pipeline.report import pseudonymize_tables

            # Every patient id of the database, so that ids inside other columns (finding_id, raw JSON)
            # of a table without a patient_id column are replaced too; tables are then done one by one.
            holders = [
                r[0] for r in con.execute(
                    "SELECT table_name FROM duckdb_columns() WHERE schema_name = 'main' AND column_name = 'patient_id'"
                ).fetchall()
            ]
            ids = pl.concat(
                [con.sql(f"SELECT DISTINCT CAST(patient_id AS VARCHAR) AS patient_id FROM {_q(name)}").pl() for name in holders]
                or [pl.DataFrame(schema={"patient_id": pl.String})]
            ).unique()
        for name in names:
            frame = con.sql(f"SELECT * FROM {_q(name)}").pl()
            if pseudonym_key is not None:
                frame = pseudonymize_tables({name: frame, "_every_patient_id": ids}, pseudonym_key)[name]
            written.append(write_owner_only(out_dir / f"{name}.parquet", frame.write_parquet))
    finally:
        con.close()
    return written


# --------------------------------------------------------------------------------------------
# Scenarios (ivig-audit replay / diff): what a rule-pack or policy change would do, stored apart
# from the live tables. Nothing below writes to runs, orders, courses, findings, quarantine,
# source_rows or review_events.
# --------------------------------------------------------------------------------------------

SCENARIO_TABLES: tuple[str, ...] = ("scenarios", "scenario_findings", "scenario_courses")

#: Course columns a scenario keeps for comparison (besides scenario_id).
SCENARIO_COURSE_COLUMNS: tuple[str, ...] = (
    "course_id", "patient_id", "indication", "appropriate", "excess_g", "g_per_kg", "dosing_weight_kg", "weight_basis",
)


@dataclass(frozen=True)
class ScenarioRecord:
    """Metadata of one replayed scenario, stored as one row of table `scenarios`."""

    scenario_id: str
    name: str
    base_run_id: str
    created_at: datetime
    profile: str
    rule_pack_version: str
    rule_pack_hash: str
    rules_file: str | None
    courses: int
    findings: int
    history_only: bool = False


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the main schema holds a table of that name."""
    return bool(
        con.execute(
            "SELECT COUNT(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ?", [name]
        ).fetchall()[0][0]
    )


def read_run(db_path: Path, run_id: str) -> dict | None:
    """One stored run's metadata (inputs decoded from JSON), or None when there is no such run."""
    con = connect_read_only(Path(db_path))
    try:
        rows = con.execute(
            "SELECT run_id, started_at, profile, rule_pack_version, rule_pack_hash, inputs FROM runs WHERE run_id = ?",
            [run_id],
        ).fetchall()
    finally:
        con.close()
    if not rows:
        return None
    run_id_, started_at, profile, version, pack_hash, inputs = rows[0]
    return {
        "run_id": run_id_,
        "started_at": started_at,
        "profile": profile,
        "rule_pack_version": version,
        "rule_pack_hash": pack_hash,
        "inputs": json.loads(inputs or "[]"),
    }


@_owner_only_files
def write_scenario(db_path: Path, scenario: ScenarioRecord, findings: pl.DataFrame, courses: pl.DataFrame) -> None:
    """Store a scenario's metadata, findings and courses in one transaction (live tables untouched).

    `findings` is in the checks.outputs.FINDINGS layout; `courses` holds at least SCENARIO_COURSE_COLUMNS.
    """
    _check_frame("findings", findings)
    missing = [c for c in SCENARIO_COURSE_COLUMNS if c not in courses.columns]
    if missing:
        raise ValueError(f"scenario courses frame lacks {', '.join(missing)}")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StoreError(f"database {db_path} does not exist; run the audit first")
    with _transaction(db_path) as con:
        if con.execute("SELECT COUNT(*) FROM scenarios WHERE scenario_id = ?", [scenario.scenario_id]).fetchall()[0][0]:
            raise ValueError(f"scenario {scenario.scenario_id} is already stored")
        con.execute(
            """INSERT INTO scenarios (scenario_id, name, base_run_id, created_at, profile, rule_pack_version,
                   rule_pack_hash, rules_file, courses, findings, history_only)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                scenario.scenario_id, scenario.name, scenario.base_run_id, _utc_naive(scenario.created_at),
                scenario.profile, scenario.rule_pack_version, scenario.rule_pack_hash, scenario.rules_file,
                scenario.courses, scenario.findings, scenario.history_only,
            ],
        )
        con.register("incoming_scenario_findings", findings)
        cols = ", ".join(_q(c) for c in _columns("findings"))
        con.execute(
            f"INSERT INTO scenario_findings (scenario_id, {cols}) SELECT ?, {cols} FROM incoming_scenario_findings",
            [scenario.scenario_id],
        )
        con.register("incoming_scenario_courses", courses.select(SCENARIO_COURSE_COLUMNS))
        course_cols = ", ".join(_q(c) for c in SCENARIO_COURSE_COLUMNS)
        con.execute(
            f"INSERT INTO scenario_courses (scenario_id, {course_cols}) "
            f"SELECT ?, {course_cols} FROM incoming_scenario_courses",
            [scenario.scenario_id],
        )
    log.info("stored scenario %s of run %s: %d courses, %d findings",
             scenario.scenario_id, scenario.base_run_id, courses.height, findings.height)


def read_run_findings(db_path: Path, run_id: str) -> pl.DataFrame:
    """The findings present at a past run, rebuilt from the live findings table.

    Present = first_seen_run <= run AND (resolved_run IS NULL OR resolved_run > run). The content
    (severity, message, expected, observed, excess_g) is the latest stored, not necessarily what
    that run wrote. ValueError when there is no such run.
    """
    con = connect_read_only(Path(db_path))
    try:
        if not con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
            raise ValueError(f"no run with id '{run_id}'")
        cols = ", ".join(_q(c) for c in _columns("findings"))
        return con.sql(
            f"SELECT {cols} FROM findings WHERE first_seen_run <= ? "
            "AND (resolved_run IS NULL OR resolved_run > ?) ORDER BY finding_id",
            params=[run_id, run_id],
        ).pl()
    finally:
        con.close()


def read_scenario_findings(db_path: Path, scenario_id: str) -> pl.DataFrame:
    """The findings a stored scenario raised (FINDINGS layout). ValueError when there is no such scenario."""
    con = connect_read_only(Path(db_path))
    try:
        if not _has_table(con, "scenarios") or not con.execute(
            "SELECT COUNT(*) FROM scenarios WHERE scenario_id = ?", [scenario_id]
        ).fetchall()[0][0]:
            raise ValueError(f"no scenario with id '{scenario_id}'")
        cols = ", ".join(_q(c) for c in _columns("findings"))
        return con.sql(
            f"SELECT {cols} FROM scenario_findings WHERE scenario_id = ? ORDER BY finding_id", params=[scenario_id]
        ).pl()
    finally:
        con.close()


def read_scenarios(db_path: Path) -> pl.DataFrame:
    """Every stored scenario's metadata, oldest first (an empty frame before the first replay)."""
    con = connect_read_only(Path(db_path))
    try:
        if not _has_table(con, "scenarios"):
            return pl.DataFrame(schema={"scenario_id": pl.String, "name": pl.String, "base_run_id": pl.String})
        return con.sql("SELECT * FROM scenarios ORDER BY created_at, scenario_id").pl()
    finally:
        con.close()
