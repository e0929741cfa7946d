"""DuckDB storage of audit runs: schema migrations, transactional writes, read-only reads."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class RunRecord:
    """Metadata of one audit run, stored as one row of table `runs`."""

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


# --------------------------------------------------------------------------------------------
# Schema: ordered migrations. Never edit a released migration; append a new one instead.
# --------------------------------------------------------------------------------------------

_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)"
)

MIGRATIONS: list[tuple[int, str, list[str]]] = [
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

SCHEMA_VERSION: int = MIGRATIONS[-1][0]

TABLES: tuple[str, ...] = (
    "runs", "orders", "courses", "findings", "quarantine", "source_rows", "review_events",
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
    "source_rows": "History: canonical text of every input row of IVIG patients, re-audited each run (one row per extract x row_key)",
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
        "status": "run outcome (succeeded)",
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
        "actual_weight_kg": "actual body weight (kg)",
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
    },
    "quarantine": {
        "run_id": "run that last rejected this row",
        "extract": "extract kind: orders, labs or procedures",
        "source_file": "file the row came from",
        "source_row": "row number in the source file",
        "order_id": "order identifier, if readable",
        "patient_id": "patient identifier, if readable",
        "reason": "why the row was rejected",
        "raw": "the row as read",
    },
    "source_rows": {
        "extract": "extract kind: orders, labs or procedures",
        "row_key": "what identifies the row across nights: order_id for orders, the whole row otherwise",
        "patient_id": "patient identifier",
        "raw": "canonical text columns of the row as JSON",
        "source_file": "file the row came from",
        "source_row": "row number in that file",
        "first_run": "run that first stored the row",
        "last_run": "latest run that read or kept the row",
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
        "history_only": "true when replayed from stored source_rows only (--history-only), without re-reading the input files",
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
    "runs": "started_at, run_id",
    "orders": "order_id",
    "courses": "patient_id, start, course_id",
    "findings": "finding_id",
    "quarantine": "source_file, source_row, reason",
    "source_rows": "extract, row_key",
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


def _empty_database(db_path: Path) -> bool:
    """Whether a DuckDB file holds no table at all: what a first run killed before its COMMIT leaves behind."""
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as exc:
        raise _store_error(db_path, exc) from exc
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


def _write_runs(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Insert the run row; a run_id already stored is an error."""
    if con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchall()[0][0]:
        raise ValueError(f"run {run.run_id} is already stored; every run needs a new run_id")
    con.execute(
        """INSERT INTO runs (run_id, started_at, finished_at, status, profile, rule_pack_version,
               rule_pack_hash, inputs, rows_read, rows_quarantined, rows_ivig, rows_passed_through,
               rows_out_of_scope, courses, findings, timings, skipped_inputs, cost_per_gram,
               rows_unrecognised_ig, rows_quarantined_orders)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            run.run_id,
            _utc_naive(run.started_at),
            _utc_naive(run.finished_at),
            run.status,
            run.profile,
            run.rule_pack_version,
            run.rule_pack_hash,
            json.dumps(run.inputs),
            run.rows_read,
            run.rows_quarantined,
            run.rows_ivig,
            run.rows_passed_through,
            run.rows_out_of_scope,
            run.courses,
            run.findings,
            json.dumps(run.timings),
            json.dumps(run.skipped_inputs),
            run.cost_per_gram,
            run.rows_unrecognised_ig,
            run.rows_quarantined_orders,
        ],
    )


def _columns(table: str) -> list[str]:
    """Contract columns of an incoming frame, in schema order."""
    return list(_FRAME_SCHEMAS[table].columns)


def _write_orders(con: duckdb.DuckDBPyConnection, run_id: str, replace_all: bool = False) -> None:
    """Upsert orders by order_id (or replace them all after a full re-audit), stamping this run_id."""
    cols = ", ".join(_q(c) for c in _columns("orders"))
    if replace_all:
        con.execute("DELETE FROM orders")
    con.execute("DELETE FROM orders WHERE order_id IN (SELECT order_id FROM incoming_orders)")
    con.execute(f"INSERT INTO orders ({cols}, run_id) SELECT {cols}, ? FROM incoming_orders", [run_id])


def _write_courses(con: duckdb.DuckDBPyConnection, run_id: str, replace_all: bool = False) -> None:
    """Replace the stored courses of every patient present in the incoming courses (or all of them)."""
    cols = ", ".join(_q(c) for c in _columns("courses"))
    if replace_all:
        con.execute("DELETE FROM courses")
    con.execute(
        "DELETE FROM courses WHERE patient_id IN (SELECT patient_id FROM incoming_courses) "
        "OR course_id IN (SELECT course_id FROM incoming_courses)"
    )
    con.execute(f"INSERT INTO courses ({cols}, run_id) SELECT {cols}, ? FROM incoming_courses", [run_id])


def _write_findings(con: duckdb.DuckDBPyConnection, run_id: str, replace_all: bool = False) -> None:
    """Merge findings: keep review status and first sighting, resolve the ones no longer raised."""
    # 1. Cleared: stored, unresolved, patient re-audited in this run (every patient after a full
    #    re-audit), not raised again.
    audited = "TRUE" if replace_all else "patient_id IN (SELECT patient_id FROM incoming_courses)"
    con.execute(
        f"""UPDATE findings SET resolved_run = ?
           WHERE resolved_run IS NULL
             AND {audited}
             AND NOT EXISTS (SELECT 1 FROM incoming_findings AS i WHERE i.finding_id = findings.finding_id)""",
        [run_id],
    )
    # 2. Raised again: refresh content, keep status and first_seen_run, reopen if resolved.
    kept = {"finding_id", "status", "first_seen_run", "last_seen_run", "resolved_run"}
    refreshed = [c for c in _columns("findings") if c not in kept]
    assignments = ", ".join(f"{_q(c)} = i.{_q(c)}" for c in refreshed)
    con.execute(
        f"""UPDATE findings SET {assignments}, last_seen_run = ?, resolved_run = NULL
            FROM incoming_findings AS i WHERE findings.finding_id = i.finding_id""",
        [run_id],
    )
    # 3. New: inserted as given, last_seen_run = this run.
    cols = _columns("findings")
    select = ", ".join("?" if c == "last_seen_run" else f"i.{_q(c)}" for c in cols)
    con.execute(
        f"""INSERT INTO findings ({', '.join(_q(c) for c in cols)})
            SELECT {select} FROM incoming_findings AS i
            WHERE NOT EXISTS (SELECT 1 FROM findings AS f WHERE f.finding_id = i.finding_id)""",
        [run_id],
    )


def _write_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """Replace quarantine rows with the same (source_file, source_row, reason)."""
    cols = ", ".join(_q(c) for c in _columns("quarantine"))
    con.execute(
        """DELETE FROM quarantine AS q WHERE EXISTS (
               SELECT 1 FROM incoming_quarantine AS i
               WHERE i.source_file = q.source_file AND i.source_row = q.source_row AND i.reason = q.reason)"""
    )
    con.execute(
        f"INSERT INTO quarantine ({cols}) "
        f"SELECT DISTINCT ON (source_file, source_row, reason) {cols} FROM incoming_quarantine"
    )


def _write_source_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Upsert the history of source rows: a row with a stored key replaces it (a corrected order)."""
    con.execute(
        """INSERT INTO source_rows (extract, row_key, patient_id, raw, source_file, source_row, first_run, last_run)
           SELECT extract, row_key, patient_id, raw, source_file, source_row, ?, ? FROM incoming_source_rows
           ON CONFLICT (extract, row_key) DO UPDATE SET
               patient_id = excluded.patient_id, raw = excluded.raw, source_file = excluded.source_file,
               source_row = excluded.source_row, last_run = excluded.last_run""",
        [run_id, run_id],
    )


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
    source_rows: pl.DataFrame | None = None,
    replace_all: bool = False,
) -> None:
    """Write one audit run in a single transaction (all or nothing).

    With `replace_all` the run re-audited the whole history: orders and courses are replaced and
    every stored finding it did not raise again is resolved.
    """
    db_path = Path(db_path)
    frames = {"orders": orders, "courses": courses, "findings": findings, "quarantine": quarantine}
    for table, df in frames.items():
        _check_frame(table, df)

    creating = not db_path.exists()
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as exc:
        raise _store_error(db_path, exc) from exc
    try:
        if creating:
            os.chmod(db_path, 0o600)  # before any patient row reaches the file
        con.execute("BEGIN TRANSACTION")
        try:
            _migrate(con, db_path)
            _apply_views_and_comments(con)
            for table, df in frames.items():
                con.register(f"incoming_{table}", df)
            _write_runs(con, run)
            _write_orders(con, run.run_id, replace_all)
            _write_courses(con, run.run_id, replace_all)
            _write_findings(con, run.run_id, replace_all)
            _write_quarantine(con)
            if source_rows is not None:
                con.register("incoming_source_rows", source_rows)
                _write_source_rows(con, run.run_id)
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
    log.info(
        "stored run %s in %s: %d orders, %d courses, %d findings, %d quarantined",
        run.run_id, db_path, orders.height, courses.height, findings.height, quarantine.height,
    )


def connect_read_only(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Open the database read-only after checking it exists and has a supported schema version."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StoreError(f"database {db_path} does not exist; run the audit first")
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as exc:
        raise _store_error(db_path, exc) from exc
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


def read_source_rows(db_path: Path) -> pl.DataFrame | None:
    """The stored history of source rows, or None when there is no database yet."""
    db_path = Path(db_path)
    if not db_path.exists() or _empty_database(db_path):
        return None
    con = connect_read_only(db_path)
    try:
        if not con.execute(
            "SELECT COUNT(*) FROM duckdb_tables() WHERE table_name = 'source_rows'"
        ).fetchall()[0][0]:
            return None
        return con.sql(
            "SELECT extract, row_key, patient_id, raw, source_file, source_row FROM source_rows ORDER BY extract, row_key"
        ).pl()
    finally:
        con.close()


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
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as exc:
        raise _store_error(db_path, exc) from exc
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            _migrate(con, db_path)
            if not con.execute("SELECT COUNT(*) FROM findings WHERE finding_id = ?", [finding_id]).fetchall()[0][0]:
                raise ValueError(f"no finding with id '{finding_id}'")
            con.execute(
                "INSERT INTO review_events (finding_id, status, reason_code, note, reviewed_by, reviewed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [event.finding_id, event.status, event.reason_code, event.note, event.reviewed_by, event.reviewed_at],
            )
            con.execute("UPDATE findings SET status = ? WHERE finding_id = ?", [status, finding_id])
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
    finally:
        con.close()
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


def read_source_rows_as_of(db_path: Path, run_id: str) -> pl.DataFrame | None:
    """The stored source rows first stored by that run or an earlier one (run ids sort by time).

    Approximation: source_rows keeps only the latest version of a row key, so an order corrected
    after the run comes back in its corrected form.
    """
    con = connect_read_only(Path(db_path))
    try:
        if not _has_table(con, "source_rows"):
            return None
        return con.sql(
            "SELECT extract, row_key, patient_id, raw, source_file, source_row FROM source_rows "
            "WHERE first_run <= ? ORDER BY extract, row_key",
            params=[run_id],
        ).pl()
    finally:
        con.close()


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
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as exc:
        raise _store_error(db_path, exc) from exc
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            _migrate(con, db_path)
            _apply_views_and_comments(con)
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
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
    finally:
        con.close()
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
