"""The row contract: each extract's rows split into typed valid rows and quarantined rows with their reason."""

from __future__ import annotations

import polars as pl

from checks.inputs import EXTRACT_COLUMNS, PLAUSIBILITY
from pipeline.contract.parse import (
    DATE_COLUMNS,
    DOSE_RANGE,
    EXPECTED_DATE,
    blank_to_null,
    canonical_unit,
    parse_bool,
    parse_date,
    parse_datetime,
    parse_datetime_text,
    parse_number,
    parse_sex,
    short_number,
    suggest_layout,
)

QUARANTINE_COLUMNS = ["extract", "source_file", "source_row", "order_id", "patient_id", "reason", "raw"]


#: Columns a row carries besides its canonical text when they are present: its arrival
#: (pipeline.history), its version text and version time. Checked and quarantined rows keep them.
ROW_IDENTITY = ("tonight", "run_seq", "file_pos", "version", "updated_at_order")


def _reasons(*checks: tuple[pl.Expr, pl.Expr | str]) -> pl.Expr:
    """All failed checks of a row joined into one reason text (null when the row is fine).

    A message that quotes the row is built from `_where_failed` values, so only for the rows it names.
    """
    parts = [
        pl.when(failed).then(message if isinstance(message, pl.Expr) else pl.lit(message))
        for failed, message in checks
    ]
    joined = pl.concat_str(parts, separator="; ", ignore_nulls=True)
    return pl.when(joined.str.len_chars() > 0).then(joined).otherwise(None)


def _where_failed(failed: pl.Expr, value: pl.Expr) -> pl.Expr:
    """`value` on the rows where a check failed, else null: a reason quoting it is text for those rows only."""
    # A message expression is evaluated for every row, whatever its check says: formatting the
    # values of every row (most rows fail no check) cost up to 0.1 s of the checks of 160k order rows.
    return pl.when(failed).then(value)


def _quoting(failed: pl.Expr, template: str, text: pl.Expr, width: int = 40) -> tuple[pl.Expr, pl.Expr]:
    """A check whose reason quotes the row's text (its first `width` characters) at the template's '{}'."""
    return failed, pl.format(template, _where_failed(failed, text).str.slice(0, width))


def _counting(failed: pl.Expr, template: str, value: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """A check whose reason shows a number of the row (short_number) at the template's '{}'."""
    return failed, pl.format(template, short_number(_where_failed(failed, value)))


def raw_json(extract: str) -> pl.Expr:
    """The original text of a row's canonical columns as JSON (kept with a quarantined row)."""
    return pl.struct(list(EXTRACT_COLUMNS[extract])).struct.json_encode()


def version_text(extract: str) -> pl.Expr:
    """The canonical columns of a row, trimmed, as a JSON object of the columns it fills (a blank or
    missing column is left out, and decodes as null): what the row says, whatever file it came in."""
    # Each member is a one-column struct's JSON without its braces, so values are escaped exactly as
    # json_encode does. Most columns of most rows are empty: an object of every column (with its
    # nulls) was 2.3 times longer, and the ledger stored, hashed and committed every byte of it
    # (81 MB against 36 MB for the 162k candidate rows of a 10M-row extract).
    members = [
        pl.when(value.is_not_null()).then(pl.struct(value).struct.json_encode().str.slice(1).str.head(-1))
        for value in (blank_to_null(c).alias(c) for c in EXTRACT_COLUMNS[extract])
    ]
    return pl.concat_str([pl.lit("{"), pl.concat_str(members, separator=",", ignore_nulls=True), pl.lit("}")])


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


def _implausible(limit: str, unit: str, column: str | None = None) -> tuple[pl.Expr, pl.Expr]:
    """A value outside its PLAUSIBILITY limits (checks/inputs.py), with the value and the limits as the reason.

    `limit` names the PLAUSIBILITY entry; `column` the value checked (the entry's name by default).
    """
    low, high = PLAUSIBILITY[limit]
    column = column or limit
    value = pl.col(column)
    return _counting((value < low) | (value > high), f"{column} {{}} is outside the plausible {low:.10g}-{high:.10g} {unit}", value)


def _not_a_number(column: str, value: pl.Expr | None = None) -> tuple[pl.Expr, pl.Expr]:
    """Text in a numeric column that is not a finite number (NaN, inf, '12 stone')."""
    text = pl.col(f"{column}_text")
    value = pl.col(column) if value is None else value
    return _quoting(text.is_not_null() & value.is_null(), f"{column} is not a number: '{{}}'", text)


def _unreadable_or_implausible(column: str, unit: str) -> list[tuple[pl.Expr, pl.Expr]]:
    """IVIG dose problems of a weight or height: text that is not a number, or a value above zero outside
    PLAUSIBILITY (zero and below are a structural reason of every row)."""
    failed, message = _implausible(column, unit)
    return [_not_a_number(column), ((pl.col(column) > 0) & failed, message)]


def _not_a_date_reason(column: str) -> tuple[pl.Expr, pl.Expr]:
    """A date cell that holds text but no date in an accepted layout: the reason names the layout expected."""
    text = pl.col(f"{column}_text")
    return _quoting(text.is_not_null() & pl.col(column).is_null(), f"{column} is not a date: '{{}}' ({EXPECTED_DATE})", text)


def _implausible_start_year() -> tuple[pl.Expr, pl.Expr]:
    """IVIG dose problem: an order start outside PLAUSIBILITY['start_year'] (0206 for 2026, 9999 for unknown)."""
    low, high = PLAUSIBILITY["start_year"]
    year = pl.col("start").dt.year()
    failed = (year < low) | (year > high)
    return (
        failed,
        pl.format(f"start {{}} is outside the plausible years {low:g}-{high:g}", _where_failed(failed, pl.col("start")).dt.date().cast(pl.String)),
    )


def check_orders(text_rows: pl.LazyFrame, time_zone: str, *, has_identity: bool = False) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed order rows that pass the structural checks, and the rejected rows with their reason.

    Dates are read as ISO 8601 in the site's `time_zone` (rule pack setting `site_timezone`).
    `has_identity`: the rows went through `with_identity` already (a second pass would encode every
    version text again, to keep the one each row has: 0.17 s per 160k rows).
    """
    max_doses = PLAUSIBILITY["doses"][1]
    parsed = (text_rows if has_identity else with_identity(text_rows, "orders")).with_columns(
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
        # A later copy is any but the file's first row of its order_id (a grouped minimum: a rank
        # ordered within each group sorted every group, 0.16 s of the checks of 160k rows).
        later_copy=pl.col("source_row") > pl.col("source_row").min().over(in_file),
    )
    reason = _reasons(
        (pl.col("order_id").is_null(), "order_id missing"),
        (pl.col("patient_id").is_null(), "patient_id missing"),
        (pl.col("medication").is_null(), "medication missing"),
        (pl.col("start_text").is_null(), "start missing"),
        _not_a_date_reason("start"),
        _quoting(
            pl.col("updated_at_text").is_not_null() & pl.col("updated_at_order").is_null(),
            f"updated_at is not a date: '{{}}' ({EXPECTED_DATE})", pl.col("updated_at_text"),
        ),
        (
            conflicting := pl.col("order_id").is_not_null() & (pl.col("versions") > 1),
            pl.format("order_id appears {} times in one file with different content", _where_failed(conflicting, pl.col("copies"))),
        ),
        (
            pl.col("order_id").is_not_null() & (pl.col("versions") == 1) & pl.col("later_copy"),
            "exact duplicate of an earlier row of the file with the same order_id",
        ),
        (
            pl.col("doses_number").is_not_null()
            & ((pl.col("doses_number") < 1) | (pl.col("doses_number") != pl.col("doses_number").round(0))),
            "doses must be a whole number of at least 1",
        ),
        _counting(
            pl.col("doses_number") > max_doses,
            f"doses {{}} is above the plausible {max_doses:g} daily doses of one order", pl.col("doses_number"),
        ),
        (pl.col("weight_kg") <= 0, "weight_kg must be above zero"),
        (pl.col("height_cm") <= 0, "height_cm must be above zero"),
    )
    dose_low, dose_high = PLAUSIBILITY["dose"]
    # Only a dose that is not a number is matched against the range pattern (a regex per row).
    dose_is_a_range = _where_failed(pl.col("dose_text").is_not_null() & pl.col("dose").is_null(), pl.col("dose_text")).str.contains(DOSE_RANGE)
    checked = with_dupes.with_columns(
        reason=reason,
        dose_problem=_reasons(
            (pl.col("dose_text").is_null(), "dose missing"),
            _quoting(
                pl.col("dose_text").is_not_null() & pl.col("dose").is_null() & dose_is_a_range,
                "dose is not a number: '{}' is a range, not one amount", pl.col("dose_text"),
            ),
            _quoting(
                pl.col("dose_text").is_not_null() & pl.col("dose").is_null() & ~dose_is_a_range,
                "dose is not a number: '{}'", pl.col("dose_text"),
            ),
            (pl.col("dose") <= dose_low, "dose must be above zero"),
            _counting(pl.col("dose") > dose_high, f"dose {{}} is above the plausible {dose_high:g} (in any unit)", pl.col("dose")),
            (pl.col("dose_unit_text").is_null(), "dose_unit missing"),
            _quoting(
                pl.col("dose_unit_text").is_not_null() & pl.col("dose_unit").is_null(),
                "unknown dose unit '{}'", pl.col("dose_unit_text"), width=20,
            ),
            _quoting(
                pl.col("doses_text").is_not_null() & pl.col("doses_number").is_null(),
                "doses not usable: {}", pl.col("doses_text"), width=80,
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
        "reason", "copies", "versions", "later_copy", "doses_number", "doses_text", "start_text", "birth_date",
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
            _quoting(pl.col("value").is_null(), "value is not a number: '{}'", pl.col("value_text").fill_null("")),
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
