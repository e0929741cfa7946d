"""Parse extract text into typed columns and split each extract into valid rows and quarantined rows."""

from __future__ import annotations

import polars as pl

from dataclasses import dataclass
from typing import Any, Sequence

from checks.inputs import EXTRACT_COLUMNS, PLAUSIBILITY

DT = pl.Datetime("us")

#: Date-time layouts accepted in extracts, tried in this order.
DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
)
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%Y%m%d")
#: Years a parsed date may have (inclusive): the range of Python's datetime, which the report reads.
REPRESENTABLE_YEARS = (1, 9999)

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
    """A text number as Float64: thousands separators removed, anything else non-numeric is null."""
    text = blank_to_null(column)
    grouped = text.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
    cleaned = pl.when(grouped).then(text.str.replace_all(",", "")).otherwise(text)
    return cleaned.cast(pl.Float64, strict=False)


def parse_datetime_text(text: pl.Expr, formats: Sequence[str] = ()) -> pl.Expr:
    """A trimmed text expression as a date-time: `formats` first (a mapping profile's), then the accepted layouts."""
    candidates = []
    for fmt in formats:
        has_time = any(code in fmt for code in ("%H", "%I", "%M", "%S", "%T", "%R", "%c"))
        if has_time:
            candidates.append(text.str.strptime(DT, fmt, strict=False))
        else:
            candidates.append(text.str.strptime(pl.Date, fmt, strict=False).cast(DT))
    candidates += [text.str.strptime(DT, fmt, strict=False) for fmt in DATETIME_FORMATS]
    candidates += [text.str.strptime(pl.Date, fmt, strict=False).cast(DT) for fmt in DATE_FORMATS]
    parsed = pl.coalesce(candidates)
    # %Y also reads '-2026' and '0000': years no calendar (nor Python's datetime, DuckDB's readers or the
    # report) can represent. Such text is not a date.
    return pl.when(parsed.dt.year().is_between(*REPRESENTABLE_YEARS)).then(parsed)


def parse_datetime(column: str) -> pl.Expr:
    """A text date-time in any accepted layout (a bare date is midnight); unparseable is null."""
    return parse_datetime_text(blank_to_null(column))


def parse_date(column: str) -> pl.Expr:
    """A text date (or date-time) as a Date; unparseable is null."""
    return parse_datetime(column).dt.date()


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


def _unreadable_or_implausible(column: str, unit: str) -> list[tuple[pl.Expr, pl.Expr]]:
    """IVIG dose problems of a weight or height: text that is not a number, or a value outside PLAUSIBILITY."""
    low, high = PLAUSIBILITY[column]
    value = pl.col(column)
    return [
        (
            pl.col(f"{column}_text").is_not_null() & value.is_null(),
            pl.format(f"{column} is not a number: '{{}}'", pl.col(f"{column}_text").str.slice(0, 40)),
        ),
        (
            (value > 0) & ((value < low) | (value > high)),
            pl.format(
                f"{column} {{}} is outside the plausible {low:g}-{high:g} {unit}",
                value.round(2).cast(pl.String).str.replace(r"\.0$", ""),
            ),
        ),
    ]


def _implausible_start_year() -> tuple[pl.Expr, pl.Expr]:
    """IVIG dose problem: an order start outside PLAUSIBILITY['start_year'] (0206 for 2026, 9999 for unknown)."""
    low, high = PLAUSIBILITY["start_year"]
    year = pl.col("start").dt.year()
    return (
        (year < low) | (year > high),
        pl.format(f"start {{}} is outside the plausible years {low:g}-{high:g}", pl.col("start").dt.date().cast(pl.String)),
    )


def check_orders(text_rows: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed order rows that pass the structural checks, and the rejected rows with their reason."""
    parsed = with_identity(text_rows, "orders").with_columns(
        raw=raw_json("orders"),
        order_id=blank_to_null("order_id"),
        patient_id=blank_to_null("patient_id"),
        medication=blank_to_null("medication"),
        start_text=blank_to_null("start"),
        start=parse_datetime("start"),
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
        age_years=parse_number("age_years"),
        birth_date=parse_date("birth_date"),
        pre_pregnancy_weight_kg=parse_number("pre_pregnancy_weight_kg"),
        sex=parse_sex("sex"),
        pregnant=parse_bool("pregnant"),
        updated_at_text=blank_to_null("updated_at"),
        updated_at_order=parse_datetime("updated_at"),
        **{c: blank_to_null(c) for c in (
            "encounter_id", "facility", "route", "indication", "indication_code",
            "justification", "justification_code", "prescriber_id", "service",
        )},
    ).with_columns(
        doses=pl.col("doses_number").fill_null(1).cast(pl.Int64, strict=False),
        age_years=pl.coalesce(
            pl.col("age_years"),
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
        (
            pl.col("start_text").is_not_null() & pl.col("start").is_null(),
            pl.format("start is not a date: '{}'", pl.col("start_text").str.slice(0, 40)),
        ),
        (
            pl.col("updated_at_text").is_not_null() & pl.col("updated_at_order").is_null(),
            pl.format("updated_at is not a date: '{}'", pl.col("updated_at_text").str.slice(0, 40)),
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
        (pl.col("weight_kg") <= 0, "weight_kg must be above zero"),
        (pl.col("height_cm") <= 0, "height_cm must be above zero"),
    )
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
            (pl.col("dose") <= 0, "dose must be above zero"),
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
            _implausible_start_year(),
        ),
    )
    valid = checked.filter(pl.col("reason").is_null()).drop(
        "reason", "copies", "versions", "copy_rank", "doses_number", "doses_text", "start_text", "birth_date",
        "weight_kg_text", "height_cm_text", "updated_at_text",
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


def check_labs(text_rows: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed lab results of the tests the audit uses, and rejected rows with their reason."""
    parsed = with_identity(text_rows, "labs").with_columns(
        raw=raw_json("labs"),
        patient_id=blank_to_null("patient_id"),
        collected_text=blank_to_null("collected_at"),
        collected_at=parse_datetime("collected_at"),
        test_text=blank_to_null("test"),
        test=blank_to_null("test").str.to_lowercase().replace_strict(
            LAB_TEST_SPELLINGS, default=None, return_dtype=pl.String
        ),
        value_text=blank_to_null("value"),
        value=blank_to_null("value").str.replace(r"^[<>]=?\s*", "").pipe(
            lambda e: e.cast(pl.Float64, strict=False)
        ),
        unit=blank_to_null("unit"),
        ref_low=parse_number("ref_low"),
        ref_high=parse_number("ref_high"),
    )
    checked = parsed.with_columns(
        reason=_reasons(
            (pl.col("patient_id").is_null(), "patient_id missing"),
            (pl.col("collected_text").is_null(), "collected_at missing"),
            (
                pl.col("collected_text").is_not_null() & pl.col("collected_at").is_null(),
                pl.format("collected_at is not a date: '{}'", pl.col("collected_text").str.slice(0, 40)),
            ),
            (pl.col("test_text").is_null(), "test missing"),
            (
                pl.col("value").is_null(),
                pl.format("value is not a number: '{}'", pl.col("value_text").fill_null("").str.slice(0, 40)),
            ),
        )
    )
    # Results of tests the audit does not use are not judged (a lab extract may hold every test).
    valid = checked.filter(pl.col("reason").is_null(), pl.col("test").is_not_null()).select(
        "patient_id", "collected_at", "test", "value", "unit", "ref_low", "ref_high", "source_file", "source_row",
        "version", "tonight", "run_seq", "file_pos",
    )
    rejected = quarantine_rows(checked.filter(pl.col("reason").is_not_null()), "labs")
    return valid, rejected


def check_procedures(text_rows: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Typed procedure rows, and rejected rows with their reason."""
    parsed = with_identity(text_rows, "procedures").with_columns(
        raw=raw_json("procedures"),
        patient_id=blank_to_null("patient_id"),
        performed_text=blank_to_null("performed_at"),
        performed_at=parse_datetime("performed_at"),
        procedure=blank_to_null("procedure"),
    )
    checked = parsed.with_columns(
        reason=_reasons(
            (pl.col("patient_id").is_null(), "patient_id missing"),
            (pl.col("procedure").is_null(), "procedure missing"),
            (pl.col("performed_text").is_null(), "performed_at missing"),
            (
                pl.col("performed_text").is_not_null() & pl.col("performed_at").is_null(),
                pl.format("performed_at is not a date: '{}'", pl.col("performed_text").str.slice(0, 40)),
            ),
        )
    )
    valid = checked.filter(pl.col("reason").is_null()).select(
        "patient_id", "performed_at", "procedure", "source_file", "source_row", "version", "tonight", "run_seq", "file_pos",
    )
    rejected = quarantine_rows(checked.filter(pl.col("reason").is_not_null()), "procedures")
    return valid, rejected


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