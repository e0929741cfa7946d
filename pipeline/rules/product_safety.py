"""Product-safety rules: sucrose with renal risk or age, IgA deficiency, the slow-rate reminder."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import AuditContext, Window, _days, finding, num, rule


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


@rule("product_safety.sucrose_risk", reach=lambda spec, pack: dict.fromkeys(pack.labs.renal_function, Window(before=_days(spec, "lookback_days"))))
def sucrose_risk(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Sucrose-containing product in a patient of the age limit or with renal impairment."""
    offending = _risk_courses(ctx, spec).filter(pl.col("any_sucrose").fill_null(False))
    return finding(
        offending,
        expected=pl.lit("a sucrose-free product"),
        observed=pl.format("{} with {}", pl.col("products"), pl.col("risk")),
        message=pl.format("Sucrose-containing product ({}) given with {}: risk of renal injury.", pl.col("products"), pl.col("risk")),
    )


@rule("product_safety.iga_deficiency", reach=lambda spec, pack: {"iga": Window(before=None)})
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


@rule("product_safety.slow_rate_reminder", reach=lambda spec, pack: dict.fromkeys(pack.labs.renal_function, Window(before=_days(spec, "lookback_days"))))
def slow_rate_reminder(ctx: AuditContext, spec: RuleSpec) -> pl.LazyFrame:
    """Elderly patients or renal impairment: a reminder to infuse slowly and hydrate."""
    offending = _risk_courses(ctx, spec)
    return finding(
        offending,
        expected=pl.lit("slow infusion rate and hydration"),
        observed=pl.col("risk"),
        message=pl.format("Thrombotic/renal risk ({}): infuse {} slowly, hydrate, monitor creatinine.", pl.col("risk"), pl.col("products")),
    )
