"""The rules engine: what a rule sees (AuditContext), how a rule registers (with how far it reads evidence), the finding layout and shared expressions, and the evaluation of every rule of the pack.

A rule's metadata (id, version, category, severity, parameters, description, source, action) lives
in the rule pack; its query lives in the module of its category (pipeline/rules/<category>.py)
under the same id. A rule returns one row per offending course (or order) with `expected`,
`observed`, `message` and `excess_g`; the engine adds the rule's metadata and the evidence;
pipeline.domain.identity gives the finding its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import polars as pl

from pipeline.config.rulepack import RulePack, RuleSpec
from pipeline.domain.justification import (
    AFFIRMED,
    NEGATED,
    NO_KIND,
    UNCERTAIN,
    Vocabulary,
)

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


@dataclass(frozen=True)
class Window:
    """How far around a course a rule reads one kind of evidence, in days: `before` its first dose and
    `after` its last (None: at any distance on that side). The rule reads nothing outside it."""

    before: int | None = 0
    after: int | None = 0

    @property
    def farthest(self) -> int | None:
        """The longer side, in days (None: at any distance)."""
        return None if self.before is None or self.after is None else max(self.before, self.after)


#: Where around a course each rule reads evidence, per kind of evidence (a lab test, 'procedure',
#: 'order' for other medications). Read from the rule's parameters.
Reach = Callable[[RuleSpec, RulePack], dict[str, Window]]


REACH: dict[str, Reach] = {}


#: Rules that judge a window after the course's last dose, in days (judged once the labs run past it).
FollowUp = Callable[[RuleSpec], int]


FOLLOW_UP: dict[str, FollowUp] = {}


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


def evidence_windows(pack: RulePack) -> dict[str, Window]:
    """Where around a course any enabled rule of the pack reads each kind of evidence (the widest window on each side)."""
    def wider(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else max(a, b)

    windows: dict[str, Window] = {}
    for rule_id, spec in pack.rules.items():
        if rule_id not in REACH or not spec.params.get("enabled", True):
            continue
        for kind, window in REACH[rule_id](spec, pack).items():
            known = windows.get(kind)
            windows[kind] = window if known is None else Window(wider(known.before, window.before), wider(known.after, window.after))
    return windows


def order_reach_days(pack: RulePack) -> int | None:
    """How far before a dose (or any order) the stored courses it can change may end, in days (None: any).

    A dose joins a course whose last dose is within the course gap of it (and may bridge two);
    another order is evidence as far as the rules' window after a course for orders reaches.
    """
    after = evidence_windows(pack).get("order", Window()).after
    return None if after is None else max(int(pack.settings["course_gap_days"]) + 1, after)


def evidence_reach(pack: RulePack) -> dict[str, int | None]:
    """The farthest any enabled rule of the pack reads each kind of evidence from a course, in days (None: any)."""
    return {kind: window.farthest for kind, window in evidence_windows(pack).items()}


def follow_up_windows(pack: RulePack) -> list[int]:
    """The distinct lengths, in days, of the windows after a course the enabled rules judge (shortest first)."""
    return sorted({FOLLOW_UP[r](spec) for r, spec in pack.rules.items() if r in FOLLOW_UP and spec.params.get("enabled", True)})


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


# ------------------------------------------------------------------------------------- engine
EVIDENCE_COLUMNS = [
    "course_number", "start", "end", "n_days", "doses", "total_g", "g_per_kg", "interval_days",
    "actual_weight_kg", "height_cm", "sex", "age_years", "bmi", "ibw_kg", "adjusted_weight_kg", "obese",
    "dosing_weight_kg", "weight_basis", "weight_basis_reason", "target_lo_g_per_kg", "target_hi_g_per_kg",
    "products", "justification", "justification_code", "current_weight_kg", "pre_pregnancy_weight_kg",
]


def counts_against_course() -> pl.Expr:
    """Whether a finding makes its course inappropriate: a warning or critical finding of a course (info findings advise)."""
    return (pl.col("severity") != "info") & pl.col("course_id").is_not_null()


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
            counts_against_course=counts_against_course(),
        )
        .select(
            "rule_id", "rule_version", "category", "severity", "status", "patient_id", "course_id",
            "order_ids", "indication", "message", "expected", "observed", "action", "evidence", "excess_g",
            "first_seen_run", "last_seen_run", "resolved_run", "counts_against_course",
        )
    )
