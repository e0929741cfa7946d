"""Weight-basis rule: an obese patient dosed on actual weight instead of the dosing weight."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import (
    AuditContext,
    dosed_on_actual_weight_in_obesity,
    finding,
    num,
    rule,
    target_grams,
    target_text,
    weights_text,
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
            weights_text(ctx), num("dosing_weight_kg"), num(pl.col("total_g") - target),
        ),
        excess_g=pl.col("total_g") - target,
        severity=pl.lit(ctx.pack.profile.get("weight_basis_severity", spec.severity)),
    )
