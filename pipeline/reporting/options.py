"""What a report is asked for (periods, cost, facility, pseudonyms) and the shape of what it shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl

PSEUDONYM_ENV = "IVIG_AUDIT_PSEUDONYM_KEY"


TOP_RULES_LIMIT = 10


FINDINGS_LIMIT = 200


DEFAULT_COST_SOURCE = (
    "default assumption: US$70-100 per gram (midpoint 80); set --cost-per-gram for your contract price"
)


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
