"""The audit rules: each a small Polars query over courses returning the offending ones with evidence.

A rule's metadata (id, version, category, severity, parameters, description, source, action) lives
in the rule pack; the query lives here under the same id. A rule returns one row per offending
course (or order) with `expected`, `observed`, `message` and `excess_g`; the engine adds the
rule's metadata, the evidence and a stable finding_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import polars as pl

from pipeline.domain.justification import AFFIRMED, NEGATED, NO_KIND, UNCERTAIN, Vocabulary
from pipeline.config.rulepack import RulePack, RuleSpec

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
    # The date the labs extract runs to (its newest result, of every patient): a follow-up window is
    # judged once it has passed. None: the newest result among `labs`.
    labs_through: datetime | None = None

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

#: Rules that judge a window after the course's last dose, in days (judged once the labs run past it).
FollowUp = Callable[[RuleSpec], int]
FOLLOW_UP: dict[str, FollowUp] = {}

RENAL_TESTS = ("creatinine", "egfr", "crcl")
CBC_TESTS = ("hemoglobin", "platelets")

FINDING_COLUMNS = ["course_id", "patient_id", "order_ids", "indication", "expected", "observed", "message", "excess_g", "severity"]


def rule(rule_id: str, reach: Reach | None = None, follow_up: FollowUp | None = None) -> Callable[[RuleQuery], RuleQuery]:
    """Register a rule query under its rule-pack id, with how far it reads evidence (if it reads any)
    and, for a rule judging a window after the course, that window's length."""

    def register(query: RuleQuery) -> RuleQuery:
        RULES[rule_id] = query
        if reach is not None:
            REACH[rule_id] = reach
        if follow_up is not None:
            FOLLOW_UP[rule_id] = follow_up
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


def longest_follow_up(pack: RulePack) -> int:
    """The longest window after a course any enabled rule judges, in days (0: none)."""
    return max(
        (FOLLOW_UP[r](spec) for r, spec in pack.rules.items() if r in FOLLOW_UP and spec.params.get("enabled", True)),
        default=0,
    )


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


def weights_text(ctx: AuditContext) -> pl.Expr:
    """The weights used, as a sentence fragment a pharmacist can check.

    In pregnancy both the current and the pre-pregnancy weight are named; without IBW it says why.
    """
    pregnancy = pl.col("actual_weight_source") == "pre-pregnancy weight"
    weighed = pl.when(pregnancy).then(
        pl.format("current weight {} kg, pre-pregnancy weight {} kg", num("current_weight_kg"), num("actual_weight_kg"))
    ).otherwise(pl.format("actual {} kg", num("actual_weight_kg")))
    child_age = float(ctx.pack.weights["actual_weight_below_age_years"])
    short_cm = float(ctx.pack.weights["actual_weight_below_height_cm"])
    missing = pl.concat_str(
        [pl.when(pl.col("height_cm").is_null()).then(pl.lit("height")), pl.when(pl.col("sex").is_null()).then(pl.lit("sex"))],
        separator=" and ", ignore_nulls=True,
    )
    ideal = (
        pl.when(pl.col("ibw_kg").is_not_null())
        .then(pl.format("IBW {} kg, adjusted {} kg, BMI {}", num("ibw_kg"), num("adjusted_weight_kg"), num("bmi")))
        .when(pl.col("age_years") < child_age)
        .then(pl.format("IBW not used (age {} years, under {}: dosed on actual weight)", num("age_years"), pl.lit(f"{child_age:g}")))
        .when(pl.col("height_cm") < short_cm)
        .then(pl.format("IBW not used (height {} cm, under {} cm: the Devine formula does not apply)", num("height_cm"), pl.lit(f"{short_cm:g}")))
        .otherwise(pl.format("IBW not known ({} not recorded)", missing))
    )
    return pl.format(
        "{}, {}; dosing weight {} kg ({})", weighed, ideal, num("dosing_weight_kg"), pl.col("weight_basis_reason"),
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


def _codes() -> pl.Expr:
    """The course's justification codes (upper case) as a list (null when none was sent)."""
    return pl.col("justification_code").str.to_uppercase().str.split(",").list.eval(pl.element().str.strip_chars())


def coded_kind(vocabulary: Vocabulary, kinds: list[str]) -> pl.Expr:
    """Whether the course's justification code documents one of the kinds (null: no code sent)."""
    return _codes().list.eval(pl.element().replace_strict(vocabulary.codes, default=None).is_in(kinds).any()).list.first()


def text_affirms(kinds: list[str], prefix: str = "j_") -> pl.Expr:
    """Whether the text read under the prefix affirms one of the kinds."""
    return pl.any_horizontal([pl.col(f"{prefix}{k}") == AFFIRMED for k in kinds]).fill_null(False)


def documents(vocabulary: Vocabulary, kinds: list[str]) -> pl.Expr:
    """Whether the course's justification documents one of the kinds: its code when sent, else its text."""
    return pl.when(pl.col("justification_code").is_not_null()).then(coded_kind(vocabulary, kinds).fill_null(False)).otherwise(text_affirms(kinds))


def _first_clause(kinds: list[str], verdict: str, prefix: str) -> pl.Expr:
    """The clause of the first of the kinds whose verdict is the given one (null if none)."""
    return pl.coalesce([pl.when(pl.col(f"{prefix}{k}") == verdict).then(pl.col(f"{prefix}{k}_clause")) for k in kinds])


def why_not_documented(vocabulary: Vocabulary, kinds: list[str]) -> pl.Expr:
    """Why the justification does not document one of the kinds, in words ("negated: 'no improvement'")."""
    others = [k for k in vocabulary.kinds if k not in kinds]
    other_affirmed = pl.concat_str(
        [pl.when(pl.col(f"j_{k}") == AFFIRMED).then(pl.lit(vocabulary.label(k))) for k in others], separator=", ", ignore_nulls=True
    ) if others else pl.lit("")
    codes = _codes()
    unknown = codes.list.eval(pl.element().filter(~pl.element().is_in(list(vocabulary.codes)))).list.join(", ")
    labels = {code: (vocabulary.label(kind) if kind != NO_KIND else "nothing documented") for code, kind in vocabulary.codes.items()}
    coded_as = codes.list.eval(pl.element().replace_strict(labels, default=None)).list.drop_nulls().list.unique(maintain_order=True).list.join(", ")
    wanted = vocabulary.labels(kinds)
    by_code = (
        pl.when(unknown.str.len_chars() > 0)
        .then(pl.format("justification code '{}' is not in the rule pack's [justification.codes]", unknown))
        .otherwise(pl.format("coded '{}' ({}), not {}", pl.col("justification_code"), coded_as, pl.lit(wanted)))
    )
    by_text = (
        pl.when(pl.col("justification").is_null())
        .then(pl.lit("no justification documented"))
        .when(_first_clause(kinds, NEGATED, "j_").is_not_null())
        .then(pl.format("negated: '{}'", _first_clause(kinds, NEGATED, "j_")))
        .when(_first_clause(kinds, UNCERTAIN, "j_").is_not_null())
        .then(pl.format("uncertain: '{}'", _first_clause(kinds, UNCERTAIN, "j_")))
        .when(pl.col("j_placeholder").fill_null(False))
        .then(pl.format("placeholder: '{}'", pl.col("j_placeholder_clause")))
        .when(pl.col("j_uncertain_clause").is_not_null())
        .then(pl.format("uncertain: '{}'", pl.col("j_uncertain_clause")))
        .when(pl.col("j_negated_clause").is_not_null())
        .then(pl.format("negated: '{}'", pl.col("j_negated_clause")))
        .when(other_affirmed.str.len_chars() > 0)
        .then(pl.format("documents {}, not {}", other_affirmed, pl.lit(wanted)))
        .otherwise(pl.lit(f"no {wanted} in the text"))
    )
    return pl.when(pl.col("justification_code").is_not_null()).then(by_code).otherwise(by_text)


def justification_shown() -> pl.Expr:
    """The justification the rule read: its code and/or text, quoted ('none' when there is neither)."""
    return pl.concat_str(
        [
            pl.when(pl.col("justification_code").is_not_null()).then(pl.format("code {}", pl.col("justification_code"))),
            pl.when(pl.col("justification").is_not_null()).then(pl.format("'{}'", pl.col("justification").str.slice(0, 200))),
        ],
        separator=", text ", ignore_nulls=True,
    ).replace("", "none")


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
    """Courses of a not-routine regimen without its qualifying scenario and a documented justification.

    The regimen names the qualifying justification kind (MS: the pregnancy/postpartum scenario, which
    the order's pregnant flag also establishes; MG maintenance: refractory disease). The scenario may
    be read in the indication text or the justification; the justification itself must document
    something (not missing, a placeholder, negated or uncertain).
    """
    vocabulary = ctx.pack.justification
    courses = ctx.courses.filter(pl.col("regimen_status") == "not_routine")
    parts = []
    for regimen, group in _qualifying(ctx):
        kind, flag = group["qualifying_justification"], group.get("qualifying_flag")
        by_flag = pl.col(flag).fill_null(False) if flag else pl.lit(False)
        scenario = by_flag | text_affirms([kind], "i_") | documents(vocabulary, [kind])
        kinds = list(vocabulary.kinds)
        substantive = pl.when(pl.col("justification_code").is_not_null()).then(
            coded_kind(vocabulary, kinds).fill_null(False)
        ).otherwise(
            pl.col("justification").is_not_null()
            & (
                text_affirms(kinds)
                | (~pl.col("j_placeholder").fill_null(False) & pl.col("j_negated_clause").is_null() & pl.col("j_uncertain_clause").is_null())
            )
        )
        where = pl.when(by_flag).then(pl.lit(f"{flag} flag")).when(text_affirms([kind], "i_")).then(pl.lit("indication text")).otherwise(pl.lit("justification"))
        missing = (
            pl.when(~scenario)
            .then(pl.format("no {} documented ({})", pl.lit(vocabulary.label(kind)), why_not_documented(vocabulary, [kind])))
            .otherwise(pl.format("{} documented ({}) but the justification documents nothing ({})", pl.lit(vocabulary.label(kind)), where, why_not_documented(vocabulary, kinds)))
        )
        parts.append(
            courses.filter((pl.col("indication") == regimen) & ~(scenario & substantive)).with_columns(
                why=missing, scenario_text=pl.when(scenario).then(pl.format("yes ({})", where)).otherwise(pl.lit("no")),
            )
        )
    offending = pl.concat(parts, how="vertical") if parts else courses.head(0).with_columns(why=pl.lit(""), scenario_text=pl.lit(""))
    return finding(
        offending,
        expected=pl.col("qualifying_description").fill_null("the qualifying scenario with documented justification"),
        observed=pl.format("qualifying scenario: {}; justification: {}", pl.col("scenario_text"), justification_shown()),
        message=pl.format(
            "IVIG is not routine for {} ({} g over {} day(s)): {}.",
            pl.col("regimen_label").str.to_lowercase(), num("total_g"), pl.col("n_days"), pl.col("why"),
        ),
        excess_g=pl.col("total_g"),
    )


def _qualifying(ctx: AuditContext) -> list[tuple[str, dict]]:
    """The not-routine regimens of the pack that name a qualifying justification kind."""
    return [
        (key, spec) for key, spec in ctx.pack.regimens.items()
        if spec.get("status") == "not_routine" and spec.get("qualifying_justification")
    ]


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
            weights_text(ctx), num("dosing_weight_kg"), num(pl.col("total_g") - target),
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
            weights_text(ctx), num(pl.col("total_g") - target),
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
            num("total_g"), pl.col("n_days"), num("g_per_kg", 2), target_text(), weights_text(ctx),
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
    """Later courses of a regimen that needs justification for a repeat, with none documented (code or text)."""
    vocabulary, kinds = ctx.pack.justification, list(spec.params["justified_by"])
    offending = ctx.courses.filter(
        (pl.col("repeat_policy") == "justification") & (pl.col("course_number") > 1) & ~documents(vocabulary, kinds)
    )
    why = why_not_documented(vocabulary, kinds)
    return finding(
        offending,
        expected=pl.lit(f"documented justification for a repeat course ({vocabulary.labels(kinds)})"),
        observed=pl.format(
            "course {}, {} days after the previous; justification: {} ({})",
            pl.col("course_number"), num("interval_days"), justification_shown(), why,
        ),
        message=pl.format(
            "Repeat {} course (course {}, started {} days after the previous) without documented justification ({}); {} g.",
            pl.col("regimen_label"), pl.col("course_number"), num("interval_days"), why, num("total_g"),
        ),
        excess_g=pl.col("total_g"),
    )


@rule("repeat_justification.maintenance_without_response")
def maintenance_without_response(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Maintenance courses whose justification (code or text) does not document objective response."""
    vocabulary, kinds = ctx.pack.justification, list(spec.params["justified_by"])
    offending = ctx.courses.filter((pl.col("repeat_policy") == "each_course") & ~documents(vocabulary, kinds))
    why = why_not_documented(vocabulary, kinds)
    return finding(
        offending,
        expected=pl.lit(f"documented {vocabulary.labels(kinds)} for each continuation (strength, disability scale, platelet count)"),
        observed=pl.format("justification: {} ({})", justification_shown(), why),
        message=pl.format(
            "{} course {} ({} g, {} g/kg) without documented {} ({}).",
            pl.col("regimen_label"), pl.col("course_number"), num("total_g"), num("g_per_kg", 2), pl.lit(vocabulary.labels(kinds)), why,
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
    """Courses whose dose cannot be judged: unknown grams or no dosing weight (whatever the indication)."""
    # Every course, whatever its indication (missing, unrecognised, not routine): the worklist shows
    # every gap at once, not the next one only after the first is fixed.
    offending = ctx.courses.filter(pl.col("total_g").is_null() | pl.col("dosing_weight_kg").is_null())
    missing = pl.concat_str(
        [pl.col("grams_problem"), pl.when(pl.col("dosing_weight_kg").is_null()).then(pl.col("weight_basis_reason"))],
        separator="; ", ignore_nulls=True,
    )
    course = pl.coalesce(
        pl.col("regimen_label"),
        pl.when(pl.col("indication_group") == "missing").then(pl.lit("undocumented-indication")),
        pl.format("'{}'", pl.coalesce(pl.col("indication_text"), pl.col("indication_codes"), pl.lit("unrecognised"))),
    )
    return finding(
        offending,
        expected=pl.lit("course grams and a dosing weight"),
        observed=missing,
        message=pl.format("Not assessable: the {} course dose cannot be judged ({}).", course, missing),
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


def labs_after_course(ctx: AuditContext, courses: pl.LazyFrame, tests: list[str], window_days: int) -> pl.LazyFrame:
    """Courses whose follow-up window has ended by the date the labs extract runs to, with the first
    result of the tests in it (`followed_up_at`, null when none).

    The window runs from the last dose to `window_days` after it. "Ended" is judged against the
    latest result in the labs extract (the date the data runs to), not the clock: a course that
    ended yesterday cannot have its follow-up labs yet and is not judged until the data passes its
    window, so one run over every extract and nightly runs over the same extracts agree.
    """
    window = pl.duration(days=window_days)
    labs = ctx.labs.filter(pl.col("test").is_in(tests))
    followed = (
        courses.select("course_id", "patient_id", "end")
        .join(labs.select("patient_id", "collected_at"), on="patient_id")
        .filter((pl.col("collected_at") >= pl.col("end")) & (pl.col("collected_at") <= pl.col("end") + window))
        .group_by("course_id")
        .agg(followed_up_at=pl.col("collected_at").min())
    )
    data_until = (
        ctx.labs.select(labs_until=pl.col("collected_at").max()) if ctx.labs_through is None
        else pl.LazyFrame({"labs_until": [ctx.labs_through]}, schema={"labs_until": DT})
    )
    return (
        courses.join(followed, on="course_id", how="left")
        .join(data_until, how="cross")
        .with_columns(window_end=pl.col("end") + window)
        .filter(pl.col("labs_until") > pl.col("window_end"))
    )


@rule("monitoring.no_hemoglobin_after_course", reach=lambda spec: {"hemoglobin": _days(spec, "window_days")},
      follow_up=lambda spec: _days(spec, "window_days"))
def no_hemoglobin_after_course(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """High-dose courses (g/kg at or above the limit) with no hemoglobin in the window after the last dose."""
    if ctx.labs is None:
        return finding(ctx.courses.head(0), expected=pl.lit(""), observed=pl.lit(""), message=pl.lit(""))
    days = int(spec.params["window_days"])
    high = ctx.courses.filter(pl.col("g_per_kg") >= float(spec.params["high_dose_g_per_kg"]))
    offending = labs_after_course(ctx, high, ["hemoglobin"], days).filter(pl.col("followed_up_at").is_null())
    return finding(
        offending,
        expected=pl.format("a hemoglobin within {} days after a course of {} g/kg or more", pl.lit(days), pl.lit(spec.params["high_dose_g_per_kg"])),
        # Not the date the labs run to: it moves every night, and a finding's facts must not.
        observed=pl.format("no hemoglobin from {} to {}", _day("end"), _day("window_end")),
        message=pl.format(
            "No hemoglobin within {} days after the {} course that ended {} ({} g, {} g/kg: a high dose): hemolysis not checked.",
            pl.lit(days), pl.col("regimen_label").fill_null(pl.col("indication")), _day("end"), num("total_g"), num("g_per_kg", 2),
        ),
    )


@rule("monitoring.no_renal_function_after_course",
      reach=lambda spec: dict.fromkeys(RENAL_TESTS, max(_days(spec, "window_days"), _days(spec, "lookback_days"))),
      follow_up=lambda spec: _days(spec, "window_days"))
def no_renal_function_after_course(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Courses with renal risk (renal impairment, a sucrose product, age at or above the limit) and no
    creatinine, eGFR or CrCl in the window after the last dose."""
    if ctx.labs is None:
        return finding(ctx.courses.head(0), expected=pl.lit(""), observed=pl.lit(""), message=pl.lit(""))
    days = int(spec.params["window_days"])
    renal = renal_impairment(ctx, float(spec.params["egfr_below"]), int(spec.params["lookback_days"]))
    at_risk = ctx.courses.join(renal, on="course_id", how="left").with_columns(
        risk=pl.concat_str(
            [
                pl.when(pl.col("renal_evidence").is_not_null()).then(pl.format("renal impairment ({})", pl.col("renal_evidence"))),
                pl.when(pl.col("any_sucrose").fill_null(False)).then(pl.format("sucrose-containing product ({})", pl.col("products"))),
                pl.when(pl.col("age_years") >= float(spec.params["age_years"])).then(pl.format("age {}", num("age_years", 0))),
            ],
            separator="; ", ignore_nulls=True,
        )
    ).filter(pl.col("risk").str.len_chars() > 0)
    offending = labs_after_course(ctx, at_risk, ["creatinine", "egfr", "crcl"], days).filter(pl.col("followed_up_at").is_null())
    return finding(
        offending,
        expected=pl.format("a creatinine (or eGFR) within {} days after the course", pl.lit(days)),
        observed=pl.format("{}; no creatinine from {} to {}", pl.col("risk"), _day("end"), _day("window_end")),
        message=pl.format(
            "No creatinine within {} days after the {} course that ended {}, with {}: renal function not checked.",
            pl.lit(days), pl.col("regimen_label").fill_null(pl.col("indication")), _day("end"), pl.col("risk"),
        ),
    )


def _day(column: str) -> pl.Expr:
    """A timestamp column as YYYY-MM-DD."""
    return pl.col(column).dt.strftime("%Y-%m-%d")


# ------------------------------------------------------------------------------------- engine
EVIDENCE_COLUMNS = [
    "course_number", "start", "end", "n_days", "doses", "total_g", "g_per_kg", "interval_days",
    "actual_weight_kg", "height_cm", "sex", "age_years", "bmi", "ibw_kg", "adjusted_weight_kg", "obese",
    "dosing_weight_kg", "weight_basis", "weight_basis_reason", "target_lo_g_per_kg", "target_hi_g_per_kg",
    "products", "justification", "justification_code", "current_weight_kg", "pre_pregnancy_weight_kg",
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
