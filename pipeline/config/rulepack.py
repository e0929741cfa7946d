"""Load the rule pack (TOML), apply a site's overrides and a policy profile, validate it, and hash the result.

The shipped `pipeline/data/rulepack.toml` holds every default; `RulePackModel` (pydantic, strict) checks
the pack and the pack merged with a site's override file before anything runs: an unknown key (a typo
such as `course_gap_dayz`, a misspelled rule id), a string where a number belongs or a value out of its
range is a one-line `RulePackError` naming the file, the dotted key and the nearest known key.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from checks.inputs import LAB_TESTS
from checks.outputs import CATEGORIES, SEVERITIES
from pipeline.config.validation import deep_merge, read_toml, Regex, Strict, TimeZone, describe, did_you_mean, dotted, unknown_key_problem, valid_regex
from pipeline.domain.justification import NO_KIND, Vocabulary

SHIPPED = "shipped rule pack pipeline/data/rulepack.toml"


class RulePackError(Exception):
    """A rule pack or site override that cannot be used (one-line, user-facing)."""


# ------------------------------------------------------------------------------------ the model
def _iso_date(value: Any) -> Any:
    """A TOML date or YYYY-MM-DD text as YYYY-MM-DD text (anything else is left for the type check)."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10]).isoformat() if len(value) == 10 else value
        except ValueError:
            raise ValueError("not a date as YYYY-MM-DD") from None
    return value


def _is_iso_date(text: str) -> str:
    date.fromisoformat(text)
    return text


IsoDate = Annotated[str, BeforeValidator(_iso_date), AfterValidator(_is_iso_date)]
Severity = Literal[SEVERITIES]  # type: ignore[valid-type]
Category = Literal[CATEGORIES]  # type: ignore[valid-type]
Share = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
Pair = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=2, max_length=2)]
DayPair = Annotated[list[Annotated[int, Field(ge=1, le=366)]], Field(min_length=2, max_length=2)]
Param = int | float | str | bool | list[str]


class PackInfo(Strict):
    """[pack]: which pack this is."""

    version: str
    name: str
    effective_date: IsoDate
    rules_effective_from: IsoDate


class Settings(Strict):
    """[settings]: course building, tolerances, dates."""

    course_gap_days: int = Field(ge=1, le=365)
    dose_tolerance: float = Field(ge=0, lt=1)
    critical_over_ratio: float = Field(gt=1, le=100)
    obese_looking_weight_kg: float = Field(gt=0, le=350)
    default_profile: str
    site_timezone: TimeZone
    date_failure_share: float = Field(gt=0, le=1)
    late_arrival_days: int = Field(ge=0, le=3650)


class Profile(Strict):
    """[profiles.NAME]: a dosing-weight policy."""

    description: str
    obesity_trigger: Literal["bmi", "ibw_ratio", "either"]
    bmi_threshold: float = Field(gt=10, lt=100)
    bmi_inclusive: bool
    ibw_ratio_threshold: float = Field(ge=1, le=5)
    obese_dosing_weight: Literal["adjusted", "ibw"]
    adjusted_weight_factor: Share
    weight_basis_severity: Severity
    rounding_step_g: float = Field(gt=0, le=100)


class Weights(Strict):
    """[weights]: the ideal-body-weight formula and when actual weight is used."""

    ibw_base_male_kg: Positive
    ibw_base_female_kg: Positive
    ibw_kg_per_inch: Positive
    ibw_base_height_in: Positive
    cm_per_inch: Positive
    actual_weight_below_height_cm: Positive
    actual_weight_below_age_years: Positive


class Group(Strict):
    """[groups.NAME]: an indication group (ICD codes and free-text synonyms)."""

    label: str
    codes: list[str]
    synonyms: list[Regex]
    first_phase_pattern: Optional[Regex] = None
    later_phase_pattern: Optional[Regex] = None
    first_phase_codes: Optional[list[str]] = None
    later_phase_codes: Optional[list[str]] = None


class Regimen(Strict):
    """[regimens.NAME]: the regimen of a group (or of one phase of it)."""

    group: str
    phase: Literal["only", "first", "later"]
    label: str
    status: Literal["routine", "not_routine"]
    repeat: Literal["none", "justification", "each_course"]
    target_g_per_kg: Optional[Pair] = None
    days: Optional[DayPair] = None
    min_interval_days: Optional[int] = Field(default=None, ge=1, le=366)
    qualifying_justification: Optional[str] = None
    qualifying_flag: Optional[Literal["pregnant"]] = None
    qualifying_description: Optional[str] = None

    @model_validator(mode="after")
    def _ranges(self) -> "Regimen":
        for name in ("target_g_per_kg", "days"):
            pair = getattr(self, name)
            if pair is not None and pair[0] > pair[1]:
                raise ValueError(f"{name} [{pair[0]}, {pair[1]}]: the first value must not exceed the second")
        if self.status == "routine" and (self.target_g_per_kg is None or self.days is None):
            raise ValueError("a routine regimen needs target_g_per_kg and days")
        if self.status == "not_routine" and not self.qualifying_justification:
            raise ValueError("a regimen that is not routine needs qualifying_justification (a justification kind)")
        return self


class Rule(Strict):
    """[rules."ID"]: one rule as the pack declares it."""

    title: str = Field(min_length=1, max_length=80)
    version: str
    category: Category
    severity: Severity
    description: str
    source: str
    action: str
    effective_date: Optional[IsoDate] = None
    params: Optional[dict[str, Param]] = None

    @model_validator(mode="after")
    def _patterns(self) -> "Rule":
        for key, value in (self.params or {}).items():
            if key.endswith("_pattern"):
                if not isinstance(value, str):
                    raise ValueError(f"params.{key} must be a regular expression (text)")
                valid_regex(value)
        return self


class JustificationKind(Strict):
    """[justification.kinds.NAME]: one reason a repeat or maintenance course may be justified."""

    label: str
    phrases: list[Regex]


class Measures(Strict):
    """[justification.measures]: scales whose measured change ("INCAT 5 -> 3") is read."""

    lower_is_better: list[Regex]
    higher_is_better: list[Regex]


class Justification(Strict):
    """[justification]: the vocabulary pipeline.justification reads prescribers' text with."""

    terminators: list[Regex]
    negation_cues: list[Regex]
    negative_outcome_cues: list[Regex]
    uncertainty_cues: list[Regex]
    placeholders: list[Regex]
    kinds: dict[str, JustificationKind]
    measures: Measures
    codes: dict[str, str]


class Labels(Strict):
    """[labels]: words for the two indications that are not a regimen."""

    unrecognised_indication: str
    missing_indication: str


class Costs(Strict):
    """[costs]: the price of a gram, for money avoidable."""

    cost_per_gram: float = Field(ge=0, le=100_000)
    currency: str = Field(min_length=1, max_length=8)
    source: str


class Labs(Strict):
    """[labs]: groups of canonical lab tests the rules read."""

    renal_function: list[Literal[LAB_TESTS]] = Field(min_length=1)  # type: ignore[valid-type]
    blood_count: list[Literal[LAB_TESTS]] = Field(min_length=1)  # type: ignore[valid-type]


class LeverModel(Strict):
    """[levers.KEY]: one way of avoiding grams, the rules that measure it, and how its grams count."""

    label: str
    meaning: str
    rules: list[str] = Field(min_length=1)


class Disposition(Strict):
    """[review.dispositions.CODE]: a review decision's reason, and whether it says the finding does not stand."""

    label: str
    clears_finding: bool


class Review(Strict):
    """[review]: how review decisions count."""

    dispositions: dict[str, Disposition] = Field(min_length=1)


class RulePackModel(Strict):
    """The whole rule pack (shipped, or merged with a site's override)."""

    pack: PackInfo
    settings: Settings
    profiles: dict[str, Profile]
    weights: Weights
    groups: dict[str, Group]
    justification: Justification
    regimens: dict[str, Regimen]
    labels: Labels
    costs: Costs
    labs: Labs
    levers: dict[str, LeverModel] = Field(min_length=1)
    review: Review
    rules: dict[str, Rule]

    @model_validator(mode="after")
    def _lever_rules(self) -> "RulePackModel":
        for key, lever in self.levers.items():
            for pattern in lever.rules:
                known = any(r.startswith(pattern) for r in self.rules) if pattern.endswith(".") else pattern in self.rules
                if not known:
                    raise ValueError(f"levers.{key}.rules: '{pattern}' names no rule of the pack")
        return self


#: Tables of the pack an override may add entries to (a new indication group, regimen or policy
#: profile); every other key an override names must exist in the shipped pack.
OPEN_TABLES = (("groups",), ("regimens",), ("profiles",), ("justification", "codes"), ("justification", "kinds"),
               ("review", "dispositions"))


# ------------------------------------------------------------------------------------ the loaded pack
@dataclass(frozen=True)
class RuleSpec:
    """One rule as the pack declares it."""

    rule_id: str
    version: str
    category: str
    severity: str
    description: str
    title: str
    source: str
    action: str
    params: dict[str, Any] = field(default_factory=dict)
    effective_date: str = ""


@dataclass(frozen=True)
class RulePack:
    """The effective rule configuration of one run: pack, overrides and the chosen profile (validated)."""

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
    model: RulePackModel | None = field(default=None, compare=False, repr=False)

    @property
    def config_hash(self) -> str:
        """sha256 of the effective configuration (pack + overrides + profile)."""
        payload = json.dumps({"pack": self.raw, "profile": self.profile_name}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def rule(self, rule_id: str) -> RuleSpec:
        """The spec of one rule by id."""
        return self.rules[rule_id]

    @property
    def indication_labels(self) -> dict[str, str]:
        """Indication key (a regimen, or 'unrecognised' / 'missing') -> the words the report shows."""
        labels = {key: str(spec["label"]) for key, spec in self.regimens.items()}
        return labels | {"unrecognised": self.model.labels.unrecognised_indication,
                         "missing": self.model.labels.missing_indication}

    @property
    def costs(self) -> Costs:
        """The price of a gram, its currency and where the figure comes from."""
        return self.model.costs

    @property
    def labs(self) -> Labs:
        """The lab-test groups rules read (renal function, blood count)."""
        return self.model.labs

    @property
    def levers(self) -> dict[str, LeverModel]:
        """The levers of grams avoidable, in priority order."""
        return self.model.levers

    @property
    def dispositions(self) -> dict[str, Disposition]:
        """Review reason codes, their words, and whether each says the finding does not stand."""
        return self.model.review.dispositions

    @property
    def evidence_patterns(self) -> list[str]:
        """Medication-name patterns of the other medications rules read as evidence (`evidence_pattern` params)."""
        return [str(r.params["evidence_pattern"]) for r in self.rules.values() if "evidence_pattern" in r.params]


def default_pack_text() -> str:
    """The shipped rule pack as TOML text."""
    return resources.files("pipeline").joinpath("data/rulepack.toml").read_text(encoding="utf-8")


def _read_toml(path: Path) -> dict[str, Any]:
    """A site's rule pack as TOML, or a one-line RulePackError."""
    return read_toml(path, "rule pack file", RulePackError)


def _at(table: Any, loc: tuple) -> bool:
    """Whether nested tables (and lists, by index) hold the location."""
    for part in loc:
        if isinstance(table, dict) and part in table:
            table = table[part]
        elif isinstance(table, list) and isinstance(part, int) and 0 <= part < len(table):
            table = table[part]
        else:
            return False
    return True


#: A parameter every rule takes (docs/rules.md): `enabled = false` switches the rule off.
RULE_SWITCH = "enabled"


def _check_override(override: dict[str, Any], shipped: dict[str, Any], where: str) -> None:
    """Refuse keys the shipped pack does not have (outside the open tables) and params of another type."""
    shipped = copy.deepcopy(shipped)
    for spec in shipped["rules"].values():  # every rule may be switched off
        spec.setdefault("params", {}).setdefault(RULE_SWITCH, True)
    found = unknown_key_problem(override, shipped, OPEN_TABLES)
    if found:
        loc, known = found
        what = "rule" if len(loc) == 2 and loc[0] == "rules" else "key"
        raise RulePackError(f"rule pack {where}: unknown {what} {dotted(loc)}{did_you_mean(str(loc[-1]), known)}")
    for rule_id, spec in override.get("rules", {}).items():
        for key, value in (spec.get("params") or {}).items() if isinstance(spec, dict) else ():
            shipped_value = shipped["rules"][rule_id]["params"][key]
            number = (int, float)
            same = (
                isinstance(value, bool) == isinstance(shipped_value, bool)
                and (isinstance(value, number) == isinstance(shipped_value, number))
                and (isinstance(value, str) == isinstance(shipped_value, str))
            )
            if not same:
                kind = "a number" if isinstance(shipped_value, number) and not isinstance(shipped_value, bool) else (
                    "true or false" if isinstance(shipped_value, bool) else "text")
                raise RulePackError(
                    f"rule pack {where}: {dotted(('rules', rule_id, 'params', key))}: must be {kind} "
                    f"(as in the shipped pack), not {value!r}"
                )


def validate_pack(
    raw: dict[str, Any], shipped: dict[str, Any], override: dict[str, Any] | None = None, where: str = SHIPPED
) -> RulePackModel:
    """The pack checked by RulePackModel, or a RulePackError naming the file (the override's or the
    shipped one's), the dotted key and what is wrong."""

    def file_of(loc: tuple) -> str:
        from_override = override is not None and (
            _at(override, loc) or (len(loc) > 1 and _at(override, loc[:-1]) and not _at(shipped, loc[:-1]))
        )
        return f"rule pack {where}" if from_override else SHIPPED

    try:
        model = RulePackModel.model_validate(raw)
    except ValidationError as exc:
        raise RulePackError(describe(exc, RulePackModel, file_of)) from None
    if model.settings.default_profile not in model.profiles:
        loc = ("settings", "default_profile")
        raise RulePackError(
            f"{file_of(loc)}: settings.default_profile: unknown profile '{model.settings.default_profile}'"
            f"{did_you_mean(model.settings.default_profile, model.profiles)}"
        )
    for key, regimen in model.regimens.items():
        if regimen.group not in model.groups:
            loc = ("regimens", key, "group")
            raise RulePackError(
                f"{file_of(loc)}: {dotted(loc)}: unknown indication group '{regimen.group}'"
                f"{did_you_mean(regimen.group, model.groups)}"
            )
    kinds = model.justification.kinds
    named = [(("regimens", key, "qualifying_justification"), [r.qualifying_justification])
             for key, r in model.regimens.items() if r.qualifying_justification]
    named += [(("rules", rule_id, "params", "justified_by"), list(r.params["justified_by"]))
              for rule_id, r in model.rules.items() if r.params and "justified_by" in r.params]
    named += [(("justification", "codes", code), [kind]) for code, kind in model.justification.codes.items() if kind != NO_KIND]
    for loc, wanted in named:
        for kind in wanted:
            if kind not in kinds:
                known = [*kinds, NO_KIND] if loc[0] == "justification" else list(kinds)
                raise RulePackError(f"{file_of(loc)}: {dotted(loc)}: '{kind}' is not a justification kind{did_you_mean(kind, known)}")
    return model


@functools.lru_cache(maxsize=1)
def _shipped_model() -> tuple[dict[str, Any], RulePackModel]:
    """The shipped pack's TOML and its validated model (parsed and checked once per process)."""
    raw = tomllib.loads(default_pack_text())
    return raw, validate_pack(raw, raw)


def load_rule_pack(override_path: Path | None = None, profile: str | None = None) -> RulePack:
    """The shipped pack, with a site's override file merged in and a policy profile selected, validated."""
    shipped, model = _shipped_model()
    raw = copy.deepcopy(shipped)
    if override_path is not None:
        override = _read_toml(Path(override_path))
        _check_override(override, shipped, str(override_path))
        raw = deep_merge(shipped, override)
        model = validate_pack(raw, shipped, override, str(override_path))
    profile_name = profile or model.settings.default_profile
    if profile_name not in model.profiles:
        raise RulePackError(
            f"unknown profile '{profile_name}'; choose one of: {', '.join(sorted(model.profiles))}"
        )
    rules = {
        rule_id: RuleSpec(
            rule_id=rule_id,
            version=spec.version,
            category=spec.category,
            severity=spec.severity,
            description=spec.description,
            title=spec.title,
            source=spec.source,
            action=spec.action,
            params=dict(spec.params or {}),
            effective_date=spec.effective_date or model.pack.rules_effective_from,
        )
        for rule_id, spec in model.rules.items()
    }
    return RulePack(
        version=model.pack.version,
        name=model.pack.name,
        effective_date=model.pack.effective_date,
        profile_name=profile_name,
        profile=dict(raw["profiles"][profile_name]),
        settings=dict(raw["settings"]),
        weights=dict(raw["weights"]),
        groups=dict(raw["groups"]),
        regimens=dict(raw["regimens"]),
        rules=rules,
        raw=raw,
        justification=Vocabulary.from_pack(raw["justification"]),
        model=model,
    )
