"""Repeat and maintenance courses: justification, objective response, review due, interval."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import (
    AuditContext,
    documents,
    finding,
    has_text_matching,
    justification_shown,
    num,
    rule,
    why_not_documented,
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
