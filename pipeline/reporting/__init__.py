"""The manager report and the pharmacists' worklist: numbers (summary), words (labels, formatting), pictures (charts),
pages (render) and files (write, files). Read by `ivig-audit report`, the nightly flow and the exports."""

from pipeline.reporting.charts import CHART_BUILDERS, build_charts
from pipeline.reporting.files import (
    private_folder,
    spreadsheet_safe,
    terminal_safe,
    write_owner_only,
    write_safe_csv,
)
from pipeline.reporting.options import (
    PSEUDONYM_ENV,
    Headline,
    Period,
    ReportData,
    ReportOptions,
    ReportOptionsError,
)
from pipeline.reporting.pseudonyms import (
    pseudonym_map,
    pseudonymize_tables,
    resolve_pseudonym_key,
)
from pipeline.reporting.render import (
    aggregate_table,
    headline_markdown,
    md_escape,
    render_html,
    render_markdown,
)
from pipeline.reporting.summary import summarise
from pipeline.reporting.write import (
    WORKLIST_COLUMNS,
    build_report,
    build_report_from_database,
    worklist_frame,
    write_report,
)

__all__ = [
    "CHART_BUILDERS", "PSEUDONYM_ENV", "WORKLIST_COLUMNS", "Headline", "Period", "ReportData",
    "ReportOptions", "ReportOptionsError", "aggregate_table", "build_charts", "build_report", "build_report_from_database",
    "headline_markdown", "md_escape", "private_folder", "pseudonym_map", "pseudonymize_tables", "render_html",
    "render_markdown", "resolve_pseudonym_key", "spreadsheet_safe", "summarise", "terminal_safe", "worklist_frame",
    "write_owner_only", "write_report", "write_safe_csv",
]
