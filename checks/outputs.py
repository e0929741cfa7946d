"""Pandera contracts of the frames the audit hands the DuckDB writer, built from the table catalog.

Each table's grain, columns, types and tests are declared once, in checks/catalog/tables/<table>.toml;
the closed vocabularies (severities, categories, review statuses, ...) in checks/catalog/vocabulary.toml.
"""

from __future__ import annotations

from checks.tables import frame_schema, tables, vocabulary

CATEGORIES = vocabulary("category")
#: Worst first (the order the worklist and the report show them in).
SEVERITIES = vocabulary("severity")
STATUSES = vocabulary("review_status")
WEIGHT_BASES = vocabulary("weight_basis")
#: What stands for the actual weight of a course (pipeline.domain.weights.with_actual_weight).
ACTUAL_WEIGHT_SOURCES = vocabulary("actual_weight_source")
RUN_STATUSES = vocabulary("run_status")
REPORT_STATUSES = vocabulary("report_status")

#: One row per IVIG order (an order may cover several daily doses).
ORDERS = frame_schema("orders")
#: One row per course (one patient, one indication group, no gap longer than the course gap).
COURSES = frame_schema("courses")
#: One row per problem found (rule x course), identified by a stable finding_id.
FINDINGS = frame_schema("findings")
#: One row per rejected input row.
QUARANTINE = frame_schema("quarantine")

#: Every table that takes a frame from the audit, with its contract.
FRAME_SCHEMAS = {name: frame_schema(name) for name, table in tables().items() if table.frame}
