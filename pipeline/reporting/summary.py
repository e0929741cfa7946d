"""The report's numbers: the periods, headlines, trends and tables summarised from the database's tables."""

from __future__ import annotations

import json
import logging
import math
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl

from pipeline.reporting.formatting import number
from pipeline.reporting.labels import (
    REVIEW_STATUSES,
    SEVERITIES,
    _category_label_expr,
    _indication_label_expr,
)
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
from pipeline.rules.levers import LEVER_RANK, LEVERS, lever_expr

logger = logging.getLogger(__name__)


# Columns this module reads, with the dtype used when a table or column is missing.
_COURSE_COLS: dict[str, pl.DataType] = {
    "course_id": pl.String(),
    "patient_id": pl.String(),
    "facility": pl.String(),
    "service": pl.String(),
    "prescriber_id": pl.String(),
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
    "expected": pl.String(),
    "observed": pl.String(),
    "action": pl.String(),
    "excess_g": pl.Float64(),
    "first_seen_run": pl.String(),
    "last_seen_run": pl.String(),
    "resolved_run": pl.String(),
}


_QUARANTINE_COLS: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source_file": pl.String(),
    "patient_id": pl.String(),
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
    "rows_unrecognised_ig": pl.Int64(),
    "courses": pl.Int64(),
    "findings": pl.Int64(),
}


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
        rows_unrecognised_ig=_opt_int(row["rows_unrecognised_ig"]),
        runs_total=runs.height,
    )


def _pct(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """100 x numerator / denominator, null when the denominator is 0."""
    return pl.when(denominator > 0).then(100.0 * numerator / denominator).otherwise(None)


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _month_end(day: date) -> date:
    nxt = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return nxt - timedelta(days=1)


def report_periods(options: ReportOptions, as_of: date, first_course: date | None) -> tuple[Period, ...]:
    """The headline periods: --from/--to, else the last full month and the month to date."""
    if options.period_from is not None or options.period_to is not None:
        start = options.period_from or first_course or as_of
        end = options.period_to or as_of
        if start > end:
            raise ReportOptionsError(f"--from {start.isoformat()} is after --to {end.isoformat()}")
        return (Period("period", f"{start:%d %b %Y} to {end:%d %b %Y}", "selected period", start, end),)
    this_month = _month_start(as_of)
    last_end = this_month - timedelta(days=1)
    last_start = _month_start(last_end)
    return (
        Period("last-month", f"{last_start:%B %Y}", "last full month", last_start, last_end),
        Period(
            "month-to-date", f"{this_month:%B %Y} to date", f"{this_month:%d} to {as_of:%d %b %Y}",
            this_month, as_of,
        ),
    )


def _in_period(start: date, end: date, column: str = "start") -> pl.Expr:
    """Course start (a datetime) within [start, end], both days inclusive."""
    return pl.col(column).dt.date().is_between(start, end, closed="both")


def _counts_for_grams() -> pl.Expr:
    """Findings whose grams count: not resolved by a later run and not dismissed by a reviewer."""
    return pl.col("resolved_run").is_null() & (pl.col("status").fill_null("open") != "dismissed")


def course_levers(findings: pl.DataFrame) -> pl.DataFrame:
    """One row per course with avoidable grams: course_id, lever (the first by priority), avoidable_g (its max)."""
    return (
        findings.filter(_counts_for_grams() & pl.col("course_id").is_not_null() & (pl.col("excess_g") > 0))
        .with_columns(lever_expr(pl.col("rule_id")).alias("lever"))
        .filter(pl.col("lever").is_not_null())
        .with_columns(pl.col("lever").replace_strict(LEVER_RANK, return_dtype=pl.Int64).alias("_rank"))
        .group_by("course_id")
        .agg(
            pl.col("lever").sort_by("_rank").first().alias("lever"),
            pl.col("excess_g").max().alias("avoidable_g"),
        )
    )


def _headline(courses: pl.DataFrame, open_f: pl.DataFrame, cost: float, rows_quarantined: int = 0) -> Headline:
    """Headline of a set of enriched courses and their open findings."""
    n = courses.height
    appropriate = int(courses["appropriate"].sum()) if n else 0
    avoidable = number(courses["avoidable_g"].sum()) if n else 0.0
    rounding = number(courses.filter(pl.col("lever") == "rounding")["avoidable_g"].sum()) if n else 0.0
    sev = {s: open_f.filter(pl.col("severity") == s).height for s in SEVERITIES}
    return Headline(
        courses=n,
        patients=courses["patient_id"].n_unique() if n else 0,
        appropriate=appropriate,
        pct_appropriate=(100.0 * appropriate / n) if n else None,
        grams_used=number(courses["total_g"].sum()) if n else 0.0,
        grams_above_target=number(courses["excess_g"].sum()) if n else 0.0,
        courses_above_target=int(courses["above_target"].sum()) if n else 0,
        courses_with_excess=courses.filter(pl.col("excess_g") > 0).height,
        grams_avoidable=avoidable,
        rounding_savings=rounding,
        money_avoidable=avoidable * cost,
        open_critical=sev["critical"],
        open_warning=sev["warning"],
        open_info=sev["info"],
        rows_quarantined=rows_quarantined,
    )


def _group_summary(courses: pl.DataFrame, key: str) -> pl.DataFrame:
    """Courses, patients, appropriateness and grams per value of `key`."""
    return courses.group_by(key).agg(
        pl.len().cast(pl.Int64).alias("courses"),
        pl.col("patient_id").n_unique().cast(pl.Int64).alias("patients"),
        pl.col("appropriate").sum().cast(pl.Int64).alias("appropriate"),
        pl.col("total_g").sum().alias("grams"),
        pl.col("excess_g").sum().alias("grams_above_target"),
        pl.col("above_target").sum().cast(pl.Int64).alias("courses_above_target"),
        pl.col("avoidable_g").sum().alias("grams_avoidable"),
    ).with_columns(_pct(pl.col("appropriate"), pl.col("courses")).alias("pct_appropriate"))


def _default_as_of(run: RunInfo | None) -> date:
    """The day of the latest run, else today."""
    if run is not None:
        for value in (run.started_at, run.finished_at):
            if isinstance(value, datetime):
                return value.date()
            if isinstance(value, date):
                return value
    return date.today()


def summarise(tables: dict[str, pl.DataFrame], options: ReportOptions = ReportOptions()) -> ReportData:
    """Compute the headline numbers and aggregate tables from the stored tables.

    Raises ReportOptionsError for options that cannot be honoured (no pseudonym key, --from after --to).
    """
    if options.cost_per_gram < 0 or math.isnan(options.cost_per_gram):
        raise ReportOptionsError(f"cost per gram must be a number >= 0, not {options.cost_per_gram}")
    key = resolve_pseudonym_key(options)
    if key is not None:
        tables = pseudonymize_tables(tables, key)

    courses = _table(tables, "courses", _COURSE_COLS).with_columns(
        pl.col("appropriate").fill_null(False),
        pl.col("excess_g").fill_null(0.0),
        pl.col("total_g").fill_null(0.0),
    )
    findings = _table(tables, "findings", _FINDING_COLS).with_columns(pl.col("excess_g").fill_null(0.0))
    quarantine = _table(tables, "quarantine", _QUARANTINE_COLS)
    runs = _table(tables, "runs", _RUN_COLS)
    run = _latest_run(runs)

    # Facility ------------------------------------------------------------
    facilities = tuple(sorted(courses["facility"].drop_nulls().unique().to_list()))
    facility, facility_note = None, None
    if options.facility:
        wanted = options.facility.strip().casefold()
        match = [f for f in facilities if f.strip().casefold() == wanted]
        facility = match[0] if match else options.facility
        courses = courses.filter(pl.col("facility") == facility)
        if not match:
            known = ", ".join(facilities) if facilities else "none recorded"
            facility_note = f"No courses for facility '{options.facility}'. Facilities in the database: {known}."
        findings = findings.join(courses.select("course_id"), on="course_id", how="semi")

    # Courses with their lever and findings with their course -------------
    levers = course_levers(findings)
    above_ids = findings.filter(_counts_for_grams() & (pl.col("rule_id") == "course_dose.above_target")).select(
        "course_id").unique()
    courses = (
        courses.join(levers, on="course_id", how="left")
        .with_columns(
            pl.col("avoidable_g").fill_null(0.0),
            pl.col("course_id").is_in(above_ids["course_id"].implode()).alias("above_target"),
        )
    )
    findings = findings.join(
        courses.select(
            "course_id",
            pl.col("start").alias("course_start"),
            "service",
            "prescriber_id",
        ),
        on="course_id",
        how="left",
    )
    unresolved = findings.filter(pl.col("resolved_run").is_null())
    open_f = unresolved.filter(pl.col("status") == "open")

    # Periods -------------------------------------------------------------
    as_of = options.as_of or _default_as_of(run)
    first_course = courses["start"].min() if courses.height else None
    periods = report_periods(options, as_of, first_course.date() if isinstance(first_course, datetime) else None)
    window = Period(
        "window",
        periods[0].label if len(periods) == 1 else f"{periods[0].label} and {periods[-1].label}",
        "report window",
        min(p.start for p in periods),
        max(p.end for p in periods),
    )

    def dated(df: pl.DataFrame, p: Period, column: str) -> pl.DataFrame:
        return df.filter(_in_period(p.start, p.end, column))

    cost = options.cost_per_gram
    period_headlines = tuple(
        PeriodHeadline(p, _headline(dated(courses, p, "start"), dated(open_f, p, "course_start"), cost))
        for p in periods
    )
    w_courses = dated(courses, window, "start")
    # Findings not tied to a course (e.g. an unrecognised product name) belong to every window.
    w_open = open_f.filter(_in_period(window.start, window.end, "course_start") | pl.col("course_start").is_null())
    if options.facility:
        w_open = w_open.filter(pl.col("course_start").is_not_null())

    # Quarantine ----------------------------------------------------------
    q_latest = quarantine
    if run is not None and quarantine.height and (quarantine["run_id"] == run.run_id).any():
        q_latest = quarantine.filter(pl.col("run_id") == run.run_id)
    quarantine_reasons = (
        q_latest.group_by("reason").agg(pl.len().cast(pl.Int64).alias("rows")).sort(["rows", "reason"], descending=[True, False])
    )
    rows_quarantined = run.rows_quarantined if run is not None and run.rows_quarantined is not None else q_latest.height

    headline = _headline(w_courses, w_open.filter(pl.col("course_start").is_not_null()), cost, rows_quarantined)
    history = _headline(courses, open_f, cost, rows_quarantined)

    # Window tables -------------------------------------------------------
    by_indication = (
        _group_summary(w_courses, "indication")
        .with_columns(_indication_label_expr().alias("label"))
        .sort(["courses", "label"], descending=[True, False])
        .select("indication", "label", "courses", "patients", "appropriate", "pct_appropriate", "grams",
                "grams_above_target", "courses_above_target", "grams_avoidable")
    )
    by_service = (
        _group_summary(w_courses.with_columns(pl.col("service").fill_null("(not recorded)")), "service")
        .sort(["courses", "service"], descending=[True, False])
        .select("service", "courses", "patients", "appropriate", "pct_appropriate", "grams",
                "grams_above_target", "grams_avoidable")
    )
    lever_sums = (
        w_courses.filter(pl.col("lever").is_not_null())
        .group_by("lever")
        .agg(pl.len().cast(pl.Int64).alias("courses"), pl.col("avoidable_g").sum().alias("grams"))
    )
    by_lever = (
        pl.DataFrame(
            {"lever": [lv.key for lv in LEVERS], "label": [lv.label for lv in LEVERS],
             "meaning": [lv.meaning for lv in LEVERS], "rank": list(range(len(LEVERS)))},
            schema={"lever": pl.String, "label": pl.String, "meaning": pl.String, "rank": pl.Int64},
        )
        .join(lever_sums, on="lever", how="left")
        .with_columns(pl.col("courses").fill_null(0), pl.col("grams").fill_null(0.0))
        .with_columns((pl.col("grams") * cost).alias("money"))
        .sort("rank")
        .drop("rank")
    )

    findings_by_category = (
        w_open.group_by("category", "severity")
        .agg(pl.len().alias("findings"))
        .with_columns(_category_label_expr().alias("label"))
        .sort(["category", "severity"])
        .select("category", "label", "severity", "findings")
    )
    findings_table = _findings_wide(findings_by_category)

    sev_rank = pl.col("severity").replace_strict(
        {s: i for i, s in enumerate(SEVERITIES)}, default=len(SEVERITIES), return_dtype=pl.Int64
    )
    top_rules = (
        w_open.with_columns(sev_rank.alias("_rank"))
        .group_by("rule_id")
        .agg(
            pl.col("category").mode().first().alias("category"),
            pl.col("severity").sort_by("_rank").first().alias("severity"),
            pl.len().cast(pl.Int64).alias("findings"),
            pl.col("course_id").n_unique().cast(pl.Int64).alias("courses"),
            pl.col("excess_g").sum().alias("excess_g"),
        )
        .with_columns(_category_label_expr().alias("category"))
        .sort(["findings", "rule_id"], descending=[True, False])
        .head(TOP_RULES_LIMIT)
    )

    ordered = (
        w_open.with_columns(sev_rank.alias("_rank"), _indication_label_expr().alias("indication_label"))
        .sort(["_rank", "course_start", "finding_id"], descending=[False, True, False], nulls_last=True)
    )
    serious = ordered.filter(pl.col("severity").is_in(["critical", "warning"]))
    period_findings = serious.head(max(0, options.findings_limit)).select(
        "finding_id", "severity", "rule_id", "category", "patient_id", "course_id",
        pl.col("course_start").alias("start"), "indication_label", "service", "message", "excess_g",
    )
    worklist = ordered.select(
        "finding_id", "severity", "category", "rule_id", "patient_id", "course_id",
        pl.col("indication_label").alias("indication"),
        pl.col("course_start").dt.date().alias("course_start"),
        "service", "prescriber_id", "message", "expected", "observed", "action", "excess_g",
    )

    review_status = {s: unresolved.filter(pl.col("status") == s).height for s in REVIEW_STATUSES}
    review_status["resolved"] = findings.height - unresolved.height

    return ReportData(
        options=options,
        as_of=as_of,
        periods=period_headlines,
        window=window,
        headline=headline,
        history=history,
        history_start=first_course,
        history_end=courses["start"].max() if courses.height else None,
        run=run,
        facility=facility,
        facilities=facilities,
        facility_note=facility_note,
        pseudonymized=key is not None,
        by_indication=by_indication,
        by_month=_by_month(courses),
        by_lever=by_lever,
        by_service=by_service,
        findings_table=findings_table,
        top_rules=top_rules,
        period_findings=period_findings,
        period_findings_total=serious.height,
        period_info_findings=ordered.height - serious.height,
        worklist=worklist,
        quarantine_reasons=quarantine_reasons,
        intervention=_intervention(courses, options),
        review_status=review_status,
    )


def _by_month(courses: pl.DataFrame) -> pl.DataFrame:
    """Courses, % appropriate, grams used and avoidable per month of course start, gap months included."""
    schema = {
        "month": pl.Date(),
        "month_label": pl.String(),
        "courses": pl.Int64(),
        "appropriate": pl.Int64(),
        "pct_appropriate": pl.Float64(),
        "grams": pl.Float64(),
        "grams_avoidable": pl.Float64(),
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
            pl.col("avoidable_g").sum().alias("grams_avoidable"),
        )
    )
    months = pl.date_range(monthly["month"].min(), monthly["month"].max(), "1mo", eager=True).alias("month")
    return (
        pl.DataFrame(months)
        .join(monthly, on="month", how="left")
        .with_columns(
            pl.col("courses").fill_null(0),
            pl.col("appropriate").fill_null(0),
            pl.col("grams").fill_null(0.0),
            pl.col("grams_avoidable").fill_null(0.0),
        )
        .with_columns(
            pl.col("month").dt.strftime("%b %Y").alias("month_label"),
            _pct(pl.col("appropriate"), pl.col("courses")).alias("pct_appropriate"),
        )
        .select(list(schema))
        .sort("month")
    )


def _intervention(courses: pl.DataFrame, options: ReportOptions) -> pl.DataFrame | None:
    """Before / after the intervention date (whole history): appropriateness and grams per course."""
    if options.intervention is None:
        return None
    day = options.intervention
    dated = courses.filter(pl.col("start").is_not_null()).with_columns(
        pl.when(pl.col("start").dt.date() < day).then(pl.lit("before")).otherwise(pl.lit("after")).alias("side")
    )
    rows = []
    for side, label in (("before", f"Before {day.isoformat()}"), ("after", f"From {day.isoformat()}")):
        part = dated.filter(pl.col("side") == side)
        n = part.height
        rows.append({
            "side": side,
            "label": label,
            "start": part["start"].min().date() if n else None,
            "end": part["start"].max().date() if n else None,
            "courses": n,
            "pct_appropriate": 100.0 * int(part["appropriate"].sum()) / n if n else None,
            "grams": number(part["total_g"].sum()),
            "grams_per_course": number(part["total_g"].sum()) / n if n else None,
            "grams_avoidable": number(part["avoidable_g"].sum()),
            "avoidable_per_course": number(part["avoidable_g"].sum()) / n if n else None,
            "money_avoidable": number(part["avoidable_g"].sum()) * options.cost_per_gram,
        })
    return pl.DataFrame(rows, schema={
        "side": pl.String, "label": pl.String, "start": pl.Date, "end": pl.Date, "courses": pl.Int64,
        "pct_appropriate": pl.Float64, "grams": pl.Float64, "grams_per_course": pl.Float64,
        "grams_avoidable": pl.Float64, "avoidable_per_course": pl.Float64, "money_avoidable": pl.Float64,
    })


def _findings_wide(long: pl.DataFrame) -> pl.DataFrame:
    """Category x severity counts, one row per category, most findings first."""
    schema = {"label": pl.String(), **{s: pl.Int64() for s in SEVERITIES}, "total": pl.Int64()}
    if long.height == 0:
        return pl.DataFrame(schema=schema)
    wide = long.group_by("label").agg(
        *[pl.col("findings").filter(pl.col("severity") == s).sum().cast(pl.Int64).alias(s) for s in SEVERITIES],
        pl.col("findings").sum().cast(pl.Int64).alias("total"),
    )
    return wide.select(list(schema)).sort(["total", "critical", "label"], descending=[True, True, False])
