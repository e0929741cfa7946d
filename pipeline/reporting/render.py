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


def _md_table(header: list[str], rows: list[list[Any]], align: str = "") -> list[str]:
    """A GitHub-flavoured Markdown table; `align` has one l/r per column."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines


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


def headline_markdown(data: ReportData) -> str:
    """The headline as Markdown for a Prefect artifact: counts and grams only, no patient identifiers."""
    opt = data.options
    cols = [ph.headline for ph in data.periods]
    header = ["Measure"] + [f"{ph.period.label} ({ph.period.span})" for ph in data.periods]
    if data.has_courses:
        cols.append(data.history)
        header.append("All history")
    title = md_escape(opt.title) + (f" - {md_escape(data.facility)}" if data.facility else "")
    out = [f"# {title}", ""]
    if data.facility_note:
        out += [f"**{md_escape(data.facility_note)}**", ""]
    out += _md_table(header, _headline_rows(cols, opt.currency))
    out += ["", f"Cost per gram {md_escape(fmt_money(opt.cost_per_gram, opt.currency))}: {md_escape(opt.cost_source)}."]
    return "\n".join(out) + "\n"


def aggregate_table(data: ReportData) -> list[dict[str, Any]]:
    """Appropriateness and grams by indication (report window) for a Prefect table artifact.

    Counts, percentages and grams only (the columns of course_summary): no patient or course identifier.
    """
    keep = ("group_label", "courses", "appropriate_flagged", "pct_appropriate_flagged", "appropriate_after_review",
            "pct_appropriate_after_review", "grams_used", "grams_avoidable_flagged", "grams_avoidable")
    return [{("indication" if k == "group_label" else k): r[k] for k in keep} for r in data.by_indication.to_dicts()]


def render_markdown(data: ReportData) -> str:
    """Render the Markdown summary (no patient identifiers: they are in index.html and worklist.csv)."""
    opt, run, cur = data.options, data.run, data.options.currency
    title = md_escape(opt.title) + (f" - {md_escape(data.facility)}" if data.facility else "")
    out: list[str] = [f"# {title}", ""]
    meta = [f"Report as of {fmt_date(data.as_of)}; data to {fmt_date(data.data_through)}."]
    if data.window:
        meta.append(f"Report window: courses started {data.window.span}.")
    if data.has_courses:
        meta.append(f"History: {fmt_date(data.history_start)} to {fmt_date(data.history_end)}.")
    if run is not None:
        meta.append(f"Latest run {md_escape(run.run_id)} ({md_escape(run.status or 'status unknown')}, "
                    f"finished {md_escape(fmt_datetime(run.finished_at))}).")
    if data.pseudonymized:
        meta.append("Patient identifiers pseudonymised.")
    out += [" ".join(meta), ""]
    if data.facility_note:
        out += [f"**{md_escape(data.facility_note)}**", ""]
    if data.stale_note:
        out += [f"**{md_escape(data.stale_note)}**", ""]
    if not data.has_courses:
        out += ["**No courses audited yet.**", ""]

    cols = [ph.headline for ph in data.periods] + ([data.history] if data.has_courses else [])
    header = ["Measure"] + [f"{ph.period.label}" + (" (partial)" if ph.period.partial else "") for ph in data.periods] + (["All history"] if data.has_courses else [])
    out += ["## Headline", ""]
    out += _md_table(header, _headline_rows(cols, cur))
    out += ["", f"Cost per gram {md_escape(fmt_money(opt.cost_per_gram, cur))}: {md_escape(opt.cost_source)}. "
            "A course is appropriate when no warning or critical finding counts against it; after review, findings "
            "dismissed with a reason that clears them no longer count. Grams avoidable count each course once, "
            "under its first lever.", ""]

    if data.has_courses:
        out += [f"## Grams avoidable by lever ({md_escape(data.window.span)})", ""]
        out += _md_table(
            ["Lever", "How the grams count", "Courses", "Grams", "Money"],
            [[r["lever_label"], r["meaning"], fmt_int(r["courses"]), fmt_grams(r["grams_avoidable"]),
              fmt_money(r["money_avoidable"], cur)] for r in data.by_lever.to_dicts()]
            + [["Total, each course once", "", fmt_int(int(data.by_lever["courses"].sum())),
                fmt_grams(data.headline.grams_avoidable), fmt_money(data.headline.money_avoidable, cur)]],
            align="llrrr",
        )
        for title, frame in (("By indication", data.by_indication), ("By service", data.by_service)):
            out += ["", f"## {title} ({md_escape(data.window.span)})", ""]
            out += _md_table(
                [title.removeprefix("By ").capitalize(), "Courses", "Patients", "% appropriate (flagged)",
                 "% appropriate (after review)", "Grams used", "Grams avoidable"],
                [[r["group_label"], fmt_int(r["courses"]), fmt_int(r["patients"]), fmt_pct(r["pct_appropriate_flagged"]),
                  fmt_pct(r["pct_appropriate_after_review"]), fmt_grams(r["grams_used"]), fmt_grams(r["grams_avoidable"])]
                 for r in frame.to_dicts()],
            )
        out += ["", "## Trend by month (whole history)", ""]
        out += _md_table(
            ["Month", "Courses", "% appropriate (flagged)", "% appropriate (after review)", "Grams used", "Grams avoidable"],
            [[r["month_label"] + (" (partial: " + fmt_date(r["covered_from"]) + " to " + fmt_date(r["covered_to"]) + ")" if r["partial"] else ""),
              fmt_int(r["courses"]), fmt_pct(r["pct_appropriate_flagged"]), fmt_pct(r["pct_appropriate_after_review"]),
              fmt_grams(r["grams_used"]), fmt_grams(r["grams_avoidable"])] for r in data.by_month.to_dicts()],
        )
        out += [""]
        if data.intervention is not None:
            out += [f"## Before and after: {md_escape(opt.intervention_label)} ({fmt_date(opt.intervention)})", ""]
            out += _md_table(
                ["", "Courses", "% appropriate (flagged)", "% appropriate (after review)", "Grams used", "Grams avoidable", "Money avoidable"],
                [[r["label"], fmt_int(r["courses"]), fmt_pct(r["pct_appropriate_flagged"]), fmt_pct(r["pct_appropriate_after_review"]),
                  fmt_grams(r["grams_used"]), fmt_grams(r["grams_avoidable"]), fmt_money(r["money_avoidable"], cur)]
                 for r in data.intervention.to_dicts()],
            )
            out += [""]

    if data.top_rules.height:
        out += ["## Top rules (open findings)", ""]
        out += _md_table(
            ["Rule", "Rule id", "Category", "Severity", "Open findings", "Grams (sum)"],
            [[r["rule_title"], r["rule_id"], r["category_label"], r["severity"], fmt_int(r["findings"]), fmt_grams(r["excess_g"])]
             for r in data.top_rules.to_dicts()],
            align="llllrr",
        )
        out += [""]

    out += ["## Open critical and warning findings", ""]
    if data.period_findings.height:
        out += _md_table(
            ["Severity", "Course start", "Rule", "Finding", "Indication", "Service", "Message", "Excess g"],
            [[r["severity"], fmt_date(r["course_start"]), r["rule_title"], r["finding_id"], r["indication_label"], r["service"] or "-",
              r["message"], fmt_grams(r["excess_g"]) if r["excess_g"] else "-"]
             for r in data.period_findings.to_dicts()],
            align="llllllll",
        )
        shown = data.period_findings.height
        note = f"{shown} of {data.period_findings_total} shown" if shown < data.period_findings_total else f"{shown} shown"
        out += ["", f"{note}; {data.period_info_findings} open info findings. Patients and courses: index.html "
                "and worklist.csv."]
    else:
        out += ["No open critical or warning findings."]
    out += [""]

    if run is not None:
        out += ["## Run", ""]
        out += _md_table(
            ["Item", "Value"],
            [
                ["Run id", run.run_id],
                ["Profile", run.profile or "-"],
                ["Rule pack", run.rule_pack_version or "-"],
                ["Rows read", fmt_int(run.rows_read)],
                ["Rows quarantined", fmt_int(run.rows_quarantined)],
                ["Rows IVIG", fmt_int(run.rows_ivig)],
                ["Rows passed through", fmt_int(run.rows_passed_through)],
                ["Rows out of scope (other immunoglobulins)", fmt_int(run.rows_out_of_scope)],
                ["Rows unrecognised immunoglobulin", fmt_int(run.rows_unrecognised_ig)],
            ],
            align="ll",
        )
        if run.inputs:
            out += ["", "Input files:", ""]
            out += _md_table(
                ["File", "Extract", "Rows"],
                [[f.name, f.extract or "-", fmt_int(f.rows)] for f in run.inputs],
                align="llr",
            )
        out += [""]
    return "\n".join(out).rstrip() + "\n"
