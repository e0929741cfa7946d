"""Load the rule pack (TOML), apply a site's overrides and a policy profile, and hash the result."""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from checks.outputs import CATEGORIES, SEVERITIES
from pipeline.justification import NO_KIND, Vocabulary


class RulePackError(Exception):
    """A rule pack or site override that cannot be used (one-line, user-facing)."""


@dataclass(frozen=True)
class RuleSpec:
    """One rule as the pack declares it."""

    rule_id: str
    version: str
    category: str
    severity: str
    description: str
    source: str
    action: str
    params: dict[str, Any] = field(default_factory=dict)
    effective_date: str = "2000-01-01"


@dataclass(frozen=True)
class RulePack:
    """The effective rule configuration of one run: pack, overrides and the chosen profile."""

    version: str
    name: str
    effective_date: str
    profile_name: str
    profile: dict[str, Any]
    settings: dict[str, Any]
    weights: dict[str, Any]
    groups: dict[str, dict[str, Any]]
    regimens: dict[str, dict[str, Any]]
    rules: dict[str, RuleSpec]
    raw: dict[str, Any]
    justification: Vocabulary

    @property
    def config_hash(self) -> str:
        """sha256 of the effective configuration (pack + overrides + profile)."""
        payload = json.dumps({"pack": self.raw, "profile": self.profile_name}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def rule(self, rule_id: str) -> RuleSpec:
        """The spec of one rule by id."""
        return self.rules[rule_id]

    @property
    def evidence_patterns(self) -> list[str]:
        """Medication-name patterns of the other medications rules read as evidence (`evidence_pattern` params)."""
        return [str(r.params["evidence_pattern"]) for r in self.rules.values() if "evidence_pattern" in r.params]


def default_pack_text() -> str:
    """The shipped rule pack as TOML text."""
    return resources.files("pipeline").joinpath("data/rulepack.toml").read_text(encoding="utf-8")


def _deep_merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Merge a site's override into the pack: tables merge key by key, values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value, f"{where}{key}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning parse errors into a one-line message."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RulePackError(f"rule pack file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RulePackError(f"rule pack {path} is not valid TOML: {exc}") from None


def load_rule_pack(override_path: Path | None = None, profile: str | None = None) -> RulePack:
    """The shipped pack, with a site's override file merged in and a policy profile selected."""
    raw = tomllib.loads(default_pack_text())
    if override_path is not None:
        override = _read_toml(Path(override_path))
        unknown_rules = set(override.get("rules", {})) - set(raw["rules"])
        if unknown_rules:
            raise RulePackError(
                f"rule pack {override_path} names rules this version does not have: {', '.join(sorted(unknown_rules))}"
            )
        raw = _deep_merge(raw, override)
    profile_name = profile or raw["settings"].get("default_profile", "default")
    if profile_name not in raw["profiles"]:
        raise RulePackError(
            f"unknown profile '{profile_name}'; choose one of: {', '.join(sorted(raw['profiles']))}"
        )
    effective_from = str(raw["pack"].get("rules_effective_from", "2000-01-01"))
    rules = {rule_id: _rule_spec(rule_id, spec, effective_from) for rule_id, spec in raw["rules"].items()}
    for key, regimen in raw["regimens"].items():
        if regimen.get("group") not in raw["groups"]:
            raise RulePackError(f"regimen '{key}' names an unknown indication group '{regimen.get('group')}'")
    vocabulary = _vocabulary(raw)
    for key, regimen in raw["regimens"].items():
        if regimen.get("status") == "not_routine" and not regimen.get("qualifying_justification"):
            raise RulePackError(f"regimen '{key}' is not routine but names no qualifying_justification kind")
        _known_kinds(vocabulary, f"regimen '{key}' qualifying_justification", [regimen["qualifying_justification"]] if "qualifying_justification" in regimen else [])
    for rule_id, spec in rules.items():
        _known_kinds(vocabulary, f"rule {rule_id} justified_by", list(spec.params.get("justified_by", [])))
    pack = raw["pack"]
    return RulePack(
        version=str(pack["version"]),
        name=str(pack.get("name", "")),
        effective_date=str(pack.get("effective_date", "")),
        profile_name=profile_name,
        profile=dict(raw["profiles"][profile_name]),
        settings=dict(raw["settings"]),
        weights=dict(raw["weights"]),
        groups=dict(raw["groups"]),
        regimens=dict(raw["regimens"]),
        rules=rules,
        raw=raw,
        justification=vocabulary,
    )


def _vocabulary(raw: dict[str, Any]) -> Vocabulary:
    """The `[justification]` vocabulary, with every pattern and code checked (a site's typo is one line)."""
    try:
        vocabulary = Vocabulary.from_pack(raw["justification"])
    except KeyError as exc:
        raise RulePackError(f"rule pack [justification] lacks {exc}") from None
    probe = pl.Series("probe", ["x"], dtype=pl.String)
    for where, patterns in vocabulary.patterns().items():
        for pattern in patterns:
            try:
                probe.str.contains(pattern)
            except pl.exceptions.ComputeError:
                raise RulePackError(f"rule pack [justification] {where}: '{pattern}' is not a valid regular expression") from None
    for code, kind in vocabulary.codes.items():
        if kind != NO_KIND and kind not in vocabulary.kinds:
            raise RulePackError(
                f"rule pack [justification.codes] {code} = '{kind}': not a justification kind "
                f"({', '.join([*vocabulary.kinds, NO_KIND])})"
            )
    return vocabulary


def _known_kinds(vocabulary: Vocabulary, where: str, kinds: list[str]) -> None:
    """Refuse justification kinds the vocabulary does not define."""
    unknown = [k for k in kinds if k not in vocabulary.kinds]
    if unknown:
        raise RulePackError(f"{where} names unknown justification kinds: {', '.join(unknown)} (known: {', '.join(vocabulary.kinds)})")


def _rule_spec(rule_id: str, spec: dict[str, Any], effective_from: str) -> RuleSpec:
    """Check one rule table of the pack and turn it into a RuleSpec."""
    category = spec.get("category")
    severity = spec.get("severity")
    if category not in CATEGORIES:
        raise RulePackError(f"rule {rule_id}: category '{category}' is not one of {', '.join(CATEGORIES)}")
    if severity not in SEVERITIES:
        raise RulePackError(f"rule {rule_id}: severity '{severity}' is not one of {', '.join(SEVERITIES)}")
    return RuleSpec(
        rule_id=rule_id,
        version=str(spec.get("version", "1.0")),
        category=category,
        severity=severity,
        description=str(spec.get("description", "")),
        source=str(spec.get("source", "")),
        action=str(spec.get("action", "")),
        params=dict(spec.get("params", {})),
        effective_date=_iso_date(rule_id, spec.get("effective_date", effective_from)),
    )


def _iso_date(rule_id: str, value: Any) -> str:
    """A rule's effective date as YYYY-MM-DD (TOML dates or text)."""
    text = str(value)
    try:
        return date.fromisoformat(text[:10]).isoformat()
    except ValueError:
        raise RulePackError(f"rule {rule_id}: effective_date '{text}' is not a date (YYYY-MM-DD)") from None
