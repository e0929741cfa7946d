"""Levers of grams avoidable: which findings measure which way of saving IVIG, in priority order.

The levers themselves (label, how their grams count, the rules that measure them) are data of the rule
pack (`[levers.*]`). Each finding's lever is set once, here, and stored with the rule catalog
(`ref_rules.lever`); the database's views count each course once, under its first lever.
"""

from __future__ import annotations

from typing import Mapping

import polars as pl


def _matches(rule_id: pl.Expr, pattern: str) -> pl.Expr:
    """A rule id equal to a pattern, or starting with it when the pattern ends in '.'."""
    return rule_id.str.starts_with(pattern) if pattern.endswith(".") else rule_id == pattern


def lever_expr(levers: Mapping, rule_id: pl.Expr) -> pl.Expr:
    """The lever key a finding's rule measures (the first lever in priority order; null for none)."""
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for key, lever in reversed(list(levers.items())):
        condition = pl.any_horizontal([_matches(rule_id, p) for p in lever.rules])
        expr = pl.when(condition).then(pl.lit(key)).otherwise(expr)
    return expr


def lever_of(levers: Mapping, rule_id: str) -> str | None:
    """The lever of one rule id (for the rule catalog)."""
    for key, lever in levers.items():
        if any(rule_id.startswith(p) if p.endswith(".") else rule_id == p for p in lever.rules):
            return key
    return None
