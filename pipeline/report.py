"""Manager summary of the IVIG audit: headline numbers, charts (inline SVG) and tables.

Everything here is a pure function over the Polars frames read from the database, except
`write_report`, which writes `index.html` and `summary.md`. Charts are drawn with Altair and
rendered to static SVG by vl-convert, so the page needs no network and no JavaScript.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import vl_convert as vlc
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"

INDICATION_LABELS: dict[str, str] = {
    "gbs": "Guillain-Barré syndrome",
    "cidp_induction": "CIDP induction",
    "cidp_maintenance": "CIDP maintenance",
    "mg_crisis": "Myasthenia gravis crisis",
    "mg_maintenance": "Myasthenia gravis maintenance",
    "kawasaki": "Kawasaki disease",
    "itp": "Immune thrombocytopenia",
    "ms": "Multiple sclerosis",
    "unrecognised": "Unrecognised indication",
    "missing": "Indication missing",
}

CATEGORY_LABELS: dict[str, str] = {
    "indication": "Indication",
    "weight_basis": "Weight basis",
    "course_dose": "Course dose",
    "repeat_justification": "Repeat justification",
    "combination": "Combination",
    "product_safety": "Product safety",
    "monitoring": "Monitoring",
    "data_quality": "Data quality",
}

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")
SEVERITY_COLOURS: dict[str, str] = {"critical": "#c0392b", "warning": "#e3a21a", "info": "#8da0b3"}
REVIEW_STATUSES: tuple[str, ...] = ("open", "acknowledged", "actioned", "dismissed")

# Calm palette shared by the charts and the page.
INK = "#2b3440"
MUTED = "#6b7785"
GRID = "#e3e7ec"
PRIMARY = "#3f7cac"
SECONDARY = "#9cb9d1"
FONT = "Helvetica, Arial, sans-serif"

RECENT_CRITICAL_LIMIT = 10
TOP_RULES_LIMIT = 10

# Columns this module reads, with the dtype used when a table is missing altogether.
_COURSE_COLS: dict[str, pl.DataType] = {
    "course_id": pl.String(),
    "patient_id": pl.String(),
    "indication": pl.String(),
    "start": pl.Datetime("us"),
    "total_g": pl.Float64(),
    "appropriate": pl.Boolean(),
    "excess_g": pl.Float64(),
}
_FINDING_COLS: dict[str, pl.DataType] = {
    "finding_id": pl.String(),
    "rule_id": pl.String(),
    "category": pl.String(),
    "severity": pl.String(),
    "status": pl.String(),
    "patient_id": pl.String(),
    "course_id": pl.String(),
    "indication": pl.String(),
    "message": pl.String(),
    "excess_g": pl.Float64(),
    "first_seen_run": pl.String(),
    "last_seen_run": pl.String(),
    "resolved_run": pl.String(),
}
_QUARANTINE_COLS: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source_file": pl.String(),
    "reason": pl.String(),
}
_RUN_COLS: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "started_at": pl.Datetime("us"),
    "finished_at": pl.Datetime("us"),
    "status": pl.String(),
    "profile": pl.String(),
    "rule_pack_version": pl.String(),
    "rule_pack_hash": pl.String(),
    "inputs": pl.String(),
    "rows_read": pl.Int64(),
    "rows_quarantined": pl.Int64(),
    "rows_ivig": pl.Int64(),
    "rows_passed_through": pl.Int64(),
    "rows_out_of_scope": pl.Int64(),
    "courses": pl.Int64(),
    "findings": pl.Int64(),
}


@dataclass(frozen=True)
class ReportOptions:
    """How the report prices grams and what it is called."""

    cost_per_gram: float = 80.0
    cost_source: str = (
        "default assumption: US$70-100 per gram (midpoint 80); "
        "set --cost-per-gram for your contract price"
    )
    title: str = "IVIG stewardship audit"
    currency: str = "US$"


@dataclass(frozen=True)
class Headline:
    """The numbers on the headline cards."""

    courses: int
    patients: int
    appropriate: int
    pct_appropriate: float | None
    grams_used: float
    grams_above_target: float
    money_avoidable: float
    open_critical: int
    open_warning: int
    open_info: int
    rows_quarantined: int

    @property
    def open_findings(self) -> int:
        """All open, unresolved findings."""
        return self.open_critical + self.open_warning + self.open_info


@dataclass(frozen=True)
class InputFile:
    """One input file of a run, as recorded in `runs.inputs`."""

    name: str
    extract: str | None = None
    rows: int | None = None
    content_hash: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """Metadata of the latest run."""

    run_id: str
    status: str | None
    started_at: Any
    finished_at: Any
    profile: str | None
    rule_pack_version: str | None
    rule_pack_hash: str | None
    inputs: tuple[InputFile, ...]
    rows_read: int | None
    rows_quarantined: int | None
    rows_ivig: int | None
    rows_passed_through: int | None
    rows_out_of_scope: int | None
    runs_total: int


@dataclass(frozen=True, eq=False)
class ReportData:
    """Everything the HTML and Markdown renderers need, already aggregated."""

    options: ReportOptions
    headline: Headline
    run: RunInfo | None
    period_start: datetime | None
    period_end: datetime | None
    # indication, label, courses, patients, appropriate, pct_appropriate, grams, grams_above_target
    by_indication: pl.DataFrame
    # month (date, first of month), month_label, courses, appropriate, pct_appropriate, grams
    by_month: pl.DataFrame
    # category, label, severity, findings (open, unresolved; long form)
    findings_by_category: pl.DataFrame
    # label, critical, warning, info, total (one row per category with open findings)
    findings_table: pl.DataFrame
    # category, label, findings, excess_g (open, unresolved findings with excess > 0)
    excess_by_category: pl.DataFrame
    # rule_id, category, severity, findings, excess_g
    top_rules: pl.DataFrame
    # start, rule_id, patient_id, indication_label, message
    recent_critical: pl.DataFrame
    # reason, rows (quarantined rows of the latest run)
    quarantine_reasons: pl.DataFrame
    # open / acknowledged / actioned / dismissed (unresolved) and resolved counts
    review_status: dict[str, int] = field(default_factory=dict)

    @property
    def has_courses(self) -> bool:
        """True when at least one course was audited."""
        return self.headline.courses > 0


# --------------------------------------------------------------------------- helpers


def indication_label(key: str | None) -> str:
    """Human label of an indication key; unknown keys are shown as they are."""
    if key is None:
        return INDICATION_LABELS["missing"]
    return INDICATION_LABELS.get(key, key)


def category_label(key: str | None) -> str:
    """Human label of a finding category; unknown keys are shown as they are."""
    if key is None:
        return "(none)"
    return CATEGORY_LABELS.get(key, key)


def _table(tables: dict[str, pl.DataFrame], name: str, cols: dict[str, pl.DataType]) -> pl.DataFrame:
    """The named table with at least `cols` (missing table or columns become empty / null)."""
    df = tables.get(name)
    if df is None:
        return pl.DataFrame(schema=cols)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        logger.warning("report: table %s lacks columns %s; treating them as empty", name, missing)
        df = df.with_columns(pl.lit(None, dtype=cols[c]).alias(c) for c in missing)
    return df


def _num(value: Any) -> float:
    """A float from an aggregate that may be None or NaN."""
    if value is None:
        return 0.0
    value = float(value)
    return 0.0 if math.isnan(value) else value


def _opt_int(value: Any) -> int | None:
    """An int, or None when the value is missing or not a number."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _opt_str(value: Any) -> str | None:
    """A string, or None."""
    return None if value is None else str(value)


def _parse_inputs(raw: Any) -> tuple[InputFile, ...]:
    """Input files from the `runs.inputs` JSON, tolerant of the usual shapes."""
    if raw is None or raw == "":
        return ()
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except (TypeError, ValueError):
        logger.warning("report: runs.inputs is not JSON; input files not shown")
        return ()

    name_keys = ("path", "file", "name", "source_file", "filename")
    rows_keys = ("rows", "row_count", "rows_read", "n_rows", "nrows")
    kind_keys = ("extract", "kind", "type", "role")
    hash_keys = ("sha256", "hash", "content_hash", "checksum")

    def first(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
        return next((d[k] for k in keys if d.get(k) is not None), None)

    def from_dict(d: dict[str, Any], name: str | None = None, kind: str | None = None) -> InputFile:
        return InputFile(
            name=str(first(d, name_keys) or name or "?"),
            extract=_opt_str(first(d, kind_keys) or kind),
            rows=_opt_int(first(d, rows_keys)),
            content_hash=_opt_str(first(d, hash_keys)),
        )

    out: list[InputFile] = []

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, dict):
            if any(k in node for k in name_keys):
                out.append(from_dict(node, kind=key))
            elif all(isinstance(v, (dict, list, int)) for v in node.values()):
                for k, v in node.items():
                    if isinstance(v, int):  # {"file.csv": 120}
                        out.append(InputFile(name=str(k), rows=v))
                    elif isinstance(v, dict) and not any(n in v for n in name_keys):
                        out.append(from_dict(v, name=str(k), kind=key))
                    else:  # {"orders": [...]} or {"orders": {"path": ...}}
                        walk(v, str(k))
        elif isinstance(node, str):
            out.append(InputFile(name=node, extract=key))

    walk(data)
    return tuple(out)


def _latest_run(runs: pl.DataFrame) -> RunInfo | None:
    """Metadata of the most recently started run."""
    if runs.height == 0:
        return None
    row = runs.sort("started_at", descending=True, nulls_last=True).row(0, named=True)
    return RunInfo(
        run_id=str(row["run_id"]),
        status=_opt_str(row["status"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        profile=_opt_str(row["profile"]),
        rule_pack_version=_opt_str(row["rule_pack_version"]),
        rule_pack_hash=_opt_str(row["rule_pack_hash"]),
        inputs=_parse_inputs(row["inputs"]),
        rows_read=_opt_int(row["rows_read"]),
        rows_quarantined=_opt_int(row["rows_quarantined"]),
        rows_ivig=_opt_int(row["rows_ivig"]),
        rows_passed_through=_opt_int(row["rows_passed_through"]),
        rows_out_of_scope=_opt_int(row["rows_out_of_scope"]),
        runs_total=runs.height,
    )


def _pct(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """100 x numerator / denominator, null when the denominator is 0."""
    return pl.when(denominator > 0).then(100.0 * numerator / denominator).otherwise(None)


# --------------------------------------------------------------------------- summarise


def summarise(tables: dict[str, pl.DataFrame], options: ReportOptions) -> ReportData:
    """Compute the headline numbers and aggregate tables from the stored tables."""
    courses = _table(tables, "courses", _COURSE_COLS).with_columns(
        pl.col("appropriate").fill_null(False),
        pl.col("excess_g").fill_null(0.0),
    )
    findings = _table(tables, "findings", _FINDING_COLS).with_columns(
        pl.col("excess_g").fill_null(0.0)
    )
    quarantine = _table(tables, "quarantine", _QUARANTINE_COLS)
    runs = _table(tables, "runs", _RUN_COLS)
    run = _latest_run(runs)

    # Courses -------------------------------------------------------------
    n_courses = courses.height
    n_appropriate = int(courses["appropriate"].sum()) if n_courses else 0
    grams_above = _num(courses["excess_g"].sum())

    by_indication = (
        courses.group_by("indication")
        .agg(
            pl.len().alias("courses"),
            pl.col("patient_id").n_unique().alias("patients"),
            pl.col("appropriate").sum().cast(pl.Int64).alias("appropriate"),
            pl.col("total_g").sum().alias("grams"),
            pl.col("excess_g").sum().alias("grams_above_target"),
        )
        .with_columns(
            pl.col("indication")
            .map_elements(indication_label, return_dtype=pl.String, skip_nulls=False)
            .alias("label"),
            _pct(pl.col("appropriate"), pl.col("courses")).alias("pct_appropriate"),
        )
        .sort(["courses", "label"], descending=[True, False])
        .select(
            "indication", "label", "courses", "patients", "appropriate",
            "pct_appropriate", "grams", "grams_above_target",
        )
    )

    by_month = _by_month(courses)

    # Findings ------------------------------------------------------------
    unresolved = findings.filter(pl.col("resolved_run").is_null())
    open_f = unresolved.filter(pl.col("status") == "open")
    sev_counts = {s: open_f.filter(pl.col("severity") == s).height for s in SEVERITIES}
    review_status = {s: unresolved.filter(pl.col("status") == s).height for s in REVIEW_STATUSES}
    review_status["resolved"] = findings.height - unresolved.height

    findings_by_category = (
        open_f.group_by("category", "severity")
        .agg(pl.len().alias("findings"))
        .with_columns(
            pl.col("category")
            .map_elements(category_label, return_dtype=pl.String, skip_nulls=False)
            .alias("label")
        )
        .sort(["category", "severity"])
        .select("category", "label", "severity", "findings")
    )
    findings_table = _findings_wide(findings_by_category)

    excess_by_category = (
        open_f.group_by("category")
        .agg(pl.len().alias("findings"), pl.col("excess_g").sum().alias("excess_g"))
        .filter(pl.col("excess_g") > 0)
        .with_columns(
            pl.col("category")
            .map_elements(category_label, return_dtype=pl.String, skip_nulls=False)
            .alias("label")
        )
        .sort(["excess_g", "label"], descending=[True, False])
        .select("category", "label", "findings", "excess_g")
    )

    sev_rank = pl.col("severity").replace_strict(
        {s: i for i, s in enumerate(SEVERITIES)}, default=len(SEVERITIES), return_dtype=pl.Int64
    )
    top_rules = (
        open_f.with_columns(sev_rank.alias("_rank"))
        .group_by("rule_id")
        .agg(
            pl.col("category").mode().first().alias("category"),
            pl.col("severity").sort_by("_rank").first().alias("severity"),
            pl.len().alias("findings"),
            pl.col("excess_g").sum().alias("excess_g"),
        )
        .with_columns(
            pl.col("category")
            .map_elements(category_label, return_dtype=pl.String, skip_nulls=False)
            .alias("category")
        )
        .sort(["findings", "rule_id"], descending=[True, False])
        .head(TOP_RULES_LIMIT)
    )

    recent_critical = (
        open_f.filter(pl.col("severity") == "critical")
        .join(
            courses.select("course_id", pl.col("start").alias("course_start")),
            on="course_id",
            how="left",
        )
        .sort(["course_start", "finding_id"], descending=[True, False], nulls_last=True)
        .head(RECENT_CRITICAL_LIMIT)
        .select(
            pl.col("course_start").alias("start"),
            "rule_id",
            "patient_id",
            pl.col("indication")
            .map_elements(indication_label, return_dtype=pl.String, skip_nulls=False)
            .alias("indication_label"),
            "message",
        )
    )

    # Quarantine ----------------------------------------------------------
    q_latest = quarantine
    if run is not None and quarantine.height and (quarantine["run_id"] == run.run_id).any():
        q_latest = quarantine.filter(pl.col("run_id") == run.run_id)
    quarantine_reasons = (
        q_latest.group_by("reason")
        .agg(pl.len().alias("rows"))
        .sort(["rows", "reason"], descending=[True, False])
    )
    if run is not None and run.rows_quarantined is not None:
        rows_quarantined = run.rows_quarantined
    else:
        rows_quarantined = q_latest.height

    headline = Headline(
        courses=n_courses,
        patients=courses["patient_id"].n_unique() if n_courses else 0,
        appropriate=n_appropriate,
        pct_appropriate=(100.0 * n_appropriate / n_courses) if n_courses else None,
        grams_used=_num(courses["total_g"].sum()),
        grams_above_target=grams_above,
        money_avoidable=grams_above * options.cost_per_gram,
        open_critical=sev_counts["critical"],
        open_warning=sev_counts["warning"],
        open_info=sev_counts["info"],
        rows_quarantined=rows_quarantined,
    )

    return ReportData(
        options=options,
        headline=headline,
        run=run,
        period_start=courses["start"].min() if n_courses else None,
        period_end=courses["start"].max() if n_courses else None,
        by_indication=by_indication,
        by_month=by_month,
        findings_by_category=findings_by_category,
        findings_table=findings_table,
        excess_by_category=excess_by_category,
        top_rules=top_rules,
        recent_critical=recent_critical,
        quarantine_reasons=quarantine_reasons,
        review_status=review_status,
    )


def _by_month(courses: pl.DataFrame) -> pl.DataFrame:
    """Courses, % appropriate and grams per month of course start, gap months included."""
    schema = {
        "month": pl.Date(),
        "month_label": pl.String(),
        "courses": pl.Int64(),
        "appropriate": pl.Int64(),
        "pct_appropriate": pl.Float64(),
        "grams": pl.Float64(),
    }
    dated = courses.filter(pl.col("start").is_not_null())
    if dated.height == 0:
        return pl.DataFrame(schema=schema)
    monthly = (
        dated.with_columns(pl.col("start").dt.truncate("1mo").dt.date().alias("month"))
        .group_by("month")
        .agg(
            pl.len().cast(pl.Int64).alias("courses"),
            pl.col("appropriate").sum().cast(pl.Int64).alias("appropriate"),
            pl.col("total_g").sum().alias("grams"),
        )
    )
    months = pl.date_range(
        monthly["month"].min(), monthly["month"].max(), "1mo", eager=True
    ).alias("month")
    return (
        pl.DataFrame(months)
        .join(monthly, on="month", how="left")
        .with_columns(
            pl.col("courses").fill_null(0),
            pl.col("appropriate").fill_null(0),
            pl.col("grams").fill_null(0.0),
        )
        .with_columns(
            pl.col("month").dt.strftime("%b %Y").alias("month_label"),
            _pct(pl.col("appropriate"), pl.col("courses")).alias("pct_appropriate"),
        )
        .select(list(schema))
        .sort("month")
    )


def _findings_wide(long: pl.DataFrame) -> pl.DataFrame:
    """Category x severity counts, one row per category, most findings first."""
    rows: list[dict[str, Any]] = []
    for label in long["label"].unique(maintain_order=True).to_list():
        part = long.filter(pl.col("label") == label)
        row: dict[str, Any] = {"label": label}
        for sev in SEVERITIES:
            row[sev] = int(part.filter(pl.col("severity") == sev)["findings"].sum())
        row["total"] = int(part["findings"].sum())
        rows.append(row)
    schema = {"label": pl.String(), **{s: pl.Int64() for s in SEVERITIES}, "total": pl.Int64()}
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame(rows, schema=schema).sort(
        ["total", "critical", "label"], descending=[True, True, False]
    )


# --------------------------------------------------------------------------- formatting


def fmt_int(value: Any) -> str:
    """1234 -> '1,234'; None -> '-'."""
    return "-" if value is None else f"{int(value):,}"


def fmt_grams(value: Any) -> str:
    """Grams to one decimal, '.0' dropped: 10.5 -> '10.5 g', 1200 -> '1,200 g'; None -> '-'."""
    if value is None:
        return "-"
    text = f"{float(value):,.1f}"
    return (text[:-2] if text.endswith(".0") else text) + " g"


def fmt_pct(value: Any) -> str:
    """66.666 -> '67%'; None -> '-'."""
    return "-" if value is None else f"{float(value):.0f}%"


def fmt_money(value: Any, currency: str = "US$") -> str:
    """12345.6 -> 'US$12,346'."""
    return "-" if value is None else f"{currency}{float(value):,.0f}"


def _plural(n: int, noun: str) -> str:
    """'1 course', '3 courses'."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def fmt_date(value: Any) -> str:
    """A date or datetime as YYYY-MM-DD (other values as text)."""
    if value is None:
        return "-"
    if isinstance(value, (datetime, date)):
        return value.strftime("%Y-%m-%d")
    return str(value)


def fmt_datetime(value: Any) -> str:
    """A datetime as YYYY-MM-DD HH:MM (other values as text)."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return fmt_date(value)


# --------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class ChartBlock:
    """One figure on the page: an inline SVG, or a note saying why there is none."""

    key: str
    heading: str
    svg: Markup | None
    note: str | None = None


def _configure(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """Apply the report's calm, print-friendly style to a top-level chart."""
    return (
        chart.configure(font=FONT, background="white", padding=8)
        .configure_view(stroke=None)
        .configure_title(
            fontSize=14, fontWeight="bold", color=INK, anchor="start",
            subtitleColor=MUTED, subtitleFontSize=11, offset=10,
        )
        .configure_axis(
            labelColor=INK, titleColor=MUTED, labelFontSize=11, titleFontSize=11,
            gridColor=GRID, domainColor="#b8c1cc", tickColor="#b8c1cc", labelLimit=220,
        )
        .configure_legend(labelColor=INK, titleColor=MUTED, labelFontSize=11, titleFontSize=11)
    )


_ID_RE = re.compile(r'\bid="([^"]+)"')


def _svg(chart: alt.TopLevelMixin, key: str) -> Markup:
    """Render a chart to a static SVG string that is safe to inline (ids made unique)."""
    svg = vlc.vegalite_to_svg(_configure(chart).to_dict())
    ids = set(_ID_RE.findall(svg))
    for ident in ids:  # several SVGs share one page: keep clip-path / gradient ids apart
        svg = svg.replace(f'id="{ident}"', f'id="{key}-{ident}"')
        svg = svg.replace(f"url(#{ident})", f"url(#{key}-{ident})")
        svg = svg.replace(f'href="#{ident}"', f'href="#{key}-{ident}"')
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{key} chart" ', 1)
    return Markup(svg)  # vega escapes the text it draws; this string is ours


def _values(df: pl.DataFrame) -> alt.Data:
    """Inline chart data from a frame (dates as ISO text)."""
    rows = []
    for row in df.to_dicts():
        rows.append({k: (v.isoformat() if isinstance(v, (date, datetime)) else v) for k, v in row.items()})
    return alt.Data(values=rows)


def _chart_by_indication(data: ReportData) -> ChartBlock:
    """Horizontal bars: % of courses appropriate per indication, lowest first."""
    heading = "Appropriate courses by indication"
    df = data.by_indication.filter(pl.col("courses") > 0)
    if df.height == 0:
        return ChartBlock("by-indication", heading, None, "No courses audited yet.")
    df = df.with_columns(
        (pl.col("label") + " (n=" + pl.col("courses").cast(pl.String) + ")").alias("axis_label"),
        pl.col("pct_appropriate").round(0).alias("pct"),
    ).sort(["pct_appropriate", "courses"], descending=[False, True])
    order = df["axis_label"].to_list()
    worst = df.row(0, named=True)
    overall = data.headline.pct_appropriate or 0.0
    tied = df.filter(pl.col("pct") == worst["pct"]).height
    if df.height == 1:
        title = f"{worst['label']}: {fmt_pct(worst['pct_appropriate'])} of courses appropriate"
    elif tied == df.height:
        title = f"Every indication: {fmt_pct(worst['pct_appropriate'])} of courses appropriate"
    elif tied > 1:
        title = f"Least often appropriate: {tied} indications at {fmt_pct(worst['pct_appropriate'])}"
    else:
        title = (
            f"Least often appropriate: {worst['label']} "
            f"({fmt_pct(worst['pct_appropriate'])} of {_plural(worst['courses'], 'course')})"
        )
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("axis_label:N", sort=order, title=None),
        x=alt.X(
            "pct:Q", title="Courses appropriate (%)",
            scale=alt.Scale(domain=[0, 100]), axis=alt.Axis(values=[0, 25, 50, 75, 100]),
        ),
    )
    bars = base.mark_bar(color=PRIMARY, height={"band": 0.7}).encode(
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("pct:Q"), alt.Tooltip("courses:Q")]
    )
    labels = base.mark_text(align="left", dx=4, color=INK, fontSize=11).encode(
        text=alt.Text("pct:Q", format=".0f")
    )
    rule = (
        alt.Chart(alt.Data(values=[{"overall": round(overall)}]))
        .mark_rule(color=MUTED, strokeDash=[4, 3])
        .encode(x="overall:Q")
    )
    chart = (bars + labels + rule).properties(
        width=380,
        height=max(60, 26 * df.height),
        title=alt.Title(
            title,
            subtitle=f"Dashed line: all indications, {fmt_pct(overall)} of "
            f"{_plural(data.headline.courses, 'course')}. n = courses.",
        ),
    )
    return ChartBlock("by-indication", heading, _svg(chart, "by-indication"))


def _chart_trend(data: ReportData) -> ChartBlock:
    """Two small charts: % appropriate and grams used per month of course start."""
    heading = "Trend by month of course start"
    df = data.by_month
    if df.height == 0:
        return ChartBlock("trend", heading, None, "No courses audited yet.")
    order = df["month_label"].to_list()
    with_courses = df.filter(pl.col("courses") > 0)
    first, last = with_courses.row(0, named=True), with_courses.row(-1, named=True)
    if first["month"] == last["month"]:
        title = f"All courses started in {first['month_label']}: {fmt_pct(first['pct_appropriate'])} appropriate"
    else:
        title = (
            f"Appropriate courses: {fmt_pct(first['pct_appropriate'])} in {first['month_label']}, "
            f"{fmt_pct(last['pct_appropriate'])} in {last['month_label']}"
        )
    values = _values(df.with_columns(pl.col("pct_appropriate").round(1)))
    many = len(order) > 6
    x_top = alt.X("month_label:O", sort=order, title=None, axis=alt.Axis(labels=False, ticks=False))
    x_bottom = alt.X(
        "month_label:O", sort=order, title="Month of course start",
        axis=alt.Axis(labelAngle=-40 if many else 0),
    )
    pct = (
        alt.Chart(values)
        .mark_line(color=PRIMARY, strokeWidth=2, point=alt.OverlayMarkDef(color=PRIMARY, size=50))
        .encode(
            x=x_top,
            y=alt.Y(
                "pct_appropriate:Q", title="Appropriate (%)",
                scale=alt.Scale(domain=[0, 100]), axis=alt.Axis(values=[0, 25, 50, 75, 100]),
            ),
            tooltip=["month_label:N", "pct_appropriate:Q", "courses:Q"],
        )
        .properties(width=380, height=110)
    )
    grams = (
        alt.Chart(values)
        .mark_bar(color=SECONDARY, size=max(6, min(36, 300 // max(1, len(order)))))
        .encode(
            x=x_bottom,
            y=alt.Y("grams:Q", title="IVIG used (g)", axis=alt.Axis(tickCount=4)),
            tooltip=["month_label:N", "grams:Q", "courses:Q"],
        )
        .properties(width=380, height=110)
    )
    chart = alt.vconcat(pct, grams, spacing=12).properties(
        title=alt.Title(title, subtitle="Top: % of courses appropriate. Bottom: grams used. By month of course start.")
    )
    return ChartBlock("trend", heading, _svg(chart, "trend"))


def _chart_findings(data: ReportData) -> ChartBlock:
    """Stacked bars: open findings per category, coloured by severity."""
    heading = "Open findings by category and severity"
    df = data.findings_by_category
    if df.height == 0:
        return ChartBlock("findings", heading, None, "No open findings.")
    order = data.findings_table["label"].to_list()
    top = data.findings_table.row(0, named=True)
    total = int(data.findings_table["total"].sum())
    tied = data.findings_table.filter(pl.col("total") == top["total"]).height
    if data.findings_table.height == 1:
        title = f"All {_plural(total, 'open finding')} concern {top['label'].lower()}"
    elif tied > 1:
        title = f"{_plural(total, 'open finding')} across {data.findings_table.height} categories"
    else:
        title = f"Most open findings concern {top['label'].lower()} ({top['total']:,} of {total:,})"
    sev_rank = {s: i for i, s in enumerate(SEVERITIES)}
    df = df.with_columns(
        pl.col("severity").replace_strict(sev_rank, default=len(SEVERITIES), return_dtype=pl.Int64).alias("rank")
    )
    max_total = int(data.findings_table["total"].max())
    count_axis = (
        alt.Axis(values=list(range(max_total + 1)), format="d")
        if max_total <= 8
        else alt.Axis(tickMinStep=1, format=",d")
    )
    chart = (
        alt.Chart(_values(df))
        .mark_bar(height={"band": 0.7})
        .encode(
            y=alt.Y("label:N", sort=order, title=None),
            x=alt.X("sum(findings):Q", title="Open findings (count)", axis=count_axis),
            color=alt.Color(
                "severity:N",
                title="Severity",
                scale=alt.Scale(domain=list(SEVERITIES), range=[SEVERITY_COLOURS[s] for s in SEVERITIES]),
                legend=alt.Legend(orient="bottom", direction="horizontal"),
            ),
            order=alt.Order("rank:Q", sort="ascending"),
            tooltip=["label:N", "severity:N", "findings:Q"],
        )
        .properties(width=380, height=max(60, 26 * len(order)), title=alt.Title(title, subtitle="Open, unresolved findings."))
    )
    return ChartBlock("findings", heading, _svg(chart, "findings"))


def _chart_excess(data: ReportData) -> ChartBlock:
    """Horizontal bars: grams above target in open findings, per category."""
    heading = "Grams above target by finding category"
    df = data.excess_by_category
    if df.height == 0:
        return ChartBlock("excess", heading, None, "No open findings carry grams above target.")
    top = df.row(0, named=True)
    title = f"{top['label']} findings: {fmt_grams(top['excess_g'])} above target"
    df = df.with_columns(pl.col("excess_g").round(1))
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("label:N", sort=df["label"].to_list(), title=None),
        x=alt.X("excess_g:Q", title="Grams above target (g)"),
    )
    chart = (
        base.mark_bar(color=PRIMARY, height={"band": 0.7}).encode(tooltip=["label:N", "excess_g:Q", "findings:Q"])
        + base.mark_text(align="left", dx=4, color=INK, fontSize=11).encode(text=alt.Text("excess_g:Q", format=",.1~f"))
    ).properties(
        width=380,
        height=max(60, 26 * df.height),
        title=alt.Title(
            title,
            subtitle="Open findings; one course can count under several categories.",
        ),
    )
    return ChartBlock("excess", heading, _svg(chart, "excess"))


def build_charts(data: ReportData) -> list[ChartBlock]:
    """The four figures of the report (empty data gives notes instead of SVG)."""
    blocks: list[ChartBlock] = []
    for build in (_chart_by_indication, _chart_trend, _chart_findings, _chart_excess):
        try:
            blocks.append(build(data))
        except Exception:  # a chart must never stop the nightly report
            logger.exception("report: chart %s could not be drawn", build.__name__)
            blocks.append(ChartBlock(build.__name__, build.__doc__ or "", None, "Chart could not be drawn (see log)."))
    return blocks


# --------------------------------------------------------------------------- HTML


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
        int=fmt_int, grams=fmt_grams, pct=fmt_pct, money=fmt_money, date=fmt_date, datetime=fmt_datetime
    )
    return env


def render_html(data: ReportData) -> str:
    """Render the self-contained HTML page (inline SVG charts, no scripts, no network)."""
    template = _environment().get_template("report.html.j2")
    return template.render(
        data=data,
        h=data.headline,
        opt=data.options,
        run=data.run,
        charts=build_charts(data) if data.has_courses else [],
        by_indication=data.by_indication.to_dicts(),
        findings_table=data.findings_table.to_dicts(),
        top_rules=data.top_rules.to_dicts(),
        recent_critical=data.recent_critical.to_dicts(),
        quarantine_reasons=data.quarantine_reasons.to_dicts(),
        severities=SEVERITIES,
        severity_colours=SEVERITY_COLOURS,
        critical_limit=RECENT_CRITICAL_LIMIT,
    )


# --------------------------------------------------------------------------- Markdown

_MD_ENTITY = re.compile(r"&(?=#?\w+;)")


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell: escapes \\ | ` < > and entity-like &."""
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\")
    text = _MD_ENTITY.sub("&amp;", text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("`", "\\`")
    return " ".join(text.split())  # no line breaks inside a cell


def _md_table(header: list[str], rows: list[list[Any]], align: str = "") -> list[str]:
    """A GitHub-flavoured Markdown table; `align` has one l/r per column."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(data: ReportData) -> str:
    """Render the Markdown summary (no patient identifiers)."""
    h, opt, run = data.headline, data.options, data.run
    out: list[str] = [f"# {md_escape(opt.title)}", ""]
    if run is not None:
        period = (
            f"{fmt_date(data.period_start)} to {fmt_date(data.period_end)}"
            if data.has_courses else "no courses"
        )
        out += [
            f"Latest run {md_escape(run.run_id)} ({md_escape(run.status or 'status unknown')}, "
            f"finished {md_escape(fmt_datetime(run.finished_at))}). Courses started {period}.",
            "",
        ]
    if not data.has_courses:
        out += ["**No courses audited yet.**", ""]

    money = fmt_money(h.money_avoidable, opt.currency)
    out += ["## Headline", ""]
    out += _md_table(
        ["Measure", "Value"],
        [
            ["Courses audited", fmt_int(h.courses)],
            ["Patients", fmt_int(h.patients)],
            ["Courses appropriate", f"{fmt_pct(h.pct_appropriate)} ({fmt_int(h.appropriate)} of {fmt_int(h.courses)})"],
            ["Grams used", fmt_grams(h.grams_used)],
            ["Grams above target", fmt_grams(h.grams_above_target)],
            ["Money avoidable", f"{money} at {fmt_money(opt.cost_per_gram, opt.currency)} per gram"],
            ["Open findings", f"{fmt_int(h.open_findings)} (critical {h.open_critical}, warning {h.open_warning}, info {h.open_info})"],
            ["Rows quarantined (latest run)", fmt_int(h.rows_quarantined)],
        ],
        align="lr",
    )
    out += ["", f"Cost per gram: {md_escape(opt.cost_source)}.", ""]

    if data.has_courses:
        out += ["## By indication", ""]
        out += _md_table(
            ["Indication", "Courses", "Patients", "% appropriate", "Grams", "Grams above target"],
            [
                [r["label"], fmt_int(r["courses"]), fmt_int(r["patients"]), fmt_pct(r["pct_appropriate"]),
                 fmt_grams(r["grams"]), fmt_grams(r["grams_above_target"])]
                for r in data.by_indication.to_dicts()
            ],
        )
        out += [""]

    out += ["## Open findings by category and severity", ""]
    if data.findings_table.height:
        out += _md_table(
            ["Category", "Critical", "Warning", "Info", "Total"],
            [[r["label"], r["critical"], r["warning"], r["info"], r["total"]] for r in data.findings_table.to_dicts()],
        )
    else:
        out += ["No open findings."]
    out += [""]

    if data.top_rules.height:
        out += ["## Top rules", ""]
        out += _md_table(
            ["Rule", "Category", "Severity", "Open findings", "Grams above target"],
            [[r["rule_id"], r["category"], r["severity"], fmt_int(r["findings"]), fmt_grams(r["excess_g"])]
             for r in data.top_rules.to_dicts()],
            align="lllrr",
        )
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


# --------------------------------------------------------------------------- files


def write_report(
    tables: dict[str, pl.DataFrame], out_dir: Path, options: ReportOptions = ReportOptions()
) -> list[Path]:
    """Write index.html and summary.md to out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = summarise(tables, options)
    html_path = out_dir / "index.html"
    md_path = out_dir / "summary.md"
    html_path.write_text(render_html(data), encoding="utf-8")
    md_path.write_text(render_markdown(data), encoding="utf-8")
    logger.info("report: wrote %s and %s", html_path, md_path)
    return [html_path, md_path]
