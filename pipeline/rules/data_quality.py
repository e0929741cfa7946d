"""Data-quality rules: what cannot be judged, and why."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import AuditContext, finding, rule


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
