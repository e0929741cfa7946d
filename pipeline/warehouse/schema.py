"""The database schema: ordered migrations, catalog comments, analyst views."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandera.polars as pa
import polars as pl

from checks.outputs import COURSES, FINDINGS, ORDERS, QUARANTINE
from pipeline.rules.levers import lever_sql
from pipeline.warehouse.base import StoreError, _literal, _q, _utc_naive, log


_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)"
)


#: What makes a finding's facts differ (a reviewed finding whose facts change is marked changed since review).
_FACTS_HASH = (
    "sha256(concat_ws(chr(31), {t}.severity, COALESCE({t}.expected, ''), COALESCE({t}.observed, ''), "
    "CAST(round({t}.excess_g, 3) AS VARCHAR), COALESCE({t}.order_ids, '')))"
)

def _v5_ledger_from_source_rows(con) -> None:
    """v5 (a step in Python): the history rows of `source_rows` become ledger rows (pipeline.warehouse.ledger)."""
    from pipeline.warehouse.ledger import ledger_from_source_rows

    ledger_from_source_rows(con)


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
            _v5_ledger_from_source_rows,
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
    "v_grams_avoidable_by_lever": "Grams (and cost at the latest run's cost per gram) avoidable per lever (pipeline/rules/levers.py); each course counts once, in its first lever: indication > repeat > weight_basis > over_dose > rounding",
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


def _columns(table: str) -> list[str]:
    """Contract columns of an incoming frame, in schema order."""
    return list(_FRAME_SCHEMAS[table].columns)

