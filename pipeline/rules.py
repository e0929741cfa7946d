"""The audit rules: each a small Polars query over courses returning the offending ones with evidence.

A rule's metadata (id, version, category, severity, parameters, description, source, action) lives
in the rule pack; the query lives here under the same id. A rule returns one row per offending
course (or order) with `expected`, `observed`, `message` and `excess_g`; the engine adds the
rule's metadata, the evidence and a stable finding_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import polars as pl

from pipeline.rulepack import RulePack, RuleSpec

DT = pl.Datetime("us")


@dataclass(frozen=True)
class AuditContext:
    """Everything a rule may look at: courses with their regimen, orders, evidence, labs, procedures."""

    courses: pl.LazyFrame
    orders: pl.LazyFrame
    evidence: pl.LazyFrame
    unrecognised_ig: pl.LazyFrame
    labs: pl.LazyFrame | None
    procedures: pl.LazyFrame | None
    pack: RulePack

    @property
    def tolerance(self) -> float:
        """The dose tolerance (share of target) of the pack."""
        return float(self.pack.settings["dose_tolerance"])


RuleQuery = Callable[[AuditContext, RuleSpec], pl.LazyFrame]
RULES: dict[str, RuleQuery] = {}

#: How far from a course each rule reads evidence, in days, per kind of evidence (a lab test, 'procedure',
#: 'order' for other medications): None means at any distance. Read from the rule's parameters.
Reach = Callable[[RuleSpec], dict[str, int | None]]
REACH: dict[str, Reach] = {}

RENAL_TESTS = ("creatinine", "egfr", "crcl")
CBC_TESTS = ("hemoglobin", "platelets")

FINDING_COLUMNS = ["course_id", "patient_id", "order_ids", "indication", "expected", "observed", "message", "excess_g", "severity"]


def rule(rule_id: str, reach: Reach | None = None) -> Callable[[RuleQuery], RuleQuery]:
    """Register a rule query under its rule-pack id, with how far it reads evidence (if it reads any)."""

    def register(query: RuleQuery) -> RuleQuery:
        RULES[rule_id] = query
        if reach is not None:
            REACH[rule_id] = reach
        return query

    return register


def evidence_reach(pack: RulePack) -> dict[str, int | None]:
    """The farthest any enabled rule of the pack reads each kind of evidence from a course, in days (None: any)."""
    farthest: dict[str, int | None] = {}
    for rule_id, spec in pack.rules.items():
        if rule_id not in REACH or not spec.params.get("enabled", True):
            continue
        for kind, days in REACH[rule_id](spec).items():
            if kind in farthest and (farthest[kind] is None or days is None):
                farthest[kind] = None
            else:
                farthest[kind] = days if kind not in farthest else max(farthest[kind], days)
    return farthest


def _days(spec: RuleSpec, *params: str) -> int:
    """The sum of some of a rule's day parameters."""
    return sum(int(spec.params[p]) for p in params)


def num(expr: pl.Expr | str, decimals: int = 1) -> pl.Expr:
    """A number as short text for messages (rounded; 'unknown' when null)."""
    e = pl.col(expr) if isinstance(expr, str) else expr
    rounded = e.round(decimals)
    as_text = pl.when(rounded == rounded.round(0)).then(rounded.cast(pl.Int64).cast(pl.String)).otherwise(rounded.cast(pl.String))
    return as_text.fill_null("unknown")


def target_text() -> pl.Expr:
    """The regimen's course target as text: '2 g/kg' or '0.4-1 g/kg'."""
    lo, hi = num("target_lo_g_per_kg", 2), num("target_hi_g_per_kg", 2)
    return pl.when(pl.col("target_lo_g_per_kg") == pl.col("target_hi_g_per_kg")).then(pl.format("{} g/kg", lo)).otherwise(pl.format("{}-{} g/kg", lo, hi))


def weights_text() -> pl.Expr:
    """The weights used, as a sentence fragment a pharmacist can check."""
    return pl.format(
        "actual {} kg, IBW {} kg, adjusted {} kg, BMI {}; dosing weight {} kg ({})",
        num("actual_weight_kg"), num("ibw_kg"), num("adjusted_weight_kg"), num("bmi"),
        num("dosing_weight_kg"), pl.col("weight_basis_reason"),
    )


def finding(
    frame: pl.LazyFrame,
    *,
    expected: pl.Expr,
    observed: pl.Expr,
    message: pl.Expr,
    excess_g: pl.Expr | None = None,
    severity: pl.Expr | None = None,
) -> pl.LazyFrame:
    """Offending courses in the common finding layout."""
    return frame.select(
        pl.col("course_id"),
        pl.col("patient_id"),
        pl.col("order_ids"),
        pl.col("indication"),
        expected.cast(pl.String).alias("expected"),
        observed.cast(pl.String).alias("observed"),
        message.cast(pl.String).alias("message"),
        (excess_g if excess_g is not None else pl.lit(0.0)).cast(pl.Float64).clip(lower_bound=0).round(1).fill_null(0.0).alias("excess_g"),
        (severity if severity is not None else pl.lit(None, dtype=pl.String)).alias("severity"),
    )


def band_lo(ctx: AuditContext) -> pl.Expr:
    """Lower edge of the appropriate band (target low minus tolerance)."""
    return pl.col("target_lo_g_per_kg") * (1 - ctx.tolerance)


def band_hi(ctx: AuditContext) -> pl.Expr:
    """Upper edge of the appropriate band (target high plus tolerance)."""
    return pl.col("target_hi_g_per_kg") * (1 + ctx.tolerance)


def dose_assessable() -> pl.Expr:
    """Courses with a target, known grams and a dosing weight."""
    return pl.col("target_hi_g_per_kg").is_not_null() & pl.col("total_g").is_not_null() & pl.col("dosing_weight_kg").is_not_null()


def dosed_on_actual_weight_in_obesity(ctx: AuditContext) -> pl.Expr:
    """Obese course whose grams match actual-weight dosing and exceed the band on the dosing weight."""
    g_per_kg_actual = pl.col("total_g") / pl.col("actual_weight_kg")
    return (
        dose_assessable()
        & pl.col("obese").fill_null(False)
        & pl.col("weight_basis").is_in(["adjusted", "ibw"])
        & (g_per_kg_actual >= band_lo(ctx))
        & (g_per_kg_actual <= band_hi(ctx))
        & (pl.col("g_per_kg") > band_hi(ctx))
    )


def target_grams(which: str = "target_hi_g_per_kg") -> pl.Expr:
    """Target grams of the course on the dosing weight."""
    return pl.col(which) * pl.col("dosing_weight_kg")


def has_text_matching(column: str, pattern: str) -> pl.Expr:
    """Whether a free-text column matches a case-insensitive pattern (null text never matches)."""
    return pl.col(column).str.to_lowercase().str.contains(pattern).fill_null(False)


# ------------------------------------------------------------------------------------- indication
@rule("indication.unrecognised")
def indication_unrecognised(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses whose indication text or code maps to no recognised indication."""
    shown = pl.concat_str(
        [pl.col("indication_text"), pl.format("code {}", pl.col("indication_codes"))], separator=", ", ignore_nulls=True
    )
    return finding(
        ctx.courses.filter(pl.col("indication_group") == "unrecognised"),
        expected=pl.lit("a recognised IVIG indication (GBS, CIDP, MG, Kawasaki, ITP; MS only in pregnancy/postpartum)"),
        observed=shown,
        message=pl.format(
            "Indication '{}' is not a recognised IVIG indication; {} g given over {} day(s).",
            shown, num("total_g"), pl.col("n_days"),
        ),
        excess_g=pl.col("total_g"),
    )


@rule("indication.missing")
def indication_missing(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses with neither indication text nor code."""
    return finding(
        ctx.courses.filter(pl.col("indication_group") == "missing"),
        expected=pl.lit("indication text or ICD-10 code on the order"),
        observed=pl.lit("none"),
        message=pl.format("No indication documented for {} g of IVIG over {} day(s).", num("total_g"), pl.col("n_days")),
    )


@rule("indication.not_routine")
def indication_not_routine(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses for a not-routine indication without its qualifying scenario and a documented justification."""
    qualifier = pl.col("qualifier_pattern").fill_null("$^")
    qualified = (
        pl.col("pregnant").fill_null(False)
        | pl.col("indication_text").str.to_lowercase().str.contains(qualifier).fill_null(False)
        | pl.col("justification").str.to_lowercase().str.contains(qualifier).fill_null(False)
    )
    justified = pl.col("justification").is_not_null()
    offending = ctx.courses.filter((pl.col("regimen_status") == "not_routine") & ~(qualified & justified))
    return finding(
        offending,
        expected=pl.lit("qualifying scenario (pregnancy/postpartum, alternatives unsuitable) with documented justification"),
        observed=pl.format(
            "pregnant/postpartum: {}; justification: {}",
            pl.when(qualified).then(pl.lit("yes")).otherwise(pl.lit("no")),
            pl.when(justified).then(pl.lit("documented")).otherwise(pl.lit("none")),
        ),
        message=pl.format(
            "IVIG is not routine for {} ({} g over {} day(s)): no qualifying scenario with documented justification.",
            pl.col("regimen_label").str.to_lowercase(), num("total_g"), pl.col("n_days"),
        ),
        excess_g=pl.col("total_g"),
    )


# ------------------------------------------------------------------------------------- weight basis
@rule("weight_basis.actual_weight_in_obesity")
def weight_basis_actual_in_obesity(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Obese patients whose course total matches actual-weight dosing rather than the dosing weight."""
    target = target_grams()
    return finding(
        ctx.courses.filter(dosed_on_actual_weight_in_obesity(ctx)),
        expected=pl.format("{} x {} kg = {} g", target_text(), num("dosing_weight_kg"), num(target)),
        observed=pl.format("{} g = {} g/kg of actual weight {} kg", num("total_g"), num(pl.col("total_g") / pl.col("actual_weight_kg"), 2), num("actual_weight_kg")),
        message=pl.format(
            "Dosed on actual weight in obesity: {} g over {} day(s) is {} g/kg of actual weight but {} g/kg of the dosing weight ({}). Dosing on {} kg would have saved {} g.",
            num("total_g"), pl.col("n_days"),
            num(pl.col("total_g") / pl.col("actual_weight_kg"), 2), num("g_per_kg", 2),
            weights_text(), num("dosing_weight_kg"), num(pl.col("total_g") - target),
        ),
        excess_g=pl.col("total_g") - target,
        severity=pl.lit(ctx.pack.profile.get("weight_basis_severity", spec.severity)),
    )


# ------------------------------------------------------------------------------------- course dose
@rule("course_dose.above_target")
def course_dose_above_target(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Course totals above the target band (weight-basis cases are reported by their own rule)."""
    critical_ratio = float(ctx.pack.settings["critical_over_ratio"])
    offending = ctx.courses.filter(
        dose_assessable() & (pl.col("g_per_kg") > band_hi(ctx)) & ~dosed_on_actual_weight_in_obesity(ctx)
    )
    target = target_grams()
    return finding(
        offending,
        expected=pl.format("{} (band up to {} g/kg) = {} g", target_text(), num(band_hi(ctx), 2), num(target)),
        observed=pl.format("{} g = {} g/kg", num("total_g"), num("g_per_kg", 2)),
        message=pl.format(
            "Course total {} g over {} day(s) is {} g/kg, {}% of the {} target on {}; {} g above target.",
            num("total_g"), pl.col("n_days"), num("g_per_kg", 2),
            num(100 * pl.col("g_per_kg") / pl.col("target_hi_g_per_kg"), 0), target_text(),
            weights_text(), num(pl.col("total_g") - target),
        ),
        excess_g=pl.col("total_g") - target,
        severity=pl.when(pl.col("g_per_kg") > critical_ratio * pl.col("target_hi_g_per_kg")).then(pl.lit("critical")),
    )


@rule("course_dose.below_target")
def course_dose_below_target(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Course totals below the target band."""
    offending = ctx.courses.filter(dose_assessable() & (pl.col("g_per_kg") < band_lo(ctx)))
    return finding(
        offending,
        expected=pl.format("{} (band from {} g/kg) = {} g", target_text(), num(band_lo(ctx), 2), num(target_grams("target_lo_g_per_kg"))),
        observed=pl.format("{} g = {} g/kg", num("total_g"), num("g_per_kg", 2)),
        message=pl.format(
            "Course total {} g over {} day(s) is {} g/kg, below the {} target on {}.",
            num("total_g"), pl.col("n_days"), num("g_per_kg", 2), target_text(), weights_text(),
        ),
    )


@rule("course_dose.days_outside_regimen")
def course_dose_days_outside(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses given over fewer or more days than the regimen allows."""
    offending = ctx.courses.filter(
        pl.col("days_min").is_not_null() & ((pl.col("n_days") < pl.col("days_min")) | (pl.col("n_days") > pl.col("days_max")))
    )
    allowed = pl.when(pl.col("days_min") == pl.col("days_max")).then(pl.format("{} day(s)", pl.col("days_min"))).otherwise(
        pl.format("{}-{} days", pl.col("days_min"), pl.col("days_max"))
    )
    return finding(
        offending,
        expected=allowed,
        observed=pl.format("{} day(s)", pl.col("n_days")),
        message=pl.format(
            "{} course given over {} day(s) ({} to {}); the regimen is {}.",
            pl.col("regimen_label"), pl.col("n_days"), pl.col("start").dt.strftime("%Y-%m-%d"),
            pl.col("end").dt.strftime("%Y-%m-%d"), allowed,
        ),
    )


@rule("course_dose.rounding_opportunity")
def course_dose_rounding(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses inside the band whose total exceeds the calculated dose rounded to the nearest step (within tolerance)."""
    step = float(ctx.pack.profile.get("rounding_step_g", 5.0))
    min_saving = float(spec.params.get("min_saving_g", step))
    calculated = pl.min_horizontal(pl.col("total_g"), target_grams())
    rounded = (calculated / step).round(0) * step
    saving = pl.col("total_g") - rounded
    offending = ctx.courses.filter(
        dose_assessable()
        & (pl.col("g_per_kg") >= band_lo(ctx))
        & (pl.col("g_per_kg") <= band_hi(ctx))
        & (rounded >= calculated * (1 - ctx.tolerance))
        & (rounded / pl.col("dosing_weight_kg") >= band_lo(ctx))
        & (saving >= min_saving)
    )
    return finding(
        offending,
        expected=pl.format("{} g (calculated {} g rounded to the nearest {} g)", num(rounded), num(calculated), pl.lit(step)),
        observed=pl.format("{} g", num("total_g")),
        message=pl.format(
            "Rounding the course to {} g (the calculated {} g to the nearest {} g, within {}%) would save {} g.",
            num(rounded), num(calculated), pl.lit(step), pl.lit(int(ctx.tolerance * 100)), num(saving),
        ),
        excess_g=saving,
    )


# ------------------------------------------------------------------------------------- repeat courses
@rule("repeat_justification.repeat_without_justification")
def repeat_without_justification(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Later courses of a regimen that needs justification for a repeat, with none documented."""
    pattern = spec.params.get("justification_pattern", r"\w{3,}")
    offending = ctx.courses.filter(
        (pl.col("repeat_policy") == "justification")
        & (pl.col("course_number") > 1)
        & ~has_text_matching("justification", pattern)
    )
    return finding(
        offending,
        expected=pl.lit("documented justification for a repeat course (fluctuation, poor response, specialist decision)"),
        observed=pl.format("course {}, {} days after the previous; justification: {}", pl.col("course_number"), num("interval_days"), pl.col("justification").fill_null("none")),
        message=pl.format(
            "Repeat {} course (course {}, started {} days after the previous) without documented justification; {} g.",
            pl.col("regimen_label"), pl.col("course_number"), num("interval_days"), num("total_g"),
        ),
        excess_g=pl.col("total_g"),
    )


@rule("repeat_justification.maintenance_without_response")
def maintenance_without_response(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Maintenance courses without documented objective response or refractory-disease justification."""
    pattern = spec.params["justification_pattern"]
    offending = ctx.courses.filter((pl.col("repeat_policy") == "each_course") & ~has_text_matching("justification", pattern))
    return finding(
        offending,
        expected=pl.lit("documented objective response (strength, disability scale) or refractory disease"),
        observed=pl.format("justification: {}", pl.col("justification").fill_null("none")),
        message=pl.format(
            "{} course {} ({} g, {} g/kg) without documented objective response.",
            pl.col("regimen_label"), pl.col("course_number"), num("total_g"), num("g_per_kg", 2),
        ),
    )


@rule("repeat_justification.maintenance_review_due")
def maintenance_review_due(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Maintenance courses past the review date (first review after N months, then every M months) with no review documented."""
    first_due = pl.duration(days=round(30.4375 * float(spec.params["first_review_months"])))
    then_every = pl.duration(days=round(30.4375 * float(spec.params["review_every_months"])))
    series = ["patient_id", "indication_group"]
    reviewed = has_text_matching("justification", spec.params["review_pattern"])
    timeline = ctx.courses.sort("start").with_columns(
        therapy_start=pl.col("start").min().over(series),
        review_at=pl.when(reviewed).then(pl.col("start")),
    ).with_columns(
        # The latest review documented before this course (this course's own review counts).
        last_review_at=pl.col("review_at").forward_fill().over(series, order_by="start"),
    ).with_columns(
        review_due_at=pl.when(pl.col("last_review_at").is_null())
        .then(pl.col("therapy_start") + first_due)
        .otherwise(pl.col("last_review_at") + then_every),
    )
    offending = timeline.filter(
        (pl.col("repeat_policy") == "each_course") & (pl.col("start") > pl.col("review_due_at"))
    )
    months_on = ((pl.col("start") - pl.col("therapy_start")).dt.total_days() / 30.4375).round(1)
    since = pl.coalesce(pl.col("last_review_at"), pl.col("therapy_start")).dt.strftime("%Y-%m-%d")
    return finding(
        offending,
        expected=pl.format("a documented review by {}", pl.col("review_due_at").dt.strftime("%Y-%m-%d")),
        observed=pl.format(
            "{} months on therapy; last review: {}",
            num(months_on), pl.col("last_review_at").dt.strftime("%Y-%m-%d").fill_null("none documented"),
        ),
        message=pl.format(
            "{} course {} on {}: {} months on IVIG since {} and the review due {} is not documented.",
            pl.col("regimen_label"), pl.col("course_number"), pl.col("start").dt.strftime("%Y-%m-%d"),
            num(months_on), pl.col("therapy_start").dt.strftime("%Y-%m-%d"),
            pl.col("review_due_at").dt.strftime("%Y-%m-%d"),
        ),
    )


@rule("repeat_justification.interval_too_short")
def interval_too_short(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Maintenance courses started sooner than the regimen's minimum interval."""
    offending = ctx.courses.filter(
        pl.col("min_interval_days").is_not_null()
        & pl.col("interval_days").is_not_null()
        & (pl.col("interval_days") < pl.col("min_interval_days"))
    )
    return finding(
        offending,
        expected=pl.format("at least {} days between courses", num("min_interval_days", 0)),
        observed=pl.format("{} days", num("interval_days")),
        message=pl.format(
            "{} course {} started {} days after the previous course (minimum {} days).",
            pl.col("regimen_label"), pl.col("course_number"), num("interval_days"), num("min_interval_days", 0),
        ),
    )


# ------------------------------------------------------------------------------------- data quality
@rule("data_quality.dose_not_assessable")
def dose_not_assessable(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses with a dose target that cannot be judged: unknown grams or no dosing weight."""
    offending = ctx.courses.filter(
        pl.col("target_hi_g_per_kg").is_not_null() & (pl.col("total_g").is_null() | pl.col("dosing_weight_kg").is_null())
    )
    missing = pl.coalesce(pl.col("grams_problem"), pl.col("weight_basis_reason"))
    return finding(
        offending,
        expected=pl.lit("course grams and a dosing weight"),
        observed=missing,
        message=pl.format("Not assessable: the {} course dose cannot be judged ({}).", pl.col("regimen_label"), missing),
    )


@rule("data_quality.correction_rejected")
def correction_rejected(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses judged on an earlier version of an order because its later version failed the contract."""
    offending = ctx.courses.filter(pl.col("rejected_corrections").is_not_null())
    return finding(
        offending,
        expected=pl.lit("the latest version of each order passing the contract"),
        observed=pl.col("rejected_corrections"),
        message=pl.format(
            "The {} course starting {} is judged on the earlier version of its orders: {}.",
            pl.col("regimen_label").fill_null(pl.col("indication")), pl.col("start").dt.strftime("%Y-%m-%d"),
            pl.col("rejected_corrections"),
        ),
    )


@rule("data_quality.unrecognised_immunoglobulin")
def unrecognised_immunoglobulin(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Medication names that look like an immunoglobulin but match no product in the dictionary."""
    return ctx.unrecognised_ig.select(
        pl.lit(None, dtype=pl.String).alias("course_id"),
        pl.col("patient_id"),
        pl.col("order_id").alias("order_ids"),
        pl.lit(None, dtype=pl.String).alias("indication"),
        pl.lit("a name in the product dictionary (IVIG product or exclusion)").alias("expected"),
        pl.col("medication").alias("observed"),
        pl.format("'{}' looks like an immunoglobulin but is not in the product dictionary: not audited.", pl.col("medication")).alias("message"),
        pl.lit(0.0).alias("excess_g"),
        pl.lit(None, dtype=pl.String).alias("severity"),
    )


# ------------------------------------------------------------------------------------- combination
@rule("combination.ivig_with_plasma_exchange", reach=lambda spec: {"procedure": _days(spec, "window_days")})
def ivig_with_plasma_exchange(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses with a plasma exchange within the episode window."""
    if ctx.procedures is None:
        return finding(ctx.courses.head(0), expected=pl.lit(""), observed=pl.lit(""), message=pl.lit(""))
    window = pl.duration(days=int(spec.params["window_days"]))
    plex = ctx.procedures.filter(has_text_matching("procedure", spec.params["procedure_pattern"]))
    matched = (
        ctx.courses.join(plex.select("patient_id", "performed_at", "procedure"), on="patient_id")
        .filter((pl.col("performed_at") >= pl.col("start") - window) & (pl.col("performed_at") <= pl.col("end") + window))
        .group_by("course_id", maintain_order=True)
        .agg(
            pl.all().exclude("performed_at", "procedure").first(),
            plex_dates=pl.col("performed_at").dt.strftime("%Y-%m-%d").unique().sort().str.join(", "),
            plex_names=pl.col("procedure").unique().sort().str.join(", "),
        )
    )
    return finding(
        matched,
        expected=pl.format("IVIG or plasma exchange, not both within {} days", pl.lit(spec.params["window_days"])),
        observed=pl.format("{} on {}", pl.col("plex_names"), pl.col("plex_dates")),
        message=pl.format(
            "{} course ({} to {}) with plasma exchange ({}) on {}: PLEX removes infused IgG.",
            pl.col("regimen_label").fill_null(pl.col("indication")), pl.col("start").dt.strftime("%Y-%m-%d"),
            pl.col("end").dt.strftime("%Y-%m-%d"), pl.col("plex_names"), pl.col("plex_dates"),
        ),
    )


@rule("combination.kawasaki_without_aspirin", reach=lambda spec: {"order": _days(spec, "days_before", "days_after")})
def kawasaki_without_aspirin(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Kawasaki courses with no aspirin order from days_before the course to days_after it."""
    before = pl.duration(days=int(spec.params["days_before"]))
    after = pl.duration(days=int(spec.params["days_after"]))
    kawasaki = ctx.courses.filter(pl.col("indication_group") == "kawasaki")
    # An aspirin order covers its `doses` daily doses from its start (an order running through the
    # course counts, not only one that starts inside the window).
    aspirin = ctx.evidence.filter(has_text_matching("medication", spec.params["evidence_pattern"])).select(
        "patient_id",
        pl.col("start").alias("aspirin_at"),
        (pl.col("start") + pl.duration(days=pl.col("doses").fill_null(1).clip(lower_bound=1) - 1)).alias("aspirin_until"),
    )
    with_aspirin = (
        kawasaki.join(aspirin, on="patient_id")
        .filter((pl.col("aspirin_until") >= pl.col("start") - before) & (pl.col("aspirin_at") <= pl.col("end") + after))
        .select("course_id")
        .unique()
    )
    offending = kawasaki.join(with_aspirin, on="course_id", how="anti")
    return finding(
        offending,
        expected=pl.format("aspirin ordered from {} days before to {} days after the course", pl.lit(spec.params["days_before"]), pl.lit(spec.params["days_after"])),
        observed=pl.lit("no aspirin order in the extract"),
        message=pl.format(
            "Kawasaki disease course on {} ({} g) with no aspirin ordered around it.",
            pl.col("start").dt.strftime("%Y-%m-%d"), num("total_g"),
        ),
    )


# ------------------------------------------------------------------------------------- product safety
def renal_impairment(ctx: AuditContext, egfr_below: float, lookback_days: int) -> pl.LazyFrame:
    """Courses with renal impairment before the course end: eGFR/CrCl below a limit or creatinine above range."""
    if ctx.labs is None:
        return ctx.courses.head(0).select("course_id", pl.lit("").alias("renal_evidence"))
    lookback = pl.duration(days=lookback_days)
    impaired = ctx.labs.filter(
        (pl.col("test").is_in(["egfr", "crcl"]) & (pl.col("value") < egfr_below))
        | ((pl.col("test") == "creatinine") & pl.col("ref_high").is_not_null() & (pl.col("value") > pl.col("ref_high")))
    )
    return (
        ctx.courses.select("course_id", "patient_id", "start", "end")
        .join(impaired, on="patient_id")
        .filter((pl.col("collected_at") >= pl.col("start") - lookback) & (pl.col("collected_at") <= pl.col("end")))
        .sort("collected_at", descending=True)
        .group_by("course_id")
        .agg(
            renal_evidence=pl.format(
                "{} {} {} on {}", pl.col("test"), num("value", 2), pl.col("unit").fill_null(""), pl.col("collected_at").dt.strftime("%Y-%m-%d")
            ).first()
        )
    )


def _risk_courses(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses with age at/above the limit or renal impairment, with the reasons as text."""
    renal = renal_impairment(ctx, float(spec.params["egfr_below"]), int(spec.params["lookback_days"]))
    age_limit = float(spec.params["age_years"])
    return (
        ctx.courses.join(renal, on="course_id", how="left")
        .with_columns(
            risk=pl.concat_str(
                [
                    pl.when(pl.col("age_years") >= age_limit).then(pl.format("age {}", num("age_years", 0))),
                    pl.when(pl.col("renal_evidence").is_not_null()).then(pl.format("renal impairment ({})", pl.col("renal_evidence"))),
                ],
                separator="; ",
                ignore_nulls=True,
            )
        )
        .filter(pl.col("risk").str.len_chars() > 0)
    )


@rule("product_safety.sucrose_risk", reach=lambda spec: dict.fromkeys(RENAL_TESTS, _days(spec, "lookback_days")))
def sucrose_risk(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Sucrose-containing product in a patient of the age limit or with renal impairment."""
    offending = _risk_courses(ctx, spec).filter(pl.col("any_sucrose").fill_null(False))
    return finding(
        offending,
        expected=pl.lit("a sucrose-free product"),
        observed=pl.format("{} with {}", pl.col("products"), pl.col("risk")),
        message=pl.format("Sucrose-containing product ({}) given with {}: risk of renal injury.", pl.col("products"), pl.col("risk")),
    )


@rule("product_safety.iga_deficiency", reach=lambda spec: {"iga": None})
def iga_deficiency(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """IgA deficiency (result below range or below the limit) with a product that is not IgA-depleted."""
    if ctx.labs is None:
        return finding(ctx.courses.head(0), expected=pl.lit(""), observed=pl.lit(""), message=pl.lit(""))
    limit = float(spec.params["iga_below_g_per_l"])
    deficient = ctx.labs.filter(
        (pl.col("test") == "iga")
        & pl.when(pl.col("ref_low").is_not_null()).then(pl.col("value") < pl.col("ref_low")).otherwise(pl.col("value") < limit)
    )
    matched = (
        ctx.courses.filter(~pl.col("all_iga_depleted").fill_null(False))
        .join(deficient.select("patient_id", "collected_at", "value", "unit"), on="patient_id")
        .filter(pl.col("collected_at") <= pl.col("end"))
        .sort("collected_at", descending=True)
        .group_by("course_id", maintain_order=True)
        .agg(pl.all().first())
    )
    return finding(
        matched,
        expected=pl.lit("an IgA-depleted product"),
        observed=pl.format("{} with IgA {} {} on {}", pl.col("products"), num("value", 3), pl.col("unit").fill_null(""), pl.col("collected_at").dt.strftime("%Y-%m-%d")),
        message=pl.format(
            "IgA deficiency (IgA {} {} on {}) treated with {}, which is not IgA-depleted: anaphylaxis risk.",
            num("value", 3), pl.col("unit").fill_null(""), pl.col("collected_at").dt.strftime("%Y-%m-%d"), pl.col("products"),
        ),
    )


@rule("product_safety.slow_rate_reminder", reach=lambda spec: dict.fromkeys(RENAL_TESTS, _days(spec, "lookback_days")))
def slow_rate_reminder(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Elderly patients or renal impairment: a reminder to infuse slowly and hydrate."""
    offending = _risk_courses(ctx, spec)
    return finding(
        offending,
        expected=pl.lit("slow infusion rate and hydration"),
        observed=pl.col("risk"),
        message=pl.format("Thrombotic/renal risk ({}): infuse {} slowly, hydrate, monitor creatinine.", pl.col("risk"), pl.col("products")),
    )


# ------------------------------------------------------------------------------------- monitoring
@rule("monitoring.no_baseline_labs", reach=lambda spec: dict.fromkeys(RENAL_TESTS + CBC_TESTS, _days(spec, "window_days")))
def no_baseline_labs(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses with no creatinine (or eGFR) or no CBC (haemoglobin or platelets) in the window before start."""
    if ctx.labs is None:
        return finding(ctx.courses.head(0), expected=pl.lit(""), observed=pl.lit(""), message=pl.lit(""))
    window = pl.duration(days=int(spec.params["window_days"]))
    baseline = (
        ctx.courses.select("course_id", "patient_id", "start")
        .join(ctx.labs.select("patient_id", "collected_at", "test"), on="patient_id")
        .filter((pl.col("collected_at") >= pl.col("start") - window) & (pl.col("collected_at") <= pl.col("start")))
        .group_by("course_id")
        .agg(
            has_renal=pl.col("test").is_in(RENAL_TESTS).any(),
            has_cbc=pl.col("test").is_in(CBC_TESTS).any(),
        )
    )
    checked = ctx.courses.join(baseline, on="course_id", how="left").with_columns(
        missing=pl.concat_str(
            [
                pl.when(~pl.col("has_renal").fill_null(False)).then(pl.lit("creatinine")),
                pl.when(~pl.col("has_cbc").fill_null(False)).then(pl.lit("CBC")),
            ],
            separator=" and ",
            ignore_nulls=True,
        )
    )
    return finding(
        checked.filter(pl.col("missing").str.len_chars() > 0),
        expected=pl.format("creatinine and CBC within {} days before the course", pl.lit(spec.params["window_days"])),
        observed=pl.format("no {}", pl.col("missing")),
        message=pl.format(
            "No baseline {} within {} days before the course started {}.",
            pl.col("missing"), pl.lit(spec.params["window_days"]), pl.col("start").dt.strftime("%Y-%m-%d"),
        ),
    )


# ------------------------------------------------------------------------------------- engine
EVIDENCE_COLUMNS = [
    "course_number", "start", "end", "n_days", "doses", "total_g", "g_per_kg", "interval_days",
    "actual_weight_kg", "height_cm", "sex", "age_years", "bmi", "ibw_kg", "adjusted_weight_kg", "obese",
    "dosing_weight_kg", "weight_basis", "weight_basis_reason", "target_lo_g_per_kg", "target_hi_g_per_kg",
    "products", "justification",
]


def evaluate_rules(ctx: AuditContext, run_id: str) -> pl.LazyFrame:
    """Run every rule of the pack; findings with metadata and evidence (JSON); pipeline.identity gives their ids."""
    missing = sorted(set(ctx.pack.rules) - set(RULES))
    if missing:
        raise KeyError(f"rule pack names rules with no query: {', '.join(missing)}")
    parts = []
    for rule_id, spec in ctx.pack.rules.items():
        if not spec.params.get("enabled", True):
            continue
        found = RULES[rule_id](ctx, spec).select(FINDING_COLUMNS)
        effective = pl.lit(spec.effective_date).str.to_datetime("%Y-%m-%d")
        found = (
            found.join(ctx.courses.select("course_id", pl.col("start").alias("course_start")), on="course_id", how="left")
            .filter(pl.col("course_start").is_null() | (pl.col("course_start") >= effective))
            .drop("course_start")
        )
        parts.append(
            found.with_columns(
                rule_id=pl.lit(rule_id),
                rule_version=pl.lit(spec.version),
                category=pl.lit(spec.category),
                severity=pl.coalesce(pl.col("severity"), pl.lit(spec.severity)),
                action=pl.lit(spec.action),
            )
        )
    findings = pl.concat(parts, how="vertical")
    evidence = ctx.courses.select(
        "course_id",
        evidence=pl.struct(
            [pl.col(c).round(2) if c in ("g_per_kg", "bmi", "ibw_kg", "adjusted_weight_kg", "dosing_weight_kg", "total_g") else pl.col(c) for c in EVIDENCE_COLUMNS]
        ).struct.json_encode(),
    )
    return (
        findings.join(evidence, on="course_id", how="left")
        .with_columns(
            status=pl.lit("open"),
            first_seen_run=pl.lit(run_id),
            last_seen_run=pl.lit(run_id),
            resolved_run=pl.lit(None, dtype=pl.String),
        )
        .select(
            "rule_id", "rule_version", "category", "severity", "status", "patient_id", "course_id",
            "order_ids", "indication", "message", "expected", "observed", "action", "evidence", "excess_g",
            "first_seen_run", "last_seen_run", "resolved_run",
        )
    )
