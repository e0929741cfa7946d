"""The report's numbers, read from the database's metric views and table macros (pipeline/warehouse/sql/views).

Nothing here defines a metric: appropriateness (as flagged and after review), grams used, grams and money
avoidable by lever, open findings and the months are the SQL of `course_summary`, `lever_summary`,
`monthly_summary`, `open_finding_counts` and `v_open_findings`; this module chooses the periods, asks those
queries and shapes the answers for the renderers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from datetime import date, datetime, timedelta
from typing import Any, Mapping

import duckdb
import polars as pl

from pipeline.reporting.labels import REVIEW_STATUSES, SEVERITIES
from pipeline.reporting.options import (
    TOP_RULES_LIMIT,
    Headline,
    InputFile,
    Period,
    PeriodHeadline,
    ReportData,
    ReportOptions,
    ReportOptionsError,
    RunInfo,
)
from pipeline.reporting.pseudonyms import pseudonymize_tables, resolve_pseudonym_key

logger = logging.getLogger(__name__)


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
    """Input files from the `runs.inputs` JSON (a list of {path, extract, rows, sha256} objects)."""
    if raw is None or raw == "":
        return ()
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except (TypeError, ValueError):
        logger.warning("report: runs.inputs is not JSON; input files not shown")
        return ()
    if not isinstance(data, list):
        return ()
    return tuple(
        InputFile(name=str(item.get("path") or "?"), extract=_opt_str(item.get("extract")),
                  rows=_opt_int(item.get("rows")), content_hash=_opt_str(item.get("sha256")))
        for item in data if isinstance(item, dict)
    )


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """The answer of one query as a Polars frame (parameters bound, never formatted into the SQL)."""
    return con.sql(sql, params=params or None).pl()


def _latest_run(con: duckdb.DuckDBPyConnection) -> RunInfo | None:
    """Metadata of the most recently started run."""
    runs = _query(con, "SELECT *, COUNT(*) OVER () AS runs_total FROM runs ORDER BY started_at DESC NULLS LAST, seq DESC LIMIT 1")
    if runs.height == 0:
        return None
    row = runs.row(0, named=True)
    return RunInfo(
        run_id=str(row["run_id"]), status=_opt_str(row["status"]), started_at=row["started_at"],
        finished_at=row["finished_at"], profile=_opt_str(row["profile"]),
        rule_pack_version=_opt_str(row["rule_pack_version"]), rule_pack_hash=_opt_str(row["rule_pack_hash"]),
        inputs=_parse_inputs(row["inputs"]), rows_read=_opt_int(row["rows_read"]),
        rows_quarantined=_opt_int(row["rows_quarantined"]), rows_ivig=_opt_int(row["rows_ivig"]),
        rows_passed_through=_opt_int(row["rows_passed_through"]), rows_out_of_scope=_opt_int(row["rows_out_of_scope"]),
        rows_unrecognised_ig=_opt_int(row["rows_unrecognised_ig"]), runs_total=int(row["runs_total"]),
        cost_per_gram=row["cost_per_gram"],
    )


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _month_end(day: date) -> date:
    nxt = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return nxt - timedelta(days=1)


def report_periods(options: ReportOptions, as_of: date, data_from: date | None) -> tuple[Period, ...]:
    """The headline periods: --from/--to, else the last full month and the month to date of the data.

    A period the data covers only in part (it starts before the first course or ends after the day the data
    runs to) is marked partial.
    """
    if options.period_from is not None or options.period_to is not None:
        start = options.period_from or data_from or as_of
        end = options.period_to or as_of
        if start > end:
            raise ReportOptionsError(f"--from {start.isoformat()} is after --to {end.isoformat()}")
        return (Period("period", f"{start:%d %b %Y} to {end:%d %b %Y}", "selected period", start, end,
                       partial=end > as_of or (data_from is not None and start < data_from)),)
    this_month = _month_start(as_of)
    last_end = this_month - timedelta(days=1)
    last_start = _month_start(last_end)
    to_date_full = as_of == _month_end(as_of)
    return (
        Period("last-month", f"{last_start:%B %Y}", "last full month", last_start, last_end,
               partial=data_from is not None and data_from > last_start),
        Period("month-to-date", f"{this_month:%B %Y}" + ("" if to_date_full else " to date"),
               "whole month" if to_date_full else f"{this_month:%d} to {as_of:%d %b %Y} (data to {as_of:%d %b})",
               this_month, as_of, partial=not to_date_full),
    )


def _headline(summary: pl.DataFrame, money: float, rows_quarantined: int = 0) -> Headline:
    """The headline of one `course_summary(...)` answer (one row, or none for no courses)."""
    if summary.height == 0:
        return Headline(courses=0, patients=0, appropriate_flagged=0, pct_appropriate_flagged=None,
                        appropriate_after_review=0, pct_appropriate_after_review=None, grams_used=0.0,
                        grams_avoidable_flagged=0.0, grams_avoidable=0.0, courses_with_grams_avoidable=0,
                        money_avoidable=0.0, open_critical=0, open_warning=0, open_info=0,
                        rows_quarantined=rows_quarantined)
    row = summary.row(0, named=True)
    fields = {f.name for f in dataclasses.fields(Headline)} - {"money_avoidable", "rows_quarantined"}
    return Headline(**{k: row[k] for k in fields}, money_avoidable=money, rows_quarantined=rows_quarantined)


def _facility(con: duckdb.DuckDBPyConnection, asked: str | None) -> tuple[str | None, tuple[str, ...], str | None]:
    """The facility asked for (matched case-insensitively), the facilities known, and a note when none matches."""
    facilities = tuple(_query(con, "SELECT DISTINCT facility FROM courses WHERE facility IS NOT NULL ORDER BY 1")["facility"])
    if not asked:
        return None, facilities, None
    match = [f for f in facilities if f.strip().casefold() == asked.strip().casefold()]
    if match:
        return match[0], facilities, None
    known = ", ".join(facilities) if facilities else "none recorded"
    return asked, facilities, f"No courses for facility '{asked}'. Facilities in the database: {known}."


def _costed(options: ReportOptions, run: RunInfo | None, shipped_costs: Any) -> ReportOptions:
    """The options with the cost per gram, its source and currency settled (given, else the latest run's, else the pack's)."""
    cost, source = options.cost_per_gram, options.cost_source
    if cost is None and run is not None and run.cost_per_gram is not None:
        cost = float(run.cost_per_gram)
        source = source or (shipped_costs.source if cost == shipped_costs.cost_per_gram
                            else "the cost per gram of the latest run (its rule pack's [costs])")
    if cost is None:
        cost = shipped_costs.cost_per_gram
    if source is None:
        source = shipped_costs.source if cost == shipped_costs.cost_per_gram else "given with --cost-per-gram (source not stated)"
    if cost < 0 or math.isnan(cost) or math.isinf(cost):
        raise ReportOptionsError(f"cost per gram must be a number >= 0, not {cost}")
    return dataclasses.replace(options, cost_per_gram=cost, cost_source=source,
                               currency=options.currency or shipped_costs.currency)


def _as_day(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else None


def summarise(source: duckdb.DuckDBPyConnection | Mapping[str, pl.DataFrame],
              options: ReportOptions = ReportOptions()) -> ReportData:
    """The report's numbers from a database connection (or from tables as frames, through an in-memory database).

    Raises ReportOptionsError for options that cannot be honoured (no pseudonym key, --from after --to).
    """
    from pipeline.config.reference import reference_tables
    from pipeline.config.rulepack import load_rule_pack
    from pipeline.warehouse.scratch import scratch_database

    pack = load_rule_pack()
    if isinstance(source, Mapping):
        con = scratch_database({**reference_tables(pack), **source})
        try:
            return _summarise(con, options, pack.costs)
        finally:
            con.close()
    return _summarise(source, options, pack.costs)


def _summarise(con: duckdb.DuckDBPyConnection, options: ReportOptions, shipped_costs: Any) -> ReportData:
    """summarise() on an open connection."""
    key = resolve_pseudonym_key(options)
    run = _latest_run(con)
    options = _costed(options, run, shipped_costs)
    cost = options.cost_per_gram
    facility, facilities, facility_note = _facility(con, options.facility)

    bounds = con.execute("SELECT data_through, data_from FROM v_data_through").fetchall()[0]
    data_through, data_from = _as_day(bounds[0]), _as_day(bounds[1])
    as_of = options.as_of or data_through or _as_day(run.started_at if run else None) or date.today()
    periods = report_periods(options, as_of, data_from)
    window = Period(
        "window", periods[0].label if len(periods) == 1 else f"{periods[0].label} and {periods[-1].label}",
        "report window", min(p.start for p in periods), max(p.end for p in periods),
        partial=any(p.partial for p in periods),
    )
    stale_note = None
    if data_through is not None and options.stale_after_days is not None:
        age = ((options.today or date.today()) - data_through).days
        if age > options.stale_after_days:
            stale_note = (f"The newest data is from {data_through:%d %b %Y}, {age} days before this report "
                          f"(more than {options.stale_after_days}): check that the nightly extract still arrives.")

    def summary(dimension: str, start: date | None, end: date | None) -> pl.DataFrame:
        return _query(con, "SELECT * FROM course_summary(?, ?, ?, ?)", [dimension, start, end, facility])

    def levers(start: date | None, end: date | None) -> pl.DataFrame:
        return _query(con, "SELECT * FROM lever_summary(?, ?, ?, ?)", [start, end, facility, cost])

    def headline(start: date | None, end: date | None, quarantined: int = 0) -> Headline:
        money = float(levers(start, end)["money_avoidable"].sum())
        return _headline(summary("all", start, end), money, quarantined)

    quarantine_reasons = _query(con, """
        SELECT reason, CAST(COUNT(*) AS BIGINT) AS rows FROM quarantine WHERE run_id = ?
        GROUP BY reason ORDER BY rows DESC, reason""", [run.run_id if run is not None else None])
    rows_quarantined = run.rows_quarantined if run is not None and run.rows_quarantined is not None else int(quarantine_reasons["rows"].sum())

    period_headlines = tuple(PeriodHeadline(p, headline(p.start, p.end)) for p in periods)
    window_headline = headline(window.start, window.end, rows_quarantined)
    history = headline(None, None, rows_quarantined)

    counts = _query(con, "SELECT * FROM open_finding_counts(?, ?, ?)", [window.start, window.end, facility])
    top_rules = counts.sort(["findings", "severity_rank", "rule_id"], descending=[True, False, False]).head(TOP_RULES_LIMIT)
    findings_table = _findings_wide(counts)

    facility_filter = "TRUE" if facility is None else "facility = ?"
    params = [] if facility is None else [facility]
    open_findings = _query(con, f"SELECT * FROM v_open_findings WHERE {facility_filter}", params)
    serious = open_findings.filter(pl.col("severity").is_in(["critical", "warning"]))
    outputs = {"period_findings": serious.head(max(0, options.findings_limit)), "worklist": open_findings}
    if key is not None:
        outputs = pseudonymize_tables(outputs, key)

    # Current findings by review status; those a later run no longer raised as 'resolved'.
    counted = dict(_query(con, """
        SELECT CASE WHEN current THEN status ELSE 'resolved' END AS state, CAST(COUNT(*) AS BIGINT) AS n
        FROM v_finding_verdicts GROUP BY state""").iter_rows())
    review_status = {s: int(counted.get(s, 0)) for s in (*REVIEW_STATUSES, "resolved")}

    intervention = None
    if options.intervention is not None:
        day = options.intervention
        sides = [("before", f"Before {day.isoformat()}", None, day - timedelta(days=1)),
                 ("after", f"From {day.isoformat()}", day, None)]
        intervention = pl.concat([
            summary("all", start, end).with_columns(
                side=pl.lit(side), label=pl.lit(label),
                money_avoidable=pl.lit(float(levers(start, end)["money_avoidable"].sum())))
            for side, label, start, end in sides
        ], how="diagonal_relaxed")

    return ReportData(
        options=options, as_of=as_of, data_through=data_through, data_from=data_from, stale_note=stale_note,
        periods=period_headlines, window=window, headline=window_headline, history=history,
        run=run, facility=facility, facilities=facilities, facility_note=facility_note,
        pseudonymized=key is not None,
        by_indication=summary("indication", window.start, window.end),
        by_month=_query(con, "SELECT * FROM monthly_summary(?)", [facility]),
        by_lever=levers(window.start, window.end),
        by_service=summary("service", window.start, window.end),
        findings_table=findings_table, top_rules=top_rules,
        period_findings=outputs["period_findings"], period_findings_total=serious.height,
        period_info_findings=open_findings.height - serious.height,
        worklist=outputs["worklist"], quarantine_reasons=quarantine_reasons,
        intervention=intervention, review_status=review_status,
    )


def _findings_wide(counts: pl.DataFrame) -> pl.DataFrame:
    """Open findings per category (rows) and severity (columns), most findings first."""
    schema = {"label": pl.String(), **{s: pl.Int64() for s in SEVERITIES}, "total": pl.Int64()}
    if counts.height == 0:
        return pl.DataFrame(schema=schema)
    wide = counts.group_by(pl.col("category_label").alias("label")).agg(
        *[pl.col("findings").filter(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITIES],
        pl.col("findings").sum().cast(pl.Int64).alias("total"),
    )
    return wide.select(list(schema)).sort(["total", "critical", "label"], descending=[True, True, False])
