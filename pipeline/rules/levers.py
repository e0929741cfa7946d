"""Levers of grams avoidable: which findings measure which way of saving IVIG, in priority order.

One definition serves the report (Polars) and the analysts' view (SQL): a course with findings
under several levers counts once, under the first lever, with its largest excess.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Lever:
    """One way of avoiding grams, with the rule ids (or id prefixes ending in '.') that measure it."""

    key: str
    label: str
    meaning: str
    rules: tuple[str, ...]


LEVERS: tuple[Lever, ...] = (
    Lever("indication", "Indication not supported",
          "IVIG not indicated, indication unrecognised or missing: the whole course", ("indication.",)),
    Lever("repeat", "Repeat course without justification",
          "a repeat course with no documented justification", ("repeat_justification.repeat_without_justification",)),
    Lever("weight_basis", "Adjusted-weight dosing",
          "obese patient dosed on actual instead of adjusted body weight", ("weight_basis.",)),
    Lever("over_dose", "Dose above regimen target",
          "course total above the regimen target on the dosing weight", ("course_dose.above_target",)),
    Lever("rounding", "Rounding to vial size",
          "rounding the dose to the nearest 5 g / whole vials (info finding)", ("course_dose.rounding_opportunity",)),
)
LEVER_LABELS: dict[str, str] = {lever.key: lever.label for lever in LEVERS}
LEVER_RANK: dict[str, int] = {lever.key: rank for rank, lever in enumerate(LEVERS)}


def _matches(rule_id: pl.Expr, pattern: str) -> pl.Expr:
    """A rule id equal to a pattern, or starting with it when the pattern ends in '.'."""
    return rule_id.str.starts_with(pattern) if pattern.endswith(".") else rule_id == pattern


def lever_expr(rule_id: pl.Expr) -> pl.Expr:
    """The lever key a finding's rule measures (null for rules whose grams are not a lever)."""
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for lever in reversed(LEVERS):
        condition = pl.any_horizontal([_matches(rule_id, p) for p in lever.rules])
        expr = pl.when(condition).then(pl.lit(lever.key)).otherwise(expr)
    return expr


def lever_sql(column: str = "rule_id") -> tuple[str, str]:
    """SQL CASE expressions (rank, key) of the lever of a rule id column (constants only, no data)."""
    def condition(pattern: str) -> str:
        escaped = pattern.replace("'", "''")
        return f"starts_with({column}, '{escaped}')" if pattern.endswith(".") else f"{column} = '{escaped}'"

    whens = [(" OR ".join(condition(p) for p in lever.rules), rank, lever.key) for rank, lever in enumerate(LEVERS)]
    rank_sql = "CASE " + " ".join(f"WHEN {c} THEN {r}" for c, r, _ in whens) + " END"
    key_sql = "CASE " + " ".join(f"WHEN {c} THEN '{k}'" for c, _, k in whens) + " END"
    return rank_sql, key_sql
