"""The product dictionary (`pipeline/data/products.toml`, or a site's file): each IVIG product's names, NDC prefixes, concentration, sucrose, IgA, vial sizes and route; validated before anything runs."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import polars as pl
from pydantic import Field, ValidationError

from pipeline.config.validation import Regex, Strict, describe, read_toml


@dataclass(frozen=True)
class ProductDictionary:
    """The product dictionary: ordered name patterns with each product's properties."""

    version: str
    looks_like_immunoglobulin: str
    products: list[dict[str, Any]]
    #: Order routes (upper case) under which an IVIG brand is subcutaneous immunoglobulin, out of scope.
    subcutaneous_routes: tuple[str, ...]

    @property
    def config_hash(self) -> str:
        """sha256 of the dictionary's content (a run records it; a change makes the next run judge every patient again)."""
        payload = {"version": self.version, "looks_like": self.looks_like_immunoglobulin, "products": self.products,
                   "subcutaneous_routes": list(self.subcutaneous_routes)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def table(self) -> pl.DataFrame:
        """The products as a frame (one row per product)."""
        return pl.DataFrame(
            {
                "product": [p["name"] for p in self.products],
                "scope": [p["scope"] for p in self.products],
                "concentration_g_per_ml": [p.get("concentration_g_per_ml") for p in self.products],
                "contains_sucrose": [p["contains_sucrose"] for p in self.products],
                "iga_depleted": [p["iga_depleted"] for p in self.products],
                "vial_sizes_g": [[float(v) for v in p["vial_sizes_g"]] for p in self.products],
                "product_route": [p["route"] for p in self.products],
                "ndc_prefixes": [[normalise_ndc_prefix(n) for n in p["ndc_prefixes"]] for p in self.products],
            },
            schema_overrides={
                "concentration_g_per_ml": pl.Float64,
                "vial_sizes_g": pl.List(pl.Float64),
                "ndc_prefixes": pl.List(pl.String),
            },
        )


class ProductDictionaryError(Exception):
    """A product dictionary file that cannot be used (one-line, user-facing)."""


class ProductDefaults(Strict):
    """[product_defaults]: what a product that does not say otherwise is (data, not code)."""

    contains_sucrose: bool
    iga_depleted: bool
    route: str
    vial_sizes_g: list[Annotated[float, Field(gt=0)]]
    ndc_prefixes: list[str]


class Product(Strict):
    """One [[product]] of the dictionary (absent optional keys take [product_defaults])."""

    name: str
    pattern: Regex
    scope: Literal["ivig", "subcutaneous", "other_ig"]
    concentration_g_per_ml: Optional[float] = Field(default=None, gt=0, le=1)
    contains_sucrose: Optional[bool] = None
    iga_depleted: Optional[bool] = None
    route: Optional[str] = None
    vial_sizes_g: Optional[list[Annotated[float, Field(gt=0)]]] = None
    ndc_prefixes: Optional[list[Annotated[str, Field(pattern=r"^\d{4,5}(-\d{3,4}(-\d{1,2})?)?$|^\d{9,11}$")]]] = None


class ProductFile(Strict):
    """A product dictionary file: its version, the immunoglobulin look-alike pattern, the products."""

    version: str
    looks_like_immunoglobulin: Regex
    subcutaneous_routes: Optional[list[Annotated[str, Field(min_length=1)]]] = None
    product_defaults: Optional[ProductDefaults] = None
    product: list[Product] = Field(min_length=1)


def _read_product_file(path: Path | None) -> tuple[dict[str, Any], str]:
    """The TOML of the shipped dictionary or of a site's file, and how to name it in an error."""
    if path is None:
        text = resources.files("pipeline").joinpath("data/products.toml").read_text(encoding="utf-8")
        return tomllib.loads(text), "shipped product dictionary pipeline/data/products.toml"
    return read_toml(Path(path), "product dictionary", ProductDictionaryError), f"product dictionary {path}"


def _validated(raw: dict[str, Any], where: str) -> ProductFile:
    try:
        return ProductFile.model_validate(raw)
    except ValidationError as exc:
        raise ProductDictionaryError(describe(exc, ProductFile, lambda loc: where)) from None


def load_products(path: Path | None = None) -> ProductDictionary:
    """The shipped product dictionary, or a site's own file (validated: one line naming the key on a mistake).

    A site file without [product_defaults] or subcutaneous_routes takes the shipped file's.
    """
    raw, where = _read_product_file(path)
    model = _validated(raw, where)
    defaults, routes = model.product_defaults, model.subcutaneous_routes
    if defaults is None or routes is None:
        shipped_raw, shipped_where = _read_product_file(None)
        shipped = _validated(shipped_raw, shipped_where)
        defaults, routes = defaults or shipped.product_defaults, routes if routes is not None else shipped.subcutaneous_routes
    if defaults is None:
        raise ProductDictionaryError(f"{where}: missing key product_defaults")
    if routes is None:
        raise ProductDictionaryError(f"{where}: missing key subcutaneous_routes")
    products = [
        defaults.model_dump() | product.model_dump(exclude_none=True) for product in model.product
    ]
    return ProductDictionary(
        version=model.version,
        looks_like_immunoglobulin=model.looks_like_immunoglobulin,
        products=products,
        subcutaneous_routes=tuple(r.strip().upper() for r in routes),
    )


def normalise_ndc_prefix(text: str) -> str:
    """A dictionary NDC prefix ('0944-2700', '44206-439', '13533-805-45') as digits of the 11-digit 5-4-2 form.

    Each dash-separated segment is zero-padded to 5, 4 and 2 digits (the HIPAA 11-digit layout), so the
    10-digit 4-4-2, 5-3-2 and 5-4-1 layouts all compare; a prefix without dashes is taken as digits.
    """
    parts = [part.strip() for part in str(text).split("-")]
    if len(parts) == 1:
        return "".join(ch for ch in parts[0] if ch.isdigit())
    widths = (5, 4, 2)
    return "".join(part.zfill(width) for part, width in zip(parts, widths) if part)
