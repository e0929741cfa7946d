"""Course-dose rules: above or below the regimen target, days outside the regimen, rounding."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import (
    AuditContext,
    band_hi,
    band_lo,
    dose_assessable,
    dosed_on_actual_weight_in_obesity,
    finding,
    num,
    rule,
    target_grams,
    target_text,
    weights_text,
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
