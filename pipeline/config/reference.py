"""What the rule pack says, as the database's reference tables (ref_*), written by every run.

The views read their words and their rules from these tables (rule titles, levers, indication names,
how a review decision counts, vocabularies), so that the database answers in the words of the rule
pack the latest run used, and no view repeats a list the pack holds. (ref_vocabulary, the catalog's coded
values, is written with the schema: pipeline.warehouse.schema.)
"""

from __future__ import annotations

import polars as pl

from checks.outputs import FRAME_SCHEMAS
from pipeline.config.rulepack import RULE_SWITCH, RulePack
from pipeline.rules.levers import lever_of

REFERENCE_TABLES = ("ref_rules", "ref_levers", "ref_indications", "ref_dispositions")


def _frame(table: str, rows: list[dict]) -> pl.DataFrame:
    """Rows as a frame of the table's contract (its columns and types, validated)."""
    schema = FRAME_SCHEMAS[table]
    dtypes = {name: column.dtype.type for name, column in schema.columns.items()}
    return schema.validate(pl.DataFrame(rows, schema=dtypes, orient="row") if rows else pl.DataFrame(schema=dtypes))


def reference_tables(pack: RulePack) -> dict[str, pl.DataFrame]:
    """The ref_* tables of one rule pack (and of the catalog's vocabularies)."""
    rules = [
        {"rule_id": r.rule_id, "title": r.title, "version": r.version, "category": r.category, "severity": r.severity,
         "lever": lever_of(pack.levers, r.rule_id), "enabled": bool(r.params.get(RULE_SWITCH, True)),
         "description": r.description, "action": r.action, "source": r.source}
        for r in pack.rules.values()
    ]
    levers = [{"lever": key, "lever_rank": rank, "label": lever.label, "meaning": lever.meaning}
              for rank, (key, lever) in enumerate(pack.levers.items())]
    indications = [
        {"indication": key, "label": label, "indication_group": pack.regimens.get(key, {}).get("group"),
         "status": pack.regimens.get(key, {}).get("status")}
        for key, label in pack.indication_labels.items()
    ]
    dispositions = [{"reason_code": code, "label": d.label, "clears_finding": d.clears_finding}
                    for code, d in pack.dispositions.items()]
    return {
        "ref_rules": _frame("ref_rules", rules),
        "ref_levers": _frame("ref_levers", levers),
        "ref_indications": _frame("ref_indications", indications),
        "ref_dispositions": _frame("ref_dispositions", dispositions),
    }
