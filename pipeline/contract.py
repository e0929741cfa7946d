"""Parse extract text into typed columns and split each extract into valid rows and quarantined rows."""

from __future__ import annotations

import polars as pl

from dataclasses import dataclass
from typing import Any, Sequence

from checks.inputs import EXTRACT_COLUMNS, PLAUSIBILITY

DT = pl.Datetime("us")

#: The date-time layouts of the canonical contract: ISO 8601 only, a date and a time with or without
#: seconds and fraction ('T' or a space between them). Never a day-first or month-first layout:
#: 05/01/2026 is 5 January in one country and May 1 in another, so any other layout must be declared
#: by a mapping profile ([dates] formats), never guessed.
ISO_DATETIME_LAYOUTS = (
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
)
#: The same with a UTC offset: Z, +01:00, +0100 or +01.
ISO_OFFSET_LAYOUTS = tuple(f"{layout}%#z" for layout in ISO_DATETIME_LAYOUTS)
#: ISO 8601 dates: extended (2026-06-01) and basic (20260601).
ISO_DATE_LAYOUTS = ("%Y-%m-%d", "%Y%m%d")
#: What a date cell was expected to hold, quoted by a quarantine reason and the file-level error.
EXPECTED_DATE = "expected ISO 8601 such as 2026-06-01 or 2026-06-01T09:30:00+01:00, or a layout declared in the mapping profile"
#: Years a parsed date may have (inclusive): the range of Python's datetime, which the report reads.
REPRESENTABLE_YEARS = (1, 9999)
#: Canonical columns holding a date or date-time, per extract.
DATE_COLUMNS = {
    "orders": ("start", "birth_date", "updated_at"),
    "labs": ("collected_at",),
    "procedures": ("performed_at",),
}

#: Spellings of dose units, lower-cased and without spaces, mapped to the canonical unit.
#: (A per-day g/kg unit is a daily dose: one row is one daily dose, so it is g/kg.)
UNIT_SPELLINGS = {
    "g": "g", "g.": "g", "gm": "g", "gm.": "g", "gms": "g", "gram": "g", "grams": "g", "gr.": "g",
    "gramme": "g", "grammes": "g",
    "mg": "mg", "mg.": "mg", "mgs": "mg", "milligram": "mg", "milligrams": "mg", "milligramme": "mg",
    "ml": "ml", "ml.": "ml", "mls": "ml", "milliliter": "ml", "milliliters": "ml", "millilitre": "ml",
    "millilitres": "ml", "cc": "ml",
    "g/kg": "g/kg", "gm/kg": "g/kg", "gram/kg": "g/kg", "grams/kg": "g/kg", "gperkg": "g/kg", "g/kg/dose": "g/kg",
    "gramsperkg": "g/kg", "gramsperkilogram": "g/kg", "g/kg/day": "g/kg", "gm/kg/day": "g/kg", "gm/kg/dose": "g/kg",
    "g/kgbw": "g/kg",
}

#: A dose written as a range ("1-2", "0.4 - 0.5", "1 to 2"): never guessed.
DOSE_RANGE = r"^\d+(\.\d+)?\s*(-|–|to)\s*\d+(\.\d+)?$"

QUARANTINE_COLUMNS = ["extract", "source_file", "source_row", "order_id", "patient_id", "reason", "raw"]

#: Columns a row carries besides its canonical text when they are present: its arrival
#: (pipeline.history), its version text and version time. Checked and quarantined rows keep them.
ROW_IDENTITY = ("tonight", "run_seq", "file_pos", "version", "updated_at_order")


def blank_to_null(column: str) -> pl.Expr:
    """A text column trimmed, with empty strings as null."""
    text = pl.col(column).str.strip_chars()
    return pl.when(text.str.len_chars() > 0).then(text).otherwise(None)


def parse_number(column: str) -> pl.Expr:
    """A text number as a finite Float64: thousands separators removed; NaN, inf and anything else non-numeric is null."""
    text = blank_to_null(column)
    grouped = text.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
    cleaned = pl.when(grouped).then(text.str.replace_all(",", "")).otherwise(text)
    value = cleaned.cast(pl.Float64, strict=False)
    return pl.when(value.is_finite()).then(value)


def _has_time(layout: str) -> bool:
    """Whether a strptime layout reads a time of day (else it reads a date, taken as midnight)."""
    return any(code in layout for code in ("%H", "%I", "%M", "%S", "%T", "%R", "%c"))


def has_offset(layout: str) -> bool:
    """Whether a strptime layout reads a UTC offset (Z, +01:00)."""
    return any(code in layout for code in ("%z", "%#z", "%:z"))


def _strptime(text: pl.Expr, layout: str) -> pl.Expr:
    """Text read with one strptime layout as a naive date-time: an offset (%z) gives the UTC instant, a
    date-only layout midnight; null where the layout does not fit."""
    if has_offset(layout):
        return text.str.strptime(pl.Datetime("us", "UTC"), layout, strict=False).dt.replace_time_zone(None)
    if _has_time(layout):
        return text.str.strptime(DT, layout, strict=False)
    return text.str.strptime(pl.Date, layout, strict=False).cast(DT)


def parse_with_layouts(text: pl.Expr, layouts: Sequence[str]) -> pl.Expr:
    """Trimmed text read with the first of `layouts` that fits, as a naive date-time (null if none fits).

    A layout with an offset (%z) gives the UTC instant; a date-only layout gives midnight.
    """
    parsed = pl.coalesce([_strptime(text, layout) for layout in layouts]) if layouts else pl.lit(None, dtype=DT)
    # %Y also reads '-2026' and '0000': years no calendar (nor Python's datetime, DuckDB's readers or the
    # report) can represent. Such text is not a date.
    return pl.when(parsed.dt.year().is_between(*REPRESENTABLE_YEARS)).then(parsed)


#: How every ISO 8601 date this audit reads begins: a four-digit year 0001-9999, then '-' or, in the basic
#: layout, four more digits (20260601). Checked on the text once, so the parse needs no year filter
#: ('-2026-06-01' and '99999-01-01' are not dates).
ISO_YEAR = r"^(?:[1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])(?:-|\d{4}(?:$|[T\s]))"


def parse_datetime_text(text: pl.Expr, time_zone: str) -> pl.Expr:
    """Trimmed ISO 8601 text as a naive date-time in the site's time zone (`time_zone`, an IANA name).

    Without an offset the text is the site's local time as written; with one (Z, +01:00, +0100) the
    instant is converted to the site's time zone. A bare date is midnight. Any other layout is null:
    a mapping profile converts its declared layouts to ISO text before this reads them.
    """
    iso = pl.when(text.str.contains(ISO_YEAR)).then(text)
    local = pl.coalesce([_strptime(iso, layout) for layout in ISO_DATETIME_LAYOUTS + ISO_DATE_LAYOUTS])
    instant = pl.coalesce([_strptime(iso, layout) for layout in ISO_OFFSET_LAYOUTS])
    converted = instant.dt.replace_time_zone("UTC").dt.convert_time_zone(time_zone).dt.replace_time_zone(None)
    # Only a conversion can leave the representable years (0001-01-01T00:00+01:00 is in year 0).
    return pl.coalesce(local, pl.when(converted.dt.year().is_between(*REPRESENTABLE_YEARS)).then(converted))


def parse_datetime(column: str, time_zone: str) -> pl.Expr:
    """A text column in ISO 8601 as a date-time in the site's time zone (a bare date is midnight); else null."""
    return parse_datetime_text(blank_to_null(column), time_zone)


def parse_date(column: str, time_zone: str) -> pl.Expr:
    """A text ISO 8601 date (or date-time) as a Date; unparseable is null."""
    return parse_datetime(column, time_zone).dt.date()


def parse_bool(column: str) -> pl.Expr:
    """Yes/no text (true, yes, y, 1 / false, no, n, 0) as Boolean."""
    text = blank_to_null(column).str.to_lowercase()
    return (
        pl.when(text.is_in(["true", "t", "yes", "y", "1"]))
        .then(True)
        .when(text.is_in(["false", "f", "no", "n", "0"]))
        .then(False)
        .otherwise(None)
    )


def parse_sex(column: str) -> pl.Expr:
    """Sex text (M, male, F, female) as 'M' or 'F'; anything else is null."""
    text = blank_to_null(column).str.to_lowercase()
    return (
        pl.when(text.is_in(["m", "male", "man"]))
        .then(pl.lit("M"))
        .when(text.is_in(["f", "female", "woman"]))
        .then(pl.lit("F"))
        .otherwise(None)
    )


def canonical_unit(column: str) -> pl.Expr:
    """A dose unit spelling mapped to g, mg, ml or g/kg; unknown spellings are null."""
    key = blank_to_null(column).str.to_lowercase().str.replace_all(r"\s+", "")
    return key.replace_strict(UNIT_SPELLINGS, default=None, return_dtype=pl.String)


def _reasons(*checks: tuple[pl.Expr, pl.Expr | str]) -> pl.Expr:
    """All failed checks of a row joined into one reason text (null when the row is fine)."""
    parts = [
        pl.when(failed).then(message if isinstance(message, pl.Expr) else pl.lit(message))
        for failed, message in checks
    ]
    joined = pl.concat_str(parts, separator="; ", ignore_nulls=True)
    return pl.when(joined.str.len_chars() > 0).then(joined).otherwise(None)


def raw_json(extract: str) -> pl.Expr:
    """The original text of a row's canonical columns as JSON (kept with a quarantined row)."""
    return pl.struct(list(EXTRACT_COLUMNS[extract])).struct.json_encode()


def version_text(extract: str) -> pl.Expr:
    """The canonical columns of a row, trimmed (blank as null), as JSON: what the row says, whatever file it came in."""
    return pl.struct([blank_to_null(c).alias(c) for c in EXTRACT_COLUMNS[extract]]).struct.json_encode()


#: The columns naming the file a row came in: its arrival (run, position in the run), not its
#: path. Two files of one name on two nights are two files; rows of one file are compared with
#: each other (an order_id twice in one file), rows of different files are versions.
FILE_OF_ROW = ("run_seq", "file_pos")


def with_identity(text_rows: pl.LazyFrame, extract: str) -> pl.LazyFrame:
    """Rows with their version text (stored rows keep theirs) and an arrival (one run, files by name) when they have none."""
    names = text_rows.collect_schema().names()
    added = [
        pl.coalesce(pl.col("version"), version_text(extract)).alias("version") if "version" in names
        else version_text(extract).alias("version")
    ]
    if "run_seq" not in names:
        added += [
            pl.lit(1, dtype=pl.Int64).alias("run_seq"),
            pl.col("source_file").rank("dense").cast(pl.Int64).alias("file_pos"),
            pl.lit(True).alias("tonight"),
        ]
    return text_rows.with_columns(added)


def quarantine_rows(rows: pl.LazyFrame, extract: str, reason: pl.Expr | str = "reason") -> pl.LazyFrame:
    """Rows in the quarantine layout (extract, file, row, ids, reason, original text)."""
    reason_expr = pl.col(reason) if isinstance(reason, str) else reason
    id_cols = [
        (pl.col(c) if c in EXTRACT_COLUMNS[extract] else pl.lit(None, dtype=pl.String)).alias(c)
        for c in ("order_id", "patient_id")
    ]
    names = rows.collect_schema().names()
    return rows.select(
        pl.lit(extract).alias("extract"),
        "source_file",
        "source_row",
        *id_cols,
        reason_expr.alias("reason"),
        pl.col("raw"),
        *[c for c in ROW_IDENTITY if c in names],
    )


def short_number(value: pl.Expr) -> pl.Expr:
    """A number as short text for a reason (2 decimals, no trailing .0)."""
    return value.round(2).cast(pl.String).str.replace(r"\.0$", "")


def _implausible(limit: str, unit: str, column: str | None = None) -> tuple[pl.Expr, pl.Expr]:
    """A value outside its PLAUSIBILITY limits (checks/inputs.py), with the value and the limits as the reason.

    `limit` names the PLAUSIBILITY entry; `column` the value checked (the entry's name by default).
    """
    low, high = PLAUSIBILITY[limit]
    column = column or limit
    value = pl.col(column)
    return (
        (value < low) | (value > high),
        pl.format(f"{column} {{}} is outside the plausible {low:.10g}-{high:.10g} {unit}", short_number(value)),
    )


def _not_a_number(column: str, value: pl.Expr | None = None) -> tuple[pl.Expr, pl.Expr]:
    """Text in a numeric column that is not a finite number (NaN, inf, '12 stone')."""
    text = pl.col(f"{column}_text")
    value = pl.col(column) if value is None else value
    return (
        text.is_not_null() & value.is_null(),
        pl.format(f"{column} is not a number: '{{}}'", text.str.slice(0, 40)),
    )


def _unreadable_or_implausible(column: str, unit: str) -> list[tuple[pl.Expr, pl.Expr]]:
    """IVIG dose problems of a weight or height: text that is not a number, or a value above zero outside
    PLAUSIBILITY (zero and below are a structural reason of every row)."""
    failed, message = _implausible(column, unit)
    return [_not_a_number(column), ((pl.col(column) > 0) & failed, message)]


def _not_a_date_reason(column: str) -> tuple[pl.Expr, pl.Expr]:
    """A date cell that holds text but no date in an accepted layout: the reason names the layout expected."""
    text = pl.col(f"{column}_text")
    return (
        text.is_not_null() & pl.col(column).is_null(),
        pl.format(f"{column} is not a date: '{{}}' ({EXPECTED_DATE})", text.str.slice(0, 40)),
    )


def _implausible_start_year() -> tuple[pl.Expr, pl.Expr]:
    """IVIG dose problem: an order start outside PLAUSIBILITY['start_year'] (0206 for 2026, 9999 for unknown)."""
    low, high = PLAUSIBILITY["start_year"]
    year = pl.col("start").dt.year()
    return (
        (year < low) | (year > high),
        pl.format(f"start {{}} is outside the plausible years {low:g}-{high:g}", pl.col("start").dt.date().cast(pl.String)),
    )


def check_orders(text_rows: pl.LazyFrame, time_zone: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed order rows that pass the structural checks, and the rejected rows with their reason.

    Dates are read as ISO 8601 in the site's `time_zone` (rule pack setting `site_timezone`).
    """
    max_doses = PLAUSIBILITY["doses"][1]
    parsed = with_identity(text_rows, "orders").with_columns(
        raw=raw_json("orders"),
        order_id=blank_to_null("order_id"),
        patient_id=blank_to_null("patient_id"),
        medication=blank_to_null("medication"),
        start_text=blank_to_null("start"),
        start=parse_datetime("start", time_zone),
        dose_text=blank_to_null("dose"),
        dose=parse_number("dose"),
        dose_unit_text=blank_to_null("dose_unit"),
        dose_unit=canonical_unit("dose_unit"),
        doses_text=blank_to_null("doses"),
        doses_number=parse_number("doses"),
        weight_kg_text=blank_to_null("weight_kg"),
        weight_kg=parse_number("weight_kg"),
        height_cm_text=blank_to_null("height_cm"),
        height_cm=parse_number("height_cm"),
        age_years_text=blank_to_null("age_years"),
        age_years_given=parse_number("age_years"),
        birth_date_text=blank_to_null("birth_date"),
        birth_date=parse_date("birth_date", time_zone),
        pre_pregnancy_weight_kg_text=blank_to_null("pre_pregnancy_weight_kg"),
        pre_pregnancy_weight_kg=parse_number("pre_pregnancy_weight_kg"),
        sex=parse_sex("sex"),
        pregnant=parse_bool("pregnant"),
        updated_at_text=blank_to_null("updated_at"),
        updated_at_order=parse_datetime("updated_at", time_zone),
        **{c: blank_to_null(c) for c in (
            "encounter_id", "facility", "route", "indication", "indication_code",
            "justification", "justification_code", "prescriber_id", "service",
        )},
    ).with_columns(
        # Only a count within PLAUSIBILITY is turned into an integer: the range is checked before any
        # order is expanded into one row per daily dose (10^10 doses would exhaust memory).
        doses=pl.when(pl.col("doses_number").is_between(1, max_doses)).then(pl.col("doses_number"))
        .otherwise(pl.when(pl.col("doses_number").is_null()).then(1))
        .cast(pl.Int64, strict=False),
        age_years=pl.coalesce(
            pl.col("age_years_given"),
            ((pl.col("start").dt.date() - pl.col("birth_date")).dt.total_days() / 365.25),
        ),
    )
    # Within one file an order_id twice is a duplicate (same content) or a conflict (different
    # content: which is right cannot be told, both are quarantined); across files it is a new version.
    in_file = ["order_id", *FILE_OF_ROW]
    with_dupes = parsed.with_columns(
        copies=pl.len().over(in_file),
        versions=pl.col("version").n_unique().over(in_file),
        copy_rank=pl.int_range(pl.len()).over(in_file, order_by="source_row"),
    )
    reason = _reasons(
        (pl.col("order_id").is_null(), "order_id missing"),
        (pl.col("patient_id").is_null(), "patient_id missing"),
        (pl.col("medication").is_null(), "medication missing"),
        (pl.col("start_text").is_null(), "start missing"),
        _not_a_date_reason("start"),
        (
            pl.col("updated_at_text").is_not_null() & pl.col("updated_at_order").is_null(),
            pl.format(f"updated_at is not a date: '{{}}' ({EXPECTED_DATE})", pl.col("updated_at_text").str.slice(0, 40)),
        ),
        (
            pl.col("order_id").is_not_null() & (pl.col("versions") > 1),
            pl.format("order_id appears {} times in one file with different content", pl.col("copies")),
        ),
        (
            pl.col("order_id").is_not_null() & (pl.col("versions") == 1) & (pl.col("copy_rank") > 0),
            "exact duplicate of an earlier row of the file with the same order_id",
        ),
        (
            pl.col("doses_number").is_not_null()
            & ((pl.col("doses_number") < 1) | (pl.col("doses_number") != pl.col("doses_number").round(0))),
            "doses must be a whole number of at least 1",
        ),
        (
            pl.col("doses_number") > max_doses,
            pl.format(f"doses {{}} is above the plausible {max_doses:g} daily doses of one order", short_number(pl.col("doses_number"))),
        ),
        (pl.col("weight_kg") <= 0, "weight_kg must be above zero"),
        (pl.col("height_cm") <= 0, "height_cm must be above zero"),
    )
    dose_low, dose_high = PLAUSIBILITY["dose"]
    checked = with_dupes.with_columns(
        reason=reason,
        dose_problem=_reasons(
            (pl.col("dose_text").is_null(), "dose missing"),
            (
                pl.col("dose_text").is_not_null() & pl.col("dose").is_null()
                & pl.col("dose_text").str.contains(DOSE_RANGE),
                pl.format("dose is not a number: '{}' is a range, not one amount", pl.col("dose_text").str.slice(0, 40)),
            ),
            (
                pl.col("dose_text").is_not_null() & pl.col("dose").is_null()
                & ~pl.col("dose_text").str.contains(DOSE_RANGE),
                pl.format("dose is not a number: '{}'", pl.col("dose_text").str.slice(0, 40)),
            ),
            (pl.col("dose") <= dose_low, "dose must be above zero"),
            (
                pl.col("dose") > dose_high,
                pl.format(f"dose {{}} is above the plausible {dose_high:g} (in any unit)", short_number(pl.col("dose"))),
            ),
            (pl.col("dose_unit_text").is_null(), "dose_unit missing"),
            (
                pl.col("dose_unit_text").is_not_null() & pl.col("dose_unit").is_null(),
                pl.format("unknown dose unit '{}'", pl.col("dose_unit_text").str.slice(0, 20)),
            ),
            (
                pl.col("doses_text").is_not_null() & pl.col("doses_number").is_null(),
                pl.format("doses not usable: {}", pl.col("doses_text").str.slice(0, 80)),
            ),
            *_unreadable_or_implausible("weight_kg", "kg"),
            *_unreadable_or_implausible("height_cm", "cm"),
            _not_a_number("pre_pregnancy_weight_kg"),
            _implausible("pre_pregnancy_weight_kg", "kg"),
            _not_a_number("age_years", pl.col("age_years_given")),
            _not_a_date_reason("birth_date"),
            _implausible("age_years", "years"),
            _implausible_start_year(),
        ),
    )
    valid = checked.filter(pl.col("reason").is_null()).drop(
        "reason", "copies", "versions", "copy_rank", "doses_number", "doses_text", "start_text", "birth_date",
        "weight_kg_text", "height_cm_text", "age_years_text", "age_years_given", "birth_date_text",
        "pre_pregnancy_weight_kg_text", "updated_at_text",
    )
    rejected = quarantine_rows(checked.filter(pl.col("reason").is_not_null()), "orders")
    return valid, rejected


#: Spellings of lab test names mapped to the canonical test.
LAB_TEST_SPELLINGS = {
    "creatinine": "creatinine", "creat": "creatinine", "cr": "creatinine", "scr": "creatinine",
    "serum creatinine": "creatinine",
    "egfr": "egfr", "gfr": "egfr", "estimated gfr": "egfr",
    "crcl": "crcl", "creatinine clearance": "crcl",
    "hemoglobin": "hemoglobin", "haemoglobin": "hemoglobin", "hgb": "hemoglobin", "hb": "hemoglobin",
    "platelets": "platelets", "platelet count": "platelets", "plt": "platelets",
    "iga": "iga", "immunoglobulin a": "iga",
    "igg": "igg", "immunoglobulin g": "igg",
}


def lab_rows_used() -> pl.Expr:
    """Lab rows the audit reads: a test it uses, or no test at all (to quarantine the row)."""
    test = blank_to_null("test").str.to_lowercase()
    return test.is_null() | test.is_in(list(LAB_TEST_SPELLINGS))


def check_labs(text_rows: pl.LazyFrame, time_zone: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed lab results of the tests the audit uses, and rejected rows with their reason."""
    value = blank_to_null("value").str.replace(r"^[<>]=?\s*", "").cast(pl.Float64, strict=False)
    parsed = with_identity(text_rows, "labs").with_columns(
        raw=raw_json("labs"),
        patient_id=blank_to_null("patient_id"),
        collected_at_text=blank_to_null("collected_at"),
        collected_at=parse_datetime("collected_at", time_zone),
        test_text=blank_to_null("test"),
        test=blank_to_null("test").str.to_lowercase().replace_strict(
            LAB_TEST_SPELLINGS, default=None, return_dtype=pl.String
        ),
        value_text=blank_to_null("value"),
        value=pl.when(value.is_finite()).then(value),
        unit=blank_to_null("unit"),
        ref_low_text=blank_to_null("ref_low"),
        ref_low=parse_number("ref_low"),
        ref_high_text=blank_to_null("ref_high"),
        ref_high=parse_number("ref_high"),
    )
    checked = parsed.with_columns(
        reason=_reasons(
            (pl.col("patient_id").is_null(), "patient_id missing"),
            (pl.col("collected_at_text").is_null(), "collected_at missing"),
            _not_a_date_reason("collected_at"),
            (pl.col("test_text").is_null(), "test missing"),
            (
                pl.col("value").is_null(),
                pl.format("value is not a number: '{}'", pl.col("value_text").fill_null("").str.slice(0, 40)),
            ),
            _implausible("lab_value", "(in the lab's unit)", "value"),
            _not_a_number("ref_low"),
            _implausible("lab_reference", "(in the lab's unit)", "ref_low"),
            _not_a_number("ref_high"),
            _implausible("lab_reference", "(in the lab's unit)", "ref_high"),
        )
    )
    # Results of tests the audit does not use are not judged (a lab extract may hold every test).
    valid = checked.filter(pl.col("reason").is_null(), pl.col("test").is_not_null()).select(
        "patient_id", "collected_at", "test", "value", "unit", "ref_low", "ref_high", "source_file", "source_row",
        "version", "tonight", "run_seq", "file_pos",
    )
    rejected = quarantine_rows(checked.filter(pl.col("reason").is_not_null()), "labs")
    return valid, rejected


def check_procedures(text_rows: pl.LazyFrame, time_zone: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed procedure rows, and rejected rows with their reason."""
    parsed = with_identity(text_rows, "procedures").with_columns(
        raw=raw_json("procedures"),
        patient_id=blank_to_null("patient_id"),
        performed_at_text=blank_to_null("performed_at"),
        performed_at=parse_datetime("performed_at", time_zone),
        procedure=blank_to_null("procedure"),
    )
    checked = parsed.with_columns(
        reason=_reasons(
            (pl.col("patient_id").is_null(), "patient_id missing"),
            (pl.col("procedure").is_null(), "procedure missing"),
            (pl.col("performed_at_text").is_null(), "performed_at missing"),
            _not_a_date_reason("performed_at"),
        )
    )
    valid = checked.filter(pl.col("reason").is_null()).select(
        "patient_id", "performed_at", "procedure", "source_file", "source_row", "version", "tonight", "run_seq", "file_pos",
    )
    rejected = quarantine_rows(checked.filter(pl.col("reason").is_not_null()), "procedures")
    return valid, rejected


def date_layout_problem(text_rows: pl.LazyFrame, extract: str, time_zone: str, max_share: float) -> str | None:
    """Why a file of the extract is refused: more than `max_share` of the non-empty values of one of its
    date columns are not a date in an accepted layout (None when every file is fine).

    A file whose dates are mostly in another layout (a day-first UK extract, a month-first US one) is
    never read by guessing: one line names the file, the column, the share, the first value and the
    layout(s) to declare in a mapping profile.
    """
    columns = [c for c in DATE_COLUMNS[extract] if c in text_rows.collect_schema().names()]
    if not columns:
        return None
    per_column = [
        # The date is parsed once per row (as a column), then counted.
        text_rows.select("source_file", text=blank_to_null(column))
        .with_columns(failed=pl.col("text").is_not_null() & parse_datetime_text(pl.col("text"), time_zone).is_null())
        .group_by("source_file")
        .agg(
            pl.lit(column).alias("column"),
            pl.lit(position).alias("position"),
            pl.col("text").is_not_null().sum().alias("filled"),
            pl.col("failed").sum().alias("failed"),
            pl.col("text").filter(pl.col("failed")).head(200).alias("examples"),
        )
        for position, column in enumerate(columns)
    ]
    refused = (
        pl.concat(per_column)
        .filter(pl.col("filled") > 0, pl.col("failed") / pl.col("filled") > max_share)
        .sort("source_file", "position")
        .head(1)
        .collect(engine="in-memory")
    )
    if refused.is_empty():
        return None
    first = refused.row(0, named=True)
    return (
        f"{extract} extract {first['source_file']}: {first['failed'] / first['filled']:.0%} of '{first['column']}' "
        f"values are not ISO 8601 (first: '{first['examples'][0][:40]}'); {suggest_layout(first['examples'])}"
    )


#: Layouts an error message may suggest for dates that are not ISO 8601 (suggested to the user, who
#: declares the right one in a mapping profile: never used to read a date).
SUGGESTED_LAYOUTS = (
    ("%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S"), ("%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M"),
    ("%d/%m/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M:%S %p"), ("%d/%m/%Y %I:%M %p", "%m/%d/%Y %I:%M %p"),
    ("%d/%m/%Y", "%m/%d/%Y"), ("%d.%m.%Y %H:%M", "%m.%d.%Y %H:%M"), ("%d.%m.%Y", "%m.%d.%Y"),
    ("%d-%m-%Y %H:%M", "%m-%d-%Y %H:%M"), ("%d-%m-%Y", "%m-%d-%Y"), ("%d/%m/%y", "%m/%d/%y"),
    ("%d-%b-%Y", "%d-%b-%Y"), ("%d %b %Y", "%d %b %Y"), ("%Y/%m/%d", "%Y/%m/%d"),
)


def suggest_layout(examples: Sequence[str]) -> str:
    """What to declare for dates that are not ISO 8601: the layouts that read every example, or how to find it."""
    values = pl.Series("x", list(examples), dtype=pl.String).str.strip_chars()
    fitting: list[str] = []
    for day_first, month_first in SUGGESTED_LAYOUTS:
        for layout in dict.fromkeys((day_first, month_first)):
            parsed = pl.select(parse_with_layouts(pl.lit(values), [layout])).to_series()
            if parsed.null_count() == 0 and layout not in fitting:
                fitting.append(layout)
        if fitting:
            break
    if not fitting:
        return 'declare the layout in a mapping profile: [dates] formats = ["..."] (strptime codes, docs/ingest.md)'
    declared = [f'["{layout}"]' for layout in fitting]
    if len(declared) > 1:
        return f"declare the layout in a mapping profile: [dates] formats = {declared[0]} or {declared[1]} (the values fit both)"
    return f"declare the layout in a mapping profile: [dates] formats = {declared[0]}"


# ------------------------------------------------------------------------------------ accounting
@dataclass(frozen=True)
class OrderAccounting:
    """Where every row of an orders extract went: the counts must add up to the rows read.

    ivig             IVIG rows audited (one row may be an order of several daily doses)
    passed_through   other medications, kept as evidence (aspirin, ...), not audited
    out_of_scope     immunoglobulins that are not IVIG (subcutaneous, hyperimmune globulins)
    unrecognised_ig  names that look like an immunoglobulin but match no product (data-quality finding)
    quarantined      rows rejected with file, row and reason (orders extract only)
    """

    rows_read: int
    ivig: int
    passed_through: int
    out_of_scope: int
    unrecognised_ig: int
    quarantined: int

    @property
    def accounted(self) -> int:
        """Rows that went somewhere."""
        return self.ivig + self.passed_through + self.out_of_scope + self.unrecognised_ig + self.quarantined

    @property
    def unaccounted(self) -> int:
        """Rows read minus rows accounted for (0 when nothing was lost or counted twice)."""
        return self.rows_read - self.accounted

    @property
    def balanced(self) -> bool:
        """Whether rows_read == ivig + passed_through + out_of_scope + unrecognised_ig + quarantined."""
        return self.unaccounted == 0

    def check(self) -> "OrderAccounting":
        """Raise AssertionError with the numbers when rows were lost or counted twice; return self."""
        if not self.balanced:
            raise AssertionError(f"orders not accounted for: {self.describe()}")
        return self

    def describe(self) -> str:
        """One line with every count (no patient data)."""
        return (
            f"read {self.rows_read} = IVIG {self.ivig} + passed through {self.passed_through} + out of scope "
            f"{self.out_of_scope} + unrecognised Ig {self.unrecognised_ig} + quarantined {self.quarantined}"
            + ("" if self.balanced else f" (difference {self.unaccounted})")
        )


def _height(value: Any) -> int:
    """A count from an int or the height of a frame."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return int(value.height)


def accounting(
    rows_read: int,
    *,
    ivig: Any,
    passed_through: Any,
    out_of_scope: Any,
    unrecognised_ig: Any,
    quarantine: Any,
) -> OrderAccounting:
    """The order accounting from counts or frames (pure; frames count their rows).

    `quarantine` may be the run's whole quarantine frame: only rows of the orders extract count.
    """
    if quarantine is not None and not isinstance(quarantine, int) and "extract" in quarantine.columns:
        quarantine = quarantine.filter(pl.col("extract") == "orders")
    return OrderAccounting(
        rows_read=int(rows_read),
        ivig=_height(ivig),
        passed_through=_height(passed_through),
        out_of_scope=_height(out_of_scope),
        unrecognised_ig=_height(unrecognised_ig),
        quarantined=_height(quarantine),
    )


def accounting_of(result: Any) -> OrderAccounting:
    """The order accounting of tonight's rows of a `PreparedOrders` or an `AuditResult` (pipeline.audit)."""
    return accounting(
        result.rows_read,
        ivig=result.rows_ivig,
        passed_through=result.rows_passed_through,
        out_of_scope=result.rows_out_of_scope,
        unrecognised_ig=result.rows_unrecognised_ig,
        quarantine=result.rows_quarantined_orders,
    )