"""Monitoring rules: baseline labs before the course, follow-up labs after it."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import (
    DT,
    AuditContext,
    Window,
    _days,
    finding,
    num,
    rule,
)
from pipeline.rules.product_safety import renal_impairment


# ------------------------------------------------------------------------------------- monitoring
@rule("monitoring.no_baseline_labs",
      reach=lambda spec, pack: dict.fromkeys([*pack.labs.renal_function, *pack.labs.blood_count], Window(before=_days(spec, "window_days"))))
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
            has_renal=pl.col("test").is_in(ctx.pack.labs.renal_function).any(),
            has_cbc=pl.col("test").is_in(ctx.pack.labs.blood_count).any(),
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


@rule("monitoring.no_hemoglobin_after_course", reach=lambda spec, pack: {"hemoglobin": Window(after=_days(spec, "window_days"))},
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
      reach=lambda spec, pack: dict.fromkeys(pack.labs.renal_function, Window(before=_days(spec, "lookback_days"), after=_days(spec, "window_days"))),
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
    offending = labs_after_course(ctx, at_risk, list(ctx.pack.labs.renal_function), days).filter(pl.col("followed_up_at").is_null())
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
