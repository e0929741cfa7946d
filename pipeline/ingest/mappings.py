"""Column-mapping profiles: a site's own extract (columns, codes, units, date formats) onto the canonical columns.

A profile is a TOML file (shipped ones in `pipeline/data/mappings/`, documented in docs/ingest.md).
`load_mapping(name_or_path)` reads one; `pipeline.ingest.tables.scan_extract(paths, extract, mapping=...)`
applies it. Whatever the source looked like, the result is the canonical text layout the rest of
the pipeline reads: every canonical column of the extract as String, plus `source_file` and
`source_row`. Values are only re-spelled here (renamed, recoded, re-dated, converted to kg / cm,
expanded from start/end/frequency into a number of daily doses); judging them stays in
`pipeline.contract`, so a value the profile cannot convert reaches the contract as text and is
quarantined there with its reason.

Two formats:
  table  CSV or Parquet files (Epic Clarity, MIMIC, the canonical layout, any site table)
  fhir   FHIR R4 NDJSON (bulk export): MedicationRequest or MedicationAdministration resources are
         the order rows; Observation resources (LOINC body weight / body height) give weight and
         height as of the order time per patient; Patient resources give sex and birth date."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

import polars as pl
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from checks.inputs import EXTRACT_COLUMNS
from pipeline.config.validation import Strict, deep_merge, describe
from pipeline.contract.parse import DATE_COLUMNS, ISO_DATE_LAYOUTS, ISO_DATETIME_LAYOUTS, ISO_OFFSET_LAYOUTS, blank_to_null, has_offset, parse_with_layouts
from pipeline.ingest.errors import ExtractError, MappingError

log = logging.getLogger(__name__)


FORMATS = ("table", "fhir")


ENCODINGS = ("auto", "utf-8", "cp1252", "latin-1")


FHIR_RESOURCES = ("MedicationRequest", "MedicationAdministration")


#: Spellings of the encodings a profile may name, as the reader names them.
ENCODING_ALIASES = {"utf8": "utf-8", "windows-1252": "cp1252", "latin1": "latin-1", "iso-8859-1": "latin-1"}


#: The profile every profile extends first (its keys are the defaults: separator, encoding, units, frequencies).
BASE_PROFILE = "canonical"


#: Weight units (lower-case, no spaces or dots) and the factor to kilograms.
WEIGHT_UNITS = {
    "kg": 1.0, "kgs": 1.0, "kilo": 1.0, "kilos": 1.0, "kilogram": 1.0, "kilograms": 1.0,
    "lb": 0.45359237, "lbs": 0.45359237, "pound": 0.45359237, "pounds": 0.45359237, "#": 0.45359237,
    "[lb_av]": 0.45359237,
    "g": 0.001, "gm": 0.001, "gram": 0.001, "grams": 0.001,
    "oz": 0.028349523125, "ounce": 0.028349523125, "ounces": 0.028349523125, "[oz_av]": 0.028349523125,
}


#: Height units and the factor to centimetres.
HEIGHT_UNITS = {
    "cm": 1.0, "cms": 1.0, "centimeter": 1.0, "centimeters": 1.0, "centimetre": 1.0, "centimetres": 1.0,
    "in": 2.54, "inch": 2.54, "inches": 2.54, '"': 2.54, "[in_i]": 2.54, "[in_us]": 2.54,
    "m": 100.0, "meter": 100.0, "meters": 100.0, "metre": 100.0, "metres": 100.0,
    "mm": 0.1,
}


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


# ------------------------------------------------------------------------------------ the model
def _unit_key(text: str) -> str:
    return re.sub(r"[\s.]", "", str(text).lower())


def _frequency_key(text: str) -> str:
    return re.sub(r"\s+", " ", str(text).strip().upper())


def _one_of(known: dict[str, float], hint: str):
    def check(unit: str) -> str:
        if _unit_key(unit) not in known:
            raise ValueError(f"unknown unit ({hint})")
        return unit
    return AfterValidator(check)


def _separator(text: str) -> str:
    text = "\t" if text in ("\\t", "tab", "TAB") else text
    if len(text) != 1:
        raise ValueError("must be one character (or \"tab\")")
    return text


def _encoding(text: str) -> str:
    name = ENCODING_ALIASES.get(text.lower().replace("_", "-"), text.lower().replace("_", "-"))
    if name not in ENCODINGS:
        raise ValueError(f"must be one of {', '.join(ENCODINGS)}")
    return name


def _date_layout(layout: str) -> str:
    """A strptime layout that reads back a day, month and year it writes (a typo such as %Q never does)."""
    moment = datetime(2026, 2, 1, 13, 45, 30)
    try:
        text = pl.select(pl.lit(moment).dt.strftime(layout)).item()
        parsed = pl.select(parse_with_layouts(pl.lit(text), [layout])).item()
    except pl.exceptions.PolarsError:
        parsed = None
    if parsed is None or parsed.date() != moment.date():
        raise ValueError("not a date layout that reads back the day, month and year it writes (strptime codes)")
    return layout


ColumnNames = str | Annotated[list[str], Field(min_length=1)]


class ReadOptions(Strict):
    """[read]: how the files are read."""

    separator: Annotated[str, AfterValidator(_separator)]
    encoding: Annotated[str, AfterValidator(_encoding)]


class DateOptions(Strict):
    """[dates]: the layouts of every date column (they replace the non-ISO defaults: there are none)."""

    formats: list[Annotated[str, AfterValidator(_date_layout)]] = Field(min_length=1)


class Frequencies(Strict):
    """[frequencies]: spellings of daily and one-off frequencies (a schedule may replace them)."""

    daily: list[str]
    once: list[str]


class Units(Strict):
    """[orders.units]: the unit of a plain weight or height number, and optional per-row unit columns."""

    weight: Annotated[str, _one_of(WEIGHT_UNITS, "kg, lb, g, oz")]
    height: Annotated[str, _one_of(HEIGHT_UNITS, "cm, in, m")]
    weight_unit_column: Optional[ColumnNames] = None
    height_unit_column: Optional[ColumnNames] = None


class Schedule(Strict):
    """[orders.schedule]: order-level rows turned into a number of daily doses."""

    frequency: ColumnNames
    end: Optional[ColumnNames] = None
    daily: Optional[list[str]] = None
    once: Optional[list[str]] = None


class FhirOptions(Strict):
    """[fhir]: which resources are the orders, and the codes read from Observations."""

    resource: Literal[FHIR_RESOURCES]  # type: ignore[valid-type]
    weight_codes: list[str]
    height_codes: list[str]
    observation_max_age_days: int = Field(ge=1, le=36500)
    exclude_status: list[str]
    code_systems: list[str]


def _template(text: str) -> str:
    if not _PLACEHOLDER.search(text):
        raise ValueError("expected text with {column} placeholders")
    return text


def _extract_section(extract: str) -> type[Strict]:
    """The model of one extract's section ([orders], [labs], [procedures]): keys are its canonical columns."""
    canonical = Literal[tuple(EXTRACT_COLUMNS[extract])]  # type: ignore[valid-type]
    fields: dict[str, Any] = {
        "columns": (Optional[dict[canonical, ColumnNames]], None),
        "templates": (Optional[dict[canonical, Annotated[str, AfterValidator(_template)]]], None),
        "constants": (Optional[dict[canonical, str]], None),
        "values": (Optional[dict[canonical, dict[str, str]]], None),
    }
    if extract == "orders":
        fields |= {"units": (Units, ...), "schedule": (Optional[Schedule], None)}
    return create_model(f"{extract.title()}Section", __base__=Strict, **fields)


class MappingFile(Strict):
    """A mapping profile after its `extends` chain is merged (canonical.toml gives the defaults)."""

    name: str
    description: str
    format: Literal[FORMATS]  # type: ignore[valid-type]
    read: ReadOptions
    frequencies: Frequencies
    dates: Optional[DateOptions] = None
    orders: _extract_section("orders")  # type: ignore[valid-type]
    labs: Optional[_extract_section("labs")] = None  # type: ignore[valid-type]
    procedures: Optional[_extract_section("procedures")] = None  # type: ignore[valid-type]
    fhir: Optional[FhirOptions] = None

    @model_validator(mode="after")
    def _fhir_needs_its_table(self) -> "MappingFile":
        if self.format == "fhir" and self.fhir is None:
            raise ValueError("a fhir profile needs a [fhir] table (resource, weight_codes, ...)")
        return self


@dataclass(frozen=True)
class ExtractMapping:
    """How one extract (orders, labs, procedures) of a site maps onto its canonical columns.

    columns    canonical -> source column names (lower-case), first non-empty wins
    templates  canonical -> text with {source column} placeholders (ids built from several columns)
    constants  canonical -> fixed text (a facility name for a one-site export)
    values     canonical -> {source value (trimmed, lower-case) -> canonical value} (code lists)
    units      weight / height default unit and optional per-row unit columns
    schedule   order-level rows: end column, frequency column and frequency spellings -> `doses`
    """

    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    units: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mapping:
    """A column-mapping profile: how a site's extracts map onto the canonical columns (contract.md)."""

    name: str
    description: str
    source: str
    format: str
    separator: str
    encoding: str
    date_formats: tuple[str, ...] = ()
    extracts: dict[str, ExtractMapping] = field(default_factory=dict)
    fhir: dict[str, Any] = field(default_factory=dict)
    frequencies: dict[str, list[str]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def for_extract(self, extract: str) -> ExtractMapping:
        """The mapping of one extract (an empty one: canonical names, when the profile has none)."""
        return self.extracts.get(extract, ExtractMapping())

    @property
    def config_hash(self) -> str:
        """sha256 of the effective profile (after `extends`), for the run record."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------ loading
def _shipped_dir():
    return resources.files("pipeline").joinpath("data/mappings")


def shipped_mappings() -> list[str]:
    """Names of the profiles shipped in pipeline/data/mappings/."""
    return sorted(p.name[: -len(".toml")] for p in _shipped_dir().iterdir() if p.name.endswith(".toml"))


def _read_profile(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The raw TOML of a profile (its `extends` chain merged, canonical.toml first) and where it came from."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix.lower() == ".toml" or path.exists() or "/" in text_name or "\\" in text_name:
        if not path.is_file():
            raise MappingError(f"mapping profile not found: {path}")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise MappingError(f"cannot read mapping profile {path}: {getattr(exc, 'strerror', None) or exc}") from None
        where, base_dir = str(path), path.parent
    else:
        key = text_name.strip().lower().replace("-", "_")
        entry = _shipped_dir().joinpath(f"{key}.toml")
        if not entry.is_file():
            raise MappingError(
                f"unknown mapping profile '{text_name}': give a TOML file or one of {', '.join(shipped_mappings())}"
            )
        text, where, base_dir = entry.read_text(encoding="utf-8"), f"shipped:{key}", None
    if where in seen:
        raise MappingError(f"mapping profile {where} extends itself (via {' -> '.join(seen)})")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"mapping profile {where} is not valid TOML: {exc}") from None
    parent = raw.pop("extends", None)
    if parent is None and where != f"shipped:{BASE_PROFILE}":
        parent = BASE_PROFILE
    if parent:
        parent_ref = str(parent)
        if base_dir is not None and (parent_ref.endswith(".toml") or "/" in parent_ref):
            parent_ref = str((base_dir / parent_ref).resolve())
        base, _ = _read_profile(parent_ref, (*seen, where))
        base.pop("name", None)
        base.pop("description", None)
        raw = deep_merge(base, raw)
    return raw, where


def _names(value: Any) -> tuple[str, ...]:
    """A source column name or list of names, lower-cased and trimmed."""
    items = [value] if isinstance(value, str) else value
    return tuple(v.strip().lstrip("\ufeff").lower() for v in items)


def _extract_mapping(extract: str, section: Any, frequencies: Frequencies) -> ExtractMapping:
    """One validated extract section as the ExtractMapping the reader applies."""
    units: dict[str, Any] = {}
    schedule: dict[str, Any] = {}
    if extract == "orders":
        units = {
            "weight": section.units.weight,
            "height": section.units.height,
            "weight_unit_column": section.units.weight_unit_column,
            "height_unit_column": section.units.height_unit_column,
        }
        if section.schedule is not None:
            plan = section.schedule
            schedule = {
                "frequency": _names(plan.frequency),
                "daily": tuple(_frequency_key(v) for v in (plan.daily or frequencies.daily)),
                "once": tuple(_frequency_key(v) for v in (plan.once or frequencies.once)),
            } | ({"end": _names(plan.end)} if plan.end else {})
    return ExtractMapping(
        columns={k: _names(v) for k, v in (section.columns or {}).items()},
        templates=dict(section.templates or {}),
        constants=dict(section.constants or {}),
        values={k: {str(src).strip().lower(): dst for src, dst in recode.items()} for k, recode in (section.values or {}).items()},
        units=units,
        schedule=schedule,
    )


def load_mapping(name_or_path: str | Path) -> Mapping:
    """A mapping profile by shipped name (`canonical`, `epic_clarity`, `mimic3`, ...) or TOML path.

    Every profile extends canonical.toml (the defaults) unless its `extends` names another. Raises
    MappingError (an ExtractError: one line, exit status 2) for an unknown name, a bad file, or a key,
    type or value the profile layout does not allow (named with its dotted path and the nearest key).
    """
    raw, where = _read_profile(name_or_path)
    raw.setdefault("name", Path(str(name_or_path)).stem)
    raw.setdefault("description", "")
    try:
        model = MappingFile.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(describe(exc, MappingFile, lambda loc: f"mapping profile {where}")) from None
    extracts = {
        name: _extract_mapping(name, getattr(model, name), model.frequencies)
        for name in ("orders", "labs", "procedures")
        if getattr(model, name) is not None
    }
    return Mapping(
        name=model.name,
        description=model.description,
        source=where,
        format=model.format,
        separator=model.read.separator,
        encoding=model.read.encoding,
        date_formats=tuple(model.dates.formats) if model.dates else (),
        extracts=extracts,
        fhir=model.fhir.model_dump() if model.fhir else {},
        frequencies=model.frequencies.model_dump(),
        raw=raw,
    )


# ------------------------------------------------------------------------------------ table format
def _text(column: str) -> pl.Expr:
    """A source column as trimmed text, empty as null."""
    return blank_to_null(column)


def _resolve(canonical: str, spec: ExtractMapping, present: set[str]) -> tuple[pl.Expr | None, list[str]]:
    """The expression of one canonical column and the source columns it needs but the file lacks."""
    if canonical in spec.constants:
        return pl.lit(spec.constants[canonical], dtype=pl.String), []
    if canonical in spec.templates:
        template = spec.templates[canonical]
        needed = [n.strip().lower() for n in _PLACEHOLDER.findall(template)]
        missing = [n for n in needed if n not in present]
        if missing:
            return None, missing
        parts: list[pl.Expr] = []
        last = 0
        for match in _PLACEHOLDER.finditer(template):
            if match.start() > last:
                parts.append(pl.lit(template[last : match.start()]))
            parts.append(_text(match.group(1).strip().lower()).fill_null(""))
            last = match.end()
        if last < len(template):
            parts.append(pl.lit(template[last:]))
        any_value = pl.any_horizontal([_text(n).is_not_null() for n in needed])
        return pl.when(any_value).then(pl.concat_str(parts)).otherwise(None), []
    sources = spec.columns.get(canonical, (canonical,))
    found = [s for s in sources if s in present]
    if not found:
        return None, list(sources)
    return (pl.coalesce([_text(s) for s in found]) if len(found) > 1 else pl.col(found[0])), []


def _number(text: pl.Expr) -> pl.Expr:
    """A number in text (thousands separators allowed) as Float64, else null."""
    grouped = text.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
    return pl.when(grouped).then(text.str.replace_all(",", "")).otherwise(text).cast(pl.Float64, strict=False)


def _measure(text: pl.Expr, unit_column: pl.Expr | None, default_unit: str, factors: dict[str, float], feet_inches: bool) -> pl.Expr:
    """A weight or height text converted to kg or cm, as text.

    The unit is the one written after the number ('176 lb', '70kg'), else the row's unit column,
    else the profile's default. A value that cannot be converted stays as the source wrote it (with
    its unit), so the contract quarantines the IVIG row with that text as the reason.
    """
    text = _text_of(text)
    parts = text.str.extract_groups(r"^([+-]?\d[\d,]*(?:\.\d+)?|[+-]?\.\d+)\s*([A-Za-z\[\]_#\"]*)\.?$")
    number = _number(parts.struct.field("1"))
    suffix = pl.when(parts.struct.field("2").str.len_chars() > 0).then(parts.struct.field("2"))
    unit = pl.coalesce(suffix, unit_column if unit_column is not None else pl.lit(None, dtype=pl.String), pl.lit(default_unit))
    unit_key = unit.str.to_lowercase().str.replace_all(r"[\s.]", "")
    factor = unit_key.replace_strict(factors, default=None, return_dtype=pl.Float64)
    converted = (number * factor).round(3)
    candidates = [converted]
    if feet_inches:  # 5' 10" or 5 ft 10 in
        fi = text.str.extract_groups(r"^(\d+)\s*(?:'|ft|feet)\s*(?:(\d+(?:\.\d+)?)\s*(?:\"|in|inches)?)?$")
        feet = fi.struct.field("1").cast(pl.Float64, strict=False)
        inches = fi.struct.field("2").cast(pl.Float64, strict=False).fill_null(0.0)
        candidates.insert(0, ((feet * 12 + inches) * 2.54).round(3))
    value = pl.coalesce(candidates)
    unconverted = pl.when(number.is_not_null() & factor.is_null() & suffix.is_null()).then(pl.format("{} {}", text, unit)).otherwise(text)
    as_text = value.cast(pl.String).str.replace(r"\.0$", "")
    return pl.when(text.is_null()).then(None).when(value.is_not_null()).then(as_text).otherwise(unconverted)


def _schedule_doses(spec: ExtractMapping, present: set[str], start_text: pl.Expr, formats: Sequence[str]) -> pl.Expr | None:
    """`doses` from an order's start, end and frequency (null when the row has no frequency)."""
    schedule = spec.schedule
    freq_cols = [c for c in schedule["frequency"] if c in present]
    if not freq_cols:
        return None
    freq = pl.coalesce([_text(c) for c in freq_cols]).str.to_uppercase().str.replace_all(r"\s+", " ")
    end_cols = [c for c in schedule.get("end", ()) if c in present]
    layouts = formats or ISO_READ
    start = parse_with_layouts(start_text, layouts)
    end = parse_with_layouts(pl.coalesce([_text(c) for c in end_cols]), layouts) if end_cols else pl.lit(None, dtype=pl.Datetime("us"))
    days = (end.dt.date() - start.dt.date()).dt.total_days() + 1
    return (
        pl.when(freq.is_null())
        .then(None)
        .when(freq.is_in(list(schedule["once"])))
        .then(pl.lit("1"))
        .when(freq.is_in(list(schedule["daily"])) & start.is_not_null() & end.is_null())
        .then(pl.format("frequency '{}' without an end date: number of doses unknown", freq))
        .when(freq.is_in(list(schedule["daily"])) & (days < 1))
        .then(pl.format("frequency '{}' with an end before the start", freq))
        .when(freq.is_in(list(schedule["daily"])) & start.is_not_null())
        .then(days.cast(pl.String))
        .when(freq.is_in(list(schedule["daily"])))
        .then(None)  # no usable start: the contract names the start
        .otherwise(pl.format("frequency '{}' is not daily or once: number of doses unknown", freq))
    )


def source_columns(mapping: Mapping, extract: str) -> set[str]:
    """The source columns (lower-case) a profile reads for one extract: every other column is never read."""
    spec = mapping.for_extract(extract)
    names: set[str] = set()
    for canonical in EXTRACT_COLUMNS[extract]:
        if canonical in spec.constants:
            continue
        if canonical in spec.templates:
            names |= {n.strip().lower() for n in _PLACEHOLDER.findall(spec.templates[canonical])}
        else:
            names |= set(spec.columns.get(canonical, (canonical,)))
    for key in ("weight_unit_column", "height_unit_column"):
        if spec.units.get(key):
            names |= set(_names(spec.units[key]))
    names |= set(spec.schedule.get("frequency", ())) | set(spec.schedule.get("end", ()))
    return names


def apply_table_mapping(
    lf: pl.LazyFrame, extract: str, mapping: Mapping, path: Path | str, header: Sequence[str] | None = None
) -> pl.LazyFrame:
    """One file's frame (source columns, lower-case names) in the canonical text layout of the extract.

    Raises ExtractError naming the source column(s) when a required canonical column cannot be made.
    `header` is every column name of the file (the frame may hold only those the profile reads).
    """
    spec = mapping.for_extract(extract)
    present = set(lf.collect_schema().names())
    exprs: dict[str, pl.Expr] = {}
    missing_required: list[str] = []
    for canonical, required in EXTRACT_COLUMNS[extract].items():
        expr, missing = _resolve(canonical, spec, present)
        if expr is None:
            if required:
                wanted = " or ".join(missing)
                missing_required.append(canonical if wanted == canonical else f"{wanted} (for {canonical})")
            exprs[canonical] = pl.lit(None, dtype=pl.String)
        else:
            exprs[canonical] = expr.cast(pl.String)
    if missing_required:
        hint = ""
        source_names = sorted(set(header) if header is not None else present - {"source_file", "source_row"})
        if len(source_names) == 1 and any(sep in source_names[0] for sep in (";", "\t", "|", ",")):
            hint = " (the file seems to use another delimiter: set [read] separator in the profile)"
        raise ExtractError(
            f"{extract} extract {path} lacks required column(s): {', '.join(missing_required)} "
            f"[mapping profile '{mapping.name}']{hint}"
        )
    for canonical, recode in spec.values.items():
        text = exprs[canonical].str.strip_chars()
        exprs[canonical] = text.str.to_lowercase().replace_strict(recode, default=text, return_dtype=pl.String)
    formats = mapping.date_formats
    if extract == "orders":
        units = spec.units
        weight_unit = _resolve_optional(units.get("weight_unit_column"), present)
        height_unit = _resolve_optional(units.get("height_unit_column"), present)
        exprs["weight_kg"] = _measure(exprs["weight_kg"], weight_unit, units["weight"], WEIGHT_UNITS, False)
        exprs["pre_pregnancy_weight_kg"] = _measure(
            exprs["pre_pregnancy_weight_kg"], weight_unit, units["weight"], WEIGHT_UNITS, False
        )
        exprs["height_cm"] = _measure(exprs["height_cm"], height_unit, units["height"], HEIGHT_UNITS, True)
        if spec.schedule:
            doses = _schedule_doses(spec, present, _text_of(exprs["start"]), formats)
            if doses is not None:
                exprs["doses"] = pl.coalesce(doses, exprs["doses"])
    if formats:
        # The declared layouts are the extract's date layouts, for every date column (date-only ones
        # too); what none of them reads is left as written, so the contract quarantines the row.
        for column in DATE_COLUMNS[extract]:
            exprs[column] = pl.coalesce(redated(_text_of(exprs[column]), formats), exprs[column])
    return lf.select(
        *[expr.alias(name) for name, expr in exprs.items()],
        pl.col("source_file"),
        pl.col("source_row"),
    )


#: Every ISO 8601 layout, for reading dates inside the reader (day counts, as-of joins): offsets give the
#: UTC instant. The contract's parse_datetime_text converts to the site's time zone.
ISO_READ = ISO_DATETIME_LAYOUTS + ISO_OFFSET_LAYOUTS + ISO_DATE_LAYOUTS


def redated(text: pl.Expr, formats: Sequence[str]) -> pl.Expr:
    """Text in one of a profile's declared layouts as canonical ISO 8601 text (null when none reads it).

    A layout with an offset gives the UTC instant, written with its +00:00 offset so the contract
    converts it to the site's time zone; a layout without one is the site's local time as written.
    """
    written = [
        parse_with_layouts(text, [layout]).dt.strftime(
            "%Y-%m-%dT%H:%M:%S+00:00" if has_offset(layout) else "%Y-%m-%d %H:%M:%S"
        )
        for layout in formats
    ]
    return pl.coalesce(written)


def _text_of(expr: pl.Expr) -> pl.Expr:
    text = expr.str.strip_chars()
    return pl.when(text.str.len_chars() > 0).then(text).otherwise(None)


def _resolve_optional(names: str | None, present: set[str]) -> pl.Expr | None:
    if not names:
        return None
    found = [n for n in _names(names) if n in present]
    return pl.coalesce([_text(n) for n in found]) if found else None
