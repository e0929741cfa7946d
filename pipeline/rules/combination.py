"""Combination rules: IVIG with plasma exchange; Kawasaki disease without aspirin."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import (
    AuditContext,
    Window,
    _days,
    finding,
    has_text_matching,
    num,
    rule,
)


# ------------------------------------------------------------------------------------- combination
@rule("combination.ivig_with_plasma_exchange", reach=lambda spec, pack: {"procedure": Window(_days(spec, "window_days"), _days(spec, "window_days"))})
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


@rule("combination.kawasaki_without_aspirin", reach=lambda spec, pack: {"order": Window(_days(spec, "days_before"), _days(spec, "days_after"))})
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
