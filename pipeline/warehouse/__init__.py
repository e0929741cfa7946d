"""The warehouse: the DuckDB database of runs, orders, courses, findings, reviews and the history ledger.

IO with the database lives here and nowhere else. `pipeline.warehouse` is its public face; the parts:
`base` (errors, the writer lock, short waits), `schema` (migrations, catalog, views), `connection`
(transactions, atomic creation), `runs`, `ledger`, `night_write` (a night's one transaction),
`reviews`, `scenarios`, `reads` (tables and Parquet copies).
"""

from pipeline.warehouse.base import StoreError, writer_lock
from pipeline.warehouse.connection import connect_read_only, upgrade_database
from pipeline.warehouse.ledger import History, HistoryReach, read_history, read_ledger_as_of
from pipeline.warehouse.night_write import write_run
from pipeline.warehouse.reads import export_parquet, measure_summaries, open_critical_findings, read_findings, read_tables
from pipeline.warehouse.reviews import REVIEW_STATUSES, ReviewEvent, disposition_codes, record_review, worklist
from pipeline.warehouse.runs import (
    REPORT_STATUSES,
    RUN_STATUSES,
    NightState,
    RunRecord,
    audited_inputs,
    latest_audit_seq,
    processed_hashes,
    read_night_state,
    read_run,
    set_report_status,
    write_run_record,
)
from pipeline.warehouse.scenarios import (
    SCENARIO_COURSE_COLUMNS,
    ScenarioRecord,
    read_run_findings,
    read_scenario_findings,
    read_scenarios,
    write_scenario,
)
from pipeline.warehouse.schema import SCHEMA_VERSION, TABLES, VIEWS

__all__ = [
    "StoreError", "writer_lock", "connect_read_only", "upgrade_database", "History", "HistoryReach", "read_history",
    "read_ledger_as_of", "write_run", "export_parquet", "measure_summaries", "open_critical_findings", "read_findings",
    "read_tables", "disposition_codes", "REVIEW_STATUSES",
    "ReviewEvent", "record_review", "worklist", "REPORT_STATUSES", "RUN_STATUSES", "NightState", "RunRecord",
    "audited_inputs", "latest_audit_seq", "processed_hashes", "read_night_state", "read_run", "set_report_status",
    "write_run_record", "SCENARIO_COURSE_COLUMNS", "ScenarioRecord", "read_run_findings", "read_scenario_findings",
    "read_scenarios", "write_scenario", "SCHEMA_VERSION", "TABLES", "VIEWS",
]
