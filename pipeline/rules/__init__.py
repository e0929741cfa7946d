"""The audit rules: the engine (`engine`) and one module per finding category, each rule a small Polars
query registered under its rule-pack id. Importing the package registers every rule.

Adding a rule: its table in `pipeline/data/rulepack.toml`, its query (decorated with `@rule("id")`)
in the module of its category, and golden patients in `pipeline/data/golden_patients.toml`.
"""

from pipeline.rules import (  # noqa: F401 - each module registers its rules
    combination,
    course_dose,
    data_quality,
    indication,
    monitoring,
    product_safety,
    repeat_justification,
    weight_basis,
)
from pipeline.rules.engine import RULES, AuditContext, Window, evaluate_rules, evidence_reach, evidence_windows, follow_up_windows, order_reach_days

__all__ = ["RULES", "AuditContext", "Window", "evaluate_rules", "evidence_reach", "evidence_windows", "follow_up_windows", "order_reach_days"]
