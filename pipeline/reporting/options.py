"""What a report is asked for (periods, cost, facility, pseudonyms) and the shape of what it shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl

PSEUDONYM_ENV = "IVIG_AUDIT_PSEUDONYM_KEY"


TOP_RULES_LIMIT = 10


FINDINGS_LIMIT = 200


class ReportOptionsError(ValueError):
    """A report option that cannot be honoured (one line, for the command line)."""


@dataclass(frozen=True)
class ReportOptions:
    """What the report covers and how it prices grams. Every field has a default."""

    # None: the cost per gram of the latest run, else the rule pack's [costs] (its source and currency too).
    cost_per_gram: float | None = None
    cost_source: str | None = None
    title: str = "IVIG stewardship audit"
    currency: str | None = None
    # Period of the headline, tables and worklist (course start dates, inclusive). Neither given:
    # the last full month and the month to date, side by side. One given: the other side is open.
    period_from: date | None = None
    period_to: date | None = None
    # Reference day for the default periods; None: the day the data runs to (v_data_through), else the latest run's.
    as_of: date | None = None
    # Warn when the newest data is older than this many days before `today` (None: never warn).
    stale_after_days: int | None = 7
    today: date | None = None
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
    #: The data covers only part of the period (it begins after the period starts or ends before it ends).
    partial: bool = False

    @property
    def span(self) -> str:
        """'2026-10-01 to 2026-10-31'."""
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


@dataclass(frozen=True)
class Headline:
    """The numbers on the headline cards: one row of `course_summary(...)` (names and meanings as there)."""

    courses: int
    patients: int
    appropriate_flagged: int
    pct_appropriate_flagged: float | None
    appropriate_after_review: int
    pct_appropriate_after_review: float | None
    grams_used: float
    grams_avoidable_flagged: float
    grams_avoidable: float
    courses_with_grams_avoidable: int
    money_avoidable: float  # the sum of lever_summary(...).money_avoidable
    open_critical: int
    open_warning: int
    open_info: int
    rows_quarantined: int = 0

    @property
    def open_findings(self) -> int:
        """All open, unresolved findings of these courses."""
        return self.open_critical + self.open_warning + self.open_info


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
    cost_per_gram: float | None = None


@dataclass(frozen=True, eq=False)
class ReportData:
    """Everything the HTML, Markdown and CSV renderers need, already aggregated."""

    options: ReportOptions
    as_of: date
    data_through: date | None  # the day the data runs to (v_data_through)
    data_from: date | None  # the first course start
    stale_note: str | None  # a warning when the newest data is older than options.stale_after_days
    periods: tuple[PeriodHeadline, ...]
    window: Period | None  # the union of the periods: scope of tables, charts (except trends), worklist
    headline: Headline  # the window
    history: Headline  # every course in the database (after the facility filter)
    run: RunInfo | None
    facility: str | None
    facilities: tuple[str, ...]
    facility_note: str | None
    pseudonymized: bool
    # course_summary('indication' | 'service', window): group_key, group_label, courses, patients, appropriate_*, grams_*
    by_indication: pl.DataFrame
    # monthly_summary(facility): month, month_label, courses, pct_*, grams_used, grams_avoidable, partial, covered_*
    by_month: pl.DataFrame
    # lever_summary(window): lever, lever_rank, lever_label, meaning, courses, grams_avoidable, money_avoidable
    by_lever: pl.DataFrame
    by_service: pl.DataFrame
    # label, critical, warning, info, total (open findings per category, window)
    findings_table: pl.DataFrame
    # open_finding_counts(window), most findings first: rule_id, rule_title, category_label, severity, findings, ...
    top_rules: pl.DataFrame
    # every open critical and warning finding (v_open_findings order), at most findings_limit
    period_findings: pl.DataFrame
    period_findings_total: int
    period_info_findings: int
    # every open finding, every severity (v_open_findings), for pharmacists
    worklist: pl.DataFrame
    # reason, rows (quarantined rows of the latest run)
    quarantine_reasons: pl.DataFrame
    # course_summary('all') before and after the intervention date, with side, label, money_avoidable
    intervention: pl.DataFrame | None
    review_status: dict[str, int] = field(default_factory=dict)

    @property
    def has_courses(self) -> bool:
        """True when at least one course was audited (whole history, after the facility filter)."""
        return self.history.courses > 0

    @property
    def history_start(self) -> date | None:
        """First course start of the history."""
        return self.data_from

    @property
    def history_end(self) -> date | None:
        """The day the data runs to."""
        return self.data_through

    @property
    def period_start(self) -> date | None:
        """First day of the report window."""
        return self.window.start if self.window else None

    @property
    def period_end(self) -> date | None:
        """Last day of the report window."""
        return self.window.end if self.window else None
