"""Reading one cell: text to number, date, sex, yes/no and dose unit, never by guessing (ISO 8601 dates, or a mapping profile's declared layouts)."""

from __future__ import annotations

from typing import Sequence

import polars as pl

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


def short_number(value: pl.Expr) -> pl.Expr:
    """A number as short text for a reason (2 decimals, no trailing .0)."""
    return value.round(2).cast(pl.String).str.replace(r"\.0$", "")


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
