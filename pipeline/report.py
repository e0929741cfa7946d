"""Manager summary of the IVIG audit: headline numbers, charts (inline SVG), tables and a worklist.

`summarise` turns the stored tables into a `ReportData` (pure Polars, no IO); `render_html`,
`render_markdown` and `worklist_frame` render it; `write_report` writes `index.html`, `summary.md`
and `worklist.csv`. Charts are drawn with Altair and rendered to static SVG by vl-convert, so the
page needs no network and no JavaScript. `headline_markdown` and `aggregate_table` give the
Prefect artifacts of a run (counts only, no patient identifiers).

Grams avoidable are counted by *lever* without double counting: a course counts once, in the
first lever by priority (indication > repeat > weight basis > over-dose > rounding), with its
largest excess. See docs/report.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import vl_convert as vlc
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from pipeline.exports import private_folder, spreadsheet_safe, write_owner_only
from pipeline.levers import LEVER_RANK, LEVERS, lever_expr

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
PSEUDONYM_ENV = "IVIG_AUDIT_PSEUDONYM_KEY"
PSEUDONYM_PREFIX = "anon-"
PSEUDONYM_HEX = 16  # 64 bits of the HMAC: collisions are negligible for any hospital's patient count
# Shorter identifiers are replaced in the id columns only, never inside free text (a short numeric
# id such as "140" would otherwise rewrite doses inside messages).
PSEUDONYM_MIN_TEXT_LEN = 4

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
ACCENT = "#d9822b"
FONT = "Helvetica, Arial, sans-serif"

TOP_RULES_LIMIT = 10
FINDINGS_LIMIT = 200

DEFAULT_COST_SOURCE = (
    "default assumption: US$70-100 per gram (midpoint 80); set --cost-per-gram for your contract price"
)

WORKLIST_COLUMNS: tuple[str, ...] = (
    "finding_id", "severity", "category", "rule_id", "patient_id", "course_id", "indication",
    "course_start", "service", "prescriber_id", "message", "expected", "observed", "action", "excess_g",
)

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


class ReportOptionsError(ValueError):
    """A report option that cannot be honoured (one line, for the command line)."""


@dataclass(frozen=True)
class ReportOptions:
    """What the report covers and how it prices grams. Every field has a default."""

    cost_per_gram: float = 80.0
    cost_source: str = DEFAULT_COST_SOURCE
    title: str = "IVIG stewardship audit"
    currency: str = "US$"
    # Period of the headline, tables and worklist (course start dates, inclusive). Neither given:
    # the last full month and the month to date, side by side. One given: the other side is open.
    period_from: date | None = None
    period_to: date | None = None
    # Reference day for the default periods; None: the day of the latest run (else today).
    as_of: date | None = None
    facility: str | None = None
    pseudonymize: bool = False
    # The HMAC key; None: the IVIG_AUDIT_PSEUDONYM_KEY environment variable.
    pseudonym_key: str | None = field(default=None, repr=False)
    # Date of a stewardship intervention: marked on the trends, with a before/after table.
    intervention: date | None = None
    intervention_label: str = "Intervention"
    findings_limit: int = FINDINGS_LIMIT


@dataclass(frozen=True)
class Period:
    """A span of course start dates, both ends inclusive."""

    key: str
    label: str
    detail: str
    start: date
    end: date

    @property
    def span(self) -> str:
        """'2026-10-01 to 2026-10-31'."""
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


@dataclass(frozen=True)
class Headline:
    """The numbers on the headline cards, for one period or the whole history."""

    courses: int
    patients: int
    appropriate: int
    pct_appropriate: float | None
    grams_used: float
    grams_above_target: float  # courses.excess_g: warning/critical findings only, no rounding
    courses_above_target: int  # courses with a course_dose.above_target finding
    courses_with_excess: int  # courses with grams above target (any warning/critical rule)
    grams_avoidable: float  # every lever, each course once (includes rounding)
    rounding_savings: float  # grams of the rounding lever
    money_avoidable: float  # grams_avoidable x cost per gram
    open_critical: int
    open_warning: int
    open_info: int
    rows_quarantined: int = 0

    @property
    def open_findings(self) -> int:
        """All open, unresolved findings."""
        return self.open_critical + self.open_warning + self.open_info

    @property
    def avoidable_excl_rounding(self) -> float:
        """Grams avoidable by the levers other than rounding."""
        return self.grams_avoidable - self.rounding_savings


@dataclass(frozen=True)
class PeriodHeadline:
    """A period and its headline."""

    period: Period
    headline: Headline


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
    rows_unrecognised_ig: int | None
    runs_total: int


@dataclass(frozen=True, eq=False)
class ReportData:
    """Everything the HTML, Markdown and CSV renderers need, already aggregated."""

    options: ReportOptions
    as_of: date
    periods: tuple[PeriodHeadline, ...]
    window: Period | None  # the union of the periods: scope of tables, charts (except trends), worklist
    headline: Headline  # the window
    history: Headline  # every course in the database (after the facility filter)
    history_start: datetime | None
    history_end: datetime | None
    run: RunInfo | None
    facility: str | None
    facilities: tuple[str, ...]
    facility_note: str | None
    pseudonymized: bool
    # indication, label, courses, patients, appropriate, pct_appropriate, grams, grams_above_target,
    # courses_above_target, grams_avoidable
    by_indication: pl.DataFrame
    # month (date), month_label, courses, appropriate, pct_appropriate, grams, grams_avoidable (whole history)
    by_month: pl.DataFrame
    # lever, label, meaning, courses, grams, money (every lever, priority order)
    by_lever: pl.DataFrame
    # service, courses, patients, appropriate, pct_appropriate, grams, grams_avoidable
    by_service: pl.DataFrame
    # label, critical, warning, info, total (open findings per category)
    findings_table: pl.DataFrame
    # rule_id, category, severity, findings, courses, excess_g
    top_rules: pl.DataFrame
    # open critical/warning findings of the window, worst and newest first (at most findings_limit)
    period_findings: pl.DataFrame
    period_findings_total: int
    period_info_findings: int
    # open findings of the window, every severity, for pharmacists (columns of WORKLIST_COLUMNS)
    worklist: pl.DataFrame
    # reason, rows (quarantined rows of the latest run)
    quarantine_reasons: pl.DataFrame
    # label, start, end, courses, pct_appropriate, grams_per_course, grams_avoidable, avoidable_per_course
    intervention: pl.DataFrame | None
    review_status: dict[str, int] = field(default_factory=dict)

    @property
    def has_courses(self) -> bool:
        """True when at least one course was audited (whole history, after the facility filter)."""
        return self.history.courses > 0

    @property
    def period_start(self) -> date | None:
        """First day of the report window."""
        return self.window.start if self.window else None

    @property
    def period_end(self) -> date | None:
        """Last day of the report window."""
        return self.window.end if self.window else None


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


def _label_col(column: str, mapping: dict[str, str], missing: str) -> pl.Expr:
    """Vectorised label lookup: mapped keys get their label, others are shown as they are."""
    col = pl.col(column)
    return pl.when(col.is_null()).then(pl.lit(missing)).otherwise(
        col.replace_strict(mapping, default=col, return_dtype=pl.String)
    )


def _indication_label_expr(column: str = "indication") -> pl.Expr:
    return _label_col(column, INDICATION_LABELS, INDICATION_LABELS["missing"])


def _category_label_expr(column: str = "category") -> pl.Expr:
    return _label_col(column, CATEGORY_LABELS, "(none)")


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
        rows_unrecognised_ig=_opt_int(row["rows_unrecognised_ig"]),
        runs_total=runs.height,
    )


def _pct(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """100 x numerator / denominator, null when the denominator is 0."""
    return pl.when(denominator > 0).then(100.0 * numerator / denominator).otherwise(None)


# --------------------------------------------------------------------------- pseudonyms


def resolve_pseudonym_key(options: ReportOptions) -> bytes | None:
    """The HMAC key when pseudonymising (option, else environment); error when there is none."""
    if not options.pseudonymize:
        return None
    key = options.pseudonym_key or os.environ.get(PSEUDONYM_ENV)
    if not key:
        raise ReportOptionsError(
            f"--pseudonymize needs a key: pass --pseudonym-key or set {PSEUDONYM_ENV}"
        )
    return key.encode("utf-8")


def pseudonym_map(ids: pl.Series, key: bytes) -> pl.DataFrame:
    """patient_id -> 'anon-' + truncated HMAC-SHA256(key, id), for the UNIQUE ids only.

    Polars has no HMAC expression, so the digest is computed in Python with hashlib, once per
    distinct patient id (a few thousand per hospital, not one per row); the result is joined
    back to every table, which keeps the per-row work vectorised.
    """
    unique = ids.drop_nulls().unique().sort().to_list()
    anon = [
        PSEUDONYM_PREFIX + hmac.new(key, str(pid).encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]
        for pid in unique
    ]
    return pl.DataFrame({"patient_id": unique, "pseudonym": anon}, schema={"patient_id": pl.String, "pseudonym": pl.String})


def pseudonymize_tables(tables: dict[str, pl.DataFrame], key: bytes) -> dict[str, pl.DataFrame]:
    """Every patient id replaced by its keyed pseudonym, also inside course and finding ids.

    `patient_id` columns are replaced by a join; ids embedded in other text (a quarantined row's raw
    text, a ledger row's version, messages; course ids written before schema v5 held the patient id)
    by one Aho-Corasick pass (`str.replace_many`, longest id first so 'P1' never rewrites part of 'P12').
    """
    frames = [df.select(pl.col("patient_id").cast(pl.String)) for df in tables.values()
              if isinstance(df, pl.DataFrame) and "patient_id" in df.columns]
    if not frames:
        return dict(tables)
    mapping = pseudonym_map(pl.concat(frames)["patient_id"], key)
    if mapping.height == 0:
        return dict(tables)
    by_len = mapping.sort(pl.col("patient_id").str.len_chars(), descending=True)
    ids, anon = by_len["patient_id"].to_list(), by_len["pseudonym"].to_list()
    long_ids = by_len.filter(pl.col("patient_id").str.len_chars() >= PSEUDONYM_MIN_TEXT_LEN)
    text_ids, text_anon = long_ids["patient_id"].to_list(), long_ids["pseudonym"].to_list()
    id_cols = {"course_id", "finding_id"}
    text_cols = {"message", "expected", "observed", "action", "evidence", "raw", "version", "order_ids", "reason",
                 "rejected_corrections"}

    out: dict[str, pl.DataFrame] = {}
    for name, df in tables.items():
        if not isinstance(df, pl.DataFrame):
            out[name] = df
            continue
        if "patient_id" in df.columns:
            df = (
                df.with_columns(pl.col("patient_id").cast(pl.String))
                .join(mapping, on="patient_id", how="left", maintain_order="left")
                .with_columns(pl.col("pseudonym").alias("patient_id"))
                .drop("pseudonym")
            )
        exprs = []
        for col, dtype in df.schema.items():
            if dtype != pl.String:
                continue
            if col in id_cols:
                exprs.append(pl.col(col).str.replace_many(ids, anon, leftmost=True))
            elif col in text_cols and text_ids:
                exprs.append(pl.col(col).str.replace_many(text_ids, text_anon, leftmost=True))
        out[name] = df.with_columns(exprs) if exprs else df
    return out


# --------------------------------------------------------------------------- periods


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


# --------------------------------------------------------------------------- levers


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


# --------------------------------------------------------------------------- summarise


def _headline(courses: pl.DataFrame, open_f: pl.DataFrame, cost: float, rows_quarantined: int = 0) -> Headline:
    """Headline of a set of enriched courses and their open findings."""
    n = courses.height
    appropriate = int(courses["appropriate"].sum()) if n else 0
    avoidable = _num(courses["avoidable_g"].sum()) if n else 0.0
    rounding = _num(courses.filter(pl.col("lever") == "rounding")["avoidable_g"].sum()) if n else 0.0
    sev = {s: open_f.filter(pl.col("severity") == s).height for s in SEVERITIES}
    return Headline(
        courses=n,
        patients=courses["patient_id"].n_unique() if n else 0,
        appropriate=appropriate,
        pct_appropriate=(100.0 * appropriate / n) if n else None,
        grams_used=_num(courses["total_g"].sum()) if n else 0.0,
        grams_above_target=_num(courses["excess_g"].sum()) if n else 0.0,
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
            "grams": _num(part["total_g"].sum()),
            "grams_per_course": _num(part["total_g"].sum()) / n if n else None,
            "grams_avoidable": _num(part["avoidable_g"].sum()),
            "avoidable_per_course": _num(part["avoidable_g"].sum()) / n if n else None,
            "money_avoidable": _num(part["avoidable_g"].sum()) * options.cost_per_gram,
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


# --------------------------------------------------------------------------- formatting


def fmt_int(value: Any) -> str:
    """1234 -> '1,234'; None -> '-'."""
    return "-" if value is None else f"{int(value):,}"


def fmt_grams(value: Any) -> str:
    """Grams to one decimal ('.0' dropped), whole grams from 1,000: 10.5 -> '10.5 g', 1234.5 -> '1,234 g'; None -> '-'."""
    if value is None:
        return "-"
    value = float(value)
    if abs(value) >= 1000:  # 41,414 g: a tenth of a gram is noise at this size
        return f"{value:,.0f} g"
    text = f"{value:,.1f}"
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
    wide: bool = False


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
            gridColor=GRID, domainColor="#b8c1cc", tickColor="#b8c1cc", labelLimit=230,
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


def _window_caption(data: ReportData) -> str:
    return f"Courses started {data.window.span}." if data.window else ""


def _chart_trend(data: ReportData) -> ChartBlock:
    """% appropriate, grams used and grams avoidable per month of course start (whole history)."""
    heading = "Trend by month of course start"
    df = data.by_month
    if df.height == 0:
        return ChartBlock("trend", heading, None, "No courses audited yet.", wide=True)
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
    subtitle = ["Whole history. Top: % of courses appropriate (n = courses). Bottom: grams used, "
                "of which avoidable (all levers, each course once)."]
    opt = data.options
    marker = None
    if opt.intervention is not None:
        label = f"{opt.intervention:%b %Y}"
        if label in order:
            marker = {"month_label": label, "text": f"{opt.intervention_label} ({opt.intervention.isoformat()})"}
        else:
            subtitle.append(f"{opt.intervention_label} on {opt.intervention.isoformat()} is outside the months shown.")
    width = 900
    many = len(order) > 12
    values = _values(df.with_columns(pl.col("pct_appropriate").round(1), pl.col("grams").round(1),
                                     pl.col("grams_avoidable").round(1),
                                     ("n=" + pl.col("courses").cast(pl.String)).alias("n_label")))
    x_top = alt.X("month_label:O", sort=order, title=None, axis=alt.Axis(labels=False, ticks=False))
    x_bottom = alt.X("month_label:O", sort=order, title="Month of course start",
                     axis=alt.Axis(labelAngle=-40 if many else 0))
    pct_base = alt.Chart(values).encode(x=x_top)
    pct = pct_base.mark_line(color=PRIMARY, strokeWidth=2, point=alt.OverlayMarkDef(color=PRIMARY, size=50)).encode(
        y=alt.Y("pct_appropriate:Q", title="Appropriate (%)", scale=alt.Scale(domain=[0, 100]),
                axis=alt.Axis(values=[0, 25, 50, 75, 100])),
        tooltip=["month_label:N", "pct_appropriate:Q", "courses:Q"],
    )
    pct_text = pct_base.mark_text(dy=-10, color=INK, fontSize=10).encode(
        y="pct_appropriate:Q", text=alt.Text("pct_appropriate:Q", format=".0f"),
    )
    n_text = pct_base.mark_text(baseline="bottom", color=MUTED, fontSize=10).encode(
        y=alt.value(128), text="n_label:N",
    )
    top_layers = [pct, pct_text, n_text]
    long = df.select("month_label", "courses", pl.col("grams").round(1).alias("used"),
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
    chart = alt.vconcat(top, bottom, spacing=14).properties(title=alt.Title(title, subtitle=subtitle))
    return ChartBlock("trend", heading, _svg(chart, "trend"), wide=True)


def _chart_by_indication(data: ReportData) -> ChartBlock:
    """Horizontal bars: % of courses appropriate per indication, lowest first."""
    heading = "Appropriate courses by indication"
    df = data.by_indication.filter(pl.col("courses") > 0)
    if df.height == 0:
        return ChartBlock("by-indication", heading, None, "No courses started in the report window.")
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
        width=300,
        height=max(60, 24 * df.height),
        title=alt.Title(title, subtitle=[
            f"Dashed line: all indications, {fmt_pct(overall)} of {_plural(data.headline.courses, 'course')}.",
            _window_caption(data),
        ]),
    )
    return ChartBlock("by-indication", heading, _svg(chart, "by-indication"))


def _chart_levers(data: ReportData) -> ChartBlock:
    """Horizontal bars: grams avoidable per lever (each course once), with the money."""
    heading = "Grams avoidable by lever"
    df = data.by_lever
    total = _num(df["grams"].sum())
    cur = data.options.currency
    if total <= 0:
        return ChartBlock("levers", heading, None, "No grams avoidable in the report window.")
    top = df.sort("grams", descending=True).row(0, named=True)
    title = f"{fmt_grams(total)} avoidable ({fmt_money(total * data.options.cost_per_gram, cur)}); most by {top['label'].lower()}"
    # Bar labels of the (at most five) levers, formatted like the rest of the page.
    labels = [
        f"{fmt_grams(g)}  ·  {fmt_money(m, cur)}  ·  {_plural(n, 'course')}"
        for g, m, n in zip(df["grams"].to_list(), df["money"].to_list(), df["courses"].to_list())
    ]
    df = df.with_columns(pl.col("grams").round(1), pl.Series("text", labels, dtype=pl.String))
    max_g = float(df["grams"].max())
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("label:N", sort=df["label"].to_list(), title=None),
        x=alt.X("grams:Q", title="Grams avoidable (g)", scale=alt.Scale(domain=[0, max_g * 1.75]),
                axis=alt.Axis(format=",d", tickCount=4)),
    )
    chart = (
        base.mark_bar(color=ACCENT, height={"band": 0.7}).encode(tooltip=["label:N", "grams:Q", "courses:Q"])
        + base.mark_text(align="left", dx=4, color=INK, fontSize=11).encode(text="text:N")
    ).properties(
        width=300,
        height=max(60, 26 * df.height),
        title=alt.Title(title, subtitle=[
            f"Priority order; a course counts once, in its first lever. {fmt_money(data.options.cost_per_gram, cur)}/g.",
            _window_caption(data),
        ]),
    )
    return ChartBlock("levers", heading, _svg(chart, "levers"))


def _chart_top_rules(data: ReportData) -> ChartBlock:
    """Horizontal bars: open findings per rule, coloured by the rule's worst severity."""
    heading = "Top rules"
    df = data.top_rules
    if df.height == 0:
        return ChartBlock("top-rules", heading, None, "No open findings in the report window.")
    top = df.row(0, named=True)
    title = f"Most frequent: {top['rule_id']} ({_plural(top['findings'], 'open finding')})"
    order = df["rule_id"].to_list()
    base = alt.Chart(_values(df)).encode(
        y=alt.Y("rule_id:N", sort=order, title=None, axis=alt.Axis(labelLimit=330, labelFontSize=10)),
        x=alt.X("findings:Q", title="Open findings (count)", axis=alt.Axis(tickMinStep=1, format=",d"),
                scale=alt.Scale(domain=[0, float(df["findings"].max()) * 1.12])),
    )
    chart = (
        base.mark_bar(height={"band": 0.7}).encode(
            color=alt.Color("severity:N", title="Worst severity",
                            scale=alt.Scale(domain=list(SEVERITIES), range=[SEVERITY_COLOURS[s] for s in SEVERITIES]),
                            legend=alt.Legend(orient="bottom", direction="horizontal")),
            tooltip=["rule_id:N", "severity:N", "findings:Q"],
        )
        + base.mark_text(align="left", dx=3, color=INK, fontSize=10).encode(text=alt.Text("findings:Q", format=",d"))
    ).properties(
        width=200,
        height=max(60, 22 * df.height),
        title=alt.Title(title, subtitle=["Open, unresolved findings; every severity.", _window_caption(data)]),
    )
    return ChartBlock("top-rules", heading, _svg(chart, "top-rules"))


def _chart_service(data: ReportData) -> ChartBlock:
    """Two panels sharing the service axis: % appropriate and grams avoidable."""
    heading = "By service"
    df = data.by_service
    if df.height == 0:
        return ChartBlock("by-service", heading, None, "No courses started in the report window.")
    df = df.with_columns(
        (pl.col("service") + " (n=" + pl.col("courses").cast(pl.String) + ")").alias("axis_label"),
        pl.col("pct_appropriate").round(0).alias("pct"),
        pl.col("grams_avoidable").round(1),
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
            ).properties(width=150, height=max(50, 24 * df.height))
    max_g = max(1.0, float(df["grams_avoidable"].max()))
    right_base = alt.Chart(values).encode(
        y=alt.Y("axis_label:N", sort=order, title=None, axis=None),
        x=alt.X("grams_avoidable:Q", title="Grams avoidable (g)", scale=alt.Scale(domain=[0, max_g * 1.35]),
                axis=alt.Axis(tickCount=3, format=",d")))
    right = (right_base.mark_bar(color=ACCENT, height={"band": 0.7})
             + right_base.mark_text(align="left", dx=3, fontSize=10, color=INK).encode(
                 text=alt.Text("grams_avoidable:Q", format=",.0f"))
             ).properties(width=150, height=max(50, 24 * df.height))
    chart = alt.hconcat(left, right, spacing=10).properties(
        title=alt.Title(title, subtitle=["Ordering service; n = courses.", _window_caption(data)])
    )
    return ChartBlock("by-service", heading, _svg(chart, "by-service"))


CHART_BUILDERS = (_chart_trend, _chart_by_indication, _chart_levers, _chart_top_rules, _chart_service)


def build_charts(data: ReportData) -> list[ChartBlock]:
    """The figures of the report (no data gives a note instead of an SVG)."""
    blocks: list[ChartBlock] = []
    for build in CHART_BUILDERS:
        try:
            blocks.append(build(data))
        except Exception:  # a chart must never stop the nightly report
            logger.exception("report: chart %s could not be drawn", build.__name__)
            blocks.append(ChartBlock(build.__name__, (build.__doc__ or "").split(":")[0], None,
                                     "Chart could not be drawn (see log)."))
    return blocks


# --------------------------------------------------------------------------- HTML


def breakable(value: Any) -> Markup:
    """Escaped text with optional line breaks after '.', '_' and '|' (long rule and course ids)."""
    text = str(Markup.escape("" if value is None else value))
    return Markup(re.sub(r"([._|])", r"\1<wbr>", text))


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
        levers=LEVERS,
    )


# --------------------------------------------------------------------------- Markdown

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


def _headline_rows(columns: list[Headline], cur: str, cost: float) -> list[list[str]]:
    """Measure rows of the headline table, one value column per headline."""
    def row(label: str, fn) -> list[str]:
        return [label] + [fn(h) for h in columns]

    return [
        row("Courses audited", lambda h: fmt_int(h.courses)),
        row("Patients", lambda h: fmt_int(h.patients)),
        row("Courses appropriate", lambda h: f"{fmt_pct(h.pct_appropriate)} ({fmt_int(h.appropriate)} of {fmt_int(h.courses)})"),
        row("Grams used", lambda h: fmt_grams(h.grams_used)),
        row("Courses above dose target", lambda h: fmt_int(h.courses_above_target)),
        row("Grams above target", lambda h: fmt_grams(h.grams_above_target)),
        row("Rounding savings", lambda h: fmt_grams(h.rounding_savings)),
        row("Grams avoidable (all levers)", lambda h: fmt_grams(h.grams_avoidable)),
        row("Money avoidable", lambda h: fmt_money(h.money_avoidable, cur)),
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
    out += _md_table(header, _headline_rows(cols, opt.currency, opt.cost_per_gram))
    out += ["", f"Cost per gram {md_escape(fmt_money(opt.cost_per_gram, opt.currency))}: {md_escape(opt.cost_source)}."]
    return "\n".join(out) + "\n"


def aggregate_table(data: ReportData) -> list[dict[str, Any]]:
    """Appropriateness and grams by indication (report window) for a Prefect table artifact.

    Counts, percentages and grams only: no patient or course identifier.
    """
    cost = data.options.cost_per_gram
    return [
        {
            "indication": r["label"],
            "courses": int(r["courses"]),
            "appropriate": int(r["appropriate"]),
            "pct_appropriate": None if r["pct_appropriate"] is None else round(r["pct_appropriate"], 1),
            "grams_used": round(_num(r["grams"]), 1),
            "courses_above_target": int(r["courses_above_target"]),
            "grams_above_target": round(_num(r["grams_above_target"]), 1),
            "grams_avoidable": round(_num(r["grams_avoidable"]), 1),
            "money_avoidable": round(_num(r["grams_avoidable"]) * cost, 2),
        }
        for r in data.by_indication.to_dicts()
    ]


def render_markdown(data: ReportData) -> str:
    """Render the Markdown summary (no patient identifiers: they are in index.html and worklist.csv)."""
    opt, run, cur = data.options, data.run, data.options.currency
    title = md_escape(opt.title) + (f" - {md_escape(data.facility)}" if data.facility else "")
    out: list[str] = [f"# {title}", ""]
    meta = [f"Report as of {fmt_date(data.as_of)}."]
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
    if not data.has_courses:
        out += ["**No courses audited yet.**", ""]

    cols = [ph.headline for ph in data.periods] + ([data.history] if data.has_courses else [])
    header = ["Measure"] + [f"{ph.period.label}" for ph in data.periods] + (["All history"] if data.has_courses else [])
    out += ["## Headline", ""]
    out += _md_table(header, _headline_rows(cols, cur, opt.cost_per_gram))
    out += ["", f"Cost per gram {md_escape(fmt_money(opt.cost_per_gram, cur))}: {md_escape(opt.cost_source)}. "
            "Grams avoidable count each course once, in its first lever; rounding savings are info findings "
            "and are not part of grams above target.", ""]

    if data.has_courses:
        out += [f"## Grams avoidable by lever ({md_escape(data.window.span)})", ""]
        out += _md_table(
            ["Lever", "Courses", "Grams", "Money"],
            [[r["label"], fmt_int(r["courses"]), fmt_grams(r["grams"]), fmt_money(r["money"], cur)]
             for r in data.by_lever.to_dicts()]
            + [["Total, each course once", fmt_int(int(data.by_lever["courses"].sum())),
                fmt_grams(data.headline.grams_avoidable), fmt_money(data.headline.money_avoidable, cur)]],
        )
        out += ["", f"## By indication ({md_escape(data.window.span)})", ""]
        out += _md_table(
            ["Indication", "Courses", "Patients", "% appropriate", "Grams", "Above target (courses)",
             "Grams above target", "Grams avoidable"],
            [[r["label"], fmt_int(r["courses"]), fmt_int(r["patients"]), fmt_pct(r["pct_appropriate"]),
              fmt_grams(r["grams"]), fmt_int(r["courses_above_target"]), fmt_grams(r["grams_above_target"]),
              fmt_grams(r["grams_avoidable"])]
             for r in data.by_indication.to_dicts()],
        )
        out += ["", f"## By service ({md_escape(data.window.span)})", ""]
        out += _md_table(
            ["Service", "Courses", "% appropriate", "Grams", "Grams avoidable"],
            [[r["service"], fmt_int(r["courses"]), fmt_pct(r["pct_appropriate"]), fmt_grams(r["grams"]),
              fmt_grams(r["grams_avoidable"])] for r in data.by_service.to_dicts()],
        )
        out += ["", "## Trend by month (whole history)", ""]
        out += _md_table(
            ["Month", "Courses", "% appropriate", "Grams used", "Grams avoidable"],
            [[r["month_label"], fmt_int(r["courses"]), fmt_pct(r["pct_appropriate"]), fmt_grams(r["grams"]),
              fmt_grams(r["grams_avoidable"])] for r in data.by_month.to_dicts()],
        )
        out += [""]
        if data.intervention is not None:
            out += [f"## Before and after: {md_escape(opt.intervention_label)} ({fmt_date(opt.intervention)})", ""]
            out += _md_table(
                ["", "Courses", "% appropriate", "Grams per course", "Avoidable per course", "Money avoidable"],
                [[r["label"], fmt_int(r["courses"]), fmt_pct(r["pct_appropriate"]), fmt_grams(r["grams_per_course"]),
                  fmt_grams(r["avoidable_per_course"]), fmt_money(r["money_avoidable"], cur)]
                 for r in data.intervention.to_dicts()],
            )
            out += [""]

    if data.top_rules.height:
        out += ["## Top rules (open findings)", ""]
        out += _md_table(
            ["Rule", "Category", "Severity", "Open findings", "Grams (sum)"],
            [[r["rule_id"], r["category"], r["severity"], fmt_int(r["findings"]), fmt_grams(r["excess_g"])]
             for r in data.top_rules.to_dicts()],
            align="lllrr",
        )
        out += [""]

    out += ["## Open critical and warning findings", ""]
    if data.period_findings.height:
        out += _md_table(
            ["Severity", "Course start", "Rule", "Indication", "Service", "Message", "Excess g"],
            [[r["severity"], fmt_date(r["start"]), r["rule_id"], r["indication_label"], r["service"] or "-",
              r["message"], fmt_grams(r["excess_g"]) if r["excess_g"] else "-"]
             for r in data.period_findings.to_dicts()],
            align="lllllll",
        )
        shown = data.period_findings.height
        note = f"{shown} of {data.period_findings_total} shown" if shown < data.period_findings_total else f"{shown} shown"
        out += ["", f"{note}; {data.period_info_findings} open info findings. Patients and courses: index.html "
                "and worklist.csv."]
    else:
        out += ["No open critical or warning findings in the report window."]
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


# --------------------------------------------------------------------------- worklist


def worklist_frame(data: ReportData) -> pl.DataFrame:
    """Open findings of the report window for pharmacists; every text cell formula-safe, numbers stay numbers."""
    return spreadsheet_safe(data.worklist.select(list(WORKLIST_COLUMNS)))


# --------------------------------------------------------------------------- files


def build_report(
    tables: dict[str, pl.DataFrame], out_dir: Path, options: ReportOptions = ReportOptions()
) -> tuple[list[Path], ReportData]:
    """Write index.html, summary.md and worklist.csv to out_dir; return their paths and the data.

    The data gives the Prefect artifacts: `headline_markdown(data)`, `aggregate_table(data)`.
    """
    data = summarise(tables, options)
    out_dir = private_folder(out_dir)
    html_path, md_path, csv_path = out_dir / "index.html", out_dir / "summary.md", out_dir / "worklist.csv"
    html, md = render_html(data), render_markdown(data)
    write_owner_only(html_path, lambda p: p.write_text(html, encoding="utf-8"))
    write_owner_only(md_path, lambda p: p.write_text(md, encoding="utf-8"))
    # UTF-8 with a byte-order mark so that Excel shows accented text correctly.
    worklist = worklist_frame(data)
    write_owner_only(csv_path, lambda p: worklist.write_csv(p, include_bom=True, date_format="%Y-%m-%d"))
    logger.info("report: wrote %s, %s and %s", html_path, md_path, csv_path)
    return [html_path, md_path, csv_path], data


def write_report(
    tables: dict[str, pl.DataFrame], out_dir: Path, options: ReportOptions = ReportOptions()
) -> list[Path]:
    """Write index.html, summary.md and worklist.csv to out_dir; return their paths."""
    return build_report(tables, out_dir, options)[0]


__all__ = [
    "LEVERS", "ReportOptions", "ReportOptionsError", "ReportData", "Headline", "Period",
    "summarise", "render_html", "render_markdown", "worklist_frame", "headline_markdown", "aggregate_table",
    "build_report", "write_report", "pseudonymize_tables", "pseudonym_map", "course_levers", "md_escape",
]
