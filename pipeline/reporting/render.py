"""The report as HTML (Jinja template) and Markdown, and the numbers as they are written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipeline.reporting.charts import SEVERITY_COLOURS, build_charts
from pipeline.reporting.formatting import (
    breakable,
    fmt_date,
    fmt_datetime,
    fmt_grams,
    fmt_int,
    fmt_money,
    fmt_pct,
)
from pipeline.reporting.labels import SEVERITIES
from pipeline.reporting.options import Headline, ReportData

TEMPLATES_DIR = Path(__file__).parent / "templates"


def _environment() -> Environment:
    """Jinja environment with autoescaping and the report's number filters."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        int=fmt_int, grams=fmt_grams, pct=fmt_pct, money=fmt_money, date=fmt_date, datetime=fmt_datetime,
        breakable=breakable,
    )
    return env


def render_html(data: ReportData) -> str:
    """Render the self-contained HTML page (inline SVG charts, no scripts, no network)."""
    template = _environment().get_template("report.html.j2")
    charts = build_charts(data) if data.has_courses else []
    return template.render(
        data=data,
        h=data.headline,
        opt=data.options,
        run=data.run,
        periods=data.periods,
        wide_charts=[c for c in charts if c.wide],
        charts=[c for c in charts if not c.wide],
        by_indication=data.by_indication.to_dicts(),
        by_lever=data.by_lever.to_dicts(),
        by_service=data.by_service.to_dicts(),
        findings_table=data.findings_table.to_dicts(),
        top_rules=data.top_rules.to_dicts(),
        period_findings=data.period_findings.to_dicts(),
        quarantine_reasons=data.quarantine_reasons.to_dicts(),
        intervention=data.intervention.to_dicts() if data.intervention is not None else None,
        severities=SEVERITIES,
        severity_colours=SEVERITY_COLOURS,
    )


_MD_ENTITY = re.compile(r"&(?=#?\w+;)")


#: What turns data into live Markdown besides HTML: link and image brackets, and what GitHub-flavoured
#: Markdown links by itself (a scheme's colon as in javascript: or https:, www., an e-mail's @).
_MD_LINK_SYNTAX = re.compile(r"[\[\]@]|(?<=[A-Za-z]):|(?i:(?<=\bwww)\.)")


def md_escape(value: Any) -> str:
    """Text from the data made inert inside a Markdown table cell: no HTML, link, image or autolink.

    Escapes \\ | ` < > and entity-like & as before, and [ ] @, a colon after a word (javascript:,
    https:) and the dot of www. with a backslash (CommonMark shows the character itself).
    """
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\")
    text = _MD_ENTITY.sub("&amp;", text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("`", "\\`")
    text = _MD_LINK_SYNTAX.sub(lambda m: "\\" + m.group(0), text)
    return " ".join(text.split())  # no line breaks inside a cell


def _headline_rows(columns: list[Headline], cur: str) -> list[list[str]]:
    """Measure rows of the headline table, one value column per headline."""
    def row(label: str, fn) -> list[str]:
        return [label] + [fn(h) for h in columns]

    return [
        row("Courses audited", lambda h: fmt_int(h.courses)),
        row("Patients", lambda h: fmt_int(h.patients)),
        row("Appropriate, as flagged", lambda h: f"{fmt_pct(h.pct_appropriate_flagged)} ({fmt_int(h.appropriate_flagged)} of {fmt_int(h.courses)})"),
        row("Appropriate, after review", lambda h: f"{fmt_pct(h.pct_appropriate_after_review)} ({fmt_int(h.appropriate_after_review)} of {fmt_int(h.courses)})"),
        row("Grams used", lambda h: fmt_grams(h.grams_used)),
        row("Grams avoidable, as flagged", lambda h: fmt_grams(h.grams_avoidable_flagged)),
        row("Grams avoidable, after review", lambda h: f"{fmt_grams(h.grams_avoidable)} ({fmt_int(h.courses_with_grams_avoidable)} courses)"),
        row("Money avoidable, after review", lambda h: fmt_money(h.money_avoidable, cur)),
        row("Open findings", lambda h: f"{fmt_int(h.open_findings)} (critical {h.open_critical}, warning {h.open_warning}, info {h.open_info})"),
    ]


def _render_markdown(template: str, **context: Any) -> str:
    """A Markdown template rendered, with runs of blank lines (from the template's blocks) made one."""
    text = _markdown_environment().get_template(template).render(**context)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def _headline_table(data: ReportData, spans: bool) -> tuple[list[str], list[list[str]]]:
    """The headline table's header and rows: a column per period (with its span, or its partial mark) and all history."""
    header = ["Measure"] + [ph.period.label + (f" ({ph.period.span})" if spans else " (partial)" if ph.period.partial else "")
                            for ph in data.periods]
    headlines = [ph.headline for ph in data.periods]
    if data.has_courses:
        header.append("All history")
        headlines.append(data.history)
    return header, _headline_rows(headlines, data.options.currency)


def headline_markdown(data: ReportData) -> str:
    """The headline as Markdown for a Prefect artifact: counts and grams only, no patient identifiers."""
    header, rows = _headline_table(data, spans=True)
    return _render_markdown("headline.md.j2", data=data, opt=data.options, headline_header=header, headline_rows=rows)


def aggregate_table(data: ReportData) -> list[dict[str, Any]]:
    """Appropriateness and grams by indication (report window) for a Prefect table artifact.

    Counts, percentages and grams only (the columns of course_summary): no patient or course identifier.
    """
    keep = ("group_label", "courses", "appropriate_flagged", "pct_appropriate_flagged", "appropriate_after_review",
            "pct_appropriate_after_review", "grams_used", "grams_avoidable_flagged", "grams_avoidable")
    return [{("indication" if k == "group_label" else k): r[k] for k in keep} for r in data.by_indication.to_dicts()]


class _Markdown(str):
    """Markdown the template built itself (a table macro's output): printed as it is."""


def _markdown_environment() -> Environment:
    """Jinja environment of the Markdown summary: every printed value made inert by md_escape, except the
    Markdown a macro of the template built from values it escaped (marked with the `built` filter)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=False, undefined=StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        finalize=lambda value: value if isinstance(value, _Markdown) else md_escape(value),
    )
    env.filters.update(int=fmt_int, grams=fmt_grams, pct=fmt_pct, money=fmt_money, date=fmt_date, datetime=fmt_datetime,
                       built=_Markdown)
    return env


def render_markdown(data: ReportData) -> str:
    """Render the Markdown summary from its template (no patient identifiers: they are in index.html and worklist.csv)."""
    opt, run, cur = data.options, data.run, data.options.currency
    header, headline_rows = _headline_table(data, spans=False)

    def group_rows(frame) -> list[list[str]]:
        return [[r["group_label"], fmt_int(r["courses"]), fmt_int(r["patients"]), fmt_pct(r["pct_appropriate_flagged"]),
                 fmt_pct(r["pct_appropriate_after_review"]), fmt_grams(r["grams_used"]), fmt_grams(r["grams_avoidable"])]
                for r in frame.to_dicts()]

    shown = data.period_findings.height
    return _render_markdown("summary.md.j2",
        data=data, opt=opt, run=run,
        headline_header=header, headline_rows=headline_rows,
        lever_rows=[[r["lever_label"], r["meaning"], fmt_int(r["courses"]), fmt_grams(r["grams_avoidable"]),
                     fmt_money(r["money_avoidable"], cur)] for r in data.by_lever.to_dicts()]
        + [["Total, each course once", "", fmt_int(int(data.by_lever["courses"].sum())),
            fmt_grams(data.headline.grams_avoidable), fmt_money(data.headline.money_avoidable, cur)]],
        group_tables=[("By indication", group_rows(data.by_indication)), ("By service", group_rows(data.by_service))],
        month_rows=[[r["month_label"] + (f" (partial: {fmt_date(r['covered_from'])} to {fmt_date(r['covered_to'])})" if r["partial"] else ""),
                     fmt_int(r["courses"]), fmt_pct(r["pct_appropriate_flagged"]), fmt_pct(r["pct_appropriate_after_review"]),
                     fmt_grams(r["grams_used"]), fmt_grams(r["grams_avoidable"])] for r in data.by_month.to_dicts()],
        intervention_rows=[] if data.intervention is None else [
            [r["label"], fmt_int(r["courses"]), fmt_pct(r["pct_appropriate_flagged"]), fmt_pct(r["pct_appropriate_after_review"]),
             fmt_grams(r["grams_used"]), fmt_grams(r["grams_avoidable"]), fmt_money(r["money_avoidable"], cur)]
            for r in data.intervention.to_dicts()],
        rule_rows=[[r["rule_title"], r["rule_id"], r["category_label"], r["severity"], fmt_int(r["findings"]),
                    fmt_grams(r["excess_g"])] for r in data.top_rules.to_dicts()],
        finding_rows=[[r["severity"], fmt_date(r["course_start"]), r["rule_title"], r["indication_label"], r["service"] or "-",
                       r["message"], fmt_grams(r["excess_g"]) if r["excess_g"] else "-"] for r in data.period_findings.to_dicts()],
        finding_note=f"{shown} of {data.period_findings_total} shown" if shown < data.period_findings_total else f"{shown} shown",
        run_rows=[] if run is None else [
            ["Run id", run.run_id], ["Profile", run.profile or "-"], ["Rule pack", run.rule_pack_version or "-"],
            ["Rows read", fmt_int(run.rows_read)], ["Rows quarantined", fmt_int(run.rows_quarantined)],
            ["Rows IVIG", fmt_int(run.rows_ivig)], ["Rows passed through", fmt_int(run.rows_passed_through)],
            ["Rows out of scope (other immunoglobulins)", fmt_int(run.rows_out_of_scope)],
            ["Rows unrecognised immunoglobulin", fmt_int(run.rows_unrecognised_ig)]],
        input_rows=[] if run is None else [[f.name, f.extract or "-", fmt_int(f.rows)] for f in run.inputs],
    )
