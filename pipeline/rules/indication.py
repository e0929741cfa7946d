"""Indication rules: unrecognised, missing, not routine without its qualifying scenario."""

from __future__ import annotations

import polars as pl

from pipeline.config.rulepack import RuleSpec
from pipeline.rules.engine import (
    AuditContext,
    coded_kind,
    documents,
    finding,
    justification_shown,
    num,
    rule,
    text_affirms,
    why_not_documented,
)


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
