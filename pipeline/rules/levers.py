"""Levers of grams avoidable: which findings measure which way of saving IVIG, in priority order.

The levers themselves (label, how their grams count, the rules that measure them) are data of the rule
pack (`[levers.*]`). Each finding's lever is set once, here, and stored with the rule catalog
(`ref_rules.lever`); the database's views count each course once, under its first lever.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import polars as pl


def lever_of(levers: Mapping, rule_id: str) -> str | None:
    """The lever of one rule id: the first lever (priority order) naming it or a prefix of it ending in '.'."""
    for key, lever in levers.items():
        if any(rule_id.startswith(p) if p.endswith(".") else rule_id == p for p in lever.rules):
            return key
    return None


def lever_expr(levers: Mapping, rule_ids: Iterable[str], rule_id: pl.Expr) -> pl.Expr:
    """The lever key of a finding's rule (null for none), looked up in lever_of's answer for each rule id
    of the pack (findings are raised by the pack's rules only)."""
    lookup = {r: lever_of(levers, r) for r in rule_ids}
    return rule_id.replace_strict(lookup, default=None, return_dtype=pl.String)
