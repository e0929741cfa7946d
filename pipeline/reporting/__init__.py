"""The manager report and the pharmacists' worklist: numbers (summary), words (labels, formatting), pictures (charts),
pages (render) and files (write, files). Read by `ivig-audit report`, the nightly flow and the exports.

Names are imported on first use (PEP 562): `pipeline.reporting.files` (what `ivig-audit findings` needs) loads
without the charts (Altair, vl-convert) or the templates.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives.
_EXPORTS: dict[str, str] = {
    "CHART_BUILDERS": "charts", "build_charts": "charts",
    "WORKLIST_COLUMNS": "files", "private_folder": "files", "spreadsheet_safe": "files", "terminal_safe": "files",
    "worklist_table": "files", "write_owner_only": "files", "write_safe_csv": "files",
    "PSEUDONYM_ENV": "options", "Headline": "options", "Period": "options", "ReportData": "options",
    "ReportOptions": "options", "ReportOptionsError": "options",
    "pseudonym_map": "pseudonyms", "pseudonymize_tables": "pseudonyms", "resolve_pseudonym_key": "pseudonyms",
    "aggregate_table": "render", "headline_markdown": "render", "md_escape": "render", "render_html": "render",
    "render_markdown": "render",
    "summarise": "summary",
    "build_report": "write", "build_report_from_database": "write", "worklist_frame": "write", "write_report": "write",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The public name, imported from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
