"""Dosing weight: Devine ideal body weight, adjusted body weight, BMI, obesity trigger and exceptions."""

from __future__ import annotations

from typing import Any

import polars as pl

from checks.outputs import ACTUAL_WEIGHT_SOURCES


def ibw_kg(weights: dict[str, Any]) -> pl.Expr:
    """Devine ideal body weight: 50 kg (male) or 45.5 kg (female) + 2.3 kg per inch over 60 inches."""
    inches = pl.col("height_cm") / weights["cm_per_inch"]
    base = (
        pl.when(pl.col("sex") == "M")
        .then(pl.lit(weights["ibw_base_male_kg"]))
        .when(pl.col("sex") == "F")
        .then(pl.lit(weights["ibw_base_female_kg"]))
        .otherwise(None)
    )
    # Devine's formula is defined from 60 inches up; below that it goes to nonsense (negative for infants).
    return pl.when(inches >= weights["ibw_base_height_in"]).then(
        base + weights["ibw_kg_per_inch"] * (inches - weights["ibw_base_height_in"])
    )


def bmi() -> pl.Expr:
    """Body-mass index from actual weight (kg) and height (cm)."""
    metres = pl.col("height_cm") / 100.0
    return pl.col("actual_weight_kg") / (metres * metres)


def adjusted_weight_kg(profile: dict[str, Any]) -> pl.Expr:
    """Adjusted body weight: IBW + factor x (actual - IBW)."""
    return pl.col("ibw_kg") + profile["adjusted_weight_factor"] * (pl.col("actual_weight_kg") - pl.col("ibw_kg"))


def obese(profile: dict[str, Any]) -> pl.Expr:
    """Whether the profile's obesity trigger is met (BMI and/or actual weight over a share of IBW)."""
    threshold = profile["bmi_threshold"]
    by_bmi = (pl.col("bmi") >= threshold) if profile.get("bmi_inclusive", True) else (pl.col("bmi") > threshold)
    by_ratio = pl.col("actual_weight_kg") > profile["ibw_ratio_threshold"] * pl.col("ibw_kg")
    trigger = profile["obesity_trigger"]
    if trigger == "bmi":
        return by_bmi
    if trigger == "ibw_ratio":
        return by_ratio
    return by_bmi | by_ratio


CURRENT, PRE_PREGNANCY = ACTUAL_WEIGHT_SOURCES


def with_actual_weight(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The weight that stands for the actual weight (`actual_weight_kg`) and where it comes from
    (`actual_weight_source`): the pre-pregnancy weight in pregnancy when given, else the current weight.

    Expects current_weight_kg, pregnant and pre_pregnancy_weight_kg. The pre-pregnancy weight then
    stands for the actual weight in every step (BMI, obesity trigger, adjusted weight; rules.md 2).
    """
    on_pre_pregnancy = pl.col("pregnant").fill_null(False) & pl.col("pre_pregnancy_weight_kg").is_not_null()
    return frame.with_columns(
        actual_weight_kg=pl.when(on_pre_pregnancy).then(pl.col("pre_pregnancy_weight_kg")).otherwise(pl.col("current_weight_kg")),
        actual_weight_source=pl.when(on_pre_pregnancy).then(pl.lit(PRE_PREGNANCY)).otherwise(pl.lit(CURRENT)),
    )


def with_dosing_weight(courses: pl.LazyFrame, weights: dict[str, Any], profile: dict[str, Any], settings: dict[str, Any]) -> pl.LazyFrame:
    """Courses with bmi, ibw_kg, adjusted_weight_kg, obese, dosing_weight_kg, weight_basis and its reason.

    Expects actual_weight_kg (pre-pregnancy weight already chosen), height_cm, sex and age_years, and
    optionally actual_weight_source (from with_actual_weight): a reason then names the weight used
    ("pre-pregnancy weight" rather than "actual weight").
    """
    obese_basis = profile["obese_dosing_weight"]
    weight = pl.col("actual_weight_kg")
    child = pl.col("age_years") < weights["actual_weight_below_age_years"]
    short = pl.col("height_cm") < weights["actual_weight_below_height_cm"]
    no_ibw = pl.col("ibw_kg").is_null()
    heavy = weight > settings["obese_looking_weight_kg"]
    obese_weight = pl.col("adjusted_weight_kg") if obese_basis == "adjusted" else pl.col("ibw_kg")
    obese_label = "adjusted body weight" if obese_basis == "adjusted" else "ideal body weight"
    fmt = lambda e: e.round(1).cast(pl.String)  # noqa: E731 - local formatting helper
    knows_source = "actual_weight_source" in courses.collect_schema().names()
    from_pre_pregnancy = pl.col("actual_weight_source") == PRE_PREGNANCY if knows_source else pl.lit(False)
    used = pl.when(from_pre_pregnancy).then(pl.lit(PRE_PREGNANCY)).otherwise(pl.lit("actual weight"))
    used_short = pl.when(from_pre_pregnancy).then(pl.lit(PRE_PREGNANCY)).otherwise(pl.lit("actual"))
    basis = (
        pl.when(weight.is_null())
        .then(pl.lit("unknown"))
        .when(child)
        .then(pl.lit("actual"))
        .when(short)
        .then(pl.lit("actual"))
        .when(no_ibw & heavy)
        .then(pl.lit("unknown"))
        .when(no_ibw)
        .then(pl.lit("actual"))
        .when(weight < pl.col("ibw_kg"))
        .then(pl.lit("actual"))
        .when(pl.col("obese"))
        .then(pl.lit(obese_basis))
        .otherwise(pl.lit("actual"))
    )
    missing = pl.concat_str(
        [
            pl.when(pl.col("height_cm").is_null()).then(pl.lit("height")),
            pl.when(pl.col("sex").is_null()).then(pl.lit("sex")),
        ],
        separator=" and ",
        ignore_nulls=True,
    )
    reason = (
        pl.when(weight.is_null())
        .then(pl.lit("no weight recorded"))
        .when(child)
        .then(pl.format("age {} years (under {}): {}", fmt(pl.col("age_years")), pl.lit(weights["actual_weight_below_age_years"]), used))
        .when(short)
        .then(pl.format("height {} cm under {} cm: {}", fmt(pl.col("height_cm")), pl.lit(weights["actual_weight_below_height_cm"]), used))
        .when(no_ibw & heavy)
        .then(pl.format("{} missing and weight {} kg above {} kg: obesity cannot be ruled out", missing, fmt(weight), pl.lit(settings["obese_looking_weight_kg"])))
        .when(no_ibw)
        .then(pl.format("{} missing; weight {} kg not above {} kg: {}", missing, fmt(weight), pl.lit(settings["obese_looking_weight_kg"]), used))
        .when(weight < pl.col("ibw_kg"))
        .then(pl.format("{} {} kg below IBW {} kg: {}", used, fmt(weight), fmt(pl.col("ibw_kg")), used))
        .when(pl.col("obese"))
        .then(pl.format("obesity trigger met (BMI {}, {} {}% of IBW): {}", fmt(pl.col("bmi")), used_short, (100 * weight / pl.col("ibw_kg")).round(0).cast(pl.Int64).cast(pl.String), pl.lit(obese_label)))
        .otherwise(pl.format("not obese (BMI {}): {}", fmt(pl.col("bmi")), used))
    )
    # In pregnancy the reason says first which weight stood for the actual weight.
    if knows_source:
        reason = pl.when(from_pre_pregnancy & weight.is_not_null()).then(
            pl.format("pregnant: pre-pregnancy weight {} kg used, not the current {} kg; {}", fmt(weight), fmt(pl.col("current_weight_kg")), reason)
        ).otherwise(reason)
    return (
        courses.with_columns(ibw_kg=ibw_kg(weights), bmi=bmi())
        .with_columns(adjusted_weight_kg=adjusted_weight_kg(profile), obese=obese(profile))
        .with_columns(weight_basis=basis, weight_basis_reason=reason)
        .with_columns(
            dosing_weight_kg=pl.when(pl.col("weight_basis") == "actual")
            .then(weight)
            .when(pl.col("weight_basis") == obese_basis)
            .then(obese_weight)
            .otherwise(None)
        )
    )
