"""Replay and diff: what a rule-pack update or a new policy would change, before it goes live.

`ivig-audit replay RUN_ID` re-audits everything the history ledger held at a past run (every row
that had arrived by then: pipeline.history) under another rule pack or profile, into a separate
**scenario** (tables `scenarios`, `scenario_findings`, `scenario_courses`); the input files are
not read again, and the live tables and their review states are never touched.
`ivig-audit diff A B` compares the findings of two runs or scenarios.

This module is pure (frames in, frames out): the file and database IO live in
`pipeline.warehouse` and the command line (`flows/cli_tools.py`).

Identifiers: a scenario id starts with ``scn-`` (``scn-20261128T091500Z-4b1e0a``); anything
else is a run id (``20261128T021500Z-3f2a1c``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from pipeline.audit import AuditResult, Extracts
from pipeline.config.products import ProductDictionary
from pipeline.config.rulepack import RulePack

SCENARIO_PREFIX = "scn-"

#: Finding columns whose difference makes a finding "changed" between two sides.
COMPARED = ("severity", "expected", "observed", "excess_g")

#: Columns shown for an added or removed finding.
LISTED = ("finding_id", "rule_id", "category", "severity", "patient_id", "course_id", "message",
          "expected", "observed", "excess_g")

_TEXT_COLUMNS = ("finding_id", "rule_id", "category", "severity", "patient_id", "course_id", "message",
                 "expected", "observed")

#: Grams closer than this are the same amount (float noise of a recomputation).
EXCESS_TOLERANCE_G = 1e-6


def is_scenario_id(ref: str) -> bool:
    """Whether an identifier names a scenario (``scn-...``) rather than a run."""
    return ref.startswith(SCENARIO_PREFIX)


def new_scenario_id(now: datetime) -> str:
    """A sortable, unique scenario id: ``scn-`` + UTC time + a short random suffix."""
    return f"{SCENARIO_PREFIX}{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def default_scenario_name(run_id: str, profile: str, rules_file: str | None) -> str:
    """A name describing the replay when --name is not given."""
    parts = [f"replay of {run_id}", f"profile {profile}"]
    if rules_file:
        parts.append(f"rules {rules_file}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------


def replay_audit(
    ledger: pl.DataFrame,
    courses: pl.DataFrame,
    products: ProductDictionary,
    pack: RulePack,
    scenario_id: str,
) -> AuditResult:
    """The audit of everything the history held at a past run (its ledger rows), under another pack.

    `courses` are the stored courses: a replayed course that continues one keeps its id, so the
    diff against the live findings compares like with like. The scenario id stands in for the run
    id in the findings (first_seen_run, last_seen_run).
    """
    from pipeline.night import audit_tonight
    from pipeline.warehouse import History

    patients = ledger.select("patient_id").drop_nulls().unique().sort("patient_id")
    nothing_tonight = Extracts(orders=None)
    return audit_tonight(nothing_tonight, 0, History(ledger, courses, patients), products, pack, scenario_id)


# --------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindingsDiff:
    """What changes from side A to side B (each a set of findings keyed by finding_id).

    - `added`: findings only B raises (B's content, LISTED columns).
    - `removed`: findings only A raises (A's content).
    - `changed`: findings both raise whose severity, expected, observed or excess_g differ:
      finding_id, rule_id, category, patient_id, course_id, `changes` (the columns that differ,
      comma-separated), each compared column as `<col>_a` / `<col>_b`, and message_a / message_b.
    - `counts_by_rule`: per rule_id: findings in A and B, added, removed, changed, unchanged, and
      grams claimed (sum of excess_g) in A and B and their difference.
    """

    added: pl.DataFrame
    removed: pl.DataFrame
    changed: pl.DataFrame
    counts_by_rule: pl.DataFrame

    @property
    def totals(self) -> dict[str, Any]:
        """The counts_by_rule columns summed over every rule."""
        sums = self.counts_by_rule.select(pl.exclude("rule_id").sum())
        if sums.height == 0:
            return {c: 0 for c in self.counts_by_rule.columns if c != "rule_id"}
        row = sums.row(0, named=True)
        return {k: (round(v, 3) if isinstance(v, float) else int(v or 0)) for k, v in row.items()}

    @property
    def is_empty(self) -> bool:
        """True when nothing was added, removed or changed."""
        return self.added.is_empty() and self.removed.is_empty() and self.changed.is_empty()


def _prepared(df: pl.DataFrame, side: str) -> pl.DataFrame:
    """The compared columns of one side with uniform types; ValueError on a missing column or duplicated id."""
    missing = [c for c in LISTED if c not in df.columns]
    if missing:
        raise ValueError(f"findings of side {side} lack column(s): {', '.join(missing)}")
    out = df.select(
        *[pl.col(c).cast(pl.String) for c in _TEXT_COLUMNS],
        pl.col("excess_g").cast(pl.Float64).fill_null(0.0),
    )
    if out["finding_id"].is_duplicated().any():
        raise ValueError(f"findings of side {side} repeat a finding_id")
    return out


def diff_findings(a: pl.DataFrame, b: pl.DataFrame) -> FindingsDiff:
    """Findings added, removed and changed from A to B (keyed by finding_id), with counts by rule."""
    a, b = _prepared(a, "A"), _prepared(b, "B")
    added = b.join(a.select("finding_id"), on="finding_id", how="anti").select(LISTED).sort("rule_id", "finding_id")
    removed = a.join(b.select("finding_id"), on="finding_id", how="anti").select(LISTED).sort("rule_id", "finding_id")

    both = a.join(b, on="finding_id", how="inner", suffix="_b").rename(
        {c: f"{c}_a" for c in (*COMPARED, "message")}
    )
    differs = {
        "severity": pl.col("severity_a").ne_missing(pl.col("severity_b")),
        "expected": pl.col("expected_a").ne_missing(pl.col("expected_b")),
        "observed": pl.col("observed_a").ne_missing(pl.col("observed_b")),
        "excess_g": (pl.col("excess_g_a") - pl.col("excess_g_b")).abs() > EXCESS_TOLERANCE_G,
    }
    flagged = both.with_columns(**{f"_diff_{c}": e for c, e in differs.items()})
    changes = pl.concat_list(
        [pl.when(pl.col(f"_diff_{c}")).then(pl.lit(c)).otherwise(pl.lit(None, dtype=pl.String)) for c in COMPARED]
    ).list.drop_nulls().list.join(", ")
    changed = (
        flagged.filter(pl.any_horizontal([pl.col(f"_diff_{c}") for c in COMPARED]))
        .with_columns(changes=changes)
        .select(
            "finding_id", "rule_id", "category", "patient_id", "course_id", "changes",
            *[f"{c}_{s}" for c in COMPARED for s in ("a", "b")],
            "message_a", "message_b",
        )
        .sort("rule_id", "finding_id")
    )

    per_side = [
        side.group_by("rule_id").agg(
            pl.len().cast(pl.Int64).alias(f"findings_{name}"), pl.col("excess_g").sum().alias(f"excess_g_{name}")
        )
        for side, name in ((a, "a"), (b, "b"))
    ]
    tallies = [
        frame.group_by("rule_id").agg(pl.len().cast(pl.Int64).alias(name))
        for frame, name in ((added, "added"), (removed, "removed"), (changed, "changed"))
    ]
    rules = pl.concat([a.select("rule_id"), b.select("rule_id")]).unique()
    counts = rules
    for frame in [*per_side, *tallies]:
        counts = counts.join(frame, on="rule_id", how="left")
    counts = (
        counts.with_columns(
            pl.col("findings_a", "findings_b", "added", "removed", "changed").fill_null(0),
            pl.col("excess_g_a", "excess_g_b").fill_null(0.0),
        )
        .with_columns(
            unchanged=pl.col("findings_b") - pl.col("added") - pl.col("changed"),
            excess_g_delta=(pl.col("excess_g_b") - pl.col("excess_g_a")).round(6),
        )
        .select(
            "rule_id", "findings_a", "findings_b", "added", "removed", "changed", "unchanged",
            "excess_g_a", "excess_g_b", "excess_g_delta",
        )
        .sort("rule_id")
    )
    return FindingsDiff(added=added, removed=removed, changed=changed, counts_by_rule=counts)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def diff_to_dict(diff: FindingsDiff, a: str, b: str) -> dict[str, Any]:
    """The diff as JSON-ready data: sides, totals, counts by rule, then the three lists."""
    return {
        "a": {"id": a, "kind": "scenario" if is_scenario_id(a) else "run"},
        "b": {"id": b, "kind": "scenario" if is_scenario_id(b) else "run"},
        "totals": diff.totals,
        "counts_by_rule": diff.counts_by_rule.to_dicts(),
        "added": diff.added.to_dicts(),
        "removed": diff.removed.to_dicts(),
        "changed": diff.changed.to_dicts(),
    }


def diff_to_json(diff: FindingsDiff, a: str, b: str) -> str:
    """The diff as indented JSON text."""
    return json.dumps(diff_to_dict(diff, a, b), indent=2, default=str)


def _grams(value: float | None) -> str:
    """Grams as short text (one decimal, no trailing .0)."""
    if value is None:
        return "-"
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + _grams(value)


def format_diff(diff: FindingsDiff, a: str, b: str) -> str:
    """A readable report: totals and counts by rule first, then the added, removed and changed findings."""
    t = diff.totals
    kind = {True: "scenario", False: "run"}
    lines = [
        f"A = {kind[is_scenario_id(a)]} {a}",
        f"B = {kind[is_scenario_id(b)]} {b}",
        f"findings: A {t.get('findings_a', 0)}, B {t.get('findings_b', 0)}; added {t.get('added', 0)}, "
        f"removed {t.get('removed', 0)}, changed {t.get('changed', 0)}, unchanged {t.get('unchanged', 0)}; "
        f"grams claimed A {_grams(t.get('excess_g_a', 0.0))}, B {_grams(t.get('excess_g_b', 0.0))} "
        f"({_signed(t.get('excess_g_b', 0.0) - t.get('excess_g_a', 0.0))})",
        "",
    ]
    counts = diff.counts_by_rule
    if counts.height:
        width = max(len("rule"), *(len(r) for r in counts["rule_id"]))
        header = f"{'rule':<{width}}  {'A':>4} {'B':>4} {'added':>6} {'removed':>8} {'changed':>8}  {'grams A':>8} {'grams B':>8} {'delta':>8}"
        lines += ["counts by rule", header, "-" * len(header)]
        for r in counts.iter_rows(named=True):
            lines.append(
                f"{r['rule_id']:<{width}}  {r['findings_a']:>4} {r['findings_b']:>4} {r['added']:>6} {r['removed']:>8} "
                f"{r['changed']:>8}  {_grams(r['excess_g_a']):>8} {_grams(r['excess_g_b']):>8} {_signed(r['excess_g_delta']):>8}"
            )
    else:
        lines.append("no findings on either side")
    if diff.is_empty:
        lines += ["", "no differences"]
        return "\n".join(lines)
    for title, frame in (("added (only in B)", diff.added), ("removed (only in A)", diff.removed)):
        if frame.is_empty():
            continue
        lines += ["", f"{title}: {frame.height}"]
        for r in frame.iter_rows(named=True):
            lines.append(f"  [{r['severity']:<8}] {r['rule_id']}  {r['finding_id']}  excess {_grams(r['excess_g'])} g")
            lines.append(f"             {r['message']}")
    if not diff.changed.is_empty():
        lines += ["", f"changed: {diff.changed.height}"]
        for r in diff.changed.iter_rows(named=True):
            lines.append(f"  {r['rule_id']}  {r['finding_id']}")
            for column in r["changes"].split(", "):
                old, new = r[f"{column}_a"], r[f"{column}_b"]
                if column == "excess_g":
                    old, new = f"{_grams(old)} g", f"{_grams(new)} g"
                lines.append(f"      {column}: {old} -> {new}")
            lines.append(f"      B: {r['message_b']}")
    return "\n".join(lines)
