"""FHIR R4 NDJSON (bulk export) as canonical order rows: MedicationRequest or MedicationAdministration resources are
the order rows; Observation resources (LOINC body weight / body height) give weight and height as of the
order time per patient; Patient resources give sex and birth date. Vectorised, no per-row Python.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import polars as pl

from checks.inputs import EXTRACT_COLUMNS
from pipeline.contract.parse import parse_with_layouts
from pipeline.ingest.errors import ExtractError, parse_error_message
from pipeline.ingest.files import (
    NDJSON_SUFFIXES,
    SourceFile,
    _check_text,
    discover,
    hash_in_background,
)
from pipeline.ingest.mappings import (
    HEIGHT_UNITS,
    ISO_READ,
    WEIGHT_UNITS,
    Mapping,
    _frequency_key,
)

# ------------------------------------------------------------------------------------ FHIR R4 NDJSON
_CODING = pl.List(pl.Struct({"system": pl.String, "code": pl.String, "display": pl.String}))


_CODEABLE = pl.Struct({"text": pl.String, "coding": _CODING})


_QUANTITY = pl.Struct({"value": pl.String, "unit": pl.String, "code": pl.String, "system": pl.String})


_REFERENCE = pl.Struct({"reference": pl.String, "display": pl.String})


_PERIOD = pl.Struct({"start": pl.String, "end": pl.String})


#: The FHIR R4 elements the audit reads (everything else in a resource is ignored); numbers read as text.
FHIR_SCHEMA: dict[str, pl.DataType] = {
    "resourceType": pl.String,
    "id": pl.String,
    "status": pl.String,
    "subject": _REFERENCE,
    "encounter": _REFERENCE,
    "context": _REFERENCE,
    "authoredOn": pl.String,
    "effectiveDateTime": pl.String,
    "effectivePeriod": _PERIOD,
    "medicationCodeableConcept": _CODEABLE,
    "medicationReference": _REFERENCE,
    "dosageInstruction": pl.List(
        pl.Struct(
            {
                "text": pl.String,
                "route": _CODEABLE,
                "timing": pl.Struct(
                    {
                        "repeat": pl.Struct(
                            {
                                "boundsPeriod": _PERIOD,
                                "count": pl.String,
                                "frequency": pl.String,
                                "period": pl.String,
                                "periodUnit": pl.String,
                            }
                        ),
                        "code": _CODEABLE,
                    }
                ),
                "doseAndRate": pl.List(pl.Struct({"doseQuantity": _QUANTITY})),
            }
        )
    ),
    "dosage": pl.Struct({"text": pl.String, "route": _CODEABLE, "dose": _QUANTITY}),
    "reasonCode": pl.List(_CODEABLE),
    "requester": _REFERENCE,
    "note": pl.List(pl.Struct({"text": pl.String})),
    "code": _CODEABLE,
    "valueQuantity": _QUANTITY,
    "gender": pl.String,
    "birthDate": pl.String,
}


def _ref_id(reference: pl.Expr) -> pl.Expr:
    """'Patient/123' or 'urn:uuid:abc' -> '123' / 'abc'."""
    return blank_to_null_expr(reference.str.replace(r"^.*[/:]", ""))


def blank_to_null_expr(expr: pl.Expr) -> pl.Expr:
    text = expr.str.strip_chars()
    return pl.when(text.str.len_chars() > 0).then(text).otherwise(None)


def _codeable_text(concept: pl.Expr) -> pl.Expr:
    """A CodeableConcept's text, else its first coding's display."""
    return pl.coalesce(
        blank_to_null_expr(concept.struct.field("text")),
        blank_to_null_expr(concept.struct.field("coding").list.eval(pl.element().struct.field("display")).list.drop_nulls().list.first()),
    )


def _coding_code(concept: pl.Expr, system_pattern: str) -> pl.Expr:
    """The code of a CodeableConcept's first coding whose system matches the pattern (case-insensitive)."""
    return concept.struct.field("coding").list.eval(
        pl.element().filter(pl.element().struct.field("system").str.to_lowercase().str.contains(system_pattern)).struct.field("code")
    ).list.first()


def read_fhir_file(path: Path, resource_types: Sequence[str]) -> pl.LazyFrame:
    """The resources of the given types in one NDJSON file (source_row = line number)."""
    try:
        lf = pl.scan_ndjson(path, schema=FHIR_SCHEMA, infer_schema_length=None)
        lf = lf.with_row_index("source_row", offset=1).with_columns(
            pl.col("source_row").cast(pl.Int64), pl.lit(str(path)).alias("source_file")
        )
        # Parse the whole file now: a broken line is a clear error before anything is written.
        lf.select(pl.col("resourceType").null_count()).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ExtractError(f"cannot read FHIR NDJSON {path}: {parse_error_message(exc)}") from None
    return lf.filter(pl.col("resourceType").is_in(list(resource_types)))


def _observations(resources_lf: pl.LazyFrame, codes: Sequence[str], factors: dict[str, float], excluded: Sequence[str]) -> pl.LazyFrame:
    """Observation values of the given LOINC codes per patient and time, converted with the unit factors."""
    loinc = pl.col("code").struct.field("coding").list.eval(
        pl.element().struct.field("code").is_in(list(codes))
    ).list.any()
    quantity = pl.col("valueQuantity")
    unit = pl.coalesce(blank_to_null_expr(quantity.struct.field("code")), blank_to_null_expr(quantity.struct.field("unit")))
    factor = unit.str.to_lowercase().str.replace_all(r"[\s.]", "").replace_strict(factors, default=None, return_dtype=pl.Float64)
    return (
        resources_lf.filter(
            (pl.col("resourceType") == "Observation") & loinc.fill_null(False)
            & ~pl.col("status").fill_null("").is_in(list(excluded))
        )
        .select(
            patient_id=_ref_id(pl.col("subject").struct.field("reference")),
            observed_at=parse_with_layouts(
                blank_to_null_expr(pl.coalesce(pl.col("effectiveDateTime"), pl.col("effectivePeriod").struct.field("start"))),
                ISO_READ,
            ),
            value=(quantity.struct.field("value").cast(pl.Float64, strict=False) * factor).round(3),
        )
        .drop_nulls()
        .sort("observed_at")
    )


def _num_text(expr: pl.Expr) -> pl.Expr:
    """A float as short text (2.0 -> '2')."""
    return expr.cast(pl.String).str.replace(r"\.0$", "")


def _fhir_time(expr: pl.Expr) -> pl.Expr:
    """A FHIR dateTime ('2026-06-01T09:00:00+01:00', '2026-06-01') as written: ISO 8601, so the contract
    reads it and converts an offset to the site's time zone (a partial date such as '2026-06' is quarantined)."""
    return blank_to_null_expr(expr)


def fhir_orders(paths: Sequence[Path], mapping: Mapping) -> pl.LazyFrame:
    """Order rows in the canonical text layout from FHIR R4 NDJSON files (vectorised, no per-row Python)."""
    opts = mapping.fhir
    resource = opts["resource"]
    frames = [read_fhir_file(p, (resource, "Observation", "Patient")) for p in paths]
    everything = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    excluded = opts["exclude_status"]
    systems = "|".join(re.escape(s.lower()) for s in opts["code_systems"])
    meds = everything.filter(pl.col("resourceType") == resource)
    medication = pl.coalesce(
        _codeable_text(pl.col("medicationCodeableConcept")),
        blank_to_null_expr(pl.col("medicationReference").struct.field("display")),
    )
    ndc = _coding_code(pl.col("medicationCodeableConcept"), "ndc")
    first_reason = pl.col("reasonCode").list.first()
    reason_code = pl.col("reasonCode").list.eval(
        pl.element().struct.field("coding").list.eval(
            pl.element().filter(pl.element().struct.field("system").str.to_lowercase().str.contains(systems)).struct.field("code")
        ).list.first()
    ).list.drop_nulls().list.first()
    notes = pl.col("note").list.eval(pl.element().struct.field("text")).list.drop_nulls().list.join("; ")
    status = pl.col("status").fill_null("")
    status_problem = pl.when(status.is_in(list(excluded))).then(pl.format("status '{}': not given", status))
    if resource == "MedicationRequest":
        instruction = pl.col("dosageInstruction").list.first()
        quantity = instruction.struct.field("doseAndRate").list.first().struct.field("doseQuantity")
        repeat = instruction.struct.field("timing").struct.field("repeat")
        bounds = repeat.struct.field("boundsPeriod")
        start_text = _fhir_time(pl.coalesce(bounds.struct.field("start"), pl.col("authoredOn")))
        end_text = _fhir_time(bounds.struct.field("end"))
        # Instants for the day count and the as-of joins (an offset gives UTC; both ends alike).
        start_dt, end_dt = parse_with_layouts(start_text, ISO_READ), parse_with_layouts(end_text, ISO_READ)
        days = (end_dt.dt.date() - start_dt.dt.date()).dt.total_days() + 1
        frequency = repeat.struct.field("frequency").cast(pl.Float64, strict=False)
        period = repeat.struct.field("period").cast(pl.Float64, strict=False)
        period_unit = repeat.struct.field("periodUnit")
        count = blank_to_null_expr(repeat.struct.field("count"))
        timing_code = _codeable_text(instruction.struct.field("timing").struct.field("code")).str.to_uppercase()
        daily = (frequency.fill_null(1) == 1) & (period == 1) & (period_unit == "d")
        doses = (
            pl.when(status_problem.is_not_null()).then(status_problem)
            .when(count.is_not_null()).then(count)
            .when(timing_code.is_in([_frequency_key(f) for f in mapping.frequencies["once"]])).then(pl.lit("1"))
            .when(daily & end_dt.is_not_null() & start_dt.is_not_null()).then(days.cast(pl.String))
            .when(daily).then(pl.lit("daily order without an end date: number of doses unknown"))
            .when(repeat.is_not_null() & (frequency.is_not_null() | period.is_not_null()))
            .then(pl.format("timing {} per {} {} is not daily or once: number of doses unknown",
                            _num_text(frequency.fill_null(1)), _num_text(period), period_unit.fill_null("")))
            .otherwise(None)
        )
        route = _codeable_text(instruction.struct.field("route"))
        encounter = pl.col("encounter").struct.field("reference")
        prescriber = pl.coalesce(_ref_id(pl.col("requester").struct.field("reference")), pl.col("requester").struct.field("display"))
    else:
        dosage = pl.col("dosage")
        quantity = dosage.struct.field("dose")
        start_text = _fhir_time(pl.coalesce(pl.col("effectiveDateTime"), pl.col("effectivePeriod").struct.field("start")))
        start_dt = parse_with_layouts(start_text, ISO_READ)
        doses = pl.when(status_problem.is_not_null()).then(status_problem).otherwise(pl.lit("1"))
        route = _codeable_text(dosage.struct.field("route"))
        encounter = pl.coalesce(pl.col("context").struct.field("reference"), pl.col("encounter").struct.field("reference"))
        prescriber = pl.lit(None, dtype=pl.String)
    orders = meds.select(
        order_id=blank_to_null_expr(pl.col("id")),
        patient_id=_ref_id(pl.col("subject").struct.field("reference")),
        encounter_id=_ref_id(encounter),
        medication=medication,
        ndc=ndc,
        dose=blank_to_null_expr(quantity.struct.field("value")),
        dose_unit=pl.coalesce(blank_to_null_expr(quantity.struct.field("unit")), blank_to_null_expr(quantity.struct.field("code"))),
        doses=doses,
        start=start_text,
        start_dt=start_dt,
        route=route,
        indication=_codeable_text(first_reason),
        indication_code=reason_code,
        justification=pl.when(notes.str.len_chars() > 0).then(notes),
        prescriber_id=prescriber,
        source_file=pl.col("source_file"),
        source_row=pl.col("source_row"),
    )
    tolerance = f"{opts['observation_max_age_days']}d"
    weights = _observations(everything, opts["weight_codes"], WEIGHT_UNITS, excluded).rename({"value": "weight_value"})
    heights = _observations(everything, opts["height_codes"], HEIGHT_UNITS, excluded).rename({"value": "height_value"})
    patients = (
        everything.filter(pl.col("resourceType") == "Patient")
        .select(
            patient_id=blank_to_null_expr(pl.col("id")),
            sex=blank_to_null_expr(pl.col("gender")),
            birth_date=blank_to_null_expr(pl.col("birthDate")),
        )
        .drop_nulls("patient_id")
        .unique("patient_id", keep="first")
    )
    timed = orders.filter(pl.col("start_dt").is_not_null() & pl.col("patient_id").is_not_null()).sort("start_dt")
    untimed = orders.filter(pl.col("start_dt").is_null() | pl.col("patient_id").is_null()).with_columns(
        weight_value=pl.lit(None, dtype=pl.Float64), height_value=pl.lit(None, dtype=pl.Float64)
    )
    joined = (
        timed.join_asof(weights, left_on="start_dt", right_on="observed_at", by="patient_id", strategy="backward", tolerance=tolerance, check_sortedness=False)
        .drop("observed_at")
        .join_asof(heights, left_on="start_dt", right_on="observed_at", by="patient_id", strategy="backward",
                   tolerance=tolerance, check_sortedness=False)
        .drop("observed_at")
    )
    combined = pl.concat([joined, untimed], how="diagonal").join(patients, on="patient_id", how="left")
    out = combined.with_columns(weight_kg=_num_text(pl.col("weight_value")), height_cm=_num_text(pl.col("height_value")))
    columns = EXTRACT_COLUMNS["orders"]
    present = set(out.collect_schema().names())
    canonical = out.select(
        *[(pl.col(c) if c in present else pl.lit(None, dtype=pl.String)).cast(pl.String).alias(c) for c in columns],
        "source_file",
        "source_row",
    ).sort("source_file", "source_row")
    # Materialised once here: the medication rows of a night are few, and every later query of the
    # audit would otherwise re-read and re-join the NDJSON files.
    try:
        return canonical.collect().lazy()
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExtractError(f"cannot read FHIR NDJSON {', '.join(map(str, paths))}: {first}") from None


def scan_fhir(paths: Sequence[Path], mapping: "Mapping") -> tuple[pl.LazyFrame, list[SourceFile]]:
    """FHIR R4 NDJSON files (medication resources, Observations, Patients) as canonical order rows."""
    files = discover(paths, NDJSON_SUFFIXES)
    sources: list[SourceFile] = []
    for path in files:
        if path.stat().st_size == 0:
            raise ExtractError(f"orders extract {path} is empty")
        check = _check_text(path)
        if not check.utf8:
            raise ExtractError(f"cannot read {path}: FHIR NDJSON must be UTF-8 text")
        sources.append(SourceFile.of("orders", path, hash_in_background(path)))
    return fhir_orders(files, mapping), sources
