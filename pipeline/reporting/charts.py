"""The report's charts: Altair specifications rendered to inline SVG with vl-convert (no network)."""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import dataclass, replace
from datetime import date, datetime

import altair as alt
import polars as pl
import vl_convert as vlc
from markupsafe import Markup

from pipeline.reporting.files import TERMINAL_UNSAFE, terminal_safe
from pipeline.reporting.formatting import fmt_grams, fmt_money, fmt_pct, number, plural
from pipeline.reporting.labels import SEVERITIES
from pipeline.reporting.options import ReportData

logger = logging.getLogger(__name__)


SEVERITY_COLOURS: dict[str, str] = {"critical": "#c0392b", "warning": "#e3a21a", "info": "#8da0b3"}


# Calm palette shared by the charts and the page.
INK = "#2b3440"


MUTED = "#6b7785"


GRID = "#e3e7ec"


PRIMARY = "#3f7cac"


SECONDARY = "#9cb9d1"


ACCENT = "#d9822b"


FONT = "Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class ChartBlock:
    """One figure on the page: an inline SVG, or a note saying why there is none."""

    key: str
    heading: str
    svg: Markup | None
    note: str | None = None
    wide: bool = False
    #: The same chart drawn for a phone's width (shown below 640 px instead of `svg`).
    svg_compact: Markup | None = None


#: The report's calm, print-friendly style: the Vega-Lite config every chart is drawn with (`_spec`).
STYLE_CONFIG: dict = {
    "font": FONT, "background": "white", "padding": 8,
    "view": {"stroke": None},
    "title": {"fontSize": 14, "fontWeight": "bold", "color": INK, "anchor": "start",
              "subtitleColor": MUTED, "subtitleFontSize": 11, "offset": 10},
    "axis": {"labelColor": INK, "titleColor": MUTED, "labelFontSize": 11, "titleFontSize": 11,
             "gridColor": GRID, "domainColor": "#b8c1cc", "tickColor": "#b8c1cc", "labelLimit": 230},
    "legend": {"labelColor": INK, "titleColor": MUTED, "labelFontSize": 11, "titleFontSize": 11},
}


def _spec(chart: alt.TopLevelMixin) -> dict:
    """A chart's Vega-Lite specification in the report's style (STYLE_CONFIG over Altair's theme config)."""
    # Altair's configure_* methods copy the whole chart, and to_dict validates the specification
    # against the Vega-Lite schema: together 1.2 s of the ten charts of every report, most of a small
    # night's report. The style is merged into the specification instead; the tests validate every
    # specification the report draws (tests/test_report.py).
    spec = chart.to_dict(validate=False)
    theme = spec.get("config", {})
    spec["config"] = theme | {
        key: theme.get(key, {}) | value if isinstance(value, dict) else value for key, value in STYLE_CONFIG.items()
    }
    return spec


_ID_RE = re.compile(r'\bid="([^"]+)"')


_TEXT_NODE = re.compile(r">([^<>]+)<")


def _svg(chart: alt.TopLevelMixin, key: str) -> Markup:
    """Render a chart to a static SVG string that is safe to inline (ids made unique)."""
    svg = vlc.vegalite_to_svg(_spec(chart))
    ids = set(_ID_RE.findall(svg))
    for ident in ids:  # several SVGs share one page: keep clip-path / gradient ids apart
        svg = svg.replace(f'id="{ident}"', f'id="{key}-{ident}"')
        svg = svg.replace(f"url(#{ident})", f"url(#{key}-{ident})")
        svg = svg.replace(f'href="#{ident}"', f'href="#{key}-{ident}"')
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{key} chart" ', 1)
    # Quotes in text nodes as entities too (the same glyphs), so no data text appears verbatim in the page.
    svg = _TEXT_NODE.sub(lambda m: ">" + m.group(1).replace('"', "&quot;").replace("'", "&#39;") + "<", svg)
    return Markup(svg)  # vega escapes the text it draws; this string is ours


def _title(compact: bool, text: str, subtitle: list[str]) -> alt.Title:
    """A chart title and subtitle; for a phone, wrapped to lines that fit its width (Vega does not wrap)."""
    text, subtitle = terminal_safe(text), [terminal_safe(line) for line in subtitle]
    if not compact:
        return alt.Title(text, subtitle=subtitle)
    return alt.Title(textwrap.wrap(text, 40), subtitle=[part for line in subtitle for part in textwrap.wrap(line, 58)])


def _values(df: pl.DataFrame) -> alt.Data:
    """Inline chart data from a frame (dates as ISO text)."""
    # Control characters from the data (a service named '\x08Neuro') are dropped: the page escapes text,
    # but the chart renderer measures and truncates it and must only see printable characters.
    df = df.with_columns(pl.col(pl.String).str.replace_all(TERMINAL_UNSAFE.pattern, ""))
    rows = []
    for row in df.to_dicts():
        rows.append({k: (v.isoformat() if isinstance(v, (date, datetime)) else v) for k, v in row.items()})
    return alt.Data(values=rows)


def _window_caption(data: ReportData) -> str:
    return f"Courses started {data.window.span}." if data.window else ""


def _chart_trend(data: ReportData, compact: bool = False) -> ChartBlock:
    """% appropriate (as flagged and after review), grams used and avoidable per month of course start (whole history)."""
    heading = "Trend by month of course start"
    df = data.by_month
    if df.height == 0:
        return ChartBlock("trend", heading, None, "No courses audited yet.", wide=True)
    df = df.with_columns(pl.when(pl.col("partial")).then(pl.col("month_label") + "*").otherwise(pl.col("month_label")).alias("month_label"))
    order = df["month_label"].to_list()
    with_courses = df.filter(pl.col("courses") > 0)
    first, last = with_courses.row(0, named=True), with_courses.row(-1, named=True)
    if first["month"] == last["month"]:
        title = f"All courses started in {first['month_label']}: {fmt_pct(first['pct_appropriate_flagged'])} appropriate"
    else:
        title = (
            f"Appropriate courses: {fmt_pct(first['pct_appropriate_flagged'])} in {first['month_label']}, "
            f"{fmt_pct(last['pct_appropriate_flagged'])} in {last['month_label']}"
        )
    subtitle = ["Top: % of courses appropriate, as flagged (solid) and after review (dashed); n = courses.",
                "Bottom: grams used, of which avoidable after review (each course once)."]
    partial = df.filter(pl.col("partial"))
    if partial.height:
        spans = "; ".join(f"{r['month_label']} {r['covered_from']:%d %b} to {r['covered_to']:%d %b}" for r in partial.to_dicts())
        subtitle.append(f"* partial month, data {spans}.")
    opt = data.options
    marker = None
    if opt.intervention is not None:
        label = f"{opt.intervention:%b %Y}"
        if label in order:
            marker = {"month_label": label, "text": f"{opt.intervention_label} ({opt.intervention.isoformat()})"}
        else:
            subtitle.append(f"{opt.intervention_label} on {opt.intervention.isoformat()} is outside the months shown.")
    width = 290 if compact else 900
    many = len(order) > (6 if compact else 12)
    values = _values(df.with_columns(("n=" + pl.col("courses").cast(pl.String)).alias("n_label")))
    reviewed = _values(df.select("month_label", pl.col("pct_appropriate_after_review").alias("pct")))
    x_top = alt.X("month_label:O", sort=order, title=None, axis=alt.Axis(labels=False, ticks=False))
    x_bottom = alt.X("month_label:O", sort=order, title="Month of course start",
                     axis=alt.Axis(labelAngle=-40 if many else 0))
    pct_base = alt.Chart(values).encode(x=x_top)
    pct = pct_base.mark_line(color=PRIMARY, strokeWidth=2, point=alt.OverlayMarkDef(color=PRIMARY, size=50)).encode(
        y=alt.Y("pct_appropriate_flagged:Q", title="Appropriate (%)", scale=alt.Scale(domain=[0, 100]),
                axis=alt.Axis(values=[0, 25, 50, 75, 100])),
        tooltip=["month_label:N", "pct_appropriate_flagged:Q", "courses:Q"],
    )
    after_review = alt.Chart(reviewed).mark_line(color=PRIMARY, strokeDash=[4, 3], strokeWidth=1.5).encode(
        x=x_top, y="pct:Q", tooltip=["month_label:N", "pct:Q"])
    pct_text = pct_base.mark_text(dy=-10, color=INK, fontSize=10).encode(
        y="pct_appropriate_flagged:Q", text=alt.Text("pct_appropriate_flagged:Q", format=".0f"),
    )
    n_text = pct_base.mark_text(baseline="bottom", color=MUTED, fontSize=10).encode(
        y=alt.value(128), text="n_label:N",
    )
    top_layers = [pct, after_review, pct_text] + ([] if compact else [n_text])
    long = df.select("month_label", "courses", pl.col("grams_used").round(1).alias("used"),
                     pl.col("grams_avoidable").round(1).alias("avoidable")).unpivot(
        index=["month_label", "courses"], on=["used", "avoidable"], variable_name="series", value_name="g"
    ).with_columns(pl.col("series").replace({"used": "Grams used", "avoidable": "of which avoidable"}))
    bars = (
        alt.Chart(_values(long))
        .mark_bar(size=max(8, min(40, width // max(1, len(order)) - 14)))
        .encode(
            x=x_bottom,
            y=alt.Y("g:Q", title="IVIG (g)", stack=None, axis=alt.Axis(tickCount=4, format=",d")),
            color=alt.Color("series:N", title=None, sort=["Grams used", "of which avoidable"],
                            scale=alt.Scale(domain=["Grams used", "of which avoidable"], range=[SECONDARY, ACCENT]),
                            legend=alt.Legend(orient="top", direction="horizontal")),
            order=alt.Order("series:N", sort="ascending"),
            tooltip=["month_label:N", "series:N", "g:Q"],
        )
    )
    bottom_layers = [bars]
    if marker is not None:
        mk = alt.Data(values=[marker])
        rule = alt.Chart(mk).mark_rule(color=INK, strokeDash=[5, 3], strokeWidth=1.5)
        top_layers.append(rule.encode(x=alt.X("month_label:O", sort=order)))
        top_layers.append(
            alt.Chart(mk).mark_text(align="left", dx=5, baseline="middle", color=INK, fontSize=11, fontWeight="bold")
            .encode(x=alt.X("month_label:O", sort=order), y=alt.value(80), text="text:N")
        )
        bottom_layers.append(rule.encode(x=alt.X("month_label:O", sort=order)))
    top = alt.layer(*top_layers).properties(width=width, height=130)
    bottom = alt.layer(*bottom_layers).properties(width=width, height=130)
    chart = alt.vconcat(top, bottom, spacing=14).properties(title=_title(compact, title, subtitle=subtitle))
    return ChartBlock("trend", heading, _svg(chart, "trend-c" if compact else "trend"), wide=True)


def _chart_by_indication(data: ReportData, compact: bool = False) -> ChartBlock:
    """Horizontal bars: % of courses appropriate per indication, lowest first."""
    heading = "Appropriate courses by indication"
    df = data.by_indication.filter(pl.col("courses") > 0)
    if df.height == 0:
        return ChartBlock("by-indication", heading, None, "No courses started in the report window.")
    df = df.with_columns(
        (pl.col("group_label") + " (n=" + pl.col("courses").cast(pl.String) + ")").alias("axis_label"),
        pl.col("pct_appropriate_flagged").round(0).alias("pct"),
        pl.col("group_label").alias("label"), pl.col("pct_appropriate_flagged").alias("pct_appropriate"),
    ).sort(["pct_appropriate", "courses"], descending=[False, True])
    order = df["axis_label"].to_list()
    worst = df.row(0, named=True)
    overall = data.headline.pct_appropriate_flagged or 0.0
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
            f"({fmt_pct(worst['pct_appropriate'])} of {plural(worst['courses'], 'course')})"
        )
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("axis_label:N", sort=order, title=None, axis=alt.Axis(labelLimit=130 if compact else 230)),
        x=alt.X("pct:Q", title="Courses appropriate (%)", scale=alt.Scale(domain=[0, 108]),
                axis=alt.Axis(values=[0, 25, 50, 75, 100])),
    )
    bars = base.mark_bar(color=PRIMARY, height={"band": 0.7}).encode(
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("pct:Q"), alt.Tooltip("courses:Q")]
    )
    labels = base.mark_text(align="left", dx=4, color=INK, fontSize=11).encode(text=alt.Text("pct:Q", format=".0f"))
    rule = (
        alt.Chart(alt.Data(values=[{"overall": round(overall)}]))
        .mark_rule(color=MUTED, strokeDash=[4, 3])
        .encode(x="overall:Q")
    )
    chart = (bars + labels + rule).properties(
        width=170 if compact else 300,
        height=max(60, 24 * df.height),
        title=_title(compact, title, subtitle=[
            f"Dashed line: all indications, {fmt_pct(overall)} of {plural(data.headline.courses, 'course')}.",
            _window_caption(data),
        ]),
    )
    return ChartBlock("by-indication", heading, _svg(chart, "by-indication-c" if compact else "by-indication"))


def _chart_levers(data: ReportData, compact: bool = False) -> ChartBlock:
    """Horizontal bars: grams avoidable per lever (each course once), with the money."""
    heading = "Grams avoidable by lever"
    df = data.by_lever.rename({"grams_avoidable": "grams", "money_avoidable": "money", "lever_label": "label"})
    total = number(df["grams"].sum())
    cur = data.options.currency
    if total <= 0:
        return ChartBlock("levers", heading, None, "No grams avoidable in the report window.")
    top = df.sort("grams", descending=True).row(0, named=True)
    title = f"{fmt_grams(total)} avoidable ({fmt_money(number(df['money'].sum()), cur)}); most by {top['label'].lower()}"
    # Bar labels of the (at most five) levers, formatted like the rest of the page.
    labels = [
        fmt_grams(g) if compact else f"{fmt_grams(g)}  ·  {fmt_money(m, cur)}  ·  {plural(n, 'course')}"
        for g, m, n in zip(df["grams"].to_list(), df["money"].to_list(), df["courses"].to_list())
    ]
    df = df.with_columns(pl.col("grams").round(1), pl.Series("text", labels, dtype=pl.String))
    max_g = float(df["grams"].max())
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("label:N", sort=df["label"].to_list(), title=None, axis=alt.Axis(labelLimit=130 if compact else 230)),
        x=alt.X("grams:Q", title="Grams avoidable (g)", scale=alt.Scale(domain=[0, max_g * (1.4 if compact else 1.75)]),
                axis=alt.Axis(format=",d", tickCount=4)),
    )
    chart = (
        base.mark_bar(color=ACCENT, height={"band": 0.7}).encode(tooltip=["label:N", "grams:Q", "courses:Q"])
        + base.mark_text(align="left", dx=4, color=INK, fontSize=11).encode(text="text:N")
    ).properties(
        width=150 if compact else 300,
        height=max(60, 26 * df.height),
        title=_title(compact, title, subtitle=[
            f"Priority order; a course counts once, in its first lever. {fmt_money(data.options.cost_per_gram, cur)}/g.",
            _window_caption(data),
        ]),
    )
    return ChartBlock("levers", heading, _svg(chart, "levers-c" if compact else "levers"))


def _chart_top_rules(data: ReportData, compact: bool = False) -> ChartBlock:
    """Horizontal bars: open findings per rule, coloured by the rule's worst severity."""
    heading = "Top rules"
    df = data.top_rules
    if df.height == 0:
        return ChartBlock("top-rules", heading, None, "No open findings in the report window.")
    top = df.row(0, named=True)
    title = f"Most frequent: {top['rule_title']} ({plural(top['findings'], 'open finding')})"
    df = df.with_columns(pl.col("rule_title").alias("rule"))
    order = df["rule"].unique(maintain_order=True).to_list()
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("rule:N", sort=order, title=None, axis=alt.Axis(labelLimit=150 if compact else 330, labelFontSize=11 if compact else 10)),
        x=alt.X("findings:Q", title="Open findings (count)", axis=alt.Axis(tickMinStep=1, format=",d"),
                scale=alt.Scale(domain=[0, float(df["findings"].max()) * 1.12])),
    )
    chart = (
        base.mark_bar(height={"band": 0.7}).encode(
            color=alt.Color("severity:N", title="Worst severity",
                            scale=alt.Scale(domain=list(SEVERITIES), range=[SEVERITY_COLOURS[s] for s in SEVERITIES]),
                            legend=alt.Legend(orient="bottom", direction="horizontal")),
            tooltip=["rule:N", "rule_id:N", "severity:N", "findings:Q"],
        )
        + base.mark_text(align="left", dx=3, color=INK, fontSize=10).encode(text=alt.Text("findings:Q", format=",d"))
    ).properties(
        width=120 if compact else 200,
        height=max(60, 22 * df.height),
        title=_title(compact, title, subtitle=["Open, unresolved findings; every severity.", _window_caption(data)]),
    )
    return ChartBlock("top-rules", heading, _svg(chart, "top-rules-c" if compact else "top-rules"))


def _chart_service(data: ReportData, compact: bool = False) -> ChartBlock:
    """Two panels sharing the service axis: % appropriate and grams avoidable."""
    heading = "By service"
    df = data.by_service
    if df.height == 0:
        return ChartBlock("by-service", heading, None, "No courses started in the report window.")
    df = df.with_columns(
        (pl.col("group_label") + " (n=" + pl.col("courses").cast(pl.String) + ")").alias("axis_label"),
        pl.col("pct_appropriate_flagged").round(0).alias("pct"),
        pl.col("grams_avoidable").round(1),
        pl.col("group_label").alias("service"), pl.col("pct_appropriate_flagged").alias("pct_appropriate"),
    )
    order = df["axis_label"].to_list()
    worst = df.sort(["pct_appropriate", "courses"], descending=[False, True]).row(0, named=True)
    title = (f"{worst['service']}: {fmt_pct(worst['pct_appropriate'])} appropriate"
             if df.height == 1 else
             f"Least often appropriate: {worst['service']} ({fmt_pct(worst['pct_appropriate'])})")
    values = _values(df)
    y = alt.Y("axis_label:N", sort=order, title=None)
    left_base = alt.Chart(values).encode(
        y=y, x=alt.X("pct:Q", title="Appropriate (%)", scale=alt.Scale(domain=[0, 115]),
                     axis=alt.Axis(values=[0, 50, 100])))
    left = (left_base.mark_bar(color=PRIMARY, height={"band": 0.7})
            + left_base.mark_text(align="left", dx=3, fontSize=10, color=INK).encode(text=alt.Text("pct:Q", format=".0f"))
            ).properties(width=75 if compact else 150, height=max(50, 24 * df.height))
    max_g = max(1.0, float(df["grams_avoidable"].max()))
    right_base = alt.Chart(values).encode(
        y=alt.Y("axis_label:N", sort=order, title=None, axis=None),
        x=alt.X("grams_avoidable:Q", title="Grams avoidable (g)", scale=alt.Scale(domain=[0, max_g * 1.35]),
                axis=alt.Axis(tickCount=3, format=",d")))
    right = (right_base.mark_bar(color=ACCENT, height={"band": 0.7})
             + right_base.mark_text(align="left", dx=3, fontSize=10, color=INK).encode(
                 text=alt.Text("grams_avoidable:Q", format=",.0f"))
             ).properties(width=75 if compact else 150, height=max(50, 24 * df.height))
    chart = alt.hconcat(left, right, spacing=10).properties(
        title=_title(compact, title, subtitle=["Ordering service; n = courses.", _window_caption(data)])
    )
    return ChartBlock("by-service", heading, _svg(chart, "by-service-c" if compact else "by-service"))


CHART_BUILDERS = (_chart_trend, _chart_by_indication, _chart_levers, _chart_top_rules, _chart_service)


def build_charts(data: ReportData) -> list[ChartBlock]:
    """The figures of the report (no data gives a note instead of an SVG)."""
    blocks: list[ChartBlock] = []
    for build in CHART_BUILDERS:
        try:
            block = build(data)
            if block.svg is not None:
                block = replace(block, svg_compact=build(data, compact=True).svg)
            blocks.append(block)
        except Exception:  # a chart must never stop the nightly report
            logger.exception("report: chart %s could not be drawn", build.__name__)
            blocks.append(ChartBlock(build.__name__, (build.__doc__ or "").split(":")[0], None,
                                     "Chart could not be drawn (see log)."))
    return blocks
