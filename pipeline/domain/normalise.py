"""Identify IVIG orders with the product dictionary, convert doses to grams, map indications."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from checks.inputs import PLAUSIBILITY
from pipeline.config.products import ProductDictionary, normalise_ndc_prefix
from pipeline.contract.parse import short_number
from pipeline.contract.rows import quarantine_rows
from pipeline.config.rulepack import RulePack

SCOPES = ("ivig", "subcutaneous", "other_ig", "unrecognised_ig", "other")


#: What identifies a version of an order and its place among the others (pipeline.history).
VERSION_COLUMNS = ("version", "tonight", "run_seq", "file_pos", "updated_at_order")


def normalised_ndc(column: str = "ndc") -> pl.Expr:
    """An NDC text as digits of the 11-digit 5-4-2 form (null when absent, too short or ambiguous).

    Dashed 4-4-2, 5-3-2, 5-4-1 and 5-4-2 codes are padded segment by segment; 11 bare digits are kept;
    10 bare digits are ambiguous (which segment lacks its leading zero?) and give null, so the name decides.
    """
    text = pl.col(column).str.strip_chars()
    dashed = text.str.extract_groups(r"^(\d{4,5})-(\d{3,4})(?:-(\d{1,2}))?$")
    padded = pl.concat_str(
        dashed.struct.field("1").str.zfill(5),
        dashed.struct.field("2").str.zfill(4),
        dashed.struct.field("3").fill_null("").str.zfill(2),
    )
    bare = pl.when(text.str.contains(r"^\d{11}$")).then(text)
    return pl.coalesce(padded, bare)


def matched_product(products: ProductDictionary, ndc_column: str | None = None) -> pl.Expr:
    """The dictionary product of a row: its NDC by prefix when the row has one that matches, else the first
    product whose pattern matches the medication name (null if none).

    Only the medication name is matched, never container, bag or formulary codes (MIMIC 'Bag' rows with
    formulary code IVIGBAG are diluent bags, not doses).
    """
    name = pl.col("medication").str.to_lowercase()
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for product in reversed(products.products):
        expr = pl.when(name.str.contains(product["pattern"])).then(pl.lit(product["name"])).otherwise(expr)
    if ndc_column is None:
        return expr
    owner: dict[str, str] = {}  # prefix -> the first product (dictionary order) that lists it
    for product in products.products:
        for prefix in _product_ndc_prefixes([product]):
            owner.setdefault(prefix, product["name"])
    if not owner:
        return expr
    # One regex over the normalised code: its alternatives are in dictionary order and the regex
    # takes the first that matches, so the first product listing a matching prefix wins.
    matched_prefix = normalised_ndc(ndc_column).str.extract(_starts_with_any(list(owner)), 1)
    by_ndc = matched_prefix.replace_strict(owner, default=None, return_dtype=pl.String)
    return pl.coalesce(by_ndc, expr)


def _product_ndc_prefixes(products: list[dict[str, Any]]) -> list[str]:
    """The products' NDC prefixes in the 11-digit form, labeler + product at least (never a labeler alone)."""
    return sorted({p for product in products for n in product.get("ndc_prefixes", []) if len(p := normalise_ndc_prefix(n)) >= 9})


def _starts_with_any(prefixes: list[str]) -> str:
    """A regex for text starting with any of the prefixes, tried in order (group 1: the prefix matched)."""
    return "^(" + "|".join(prefixes) + ")"


def immunoglobulin_rows(products: ProductDictionary, ndc_column: str | None) -> pl.Expr:
    """Rows the audit parses for themselves: names the dictionary knows or that look like an
    immunoglobulin, a known NDC, and rows with no medication (to quarantine them)."""
    patterns = [p["pattern"] for p in products.products] + [products.looks_like_immunoglobulin]
    return _any_name(patterns) | _known_ndc(products, ndc_column)


def evidence_rows(evidence_patterns: list[str]) -> pl.Expr:
    """Rows of other medications that rules read as evidence (aspirin for Kawasaki disease)."""
    if not evidence_patterns:
        return pl.lit(False)
    return pl.col("medication").str.contains("(?i)" + "|".join(f"(?:{p})" for p in evidence_patterns)).fill_null(False)


def candidate_rows(products: ProductDictionary, evidence_patterns: list[str], ndc_column: str | None) -> pl.Expr:
    """A cheap superset of `immunoglobulin_rows | evidence_rows`, for the pass over every row of an extract.

    One regex call per row (every name pattern, blank names) plus, with an NDC column, one NDC-prefix
    regex: each call costs more per row than its pattern does, so the exact tests run on the few
    candidates only.
    """
    patterns = [p["pattern"] for p in products.products] + [products.looks_like_immunoglobulin] + evidence_patterns
    medication = pl.col("medication")
    by_name = medication.is_null() | medication.str.contains("(?i)" + "|".join(f"(?:{p})" for p in [*patterns, r"^\s*$"]))
    prefixes = _product_ndc_prefixes(products.products)
    if ndc_column is None or not prefixes:
        return by_name
    return by_name | pl.col(ndc_column).str.contains(_raw_ndc_prefix_pattern(prefixes)).fill_null(False)


def _raw_ndc_prefix_pattern(prefixes: list[str]) -> str:
    """A regex matching the raw text of NDCs (dashed 4-4-2, 5-3-2, 5-4-x or bare digits) that may
    normalise to one of the 11-digit-form prefixes (a superset: `_known_ndc` decides)."""

    def optional_zero(segment: str) -> str:
        return f"0?{segment[1:]}" if segment.startswith("0") else segment

    alternatives = sorted({f"{optional_zero(p[:5])}-?{optional_zero(p[5:9])}" for p in prefixes})
    return r"^\s*(?:" + "|".join(alternatives) + ")"


def _any_name(patterns: list[str]) -> pl.Expr:
    """A medication name matching any of the patterns (case-insensitive), or no name at all."""
    medication = pl.col("medication")
    combined = "(?i)" + "|".join(f"(?:{p})" for p in patterns)
    return medication.is_null() | (medication.str.strip_chars() == "") | medication.str.contains(combined)


def _known_ndc(products: ProductDictionary, ndc_column: str | None) -> pl.Expr:
    """An NDC starting with a dictionary product's prefix (labeler + product at least)."""
    prefixes = _product_ndc_prefixes(products.products)
    if ndc_column is None or not prefixes:
        return pl.lit(False)
    return normalised_ndc(ndc_column).str.contains(_starts_with_any(prefixes)).fill_null(False)


def classify_medications(orders: pl.LazyFrame, products: ProductDictionary) -> pl.LazyFrame:
    """Orders with product, scope and the product's properties (IVIG, SC, other Ig, unrecognised Ig, other)."""
    table = products.table().lazy()
    route = pl.col("route").str.to_uppercase().str.strip_chars()
    looks_like_ig = pl.col("medication").str.to_lowercase().str.contains(products.looks_like_immunoglobulin)
    ndc_column = "ndc" if "ndc" in orders.collect_schema().names() else None
    return (
        orders.with_columns(product=matched_product(products, ndc_column))
        .join(table.drop("ndc_prefixes"), on="product", how="left")
        .with_columns(
            # An IVIG brand given subcutaneously (Gamunex-C, Gammagard Liquid for PI) is SCIG, not IVIG.
            scope=pl.when((pl.col("scope") == "ivig") & route.is_in(list(products.subcutaneous_routes)))
            .then(pl.lit("subcutaneous"))
            .when(pl.col("scope").is_not_null())
            .then(pl.col("scope"))
            .when(looks_like_ig)
            .then(pl.lit("unrecognised_ig"))
            .otherwise(pl.lit("other")),
        )
    )


def grams_per_dose() -> pl.Expr:
    """The dose in grams: g as is, mg / 1000, mL x product concentration, g/kg x order weight."""
    dose, unit = pl.col("dose"), pl.col("dose_unit")
    return (
        pl.when(unit == "g")
        .then(dose)
        .when(unit == "mg")
        .then(dose / 1000.0)
        .when(unit == "ml")
        .then(dose * pl.col("concentration_g_per_ml"))
        .when(unit == "g/kg")
        .then(dose * pl.col("weight_kg"))
        .otherwise(None)
    )


def implausible_grams() -> pl.Expr:
    """Why a daily dose in grams is impossible (PLAUSIBILITY of checks/inputs.py), null when plausible."""
    min_g, max_g = PLAUSIBILITY["grams_per_day"]
    _, max_g_per_kg = PLAUSIBILITY["g_per_kg_per_day"]
    grams = pl.col("grams_per_dose")
    per_kg = grams / pl.col("weight_kg")
    return (
        pl.when(grams > max_g)
        .then(pl.format(f"daily dose {{}} g is above the plausible {max_g:g} g", short_number(grams)))
        .when(grams < min_g)
        .then(pl.format(f"daily dose {{}} g ({{}} {{}}) is below the plausible {min_g:g} g", short_number(grams),
                        pl.col("dose").cast(pl.String), pl.col("dose_unit")))
        .when(per_kg > max_g_per_kg)
        .then(
            pl.format(
                f"daily dose {{}} g on {{}} kg is {{}} g/kg, above the plausible {max_g_per_kg:g} g/kg",
                short_number(grams), short_number(pl.col("weight_kg")), short_number(per_kg),
            )
        )
        .otherwise(None)
    )


def grams_problem() -> pl.Expr:
    """Why a dose could not be turned into grams (null when it could)."""
    unit = pl.col("dose_unit")
    return (
        pl.when((unit == "ml") & pl.col("concentration_g_per_ml").is_null())
        .then(pl.format("dose in mL but the strength of '{}' is not known", pl.col("medication")))
        .when((unit == "g/kg") & pl.col("weight_kg").is_null())
        .then(pl.lit("dose in g/kg but no weight on the order"))
        .otherwise(None)
    )


@dataclass(frozen=True)
class SplitOrders:
    """Order rows split by what the audit does with them."""

    ivig: pl.LazyFrame
    evidence: pl.LazyFrame
    out_of_scope: pl.LazyFrame
    unrecognised_ig: pl.LazyFrame
    quarantine: pl.LazyFrame


def split_orders(classified: pl.LazyFrame) -> SplitOrders:
    """IVIG rows (dose checked), other medications as evidence, out-of-scope Ig, unrecognised Ig, rejects."""
    ivig_rows = classified.filter(pl.col("scope") == "ivig").with_columns(
        grams_per_dose=pl.when(pl.col("dose_problem").is_null()).then(grams_per_dose()),
    ).with_columns(dose_problem=pl.coalesce(pl.col("dose_problem"), implausible_grams()))
    bad_ivig = ivig_rows.filter(pl.col("dose_problem").is_not_null())
    ivig = ivig_rows.filter(pl.col("dose_problem").is_null()).with_columns(
        grams_problem=grams_problem(),
    ).with_columns(total_g=pl.col("grams_per_dose") * pl.col("doses"))
    return SplitOrders(
        ivig=ivig,
        evidence=classified.filter(pl.col("scope") == "other").select(
            "order_id", "patient_id", "medication", "start", "doses", "source_file", "source_row",
            *VERSION_COLUMNS,
        ),
        out_of_scope=classified.filter(pl.col("scope").is_in(["subcutaneous", "other_ig"])),
        unrecognised_ig=classified.filter(pl.col("scope") == "unrecognised_ig"),
        quarantine=quarantine_rows(bad_ivig, "orders", pl.format("IVIG order: {}", pl.col("dose_problem"))),
    )


def normalised_code() -> pl.Expr:
    """The indication code upper-cased without dots or spaces (ICD-10 G61.0 -> G610)."""
    return pl.col("indication_code").str.to_uppercase().str.replace_all(r"[.\s]", "")


def _first_match(candidates: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The value of the first condition that holds (null if none)."""
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for condition, value in reversed(candidates):
        expr = pl.when(condition).then(pl.lit(value)).otherwise(expr)
    return expr


def map_indications(orders: pl.LazyFrame, pack: RulePack) -> pl.LazyFrame:
    """Orders with indication_group (a recognised code wins over text), indication_source and a phase hint."""
    code = normalised_code()
    text = pl.col("indication").str.to_lowercase()
    code_rules = sorted(
        ((c.replace(".", "").upper(), group) for group, spec in pack.groups.items() for c in spec.get("codes", [])),
        key=lambda item: -len(item[0]),
    )
    by_code = _first_match([(code.str.starts_with(c), group) for c, group in code_rules])
    by_text = _first_match(
        [(text.str.contains(pattern), group) for group, spec in pack.groups.items() for pattern in spec.get("synonyms", [])]
    )
    phase_candidates: list[tuple[pl.Expr, str]] = []
    for group, spec in pack.groups.items():
        in_group = pl.col("indication_group") == group
        for key, phase in (("first_phase_codes", "first"), ("later_phase_codes", "later")):
            for c in spec.get(key, []):
                phase_candidates.append((in_group & code.str.starts_with(c.replace(".", "").upper()), phase))
        for key, phase in (("later_phase_pattern", "later"), ("first_phase_pattern", "first")):
            if spec.get(key):
                phase_candidates.append((in_group & text.str.contains(spec[key]), phase))
    return orders.with_columns(
        indication_group=pl.coalesce(
            by_code,
            by_text,
            pl.when(pl.col("indication").is_not_null() | pl.col("indication_code").is_not_null())
            .then(pl.lit("unrecognised"))
            .otherwise(pl.lit("missing")),
        ),
        indication_source=pl.when(by_code.is_not_null())
        .then(pl.lit("code"))
        .when(by_text.is_not_null())
        .then(pl.lit("text"))
        .otherwise(pl.lit("none")),
    ).with_columns(phase_hint=_first_match(phase_candidates))


def expand_daily_doses(orders: pl.LazyFrame) -> pl.LazyFrame:
    """One row per daily dose: an order of n doses becomes n rows on consecutive days from start."""
    return (
        orders.with_columns(day_offset=pl.int_ranges(0, pl.col("doses")))
        .explode("day_offset")
        .with_columns(
            dose_at=pl.col("start") + pl.duration(days=pl.col("day_offset")),
        )
        .with_columns(dose_day=pl.col("dose_at").dt.date())
    )
