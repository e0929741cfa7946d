"""The dose calculator: what course of IVIG the audit would accept for one patient.

Built on the audit's own code, never a second copy of it: the indication is mapped with
`pipeline.domain.normalise.map_indications`, the weights with `pipeline.domain.weights.with_dosing_weight`, the
regimen with `pipeline.domain.courses.regimen_table` / `regimen_key`, the product with
`pipeline.domain.normalise.matched_product`, and every number (targets, days, tolerance, profile, rounding
step) comes from the rule pack. Only the vial plan is new: a small exact integer knapsack in plain
Python (one calculation, not the data path).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from pipeline.domain.courses import regimen_key, regimen_table
from pipeline.config.products import ProductDictionary
from pipeline.domain.normalise import map_indications, matched_product
from pipeline.config.rulepack import RulePack
from pipeline.domain.weights import PRE_PREGNANCY, with_actual_weight, with_dosing_weight

PHASES = ("first", "later")
# Vial sizes and doses are handled in units of 0.1 g so the knapsack works on integers.
_UNITS_PER_G = 10
# The daily split tries at most this many day amounts nearest the average day.
_MAX_DAY_CANDIDATES = 40
# An indication given as an ICD-10 or ICD-9 code (G61.0, G61.81, 357.0) rather than text.
_ICD = re.compile(r"^\s*([A-Za-z]\d{2}(\.?\w{1,4})?|\d{3}(\.\d{1,2})?)\s*$")


class DoseError(Exception):
    """Input the calculator cannot use (one line, user-facing; the CLI exits 2)."""


@dataclass(frozen=True)
class DoseRequest:
    """One patient and indication to calculate a course for."""

    indication: str
    weight_kg: float
    height_cm: float | None = None
    sex: str | None = None
    age_years: float | None = None
    pregnant: bool = False
    pre_pregnancy_weight_kg: float | None = None
    product: str | None = None
    phase: str | None = None
    days: int | None = None
    g_per_kg: float | None = None


# ------------------------------------------------------------------------------------ audit code reuse
def map_indication(text: str, pack: RulePack) -> dict[str, Any]:
    """The indication group of a text or ICD code, exactly as the audit maps an order's indication."""
    code = text.strip() if _ICD.match(text) else None
    frame = pl.LazyFrame(
        {"indication": [text], "indication_code": [code]},
        schema={"indication": pl.String, "indication_code": pl.String},
    )
    row = map_indications(frame, pack).collect().row(0, named=True)
    return {
        "input": text,
        "group": row["indication_group"],
        "source": row["indication_source"],
        "phase_hint": row["phase_hint"],
        "label": pack.groups.get(row["indication_group"], {}).get("label"),
    }


def choose_regimen(group: str, phase: str | None, phase_hint: str | None, pack: RulePack) -> dict[str, Any]:
    """The regimen the audit would judge the course against (first course unless the phase says later)."""
    frame = pl.DataFrame(
        {
            "indication_group": [group],
            # An explicit --phase wins over what the text or code implies; with neither, a first course.
            "phase_hint": [phase or phase_hint],
            "course_number": [1],
        },
        schema={"indication_group": pl.String, "phase_hint": pl.String, "course_number": pl.Int64},
    )
    key = frame.select(regimen_key(pack)).item()
    rows = regimen_table(pack).filter(pl.col("indication") == key)
    if rows.is_empty():
        raise DoseError(f"the rule pack has no regimen for indication group '{group}'")
    return rows.row(0, named=True)


def patient_weights(req: DoseRequest, pack: RulePack) -> dict[str, Any]:
    """IBW, adjusted weight, BMI, obesity and the dosing weight with its reason, from the audit's weights code
    (the pre-pregnancy weight standing for the actual weight in pregnancy, as in the audit)."""
    frame = pl.LazyFrame(
        {
            "current_weight_kg": [req.weight_kg],
            "pre_pregnancy_weight_kg": [req.pre_pregnancy_weight_kg],
            "height_cm": [req.height_cm],
            "sex": [req.sex],
            "age_years": [req.age_years],
            "pregnant": [req.pregnant],
        },
        schema={
            "current_weight_kg": pl.Float64, "pre_pregnancy_weight_kg": pl.Float64, "height_cm": pl.Float64,
            "sex": pl.String, "age_years": pl.Float64, "pregnant": pl.Boolean,
        },
    )
    row = with_dosing_weight(with_actual_weight(frame), pack.weights, pack.profile, pack.settings).collect().row(0, named=True)
    if row["ibw_kg"] is not None and row["ibw_kg"] <= 0:
        # The Devine formula has no meaning this short (a small child): actual weight is used anyway.
        row["ibw_kg"] = row["adjusted_weight_kg"] = None
    return row


def why_no_ibw(req: DoseRequest, pack: RulePack) -> str | None:
    """Why there is no IBW for this patient, in words (None when there is one)."""
    child_age, short_cm = float(pack.weights["actual_weight_below_age_years"]), float(pack.weights["actual_weight_below_height_cm"])
    if req.age_years is not None and req.age_years < child_age:
        return f"not used: age {req.age_years:g} years, under {child_age:g}, is dosed on actual weight"
    if req.height_cm is not None and req.height_cm < short_cm:
        return f"not used: height {req.height_cm:g} cm, under {short_cm:g} cm, where the Devine formula does not apply"
    missing = " and ".join(name for name, value in (("--height", req.height_cm), ("--sex", req.sex)) if value is None)
    return f"not known: give {missing}" if missing else None


def find_product(name: str, products: ProductDictionary) -> dict[str, Any]:
    """The dictionary entry of an IVIG product name, matched as the audit matches an order's medication."""
    matched = pl.DataFrame({"medication": [name]}).select(matched_product(products)).item()
    entry = next((p for p in products.products if p["name"] == matched), None)
    if entry is None:
        raise DoseError(f"product '{name}' is not in the product dictionary")
    if entry["scope"] != "ivig":
        raise DoseError(f"product '{name}' is {entry['name']}, which is not an IVIG product ({entry['scope']})")
    return entry


# ------------------------------------------------------------------------------------ vial arithmetic
def _units(grams: float) -> int:
    return int(round(grams * _UNITS_PER_G))


def _grams(units: int) -> float:
    return round(units / _UNITS_PER_G, 1)


def _fewest_vials_table(limit: int, sizes: list[int]) -> list[tuple[int, int] | None]:
    """For every amount 0..limit (in units): (vial count, last vial) of the fewest vials summing to it exactly."""
    best: list[tuple[int, int] | None] = [None] * (limit + 1)
    best[0] = (0, 0)
    for amount in range(1, limit + 1):
        for size in sorted(sizes, reverse=True):  # larger vials first: ties keep the larger vial
            prev = best[amount - size] if size <= amount else None
            if prev is not None and (best[amount] is None or prev[0] + 1 < best[amount][0]):
                best[amount] = (prev[0] + 1, size)
    return best


def fewest_vials(amount_g: float, vial_sizes_g: list[float]) -> dict[float, int] | None:
    """The fewest whole vials that add up exactly to the amount ({vial size g: count}), or None if none do."""
    sizes = sorted({_units(v) for v in vial_sizes_g if v > 0})
    target = _units(amount_g)
    if not sizes or target < 0:
        return None
    table = _fewest_vials_table(target, sizes)
    if table[target] is None:
        return None
    plan: dict[float, int] = {}
    left = target
    while left > 0:
        size = table[left][1]
        plan[_grams(size)] = plan.get(_grams(size), 0) + 1
        left -= size
    return dict(sorted(plan.items(), reverse=True))


def _smallest_cover(amount_g: float, vial_sizes_g: list[float]) -> tuple[float, dict[float, int]] | None:
    """The smallest whole-vial amount at or above the dose, with its fewest vials (when nothing rounds)."""
    sizes = sorted({_units(v) for v in vial_sizes_g if v > 0})
    if not sizes:
        return None
    start = math.ceil(amount_g * _UNITS_PER_G - 1e-9)
    table = _fewest_vials_table(start + max(sizes), sizes)
    for units in range(start, len(table)):
        if table[units] is not None:
            return _grams(units), fewest_vials(_grams(units), vial_sizes_g) or {}
    return None


def round_course(calculated_g: float, low_g: float, high_g: float, step_g: float, vial_sizes_g: list[float]) -> tuple[float, str]:
    """The rounded course dose: nearest step multiple (made of whole vials when a product is given), else
    the nearest whole-vial amount, staying within [low_g, high_g]; else the calculated dose unrounded.

    Returns the dose and how it was rounded ('step', 'vials' or 'none'). Ties round down (fewer grams).
    """
    def nearest(candidates: list[float]) -> float | None:
        inside = [c for c in candidates if low_g - 1e-9 <= c <= high_g + 1e-9 and c > 0]
        return min(inside, key=lambda c: (abs(c - calculated_g), c)) if inside else None

    def makeable(amount: float) -> bool:
        return not vial_sizes_g or fewest_vials(amount, vial_sizes_g) is not None

    if step_g > 0:
        multiples = [k * step_g for k in range(math.floor(low_g / step_g), math.ceil(high_g / step_g) + 1)]
        chosen = nearest([m for m in multiples if makeable(m)])
        if chosen is not None:
            return round(chosen, 1), "step"
    if vial_sizes_g:
        sizes = sorted({_units(v) for v in vial_sizes_g if v > 0})
        table = _fewest_vials_table(math.floor(high_g * _UNITS_PER_G + 1e-9), sizes)
        chosen = nearest([_grams(u) for u, best in enumerate(table) if best is not None])
        if chosen is not None:
            return chosen, "vials"
    return round(calculated_g, 1), "none"


def daily_split(course_g: float, days: int, vial_sizes_g: list[float], step_g: float, tolerance: float) -> list[float] | None:
    """The course shared over the days, each day made of whole vials (of the rounding step without a
    product) and within the tolerance of the average day; the split with the fewest vials, then the most
    even (larger days first). None when no day can be made so."""
    if days < 1:
        return None
    sizes = sorted({_units(v) for v in vial_sizes_g if v > 0})
    total = _units(course_g)
    average = total / days
    low, high = math.ceil(average * (1 - tolerance) - 1e-9), math.floor(average * (1 + tolerance) + 1e-9)
    if sizes:
        table = _fewest_vials_table(max(high, total), sizes)
        vials = lambda units: table[units][0] if 0 < units < len(table) and table[units] is not None else None  # noqa: E731
    else:
        granule = _units(step_g)
        if granule <= 0:
            return None
        vials = lambda units: 1 if units > 0 and units % granule == 0 else None  # noqa: E731
    if days == 1:
        return [_grams(total)] if vials(total) is not None else None
    # The candidate days nearest the average (a bounded search: one calculation, not the data path).
    candidates = sorted((u for u in range(max(low, 1), high + 1) if vials(u) is not None), key=lambda u: (abs(u - average), -u))[:_MAX_DAY_CANDIDATES]
    best: tuple[tuple[int, int], tuple[int, ...]] | None = None
    for first_days in itertools.combinations_with_replacement(sorted(candidates, reverse=True), days - 1):
        last = total - sum(first_days)
        if last > first_days[-1] or last < low or vials(last) is None:
            continue
        split = (*first_days, last)
        score = (sum(vials(u) for u in split), split[0] - split[-1])
        if best is None or score < best[0]:
            best = (score, split)
    return None if best is None else [_grams(u) for u in best[1]]


# ------------------------------------------------------------------------------------ the calculation
def _r(value: float | None, decimals: int = 1) -> float | None:
    return None if value is None else round(float(value), decimals)


def _check_request(req: DoseRequest) -> None:
    """Reject impossible numbers with one line each."""
    if not (0 < req.weight_kg <= 400):
        raise DoseError(f"weight {req.weight_kg:g} kg is not a plausible weight (0-400 kg)")
    if req.height_cm is not None and not (30 <= req.height_cm <= 250):
        raise DoseError(f"height {req.height_cm:g} cm is not a plausible height (30-250 cm)")
    if req.age_years is not None and not (0 <= req.age_years <= 120):
        raise DoseError(f"age {req.age_years:g} years is not a plausible age (0-120)")
    if req.sex is not None and req.sex not in ("M", "F"):
        raise DoseError(f"sex must be M or F, not '{req.sex}'")
    if req.pre_pregnancy_weight_kg is not None and not (0 < req.pre_pregnancy_weight_kg <= 400):
        raise DoseError(f"pre-pregnancy weight {req.pre_pregnancy_weight_kg:g} kg is not plausible (0-400 kg)")
    if req.phase is not None and req.phase not in PHASES:
        raise DoseError(f"phase must be 'first' (induction/crisis) or 'later' (maintenance), not '{req.phase}'")


def calculate_dose(req: DoseRequest, pack: RulePack, products: ProductDictionary) -> dict[str, Any]:
    """What the audit would accept for this patient: weights, regimen, band, rounded course and vial plan.

    Raises DoseError for input it cannot use (unrecognised indication, days outside the regimen, ...).
    A not-routine indication (multiple sclerosis) is a result with status 'not_routine', not an error.
    """
    _check_request(req)
    indication = map_indication(req.indication, pack)
    group = indication["group"]
    if group in ("unrecognised", "missing"):
        known = ", ".join(spec.get("label", g) for g, spec in pack.groups.items())
        raise DoseError(
            f"indication '{req.indication}' is not a recognised IVIG indication (the audit raises a critical "
            f"indication.unrecognised finding); recognised: {known}"
        )
    phased = {spec["group"] for spec in pack.regimens.values() if spec.get("phase", "only") != "only"}
    if req.phase is not None and group not in phased:
        raise DoseError(
            f"--phase applies only to {', '.join(sorted(phased)).upper()}; {indication['label']} has a single regimen"
        )
    regimen = choose_regimen(group, req.phase, indication["phase_hint"], pack)
    weights = patient_weights(req, pack)
    product = find_product(req.product, products) if req.product else None
    tolerance = float(pack.settings["dose_tolerance"])
    step = float(pack.profile.get("rounding_step_g", 5.0))
    result: dict[str, Any] = {
        "status": "routine",
        "indication": {
            "input": req.indication, "group": group, "label": indication["label"], "mapped_from": indication["source"],
            "regimen": regimen["indication"], "regimen_label": regimen["regimen_label"], "phase": regimen["phase"],
        },
        "rule_pack": {"version": pack.version, "profile": pack.profile_name, "config_hash": pack.config_hash[:12]},
        "patient": {
            "weight_kg": req.weight_kg, "height_cm": req.height_cm, "sex": req.sex, "age_years": req.age_years,
            "pregnant": req.pregnant, "pre_pregnancy_weight_kg": req.pre_pregnancy_weight_kg,
        },
        "weights": {
            "actual_weight_kg": _r(weights["actual_weight_kg"]),
            "current_weight_kg": _r(weights["current_weight_kg"]),
            "pre_pregnancy_weight_kg": _r(weights["pre_pregnancy_weight_kg"]),
            "actual_weight_source": weights["actual_weight_source"],
            "ibw_kg": _r(weights["ibw_kg"]),
            "no_ibw_because": None if weights["ibw_kg"] is not None else why_no_ibw(req, pack),
            "adjusted_weight_kg": _r(weights["adjusted_weight_kg"]),
            "bmi": _r(weights["bmi"]),
            "obese": weights["obese"],
            "dosing_weight_kg": _r(weights["dosing_weight_kg"]),
            "weight_basis": weights["weight_basis"],
            "reason": weights["weight_basis_reason"],
        },
        "product": None if product is None else {
            "name": product["name"],
            "vial_sizes_g": [float(v) for v in product.get("vial_sizes_g", [])],
            "concentration_g_per_ml": product.get("concentration_g_per_ml"),
            "contains_sucrose": bool(product.get("contains_sucrose", False)),
            "iga_depleted": bool(product.get("iga_depleted", False)),
        },
        "notes": [],
    }
    if product is not None and product.get("contains_sucrose"):
        result["notes"].append(
            f"{product['name']} contains sucrose: the audit raises a critical product-safety finding with renal "
            "impairment or age 65 and over."
        )
    if regimen["regimen_status"] != "routine":
        result["status"] = "not_routine"
        no_target = regimen["target_hi_g_per_kg"] is None
        result["explanation"] = (
            f"IVIG is not routine for {regimen['regimen_label'].lower()}"
            + (": the rule pack has no dose target." if no_target else ".")
            + " The audit raises a critical indication.not_routine finding unless the order documents the qualifying "
            f"scenario: {regimen['qualifying_description'] or 'a documented justification'}"
            + ("." if no_target else "; with it, the course is judged against the dose above.")
        )
        if no_target:
            return result
    dosing_weight = weights["dosing_weight_kg"]
    if dosing_weight is None:
        raise DoseError(f"no dosing weight: {weights['weight_basis_reason']}; give --height and --sex")

    lo, hi = float(regimen["target_lo_g_per_kg"]), float(regimen["target_hi_g_per_kg"])
    g_per_kg = hi if req.g_per_kg is None else float(req.g_per_kg)
    if not (lo - 1e-9 <= g_per_kg <= hi + 1e-9):
        raise DoseError(f"--g-per-kg {g_per_kg:g} is outside the {regimen['regimen_label']} target of {_range(lo, hi, 'g/kg')}")
    days_min, days_max = int(regimen["days_min"]), int(regimen["days_max"])
    days = days_max if req.days is None else int(req.days)
    if not (days_min <= days <= days_max):
        raise DoseError(f"--days {days} is outside the {regimen['regimen_label']} regimen of {_range(days_min, days_max, 'day(s)')}")

    calculated = g_per_kg * dosing_weight
    band_lo_g, band_hi_g = lo * (1 - tolerance) * dosing_weight, hi * (1 + tolerance) * dosing_weight
    low, high = max(calculated * (1 - tolerance), band_lo_g), min(calculated * (1 + tolerance), band_hi_g)
    vial_sizes = result["product"]["vial_sizes_g"] if product is not None else []
    rounded, how = round_course(calculated, low, high, step, vial_sizes)
    on_actual = g_per_kg * float(weights["actual_weight_kg"])
    result["regimen"] = {
        "target_g_per_kg": _r(g_per_kg, 3),
        "target_range_g_per_kg": [lo, hi],
        "days": days,
        "days_range": [days_min, days_max],
        "g_per_kg_per_day": _r(g_per_kg / days, 3),
        "tolerance": tolerance,
        "band_g_per_kg": [_r(lo * (1 - tolerance), 3), _r(hi * (1 + tolerance), 3)],
        "band_g": [_r(band_lo_g), _r(band_hi_g)],
        "calculated_course_g": _r(calculated),
        "calculated_per_day_g": _r(calculated / days),
    }
    result["rounding"] = {
        "step_g": step,
        "rounded_course_g": rounded,
        "rounded_by": how,
        "rounded_per_day_g": _r(rounded / days, 2),
        "allowed_g": [_r(low), _r(high)],
        "g_per_kg": _r(rounded / dosing_weight, 3),
    }
    result["actual_weight_course_g"] = _r(on_actual)
    result["grams_saved_vs_actual_weight"] = _r(max(on_actual - rounded, 0.0))
    if product is not None:
        result["vial_plan"] = _vial_plan(rounded, how, days, vial_sizes, step, tolerance, product["name"])
    return result


def _vial_plan(rounded: float, how: str, days: int, vial_sizes: list[float], step: float, tolerance: float, name: str) -> dict[str, Any]:
    """The fewest vials of the product for the course, and a whole-vial split over the days."""
    if not vial_sizes:
        return {"product": name, "available": False, "note": f"the dictionary lists no vial sizes for {name}"}
    plan = fewest_vials(rounded, vial_sizes)
    total, note = rounded, None
    if plan is None:  # nothing within tolerance is made of whole vials: cover the dose, waste the rest
        cover = _smallest_cover(rounded, vial_sizes)
        total, plan = cover if cover else (rounded, {})
        note = f"no whole-vial amount lies within the tolerance; {total:g} g of vials covers {rounded:g} g (discard {total - rounded:g} g)"
    split = daily_split(rounded, days, vial_sizes, step, tolerance) if how != "none" else None
    per_day = None if split is None else [fewest_vials(d, vial_sizes) or {} for d in split]
    if per_day is not None and days > 1:
        # A punctured vial is not kept for the next day: the course needs the vials of its daily plans.
        plan = {}
        for day in per_day:
            for size, count in day.items():
                plan[size] = plan.get(size, 0) + count
        plan = dict(sorted(plan.items(), reverse=True))
        total = round(sum(size * count for size, count in plan.items()), 1)
    return {
        "product": name,
        "available": True,
        "vials": [{"size_g": size, "count": count} for size, count in plan.items()],
        "total_vials": sum(plan.values()),
        "total_g": total,
        "note": note,
        "per_day_g": split,
        "per_day_vials": None if per_day is None else [[{"size_g": s, "count": c} for s, c in day.items()] for day in per_day],
    }


def _range(lo: float, hi: float, unit: str) -> str:
    return f"{lo:g} {unit}" if lo == hi else f"{lo:g}-{hi:g} {unit}"


def _vials_text(vials: list[dict[str, Any]]) -> str:
    return " + ".join(f"{v['count']} x {v['size_g']:g} g" for v in vials)


def format_dose(result: dict[str, Any]) -> str:
    """The calculation as text a pharmacist can read and check."""
    ind, w, pack = result["indication"], result["weights"], result["rule_pack"]
    lines = [
        f"Indication: {ind['label']} (from {ind['mapped_from']} '{ind['input']}'); regimen: {ind['regimen_label']}",
        f"Rule pack {pack['version']}, profile '{pack['profile']}'",
        "",
        "Weights",
        *(
            [f"  current weight   {_num(w['current_weight_kg'])} kg",
             f"  pre-pregnancy    {_num(w['pre_pregnancy_weight_kg'])} kg (stands for the actual weight in pregnancy)"]
            if w["actual_weight_source"] == PRE_PREGNANCY
            else [f"  actual weight    {_num(w['actual_weight_kg'])} kg"]
        ),
        f"  ideal (IBW)      {_kg(w['ibw_kg'], w['no_ibw_because'])}",
        f"  adjusted         {_kg(w['adjusted_weight_kg'], w['no_ibw_because'])}",
        f"  BMI              {_num(w['bmi'])}",
        f"  dosing weight    {_num(w['dosing_weight_kg'])} kg ({w['weight_basis']}): {w['reason']}",
    ]
    if "regimen" not in result:
        lines += ["", result["explanation"]]
        lines += [f"Note: {n}" for n in result["notes"]]
        return "\n".join(lines)
    reg, rnd = result["regimen"], result["rounding"]
    lo, hi = reg["target_range_g_per_kg"]
    lines += [
        "",
        "Regimen",
        f"  target           {_num(reg['target_g_per_kg'])} g/kg per course (regimen {_range(lo, hi, 'g/kg')}) = "
        f"{_num(reg['g_per_kg_per_day'])} g/kg/day x {reg['days']} day(s) (regimen {_range(*reg['days_range'], 'day(s)')})",
        f"  calculated       {_num(reg['calculated_course_g'])} g per course = {_num(reg['calculated_per_day_g'])} g/day "
        f"on {_num(w['dosing_weight_kg'])} kg",
        f"  audit accepts    {_num(reg['band_g'][0])}-{_num(reg['band_g'][1])} g per course "
        f"({_num(reg['band_g_per_kg'][0])}-{_num(reg['band_g_per_kg'][1])} g/kg: target +/-{reg['tolerance'] * 100:g}%)",
        "",
        "Rounded course",
    ]
    if rnd["rounded_by"] == "none":
        lines.append(f"  {_num(rnd['rounded_course_g'])} g: no {rnd['step_g']:g} g step or whole-vial amount lies within +/-"
                     f"{reg['tolerance'] * 100:g}% of the calculated dose; give it unrounded")
    else:
        by = f"nearest {rnd['step_g']:g} g" if rnd["rounded_by"] == "step" else "nearest whole-vial amount"
        lines.append(f"  {_num(rnd['rounded_course_g'])} g ({by}; {_num(rnd['g_per_kg'])} g/kg; about "
                     f"{_num(rnd['rounded_per_day_g'])} g/day over {reg['days']} day(s))")
    lines.append(f"  on actual weight the course would be {_num(result['actual_weight_course_g'])} g: "
                 f"{_num(result['grams_saved_vs_actual_weight'])} g saved")
    plan = result.get("vial_plan")
    if plan is not None:
        lines += ["", f"Vial plan: {plan['product']}"]
        if not plan["available"]:
            lines.append(f"  {plan['note']}")
        else:
            lines.append(f"  course: {_vials_text(plan['vials'])} = {_num(plan['total_g'])} g ({plan['total_vials']} vial{'s' if plan['total_vials'] != 1 else ''})")
            if plan["note"]:
                lines.append(f"  {plan['note']}")
            if plan["per_day_g"] and len(plan["per_day_g"]) > 1:
                lines.append("  (the course is the vials of its daily plans: a punctured vial is not kept for the next day)")
            if plan["per_day_g"]:
                for day, (grams, vials) in enumerate(zip(plan["per_day_g"], plan["per_day_vials"]), start=1):
                    lines.append(f"  day {day}: {_num(grams)} g = {_vials_text(vials)}")
    if result["status"] == "not_routine":
        lines += ["", result["explanation"]]
    lines += [f"Note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def _kg(value: float | None, why_not: str | None) -> str:
    return f"n/a ({why_not or 'not defined'})" if value is None else f"{_num(value)} kg"


def _num(value: float | None) -> str:
    """A number as short text: at most two decimals, no trailing zeros."""
    if value is None:
        return "n/a"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
