"""Build courses: one patient's IVIG daily doses for one indication group, split on the course gap."""

from __future__ import annotations

import polars as pl

from pipeline.domain.identity import fresh_course_key
from pipeline.domain.justification import with_readings
from pipeline.config.rulepack import RulePack
from pipeline.domain.weights import with_actual_weight, with_dosing_weight

COURSE_KEY = ["patient_id", "indication_group"]


def _joined_unique(column: str) -> pl.Expr:
    """The distinct non-null values of a column in a course, sorted and comma-joined."""
    return pl.col(column).drop_nulls().unique().sort().str.join(", ")


def assign_course_numbers(dose_days: pl.LazyFrame, course_gap_days: int) -> pl.LazyFrame:
    """Daily doses with course_number: a new course starts when the gap to the previous dose exceeds the course gap."""
    ordered = dose_days.sort([*COURSE_KEY, "dose_at", "order_id"])
    gap = (pl.col("dose_day") - pl.col("dose_day").shift(1).over(COURSE_KEY)).dt.total_days()
    return ordered.with_columns(gap_days=gap).with_columns(
        course_number=(pl.col("gap_days").is_null() | (pl.col("gap_days") > course_gap_days))
        .cum_sum()
        .over(COURSE_KEY)
        .cast(pl.Int64)
    )


def regimen_table(pack: RulePack) -> pl.DataFrame:
    """The rule pack's regimens as a frame: one row per regimen with its targets and repeat policy."""
    rows = []
    for key, spec in pack.regimens.items():
        target = spec.get("target_g_per_kg") or [None, None]
        days = spec.get("days") or [None, None]
        rows.append(
            {
                "indication": key,
                "indication_group": spec["group"],
                "phase": spec.get("phase", "only"),
                "regimen_label": spec.get("label", key),
                "regimen_status": spec.get("status", "routine"),
                "target_lo_g_per_kg": target[0],
                "target_hi_g_per_kg": target[1],
                "days_min": days[0],
                "days_max": days[1],
                "repeat_policy": spec.get("repeat", "justification"),
                "min_interval_days": spec.get("min_interval_days"),
                "qualifying_justification": spec.get("qualifying_justification"),
                "qualifying_flag": spec.get("qualifying_flag"),
                "qualifying_description": spec.get("qualifying_description"),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "indication": pl.String, "indication_group": pl.String, "phase": pl.String,
            "regimen_label": pl.String, "regimen_status": pl.String,
            "target_lo_g_per_kg": pl.Float64, "target_hi_g_per_kg": pl.Float64,
            "days_min": pl.Int64, "days_max": pl.Int64, "repeat_policy": pl.String,
            "min_interval_days": pl.Float64, "qualifying_justification": pl.String,
            "qualifying_flag": pl.String, "qualifying_description": pl.String,
        },
    )


def regimen_key(pack: RulePack) -> pl.Expr:
    """The regimen a course follows: the group's only regimen, or its first/later phase."""
    phase = pl.coalesce(
        pl.col("phase_hint"),
        pl.when(pl.col("course_number") == 1).then(pl.lit("first")).otherwise(pl.lit("later")),
    )
    expr: pl.Expr = pl.col("indication_group")
    for key, spec in reversed(list(pack.regimens.items())):
        in_group = pl.col("indication_group") == spec["group"]
        matches = in_group if spec.get("phase", "only") == "only" else in_group & (phase == spec["phase"])
        expr = pl.when(matches).then(pl.lit(key)).otherwise(expr)
    return expr


def build_courses(dose_days: pl.LazyFrame, pack: RulePack) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Courses with totals, dosing weight and g/kg, and the order -> course_key map (course_key: see pipeline.identity)."""
    numbered = assign_course_numbers(dose_days, int(pack.settings["course_gap_days"]))
    by_first_dose = pl.col("dose_at")
    courses = (
        numbered.group_by([*COURSE_KEY, "course_number"])
        .agg(
            start=pl.col("dose_at").min(),
            end=pl.col("dose_at").max(),
            n_days=pl.col("dose_day").n_unique().cast(pl.Int64),
            doses=pl.len().cast(pl.Int64),
            # A course with any dose of unknown grams has an unknown total (never a partial sum).
            total_g=pl.when(pl.col("grams_per_dose").is_null().any())
            .then(None)
            .otherwise(pl.col("grams_per_dose").sum()),
            grams_problem=pl.col("grams_problem").drop_nulls().first(),
            order_ids=_joined_unique("order_id"),
            products=_joined_unique("product"),
            current_weight_kg=pl.col("weight_kg").sort_by(by_first_dose).drop_nulls().first(),
            pre_pregnancy_weight_kg=pl.col("pre_pregnancy_weight_kg").sort_by(by_first_dose).drop_nulls().first(),
            height_cm=pl.col("height_cm").sort_by(by_first_dose).drop_nulls().first(),
            sex=pl.col("sex").drop_nulls().first(),
            age_years=pl.col("age_years").sort_by(by_first_dose).drop_nulls().first(),
            pregnant=pl.col("pregnant").max(),
            phase_hint=pl.col("phase_hint").sort_by(by_first_dose).drop_nulls().first(),
            indication_text=_joined_unique("indication"),
            justification=pl.col("justification").drop_nulls().unique(maintain_order=True).str.join(" | "),
            # What a later version of one of its orders failed (pipeline.audit.rejected_corrections).
            rejected_corrections=pl.format("order {}: {}", pl.col("order_id"), pl.col("rejected_correction"))
            .drop_nulls().unique().sort().str.join("; "),
            anchor_order_id=pl.col("order_id").sort_by(["dose_at", "order_id"]).first(),
            justification_code=_joined_unique("justification_code"),
            facility=pl.col("facility").sort_by(by_first_dose).drop_nulls().first(),
            service=pl.col("service").sort_by(by_first_dose).drop_nulls().first(),
            prescriber_id=pl.col("prescriber_id").sort_by(by_first_dose).drop_nulls().first(),
            any_sucrose=pl.col("contains_sucrose").any(),
            all_iga_depleted=pl.col("iga_depleted").all(),
            vial_sizes_g=pl.col("vial_sizes_g").sort_by(by_first_dose).first(),
        )
        .with_columns(
            justification=pl.when(pl.col("justification").str.len_chars() > 0).then(pl.col("justification")),
            rejected_corrections=pl.when(pl.col("rejected_corrections").str.len_chars() > 0).then(pl.col("rejected_corrections")),
            justification_code=pl.when(pl.col("justification_code").str.len_chars() > 0).then(pl.col("justification_code")),
            indication_text=pl.when(pl.col("indication_text").str.len_chars() > 0).then(pl.col("indication_text")),
            span_days=((pl.col("end").dt.date() - pl.col("start").dt.date()).dt.total_days() + 1).cast(pl.Int64),
            interval_days=(
                (pl.col("start") - pl.col("start").shift(1).over(COURSE_KEY, order_by="course_number")).dt.total_seconds()
                / 86400.0
            ).round(1),
            # What first defines the course; pipeline.identity turns it into a lasting course_id.
            course_key=fresh_course_key(),
        )
        .with_columns(indication=regimen_key(pack))
    )
    courses = with_dosing_weight(with_actual_weight(courses), pack.weights, pack.profile, pack.settings).with_columns(
        g_per_kg=(pl.col("total_g") / pl.col("dosing_weight_kg")).round(3),
    )
    # What the justification and indication texts affirm, read once for every rule (j_*, i_* columns).
    courses = with_readings(courses, pack.justification)
    order_course = (
        numbered.join(courses.select([*COURSE_KEY, "course_number", "course_key"]), on=[*COURSE_KEY, "course_number"])
        .group_by("order_id")
        .agg(pl.col("course_key").first())
    )
    return courses.sort(["patient_id", "start"]), order_course
