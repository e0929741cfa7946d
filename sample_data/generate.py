"""Generate the synthetic IVIG stewardship sample extracts in ``sample_data/``.

Deterministic: every random draw comes from ``random.Random(20261128)`` and every date is
a fixed reference date (courses start 2026-05-01 .. 2026-11-20). Nothing depends on the
wall clock, the locale or dict/set hash order, so

    python sample_data/generate.py [--out DIR]

always writes byte-identical files (default DIR: the folder holding this script):

    orders/orders_2026-05.csv ... orders/orders_2026-11.csv   one file per start month
    labs.csv                                                   baseline / follow-up labs
    procedures.csv                                             plasma exchange + unrelated
    scenarios.json                                             patient_id -> scenario manifest

The orders use the canonical column names of ``/work/shared/design/contract.md``. Doses
follow ``rules.md``: course grams = target g/kg x dosing weight (Devine IBW; adjusted weight
IBW + 0.4 x (actual - IBW) when obese: BMI >= 30 or actual > 120% IBW; actual weight when
height < 152.4 cm, age < 18 or actual < IBW), rounded to 5 g (or finer, staying within 5%).

Deliberate scenarios (each a function ``scenario_*`` below) are recorded with the rule they
should or should not trigger; README.md carries the same table. Background patients are
appropriate courses that should raise no warning/critical finding (info findings such as
rounding or the elderly slow-rate reminder are allowed).

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

SEED = 20261128
PERIOD_START = datetime(2026, 5, 1)
PERIOD_END = datetime(2026, 11, 20)
MONTHS = ["2026-05", "2026-06", "2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]

ORDER_COLUMNS = [
    "order_id", "patient_id", "encounter_id", "facility", "medication", "dose", "dose_unit",
    "doses", "start", "route", "weight_kg", "height_cm", "sex", "age_years", "birth_date",
    "indication", "indication_code", "pregnant", "justification", "prescriber_id", "service",
]
LAB_COLUMNS = ["patient_id", "collected_at", "test", "value", "unit", "ref_low", "ref_high"]
PROC_COLUMNS = ["patient_id", "performed_at", "procedure"]

# name as written in the extract -> (concentration g/mL or None when not fixed, sucrose, IgA-depleted)
IVIG_PRODUCTS = {
    "Privigen 10%": (0.10, False, False),
    "PRIVIGEN": (0.10, False, False),
    "Gamunex-C": (0.10, False, False),
    "Gammagard Liquid 10%": (0.10, False, False),
    "Gammagard S/D": (None, False, True),
    "Octagam 5%": (0.05, False, False),
    "Octagam 10%": (0.10, False, False),
    "Flebogamma DIF 5%": (0.05, False, False),
    "Panzyga": (0.10, False, False),
    "Gammaplex 10%": (0.10, False, False),
    "Bivigam": (0.10, False, False),
    "Asceniv": (0.10, False, False),
    "Carimune NF": (None, True, False),
    "Immune Globulin Intravenous (Human)": (None, False, False),
    "IVIG": (None, False, False),
    "immune globulin IV": (None, False, False),
}
# products used for background courses (Carimune and S/D only appear in scenarios)
ADULT_PRODUCTS = [
    ("Privigen 10%", 18), ("PRIVIGEN", 6), ("Gamunex-C", 14), ("Gammagard Liquid 10%", 12),
    ("Octagam 5%", 5), ("Octagam 10%", 7), ("Flebogamma DIF 5%", 4), ("Panzyga", 6),
    ("Gammaplex 10%", 5), ("Bivigam", 3), ("Asceniv", 2),
    ("Immune Globulin Intravenous (Human)", 5), ("IVIG", 8), ("immune globulin IV", 3),
]
CHILD_PRODUCTS = [("Gamunex-C", 5), ("Privigen 10%", 5), ("Gammagard Liquid 10%", 4),
                  ("Octagam 10%", 2), ("IVIG", 2)]

PRESCRIBERS = {
    "Neurology": [f"DR0{n:02d}" for n in range(1, 13)],
    "Hematology": [f"DR0{n:02d}" for n in range(13, 19)],
    "Pediatrics": [f"DR0{n:02d}" for n in range(19, 27)],
    "ICU": [f"DR0{n:02d}" for n in range(27, 34)],
    "Rheumatology": [f"DR0{n:02d}" for n in range(34, 39)],
}

# indication key -> (text variants, ICD-10 code, target g/kg per course, usual days, service)
IND = {
    "GBS": (["GBS", "Guillain-Barre", "Guillain Barre syndrome", "AIDP"], "G61.0", 2.0, 5),
    "CIDP_IND": (["CIDP", "CIDP induction", "CIDP loading"], "G61.81", 2.0, 2),
    "CIDP_MAINT": (["CIDP maint", "CIDP maintenance"], "G61.81", 1.0, 1),
    "MG_CRISIS": (["MG crisis", "myasthenic crisis"], "G70.01", 2.0, 5),
    "MG_MAINT": (["myasthenia gravis", "MG maintenance", "MG"], "G70.00", 1.0, 1),
    "KD": (["Kawasaki", "KD", "Kawasaki disease"], "M30.3", 2.0, 1),
    "ITP": (["ITP", "immune thrombocytopenia"], "D69.3", 1.0, 1),
    "MS": (["multiple sclerosis", "MS relapse"], "G35", 0.4, 1),
}

CIDP_JUSTIFICATIONS = [
    "INCAT improved 2 points; grip strength up",
    "INCAT 3 -> 1, grip dynamometer R 18 -> 26 kg",
    "I-RODS 52 -> 61 since last course; walking unaided",
    "MRC sum score 50 -> 56; wearing-off in week 4",
    "Grip strength stable 28 kg on current interval; deteriorates by week 4",
    'Response documented: INCAT 4 -> 2, patient reports "much stronger", continue q4w',
]


def fmt_num(x: float | int | None, nd: int = 3) -> str:
    """Deterministic short number text: 30 -> '30', 0.4 -> '0.4', 82.35 -> '82.35'."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.{nd}f}".rstrip("0").rstrip(".")


def fmt_dt(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Patient:
    pid: str
    sex: str
    birth_date: date
    height_cm: float | None  # true height (used for dosing maths)
    weight_kg: float | None  # true weight
    facility: str
    show_height: bool = True
    show_weight: bool = True
    age_mode: str = "both"  # both | age | dob
    pregnant_default: str = ""

    def age_at(self, d: datetime) -> float:
        return (d.date() - self.birth_date).days / 365.25

    def ibw(self) -> float:
        base = 50.0 if self.sex == "M" else 45.5
        return base + 2.3 * (self.height_cm / 2.54 - 60.0)

    def bmi(self) -> float:
        return self.weight_kg / (self.height_cm / 100.0) ** 2

    def adjusted(self) -> float:
        ibw = self.ibw()
        return ibw + 0.4 * (self.weight_kg - ibw)

    def basis(self, at: datetime) -> str:
        if self.age_at(at) < 18 or self.height_cm < 152.4 or self.weight_kg < self.ibw():
            return "actual"
        if self.bmi() >= 30 or self.weight_kg > 1.2 * self.ibw():
            return "adjusted"
        return "actual"

    def dosing_weight(self, at: datetime) -> float:
        return self.adjusted() if self.basis(at) == "adjusted" else self.weight_kg


class Generator:
    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        # Follow-up labs after a course have their own stream: adding them leaves every other row as it was.
        self.follow_rng = random.Random(SEED + 15)
        self.orders: list[dict] = []
        self.labs: list[dict] = []
        self.procs: list[dict] = []
        self.scenarios: list[dict] = []
        self.patient_scenarios: dict[str, list[str]] = {}
        self._pid_pool = self.rng.sample(range(100, 1000), 880)
        self._enc = 4100000
        self.courses: list[dict] = []  # generator-side bookkeeping for the self-check
        self._product: dict[str, str] = {}
        self._prescriber: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ identities
    def new_pid(self) -> str:
        return f"P{self._pid_pool.pop():06d}"

    def new_encounter(self) -> str:
        self._enc += self.rng.randint(3, 40)
        return f"E{self._enc:07d}"

    def register(self, key: str, title: str, expect: str, pids: list[str]) -> None:
        self.scenarios.append({"key": key, "title": title, "expect": expect, "patient_ids": pids})
        for p in pids:
            self.patient_scenarios.setdefault(p, []).append(key)

    # ------------------------------------------------------------------ patients
    def adult(self, kind: str = "lean", sex: str | None = None, age: tuple[int, int] = (22, 64),
              facility: str | None = None) -> Patient:
        """kind: lean | obese | under (actual < IBW) | short (< 152.4 cm, obese-looking)."""
        r = self.rng
        sex = sex or r.choice("MF")
        for _ in range(1000):
            h = round(r.gauss(177 if sex == "M" else 164, 6.5) * 2) / 2
            if kind == "short":
                h = round(r.uniform(142, 151) * 2) / 2
            elif not 155 <= h <= 198:
                continue
            bmi = {"lean": r.uniform(20, 28), "obese": r.uniform(32, 45),
                   "under": r.uniform(17.5, 20.5), "short": r.uniform(31, 40)}[kind]
            w = round(bmi * (h / 100) ** 2, 1)
            p = Patient("", sex, date(2000, 1, 1), h, w, "")
            ibw = p.ibw()
            if kind == "lean" and not (ibw <= w < 1.15 * ibw and p.bmi() < 28.5):
                continue
            if kind == "obese" and not (w / p.adjusted() >= 1.22):
                continue
            if kind == "under" and not w < 0.97 * ibw:
                continue
            break
        a = r.randint(*age)
        birth = date(2026 - a, 5, 1) - timedelta(days=r.randint(1, 364))
        p.pid = self.new_pid()
        p.birth_date = birth
        p.facility = facility or r.choice(["North General", "North General", "St. Mary's"])
        p.age_mode = r.choices(["both", "age", "dob"], [70, 15, 15])[0]
        if sex == "F" and a < 50:
            p.pregnant_default = r.choice(["false", "false", ""])
        return p

    def child(self, age: tuple[float, float] = (1, 8)) -> Patient:
        r = self.rng
        a = r.uniform(*age)
        sex = r.choice("MF")
        w = round(max(8.0, min(30.0, 2.2 * a + 8 + r.uniform(-2, 2))), 1)
        h = round(75 + 6.5 * a + r.uniform(-4, 4))
        birth = date(2026, 5, 1) - timedelta(days=int(a * 365.25))
        p = Patient(self.new_pid(), sex, birth, float(h), w, "Children's Hospital")
        p.age_mode = r.choices(["both", "age", "dob"], [60, 10, 30])[0]
        return p

    # ------------------------------------------------------------------ row builders
    def order_row(self, p: Patient | None, med: str, dose, unit: str, start: datetime | str,
                  *, doses: int | str = 1, route: str = "IV", indication: str = "",
                  code: str = "", justification: str = "", service: str = "",
                  prescriber: str = "", encounter: str = "", pregnant: str | None = None,
                  sort_at: datetime | None = None) -> dict:
        at = start if isinstance(start, datetime) else sort_at
        row = {c: "" for c in ORDER_COLUMNS}
        row.update(
            medication=med, dose=fmt_num(dose), dose_unit=unit,
            doses="" if doses == "" else str(doses),
            start=fmt_dt(start) if isinstance(start, datetime) else start,
            route=route, indication=indication, indication_code=code,
            justification=justification, service=service, prescriber_id=prescriber,
            encounter_id=encounter,
        )
        if p is not None:
            row.update(
                patient_id=p.pid, facility=p.facility, sex=p.sex,
                weight_kg=fmt_num(p.weight_kg, 1) if p.show_weight else "",
                height_cm=fmt_num(p.height_cm, 1) if p.show_height else "",
                pregnant=p.pregnant_default if pregnant is None else pregnant,
            )
            age = p.age_at(at)
            age_txt = fmt_num(math.floor(age * 10) / 10, 1) if age < 2 else str(math.floor(age))
            if p.age_mode in ("both", "age"):
                row["age_years"] = age_txt
            if p.age_mode in ("both", "dob"):
                row["birth_date"] = p.birth_date.isoformat()
        row["_at"] = at
        self.orders.append(row)
        return row

    def med(self, p: Patient, name: str, dose, unit: str, at: datetime, *, doses: int = 1,
            route: str = "PO", service: str = "", encounter: str = "", prescriber: str = "") -> dict:
        return self.order_row(p, name, dose, unit, at, doses=doses, route=route, service=service,
                              encounter=encounter, prescriber=prescriber)

    def lab(self, p: Patient, at: datetime, test: str, value, unit: str, lo="", hi="") -> None:
        self.labs.append({"patient_id": p.pid, "collected_at": fmt_dt(at), "test": test,
                          "value": fmt_num(value, 2), "unit": unit, "ref_low": fmt_num(lo, 2),
                          "ref_high": fmt_num(hi, 2), "_at": at})

    def proc(self, p: Patient, at: datetime, name: str) -> None:
        self.procs.append({"patient_id": p.pid, "performed_at": fmt_dt(at), "procedure": name,
                           "_at": at})

    def baseline_labs(self, p: Patient, before: datetime, days_before: float | None = None, *,
                      renal: str = "normal", cbc: bool = True, creat: bool = True,
                      iga: str | None = None, platelets: float | None = None) -> None:
        """Creatinine/eGFR + CBC drawn 1-3 days (default) before ``before``."""
        r = self.rng
        d = days_before if days_before is not None else r.choice([1, 1, 2, 2, 3])
        at = (before - timedelta(days=d)).replace(hour=r.choice([5, 6, 6, 7, 10, 14]),
                                                  minute=r.choice([0, 12, 25, 40, 51]), second=0)
        child = p.age_at(before) < 18
        if creat:
            if child:
                self.lab(p, at, "creatinine", round(r.uniform(0.2, 0.5), 2), "mg/dL", 0.2, 0.7)
            else:
                hi = 1.3 if p.sex == "M" else 1.1
                lo = 0.7 if p.sex == "M" else 0.5
                if renal == "impaired":
                    self.lab(p, at, "creatinine", round(r.uniform(1.9, 2.6), 2), "mg/dL", lo, hi)
                    self.lab(p, at, "egfr", r.randint(24, 44), "mL/min/1.73m2", 60, "")
                elif renal == "egfr_only":  # creatinine at the top of range, eGFR < 60
                    self.lab(p, at, "creatinine", hi - 0.05, "mg/dL", lo, hi)
                    self.lab(p, at, "egfr", r.randint(48, 57), "mL/min/1.73m2", 60, "")
                else:
                    self.lab(p, at, "creatinine", round(r.uniform(lo + 0.1, hi - 0.15), 2),
                             "mg/dL", lo, hi)
                    self.lab(p, at, "egfr", r.randint(66, 118), "mL/min/1.73m2", 60, "")
        if cbc:
            if child:
                self.lab(p, at, "hemoglobin", round(r.uniform(10.8, 13.2), 1), "g/dL", 10.5, 14.0)
            else:
                lo, hi = (13.5, 17.5) if p.sex == "M" else (12.0, 15.5)
                self.lab(p, at, "hemoglobin", round(r.uniform(lo + 0.2, hi - 0.5), 1), "g/dL", lo, hi)
            plt = platelets if platelets is not None else r.randint(170, 380)
            self.lab(p, at, "platelets", plt, "10^9/L", 150, 400)
        if iga == "deficient":
            self.lab(p, at, "iga", 0.02, "g/L", 0.7, 4.0)
            self.lab(p, at, "igg", round(r.uniform(5.5, 9.0), 1), "g/L", 7.0, 16.0)
        elif iga == "normal":
            self.lab(p, at, "iga", round(r.uniform(1.0, 3.2), 2), "g/L", 0.7, 4.0)
            self.lab(p, at, "igg", round(r.uniform(7.5, 14.0), 1), "g/L", 7.0, 16.0)

    def follow_up_labs(self, p: Patient, last_dose: datetime, child: bool, *, hemoglobin: bool,
                       creatinine: bool) -> None:
        """Labs 1-3 days after the last dose: hemoglobin after a high dose, creatinine with renal risk."""
        r = self.follow_rng
        at = (last_dose + timedelta(days=r.choice([1, 2, 2, 3]))).replace(hour=r.choice([6, 7, 10]), minute=0)
        if hemoglobin:
            lo, hi = (10.5, 14.0) if child else ((13.5, 17.5) if p.sex == "M" else (12.0, 15.5))
            self.lab(p, at, "hemoglobin", round(r.uniform(lo, hi - 0.5), 1), "g/dL", lo, hi)
        if creatinine:
            lo, hi = (0.7, 1.3) if p.sex == "M" else (0.5, 1.1)
            self.lab(p, at, "creatinine", round(r.uniform(lo + 0.1, hi), 2), "mg/dL", lo, hi)

    # ------------------------------------------------------------------ IVIG course
    def ivig_course(self, p: Patient, start: datetime, ind: str, *, factor: float = 1.0,
                    basis: str = "dosing", days: int | None = None,
                    offsets: list[int] | None = None, gkg: float | None = None,
                    product: str | None = None, unit_style: str | None = None,
                    layout: str | None = None, text: str | None = None, code: str | None = None,
                    justification: str = "", service: str | None = None,
                    pregnant: str | None = None, labs: str = "baseline", renal: str = "normal",
                    iga: str | None = None, platelets: float | None = None,
                    premed: bool | None = None, inpatient_meds: bool | None = None,
                    encounter: str | None = None, tag: str = "background",
                    follow_up: str = "auto") -> dict:
        """Write one IVIG course. ``factor`` scales the correct total (1.0 = on target);
        ``basis='actual'`` doses on actual weight regardless of obesity. ``follow_up``: 'auto'
        draws the labs the course needs after it (hemoglobin after a high dose, creatinine with
        renal risk), 'hemoglobin' only that, 'none' nothing after the course."""
        r = self.rng
        texts, icd, target_gkg, default_days = IND[ind]
        n_days = days or default_days
        offsets = offsets or list(range(n_days))
        n = len(offsets)
        if gkg is not None:
            target_gkg = gkg
        elif ind in ("ITP", "MS"):  # per-day regimens: ITP 1 g/kg/day, MS 0.4 g/kg/day
            target_gkg *= n
        child = p.age_at(start) < 18
        if product is None:  # a patient usually stays on one product; ~15% switch per course
            if p.pid not in self._product or r.random() < 0.15:
                self._product[p.pid] = r.choices(*zip(*(CHILD_PRODUCTS if child else ADULT_PRODUCTS)))[0]
            product = self._product[p.pid]
        conc = IVIG_PRODUCTS[product][0]
        w_calc = p.dosing_weight(start) if basis == "dosing" else p.weight_kg
        lean = p.basis(start) == "actual"
        if unit_style is None:
            opts = [("g", 45), ("G", 6), ("gm", 6), ("mg", 10)]
            if conc:
                opts.append(("mL", 14))
            if lean and p.show_weight and basis == "dosing":
                opts.append(("g/kg", 6))
            unit_style = r.choices(*zip(*opts))[0]
        total_target = target_gkg * w_calc * factor
        if unit_style == "g/kg":
            per_day_gkg = round(target_gkg * factor / n, 3)
            per_day_g = per_day_gkg * w_calc
            dose_val, unit = per_day_gkg, r.choice(["g/kg", "g/kg", "G/KG"])
        else:
            per_day = total_target / n
            for step in (5, 2.5, 1, 0.5):
                per_day_g = max(step, round(per_day / step) * step)
                if abs(per_day_g * n - total_target) <= 0.05 * total_target:
                    break
            if unit_style in ("g", "G", "gm"):
                dose_val, unit = per_day_g, unit_style
            elif unit_style == "mg":
                dose_val, unit = per_day_g * 1000, "mg"
            else:
                dose_val, unit = per_day_g / conc, r.choice(["mL", "mL", "ml"])
        if layout is None:
            consecutive = offsets == list(range(offsets[0], offsets[0] + n))
            layout = "single" if (n > 1 and consecutive and r.random() < 0.15) else "daily"
        if text is None:
            mode = r.choices(["both", "text", "code"], [60, 25, 15])[0]
            if ind == "CIDP_MAINT" and mode == "code":  # keep "maintenance" visible in text
                mode = "both"
            text = r.choice(texts) if mode in ("both", "text") else ""
            code = icd if mode in ("both", "code") else ""
        elif code is None:
            code = icd
        if service is None:
            service = {"GBS": r.choice(["Neurology", "Neurology", "ICU"]),
                       "MG_CRISIS": r.choice(["Neurology", "ICU"]), "KD": "Pediatrics",
                       "ITP": "Pediatrics" if child else "Hematology"}.get(ind, "Neurology")
        key = (p.pid, service)
        if key not in self._prescriber or r.random() < 0.2:
            self._prescriber[key] = r.choice(PRESCRIBERS[service])
        prescriber = self._prescriber[key]
        enc = encounter or self.new_encounter()
        route = r.choices(["IV", "iv", "Intravenous"], [90, 5, 5])[0]
        t0 = start
        rows = []
        if layout == "single":
            rows.append(self.order_row(p, product, dose_val, unit, t0, doses=n, route=route,
                                       indication=text, code=code, justification=justification,
                                       service=service, prescriber=prescriber, encounter=enc,
                                       pregnant=pregnant))
        else:
            for i, off in enumerate(offsets):
                at = t0 + timedelta(days=off, minutes=0 if i == 0 or tag == "exact" else r.randint(-40, 40))
                rows.append(self.order_row(p, product, dose_val, unit, at,
                                           doses=r.choice([1, 1, 1, 1, ""]), route=route,
                                           indication=text, code=code,
                                           justification=justification, service=service,
                                           prescriber=prescriber, encounter=enc, pregnant=pregnant))
        # evidence medications around the course: premedication ordered once for the course
        premed = (r.random() < 0.4) if premed is None else premed
        if premed:
            at = t0 + timedelta(minutes=-30)
            if child:
                self.med(p, "acetaminophen", round(15 * p.weight_kg / 10) * 10, "mg", at, doses=n,
                         service=service, encounter=enc, prescriber=prescriber)
            else:
                self.med(p, r.choice(["acetaminophen", "Acetaminophen 325 mg tab", "Tylenol"]),
                         650, "mg", at, doses=n, service=service, encounter=enc,
                         prescriber=prescriber)
                if r.random() < 0.4:
                    self.med(p, "diphenhydramine", r.choice([25, 50]), "mg", at, doses=n,
                             route="IV", service=service, encounter=enc, prescriber=prescriber)
                if r.random() < 0.2:
                    self.med(p, r.choice(["Sodium chloride 0.9%", "normal saline"]), 500, "mL",
                             at - timedelta(minutes=30), doses=n, route="IV", service=service,
                             encounter=enc, prescriber=prescriber)
        if inpatient_meds is None:
            inpatient_meds = ind in ("GBS", "MG_CRISIS") or (service == "ICU")
        if inpatient_meds and not child and r.random() < 0.6:
            stay = offsets[-1] + r.randint(3, 9)
            adm = (t0 - timedelta(days=1)).replace(hour=21, minute=0)
            self.med(p, r.choice(["enoxaparin", "Enoxaparin 40 mg/0.4 mL"]), 40, "mg", adm,
                     doses=stay, route="SC", service=service, encounter=enc, prescriber=prescriber)
            if r.random() < 0.5:
                self.med(p, "pantoprazole", 40, "mg", adm, doses=stay, service=service,
                         encounter=enc, prescriber=prescriber)
            if r.random() < 0.2:
                self.med(p, "heparin", 5000, "units", adm, doses=stay, route="SC",
                         service=service, encounter=enc, prescriber=prescriber)
        # labs
        if labs == "baseline":
            if iga is None and r.random() < 0.08:
                iga = "normal"
            self.baseline_labs(p, t0, renal=renal, iga=iga, platelets=platelets)
            post_hb = r.random() < 0.25 and follow_up != "none"
            if post_hb:  # post-course hemoglobin (hemolysis check) - not a baseline
                post = t0 + timedelta(days=offsets[-1] + 2, hours=-2)
                lo, hi = (13.5, 17.5) if p.sex == "M" else (12.0, 15.5)
                if child:
                    lo, hi = 10.5, 14.0
                self.lab(p, post, "hemoglobin", round(r.uniform(lo, hi - 0.5), 1), "g/dL", lo, hi)
            if follow_up != "none":
                g_per_kg = per_day_g * n / p.dosing_weight(start)
                renal_risk = p.age_at(start) >= 65 or renal != "normal" or IVIG_PRODUCTS[product][1]
                self.follow_up_labs(p, t0 + timedelta(days=offsets[-1]), child,
                                    hemoglobin=g_per_kg >= 1.8 and not post_hb,
                                    creatinine=renal_risk and follow_up == "auto")
        total_g = per_day_g * n
        course = {"pid": p.pid, "ind": ind, "start": t0, "end": t0 + timedelta(days=offsets[-1]),
                  "total_g": total_g, "product": product, "tag": tag,
                  "ratio": total_g / (target_gkg * p.dosing_weight(start)), "rows": rows}
        self.courses.append(course)
        return course

    def rand_start(self, lo: datetime = PERIOD_START, hi: datetime = PERIOD_END - timedelta(days=6)) -> datetime:
        r = self.rng
        d = lo + timedelta(days=r.randint(0, (hi - lo).days))
        return d.replace(hour=r.choice([8, 9, 9, 10, 11, 13, 14, 15]), minute=r.choice([0, 5, 15, 20, 30, 45]), second=0)

    # ================================================================== background
    def background(self) -> None:
        r = self.rng
        bg: list[str] = []
        kinds = lambda: r.choices(["lean", "obese", "under"], [55, 35, 10])[0]  # noqa: E731
        for _ in range(38):  # GBS
            p = self.adult(kinds(), age=(20, 78))
            self.ivig_course(p, self.rand_start(), "GBS")
            if r.random() < 0.5:
                self.proc(p, self.rand_start_before(p), "Lumbar puncture")
            bg.append(p.pid)
        for _ in range(30):  # CIDP induction + maintenance every 22-28 days
            p = self.adult(kinds(), age=(30, 76))
            t = self.rand_start(PERIOD_START, datetime(2026, 7, 15))
            established = r.random() < 0.2
            if not established:
                ind_days = r.choice([2, 2, 5])
                self.ivig_course(p, t, "CIDP_IND", days=ind_days)
                t += timedelta(days=r.randint(22, 28))
            maint_days = r.choice([1, 1, 2])
            gkg = r.choice([1.0, 1.0, 1.0, 0.8, 0.5])
            jpool = r.sample(CIDP_JUSTIFICATIONS[:5], 3)
            therapy_start, reviewed = t, False
            while t < PERIOD_END - timedelta(days=3):
                text = r.choice(jpool)
                # The 6-month review (Ontario IGUM) is documented on the course given around 5 months in.
                if not reviewed and (t - therapy_start).days >= 150:
                    text, reviewed = text + "; 6-month neurology review: continue current dose", True
                self.ivig_course(p, t, "CIDP_MAINT", days=maint_days, gkg=gkg,
                                 justification=text, premed=r.random() < 0.5)
                t += timedelta(days=r.randint(22, 28), minutes=r.randint(-60, 60))
            bg.append(p.pid)
        for _ in range(26):  # MG crisis
            p = self.adult(kinds(), age=(20, 80))
            self.ivig_course(p, self.rand_start(), "MG_CRISIS", days=r.choice([2, 3, 5, 5]))
            bg.append(p.pid)
        for _ in range(32):  # Kawasaki with aspirin
            p = self.child()
            c = self.ivig_course(p, self.rand_start(), "KD")
            self.kd_aspirin(p, c)
            if r.random() < 0.6:
                self.proc(p, c["start"] - timedelta(hours=r.randint(3, 20)), "Echocardiogram")
            bg.append(p.pid)
        for _ in range(34):  # ITP adults
            p = self.adult(kinds(), age=(19, 80))
            self.ivig_course(p, self.rand_start(), "ITP", days=r.choice([1, 1, 2]),
                             platelets=r.randint(3, 19))
            if r.random() < 0.2:
                self.proc(p, self.rand_start_before(p), "Bone marrow biopsy")
            bg.append(p.pid)
        for _ in range(10):  # ITP children
            p = self.child(age=(2, 15))
            self.ivig_course(p, self.rand_start(), "ITP", days=1, platelets=r.randint(2, 15))
            bg.append(p.pid)
        self.register("background_appropriate", "Background appropriate courses (all indications; "
                      "obese dosed on adjusted weight, lean/under-IBW on actual; baseline labs 1-3 "
                      "days before; Kawasaki with aspirin)",
                      "No warning/critical finding. Info only: rounding, elderly (>=65) slow-rate "
                      "reminder, mild under-rounding.", bg)

    def rand_start_before(self, p: Patient) -> datetime:
        c = [c for c in self.courses if c["pid"] == p.pid][0]
        return (c["start"] - timedelta(days=self.rng.randint(1, 3))).replace(hour=11, minute=0)

    def kd_aspirin(self, p: Patient, c: dict, delay_days: int | None = None,
                   low_dose: bool = True) -> None:
        r = self.rng
        row0 = c["rows"][0]
        d = r.choice([0, 0, 1]) if delay_days is None else delay_days
        at = (c["start"] + timedelta(days=d, hours=1))
        per_dose = round(20 * p.weight_kg / 5) * 5  # ~80 mg/kg/day in 4 doses
        name = r.choice(["aspirin", "Aspirin", "ASPIRIN chewable"])
        self.order_row(p, name, per_dose, "mg", at, doses=3, route="PO", service="Pediatrics",
                       prescriber=row0["prescriber_id"], encounter=row0["encounter_id"])
        if low_dose:  # low-dose aspirin once afebrile, 6 weeks
            self.order_row(p, "Aspirin 81 mg", 81, "mg", at + timedelta(days=3), doses=42,
                           route="PO", service="Pediatrics", prescriber=row0["prescriber_id"],
                           encounter=row0["encounter_id"])

    # ================================================================== scenarios
    def scenario_reference_appropriate(self) -> None:
        ids = []
        s = datetime(2026, 6, 3, 9, 0)
        p = self.adult("lean", sex="M", age=(30, 50)); ids.append(p.pid)
        self.ivig_course(p, s, "GBS", tag="ref", unit_style="g", text="Guillain-Barre")
        p = self.adult("obese", sex="F", age=(30, 55)); ids.append(p.pid)
        self.ivig_course(p, s + timedelta(days=40), "GBS", tag="ref", unit_style="g")
        p = self.adult("obese", sex="M", age=(30, 60)); ids.append(p.pid)
        self.ivig_course(p, datetime(2026, 7, 8, 10, 0), "MG_CRISIS", days=5, tag="ref")
        p = self.adult("short", sex="F", age=(40, 60)); ids.append(p.pid)  # obese but < 152.4 cm
        self.ivig_course(p, datetime(2026, 8, 12, 9, 30), "ITP", days=2, tag="ref", unit_style="g",
                         platelets=9)
        p = self.adult("under", sex="M", age=(25, 45)); ids.append(p.pid)
        self.ivig_course(p, datetime(2026, 9, 2, 8, 0), "GBS", tag="ref", unit_style="g/kg",
                         layout="single")
        p = self.child(age=(2, 4)); ids.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 9, 15, 14, 0), "KD", tag="ref", unit_style="mL",
                             product="Privigen 10%")
        self.kd_aspirin(p, c, 0)
        p = self.adult("lean", sex="M", age=(67, 79)); ids.append(p.pid)  # elderly -> info only
        self.ivig_course(p, datetime(2026, 10, 6, 9, 0), "GBS", tag="ref", product="Gamunex-C")
        self.register("reference_appropriate", "Reference appropriate courses: lean GBS, obese GBS "
                      "and MG crisis on adjusted weight, short (<152.4 cm) obese ITP on actual, "
                      "under-IBW GBS on actual (g/kg, one row doses=5), child Kawasaki in mL with "
                      "aspirin, elderly GBS",
                      "No warning/critical. Elderly (last id) -> info slow-rate/hydration reminder.",
                      ids)

    def scenario_weight_basis(self) -> None:
        ids = []
        for ind, days, when in [("GBS", 5, datetime(2026, 5, 19, 10, 0)),
                                ("MG_CRISIS", 4, datetime(2026, 8, 25, 9, 0)),
                                ("ITP", 2, datetime(2026, 10, 14, 11, 0))]:
            p = self.adult("obese", age=(30, 60)); ids.append(p.pid)
            self.ivig_course(p, when, ind, days=days, basis="actual", tag="weight_basis",
                             unit_style="g", platelets=12 if ind == "ITP" else None)
        self.register("weight_basis_actual", "Obese patients (BMI >= 30) dosed on ACTUAL weight",
                      "weight_basis warning with grams saved; also course_dose over-dose (grams "
                      "exceed 110% of the adjusted-weight target; critical when > 150%).", ids)

    def scenario_dose(self) -> None:
        over, crit, under = [], [], []
        for f, ind, when in [(1.25, "GBS", datetime(2026, 6, 9, 9, 0)),
                             (1.3, "CIDP_IND", datetime(2026, 7, 21, 10, 0))]:
            p = self.adult("lean", age=(30, 60)); over.append(p.pid)
            self.ivig_course(p, when, ind, factor=f, days=5 if ind == "GBS" else 2, tag="over",
                             unit_style="g")
        for f, ind, when in [(1.7, "MG_CRISIS", datetime(2026, 9, 8, 9, 0)),
                             (2.0, "ITP", datetime(2026, 11, 3, 13, 0))]:
            p = self.adult("lean", age=(30, 60)); crit.append(p.pid)
            self.ivig_course(p, when, ind, factor=f, days=2 if ind == "ITP" else 5, tag="over150",
                             unit_style="g", platelets=11 if ind == "ITP" else None)
        for f, ind, when in [(0.75, "GBS", datetime(2026, 7, 1, 9, 0)),
                             (0.7, "MG_CRISIS", datetime(2026, 10, 20, 10, 0))]:
            p = self.adult("lean", age=(30, 60)); under.append(p.pid)
            self.ivig_course(p, when, ind, factor=f, days=5, tag="under", unit_style="g")
        self.register("overdose_110", "Course total ~125-130% of target (lean, actual weight)",
                      "course_dose over-dose warning with excess grams.", over)
        self.register("overdose_150", "Course total ~170-200% of target (lean)",
                      "course_dose over-dose CRITICAL (> 150%).", crit)
        self.register("underdose", "Course total ~70-75% of target (lean)",
                      "course_dose under-dose info finding.", under)

    def scenario_days(self) -> None:
        gbs1, kd3 = [], []
        for when in [datetime(2026, 6, 24, 9, 0), datetime(2026, 9, 29, 10, 0)]:
            p = self.adult("lean", age=(25, 60)); gbs1.append(p.pid)
            self.ivig_course(p, when, "GBS", days=1, tag="days", unit_style="g")
        for when in [datetime(2026, 7, 14, 15, 0), datetime(2026, 10, 2, 16, 0)]:
            p = self.child(); kd3.append(p.pid)
            c = self.ivig_course(p, when, "KD", days=3, tag="days", layout="daily")
            self.kd_aspirin(p, c, 0)
        self.register("gbs_one_day", "GBS 2 g/kg given in a single day",
                      "course_dose 'days outside the regimen' warning (GBS 2-5 days).", gbs1)
        self.register("kawasaki_three_days", "Kawasaki 2 g/kg split over 3 days (aspirin given)",
                      "course_dose 'days outside the regimen' warning (KD once).", kd3)

    def scenario_gbs_repeat(self) -> None:
        just, nojust = [], []
        txt = ["Treatment-related fluctuation: MRC sum score 48 -> 36 on day 18; 2nd course per "
               "neuromuscular consultant", "Poor response, GBS disability score 4 -> 5; specialist "
               "decision for second course"]
        for i, when in enumerate([datetime(2026, 5, 12, 9, 0), datetime(2026, 8, 3, 10, 0)]):
            p = self.adult("lean", age=(30, 70)); just.append(p.pid)
            self.ivig_course(p, when, "GBS", tag="repeat", unit_style="g")
            self.ivig_course(p, when + timedelta(days=21), "GBS", tag="repeat", unit_style="g",
                             justification=txt[i], text="GBS 2nd course")
        for when in [datetime(2026, 6, 16, 9, 0), datetime(2026, 9, 14, 9, 0)]:
            p = self.adult("lean", age=(30, 70)); nojust.append(p.pid)
            self.ivig_course(p, when, "GBS", tag="repeat", unit_style="g")
            self.ivig_course(p, when + timedelta(days=24), "GBS", tag="repeat", unit_style="g")
        self.register("gbs_second_course_justified", "GBS second course with documented "
                      "fluctuation/poor response", "No repeat_justification finding.", just)
        self.register("gbs_second_course_unjustified", "GBS second course without justification",
                      "repeat_justification warning on course 2.", nojust)

    def scenario_cidp(self) -> None:
        freq, nojust = [], []
        for interval in (14, 18):
            p = self.adult("lean", age=(40, 70)); freq.append(p.pid)
            t = datetime(2026, 8, 4, 9, 0)
            self.ivig_course(p, t, "CIDP_IND", days=2, tag="cidp", unit_style="g")
            t += timedelta(days=interval)
            for k in range(4):
                self.ivig_course(p, t, "CIDP_MAINT", days=1, tag="cidp", unit_style="g",
                                 justification=CIDP_JUSTIFICATIONS[k % 5])
                t += timedelta(days=interval)
        for k in range(2):
            p = self.adult("obese" if k else "lean", age=(40, 70)); nojust.append(p.pid)
            t = datetime(2026, 6, 2 + 7 * k, 10, 0)
            self.ivig_course(p, t, "CIDP_IND", days=5, tag="cidp")
            t += timedelta(days=28)
            for _ in range(5):
                self.ivig_course(p, t, "CIDP_MAINT", days=2, tag="cidp", justification="")
                t += timedelta(days=26)
        self.register("cidp_maintenance_too_frequent", "CIDP maintenance every 14 / 18 days "
                      "(justified)", "repeat_justification 'interval too short' (< 21 days) "
                      "warning on each maintenance course.", freq)
        self.register("cidp_maintenance_unjustified", "CIDP maintenance q26d with empty "
                      "justification", "repeat_justification warning on each maintenance course.",
                      nojust)
        # course split across the October and November files; HTML + quotes in justification
        p = self.adult("lean", sex="F", age=(45, 60))
        self.ivig_course(p, datetime(2026, 9, 8, 9, 0), "CIDP_MAINT", days=2, tag="cidp",
                         unit_style="g", justification=CIDP_JUSTIFICATIONS[5])
        self.ivig_course(p, datetime(2026, 10, 6, 9, 0), "CIDP_MAINT", days=2, tag="cidp",
                         unit_style="g", justification="INCAT improved 1 point <script>alert(1)</script>")
        self.ivig_course(p, datetime(2026, 10, 31, 15, 0), "CIDP_MAINT", days=2, tag="cidp",
                         unit_style="g", layout="daily", justification=CIDP_JUSTIFICATIONS[0])
        self.register("text_escaping_and_month_split", "CIDP maintenance (established, first course "
                      "text 'maintenance'); justification with commas+quotes, one with "
                      "<script>alert(1)</script>; last course 2026-10-31..11-01 spans two files",
                      "No finding (justified, q4w); report must escape the HTML; the Oct/Nov rows "
                      "form ONE course.", [p.pid])

    def scenario_review_overdue(self) -> None:
        overdue, reviewed = [], []
        for k, review in enumerate((False, True)):
            p = self.adult("lean", age=(45, 70))
            t = datetime(2026, 5, 4 + k, 9, 0)
            self.ivig_course(p, t, "CIDP_IND", days=2, tag="cidp", unit_style="g")
            for n in range(7):
                t += timedelta(days=28)
                text = CIDP_JUSTIFICATIONS[n % 5]
                if review and n == 4:
                    text += "; 6-month specialist review: trial of dose reduction declined, continue"
                self.ivig_course(p, t, "CIDP_MAINT", days=1, tag="cidp", unit_style="g", justification=text)
            (reviewed if review else overdue).append(p.pid)
        self.register("cidp_review_overdue", "CIDP maintenance q28d for 7 months with response documented "
                      "but no 6-month review", "repeat_justification 'maintenance review due' warning on "
                      "the courses after month 6.", overdue)
        self.register("cidp_review_documented", "Same with the 6-month review documented at month 5",
                      "No finding.", reviewed)

    def scenario_mg(self) -> None:
        nojust, just = [], []
        for k in range(2):
            p = self.adult("lean", age=(35, 70)); nojust.append(p.pid)
            t = datetime(2026, 5, 20 + 10 * k, 10, 0)
            while t < PERIOD_END:
                self.ivig_course(p, t, "MG_MAINT", days=1, tag="mg", text="", code="G70.00")
                t += timedelta(days=28)
        p = self.adult("lean", age=(35, 70)); just.append(p.pid)
        t = datetime(2026, 6, 10, 9, 0)
        while t < PERIOD_END:
            self.ivig_course(p, t, "MG_MAINT", days=1, tag="mg", text="myasthenia gravis, refractory",
                             justification="Refractory: failed azathioprine and mycophenolate; "
                             "MG-ADL 9 -> 3 on IVIG q4w")
            t += timedelta(days=28)
        p2 = self.adult("lean", age=(35, 70)); nojust.append(p2.pid)
        self.ivig_course(p2, datetime(2026, 7, 2, 9, 0), "MG_CRISIS", days=5, tag="mg")
        self.ivig_course(p2, datetime(2026, 8, 4, 9, 0), "MG_MAINT", days=1, tag="mg",
                         text="MG maintenance", code="")
        self.register("mg_maintenance_unjustified", "MG maintenance coded G70.00 q4w without "
                      "justification (2); MG crisis followed by a maintenance course without "
                      "justification (1)", "indication not routine / repeat_justification finding "
                      "on the maintenance courses.", nojust)
        self.register("mg_maintenance_justified", "MG refractory maintenance with documented "
                      "justification", "No finding (selected refractory case documented).", just)

    def scenario_itp(self) -> None:
        nojust, just = [], []
        for when, gap in [(datetime(2026, 6, 5, 11, 0), 16), (datetime(2026, 9, 21, 10, 0), 24)]:
            p = self.adult("lean", age=(25, 60)); nojust.append(p.pid)
            self.ivig_course(p, when, "ITP", days=1, tag="itp", platelets=8)
            self.ivig_course(p, when + timedelta(days=gap), "ITP", days=1, tag="itp", platelets=14)
        p = self.adult("lean", age=(25, 60)); just.append(p.pid)
        t = datetime(2026, 7, 7, 10, 0)
        self.ivig_course(p, t, "ITP", days=2, tag="itp", platelets=6, text="ITP, plt 6")
        self.ivig_course(p, t + timedelta(days=19), "ITP", days=1, tag="itp", platelets=9,
                         justification="Platelets 6 -> 85 -> 9 at day 17; gum bleeding; "
                         "pre-splenectomy, hematology consultant approved")
        self.register("itp_repeat_unjustified", "ITP repeat course 16 / 24 days later, no "
                      "justification", "repeat_justification warning on course 2.", nojust)
        self.register("itp_repeat_justified", "ITP repeat after 19 days with justification "
                      "(indication text contains a comma)", "No repeat finding.", just)

    def scenario_kawasaki(self) -> None:
        rep, noasa, late = [], [], []
        p = self.child(); rep.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 6, 18, 15, 0), "KD", tag="kd")
        self.kd_aspirin(p, c, 0)
        c = self.ivig_course(p, datetime(2026, 6, 28, 14, 0), "KD", tag="kd",
                             text="KD - persistent fever")
        self.kd_aspirin(p, c, 0, low_dose=False)  # high-dose aspirin restarted with the repeat
        p = self.child(); rep.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 8, 19, 16, 0), "KD", tag="kd", product="Gamunex-C")
        self.kd_aspirin(p, c, 0)
        self.ivig_course(p, datetime(2026, 8, 21, 10, 0), "KD", tag="kd", product="Gamunex-C")
        for when in [datetime(2026, 7, 27, 13, 0), datetime(2026, 10, 26, 18, 0)]:
            p = self.child(); noasa.append(p.pid)
            self.ivig_course(p, when, "KD", tag="kd")
        p = self.child(); late.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 9, 9, 12, 0), "KD", tag="kd")
        self.kd_aspirin(p, c, 5)
        self.register("kawasaki_repeat", "Kawasaki second dose: 10 days later (separate course) "
                      "and 2 days later (merges into one 4 g/kg course over 2 days)",
                      "First id: repeat finding (KD repeat not routine). Second id: one course "
                      "~4 g/kg -> over-dose critical + days outside regimen.", rep)
        self.register("kawasaki_no_aspirin", "Kawasaki course with no aspirin order at all",
                      "combination warning (Kawasaki without aspirin).", noasa)
        self.register("kawasaki_aspirin_late", "Kawasaki with aspirin only from day +5 (outside "
                      "the -2..+2 day window)", "combination warning (no aspirin in window).", late)

    def scenario_ms(self) -> None:
        bad, ok, preg_nojust = [], [], []
        for when in [datetime(2026, 6, 11, 9, 0), datetime(2026, 10, 1, 9, 0)]:
            p = self.adult("lean", age=(25, 45)); bad.append(p.pid)
            enc = self.new_encounter()
            self.med(p, "methylprednisolone", 1000, "mg", when - timedelta(days=3), doses=3,
                     route="IV", service="Neurology", encounter=enc)
            self.ivig_course(p, when, "MS", days=5, tag="ms", encounter=enc)
        p = self.adult("lean", sex="F", age=(26, 36)); ok.append(p.pid)
        self.ivig_course(p, datetime(2026, 7, 15, 10, 0), "MS", days=5, tag="ms", pregnant="true",
                         text="MS relapse in pregnancy", justification="Pregnant 24/40; disabling "
                         "relapse; DMTs contraindicated, steroids declined - neurology/obstetrics "
                         "joint decision")
        p = self.adult("lean", sex="F", age=(26, 36)); ok.append(p.pid)
        self.ivig_course(p, datetime(2026, 9, 23, 10, 0), "MS", days=1, tag="ms", pregnant="false",
                         text="multiple sclerosis - postpartum relapse prophylaxis",
                         justification="Postpartum (delivered 2026-09-10), breastfeeding; "
                         "alternatives unsuitable")
        p = self.adult("lean", sex="F", age=(26, 36)); preg_nojust.append(p.pid)
        self.ivig_course(p, datetime(2026, 8, 5, 10, 0), "MS", days=5, tag="ms", pregnant="true")
        self.register("ms_not_routine", "Multiple sclerosis, not pregnant, no justification",
                      "indication CRITICAL (not routine without qualifying scenario).", bad)
        self.register("ms_pregnancy_justified", "MS in pregnancy / postpartum with justification",
                      "No indication finding.", ok)
        self.register("ms_pregnant_unjustified", "MS, pregnant=true but no justification text",
                      "indication finding (justification always required).", preg_nojust)

    def scenario_indication(self) -> None:
        unrec, missing = [], []
        for txt, code, svc, when in [("hypogammaglobulinemia?", "", "Rheumatology", datetime(2026, 5, 27, 10, 0)),
                                     ("sepsis", "A41.9", "ICU", datetime(2026, 8, 10, 2, 30)),
                                     ("fatigue", "R53.83", "Rheumatology", datetime(2026, 10, 22, 11, 0))]:
            p = self.adult("lean", age=(30, 70)); unrec.append(p.pid)
            self.ivig_course(p, when, "ITP", gkg=1.0, days=1, tag="ind", text=txt, code=code,
                             service=svc)
        for when in [datetime(2026, 7, 30, 9, 0), datetime(2026, 11, 10, 9, 0)]:
            p = self.adult("lean", age=(30, 70)); missing.append(p.pid)
            self.ivig_course(p, when, "ITP", gkg=2.0, days=2, tag="ind", text="", code="",
                             service="Neurology")
        self.register("indication_unrecognised", "Unrecognised indication ('hypogammaglobulinemia?', "
                      "'sepsis' A41.9, 'fatigue' R53.83), 1 g/kg", "indication CRITICAL "
                      "(unrecognised).", unrec)
        self.register("indication_missing", "Both indication and indication_code empty",
                      "indication warning (missing).", missing)

    def scenario_missing_data(self) -> None:
        now, noh, ok = [], [], []
        for when in [datetime(2026, 6, 30, 9, 0), datetime(2026, 9, 1, 9, 0)]:
            p = self.adult("lean", age=(30, 60)); p.show_weight = False; now.append(p.pid)
            self.ivig_course(p, when, "GBS", tag="missing", unit_style="g")
        for when in [datetime(2026, 7, 22, 9, 0), datetime(2026, 10, 13, 9, 0)]:
            p = self.adult("obese", sex="M", age=(30, 60)); p.show_height = False; noh.append(p.pid)
            while p.weight_kg <= 100:
                p.weight_kg = round(p.weight_kg + 8.5, 1)
            self.ivig_course(p, when, "MG_CRISIS", days=5, tag="missing", unit_style="g",
                             basis="actual")
        p = self.child(); p.show_height = False; ok.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 8, 28, 15, 0), "KD", tag="missing", unit_style="g")
        self.kd_aspirin(p, c, 1)
        self.register("missing_weight", "GBS course with empty weight_kg (height present)",
                      "not assessable (dose) data_quality warning - never passed.", now)
        self.register("missing_height_heavy", "MG crisis, weight > 100 kg, empty height_cm, "
                      "dosed on actual weight", "weight basis not assessable (no IBW/BMI) "
                      "warning; dose check on actual weight may pass.", noh)
        self.register("child_missing_height", "Kawasaki child with empty height (age < 18 -> "
                      "actual weight)", "Assessable; no finding.", ok)

    def scenario_two_indications(self) -> None:
        ids = []
        p = self.adult("lean", age=(30, 60)); ids.append(p.pid)
        self.ivig_course(p, datetime(2026, 5, 14, 10, 0), "ITP", days=1, tag="two", platelets=7)
        self.ivig_course(p, datetime(2026, 9, 17, 9, 0), "GBS", tag="two")
        p = self.adult("obese", age=(30, 60)); ids.append(p.pid)
        self.ivig_course(p, datetime(2026, 6, 22, 10, 0), "MG_CRISIS", days=3, tag="two")
        self.ivig_course(p, datetime(2026, 10, 19, 9, 0), "ITP", days=2, tag="two", platelets=12)
        self.register("two_indications", "One patient, two indications months apart "
                      "(ITP then GBS; MG crisis then ITP)", "Two first courses; no repeat "
                      "finding.", ids)

    def scenario_gaps(self) -> None:
        g7, g8 = [], []
        p = self.adult("lean", age=(30, 60)); g7.append(p.pid)
        self.ivig_course(p, datetime(2026, 7, 6, 9, 0), "GBS", offsets=[0, 1, 2, 9, 10],
                         tag="exact", unit_style="g", layout="daily")
        p = self.adult("lean", age=(30, 60)); g8.append(p.pid)
        self.ivig_course(p, datetime(2026, 8, 10, 9, 0), "GBS", offsets=[0, 1, 2], gkg=1.2,
                         tag="exact", unit_style="g", layout="daily")
        self.ivig_course(p, datetime(2026, 8, 20, 9, 0), "GBS", offsets=[0, 1], gkg=0.8,
                         tag="exact", unit_style="g", layout="daily")
        self.register("gap_7_days", "GBS 0.4 g/kg x3 (days 0-2), then x2 on days 9-10: exactly "
                      "7 days (168 h) between doses, same clock time", "ONE course, 5 doses, "
                      "2 g/kg, no dose finding.", g7)
        self.register("gap_8_days", "GBS 0.4 g/kg x3 (Aug 10-12) then x2 (Aug 20-21): 8 days "
                      "between doses", "TWO courses: course 1 1.2 g/kg (under-dose info), course 2 "
                      "0.8 g/kg repeat without justification (warning) and under-dose.", g8)

    def scenario_plex(self) -> None:
        near, far = [], []
        for name, ind, when, delta in [("Plasma exchange", "GBS", datetime(2026, 6, 1, 9, 0), -6),
                                       ("PLEX", "MG_CRISIS", datetime(2026, 8, 17, 9, 0), 9),
                                       ("plasmapheresis", "GBS", datetime(2026, 10, 5, 9, 0), -13),
                                       ("TPE", "MG_CRISIS", datetime(2026, 11, 2, 9, 0), 3)]:
            p = self.adult("lean", age=(30, 70)); near.append(p.pid)
            c = self.ivig_course(p, when, ind, tag="plex", days=5)
            base = c["start"] if delta < 0 else c["end"]
            for k in range(3 if delta < 0 else 2):
                self.proc(p, (base + timedelta(days=delta + 2 * k)).replace(hour=13, minute=30),
                          name)
        p = self.adult("lean", age=(30, 70)); far.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 9, 28, 9, 0), "GBS", tag="plex")
        self.proc(p, datetime(2026, 8, 20, 13, 0), "Plasma Exchange")  # 39 days before
        self.proc(p, datetime(2026, 9, 26, 10, 0), "Lumbar puncture")
        self.proc(p, datetime(2026, 9, 27, 16, 0), "MRI brain")
        self.register("plex_within_14_days", "Plasma exchange (names: 'Plasma exchange', 'PLEX', "
                      "'plasmapheresis', 'TPE') within 14 days before/after the IVIG course",
                      "combination warning (IVIG with plasma exchange).", near)
        self.register("plex_far_control", "Plasma Exchange 39 days before the course; LP and MRI "
                      "the days before", "No combination finding.", far)

    def scenario_product_safety(self) -> None:
        suc_old, suc_renal, suc_ok, iga_bad, iga_ok, renal_info = [], [], [], [], [], []
        p = self.adult("lean", age=(68, 82)); suc_old.append(p.pid)
        self.ivig_course(p, datetime(2026, 6, 15, 9, 0), "ITP", days=2, product="Carimune NF",
                         tag="safety", unit_style="g", platelets=10)
        p = self.adult("lean", age=(40, 60)); suc_renal.append(p.pid)
        self.ivig_course(p, datetime(2026, 8, 3, 9, 0), "MG_CRISIS", days=5, product="Carimune NF",
                         tag="safety", unit_style="g", renal="impaired")
        p = self.adult("lean", age=(40, 60)); suc_renal.append(p.pid)
        self.ivig_course(p, datetime(2026, 10, 27, 9, 0), "GBS", product="Carimune NF",
                         tag="safety", unit_style="g", renal="egfr_only")
        p = self.adult("lean", age=(25, 45)); suc_ok.append(p.pid)
        self.ivig_course(p, datetime(2026, 7, 9, 9, 0), "ITP", days=1, product="Carimune NF",
                         tag="safety", unit_style="g", platelets=5)
        for prod, when in [("Privigen 10%", datetime(2026, 7, 20, 9, 0)),
                           ("Octagam 5%", datetime(2026, 9, 24, 9, 0))]:
            p = self.adult("lean", age=(25, 60)); iga_bad.append(p.pid)
            self.ivig_course(p, when, "GBS", product=prod, tag="safety", iga="deficient")
        p = self.adult("lean", age=(25, 60)); iga_ok.append(p.pid)
        self.ivig_course(p, datetime(2026, 8, 31, 9, 0), "GBS", product="Gammagard S/D",
                         tag="safety", iga="deficient", unit_style="g")
        p = self.adult("lean", age=(45, 60)); renal_info.append(p.pid)
        self.ivig_course(p, datetime(2026, 11, 9, 9, 0), "ITP", days=1, product="Gamunex-C",
                         tag="safety", renal="impaired", platelets=13)
        self.register("sucrose_elderly", "Carimune NF (sucrose) in a patient aged >= 65, normal "
                      "renal labs", "product_safety CRITICAL (+ elderly info).", suc_old)
        self.register("sucrose_renal", "Carimune NF with creatinine above range and eGFR 24-44 "
                      "(first); eGFR 48-57 with creatinine in range (second)",
                      "product_safety CRITICAL (+ renal info).", suc_renal)
        self.register("sucrose_control", "Carimune NF, age < 65, normal renal labs",
                      "No product_safety finding.", suc_ok)
        self.register("iga_deficiency_wrong_product", "IgA 0.02 g/L (ref_low 0.7) with Privigen / "
                      "Octagam 5%", "product_safety CRITICAL (IgA deficiency, non-IgA-depleted).",
                      iga_bad)
        self.register("iga_deficiency_sd", "IgA 0.02 g/L with Gammagard S/D (IgA-depleted)",
                      "No product_safety finding.", iga_ok)
        self.register("renal_non_sucrose", "Creatinine high / eGFR < 60 with a sucrose-free product",
                      "Info only (slow rate / hydration reminder).", renal_info)

    def scenario_monitoring(self) -> None:
        none, ok = [], []
        for when in [datetime(2026, 6, 8, 9, 0), datetime(2026, 9, 10, 9, 0)]:
            p = self.adult("lean", age=(30, 60)); none.append(p.pid)
            self.ivig_course(p, when, "GBS", tag="mon", labs="none")
        p = self.adult("lean", age=(30, 60)); none.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 8, 24, 9, 0), "ITP", days=1, tag="mon", labs="none")
        self.baseline_labs(p, c["start"], days_before=41, platelets=22)
        p = self.adult("lean", age=(30, 60)); none.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 10, 15, 9, 0), "MG_CRISIS", days=5, tag="mon",
                             labs="none")
        self.baseline_labs(p, c["start"], days_before=2, cbc=False)
        p = self.adult("lean", age=(30, 60)); ok.append(p.pid)
        c = self.ivig_course(p, datetime(2026, 7, 29, 9, 0), "GBS", tag="mon", labs="none")
        self.baseline_labs(p, c["start"], days_before=29)
        self.follow_up_labs(p, c["end"], False, hemoglobin=True, creatinine=False)
        self.register("no_baseline_labs", "No creatinine/CBC within 30 days before start: no labs "
                      "at all (2), labs 41 days before (1), creatinine+eGFR only, no CBC (1)",
                      "monitoring warning (no baseline).", none)
        self.register("baseline_29_days", "Baseline labs 29 days before start",
                      "No monitoring finding.", ok)

    def scenario_out_of_scope(self) -> None:
        sc, other = [], []
        for prod, dose in [("Hizentra", 10), ("Cuvitru", 12), ("HyQvia", 30)]:
            p = self.adult("lean", age=(25, 70)); sc.append(p.pid)
            t = datetime(2026, 5, 6, 10, 0) + timedelta(days=self.rng.randint(0, 20))
            step = 28 if prod == "HyQvia" else 7
            while t < PERIOD_END:
                self.order_row(p, prod, dose, "g", t, route="SC", indication="primary "
                               "immunodeficiency", code="D80.0", service="Rheumatology",
                               prescriber="DR035", encounter=self.new_encounter())
                t += timedelta(days=step)
        for prod, dose, unit, kw in [
            ("Hepatitis B Immune Globulin", 5, "mL", {"indication": "needlestick exposure"}),
            ("Rho(D) Immune Globulin", 300, "mcg", {"indication": "Rh negative pregnancy",
                                                   "pregnant": "true"}),
            ("Varicella Zoster Immune Globulin", 625, "units", {"indication": "varicella exposure"}),
        ]:
            p = self.adult("lean", sex="F" if "Rho" in prod else None, age=(22, 38)); other.append(p.pid)
            self.order_row(p, prod, dose, unit, self.rand_start(), route="IM",
                           service="Rheumatology", prescriber="DR036",
                           encounter=self.new_encounter(), **kw)
        self.register("subcutaneous_out_of_scope", "Hizentra / Cuvitru weekly, HyQvia 4-weekly, "
                      "route SC", "Out of scope: never an IVIG course, no findings.", sc)
        self.register("other_immune_globulins", "Hepatitis B IG (mL), Rho(D) IG (mcg), VZIG "
                      "(units), route IM", "Not IVIG: no course, no unit/data-quality finding.",
                      other)

    def scenario_bad_rows(self) -> None:
        ids, desc = [], []

        def bad(label: str, **over) -> dict:
            p = self.adult("lean", age=(30, 60))
            when = self.rand_start()
            c = self.ivig_course(p, when, "ITP", days=1, tag="bad", unit_style="g",
                                 product="Privigen 10%", premed=False, platelets=10)
            row = c["rows"][0]
            for k, v in over.items():
                row[k] = v
            row["_bad"] = label
            ids.append(p.pid)
            desc.append(label)
            return row

        bad("empty order_id", order_id="")
        bad("empty patient_id", patient_id="")
        bad("dose 0", dose="0")
        bad("dose negative", dose="-20")
        bad("dose_unit tabs", dose_unit="tabs")
        bad("dose_unit vials", dose_unit="vials")
        bad("start 31/31/2026", start="31/31/2026")
        bad("start yesterday", start="yesterday")
        bad("dose non-numeric", dose="1-2")
        bad("start empty", start="")
        r1 = bad("duplicated order_id (original)")
        r2 = dict(r1)
        r2.update(dose=fmt_num(float(r1["dose"]) + 10), justification="amended dose",
                  _bad="duplicated order_id (copy, different content)", _dup_of=r1)
        r2["_at"] = r1["_at"] + timedelta(minutes=1)
        self.orders.append(r2)
        self.register("bad_rows", "Rows that must be quarantined (one patient each; the row is "
                      "that patient's only IVIG dose): " + "; ".join(desc) + "; plus a second row "
                      "sharing the last order_id with a different dose",
                      "quarantine with reason (the 'empty patient_id' row shows no patient_id); "
                      "never stops the run.", ids)

    def other_patients(self) -> None:
        """Patients with ordinary medication orders only (no IVIG)."""
        r = self.rng
        meds = [("aspirin", 81, "mg", "PO"), ("Aspirin 81 mg", 81, "mg", "PO"),
                ("heparin", 5000, "units", "SC"), ("Heparin 25,000 units/250 mL", 12, "mL", "IV"),
                ("acetaminophen", 1000, "mg", "PO"), ("diphenhydramine", 25, "mg", "PO"),
                ("Sodium chloride 0.9%", 1000, "mL", "IV"), ("pantoprazole", 40, "mg", "IV"),
                ("enoxaparin", 40, "mg", "SC"), ("methylprednisolone", 125, "mg", "IV"),
                ("prednisone", 60, "mg", "PO"), ("ondansetron", 4, "mg", "IV"),
                ("vancomycin", 1250, "mg", "IV"), ("insulin lispro", 6, "units", "SC"),
                ("metoprolol tartrate", 25, "mg", "PO"), ("furosemide", 40, "mg", "IV")]
        ids = []
        for _ in range(36):
            p = self.adult(r.choice(["lean", "lean", "obese"]), age=(20, 88))
            ids.append(p.pid)
            svc = r.choice(["ICU", "Neurology", "Hematology", "Rheumatology"])
            enc = self.new_encounter()
            t = self.rand_start()
            for _k in range(r.randint(1, 6)):
                name, dose, unit, route = r.choice(meds)
                self.med(p, name, dose, unit, t, doses=r.choice([1, 1, 2, 3, 5, 7]), route=route,
                         service=svc, encounter=enc, prescriber=r.choice(PRESCRIBERS[svc]))
                t += timedelta(hours=r.randint(2, 40))
            if r.random() < 0.4:
                self.baseline_labs(p, t)
            if r.random() < 0.2:
                self.proc(p, t, r.choice(["MRI brain", "Lumbar puncture", "Central line insertion",
                                          "EMG/nerve conduction study", "CT head"]))
        # a couple of lookalikes (plasma products that are not IVIG / not exchange)
        p = self.adult("lean", age=(40, 70)); ids.append(p.pid)
        self.med(p, "Fresh frozen plasma", 2, "units", datetime(2026, 7, 3, 4, 10), route="IV",
                 service="ICU", encounter=self.new_encounter(), prescriber="DR028")
        self.med(p, "Albumin 5%", 250, "mL", datetime(2026, 7, 3, 6, 0), route="IV",
                 service="ICU", encounter=self.new_encounter(), prescriber="DR028")
        self.register("non_ivig_only", "Patients with ordinary medications only (aspirin, heparin, "
                      "saline, ...; one with FFP and albumin 5%)", "Pass through as evidence; no "
                      "IVIG course, no finding.", ids)

    # ================================================================== output
    def build(self) -> None:
        self.background()
        self.scenario_reference_appropriate()
        self.scenario_weight_basis()
        self.scenario_dose()
        self.scenario_days()
        self.scenario_gbs_repeat()
        self.scenario_cidp()
        self.scenario_mg()
        self.scenario_itp()
        self.scenario_kawasaki()
        self.scenario_ms()
        self.scenario_indication()
        self.scenario_missing_data()
        self.scenario_two_indications()
        self.scenario_gaps()
        self.scenario_plex()
        self.scenario_product_safety()
        self.scenario_monitoring()
        self.scenario_out_of_scope()
        self.scenario_bad_rows()
        self.scenario_review_overdue()  # last: earlier scenarios keep their ids
        self.other_patients()
        self.scenario_follow_up()  # after every other patient: their rows stay as they were
        self.self_check()

    def scenario_follow_up(self) -> None:
        no_hb, no_renal, not_due = [], [], []
        for when in (datetime(2026, 8, 10, 9, 0), datetime(2026, 9, 14, 10, 0)):
            p = self.adult("lean", age=(30, 60)); no_hb.append(p.pid)
            self.ivig_course(p, when, "GBS", tag="follow_up", product="Privigen 10%", follow_up="none")
        p = self.adult("lean", age=(70, 80)); no_renal.append(p.pid)
        self.ivig_course(p, datetime(2026, 7, 20, 9, 0), "GBS", tag="follow_up", product="Privigen 10%",
                         follow_up="hemoglobin")
        p = self.adult("lean", age=(30, 50)); no_renal.append(p.pid)
        self.ivig_course(p, datetime(2026, 9, 1, 9, 0), "ITP", days=1, tag="follow_up",
                         product="Carimune NF", platelets=11, follow_up="hemoglobin")
        p = self.adult("lean", age=(30, 60)); not_due.append(p.pid)
        self.ivig_course(p, PERIOD_END - timedelta(days=6), "GBS", days=5, tag="follow_up",
                         product="Privigen 10%", follow_up="none")
        self.register("no_hemoglobin_after_high_dose", "2 g/kg GBS course with baseline labs but "
                      "no hemoglobin in the 10 days after", "monitoring warning (no hemoglobin "
                      "after a high-dose course).", no_hb)
        self.register("no_renal_function_after_course", "Course in a patient aged >= 65, and a "
                      "sucrose product (Carimune NF), with no creatinine in the 7 days after",
                      "monitoring warning (no renal function after the course).", no_renal)
        self.register("follow_up_not_yet_due", "2 g/kg GBS course ending 2 days before the data "
                      "ends: its follow-up window has not ended", "No follow-up monitoring finding "
                      "(not yet due).", not_due)

    def self_check(self) -> None:
        """Guard the intended dose ratios (total grams / target at the dosing weight)."""
        bands = {"background": (0.9, 1.1), "ref": (0.9, 1.1), "over": (1.15, 1.4),
                 "over150": (1.55, 2.2), "under": (0.6, 0.85)}
        for c in self.courses:
            lo, hi = bands.get(c["tag"], (0.0, 99.0))
            assert lo <= c["ratio"] <= hi, (c["pid"], c["tag"], c["ind"], c["ratio"])
            if c["tag"] == "weight_basis":
                assert c["ratio"] >= 1.2, (c["pid"], c["ratio"])
        assert all(c["start"] <= PERIOD_END for c in self.courses)

    def write(self, out: Path) -> dict[str, int]:
        counts: dict[str, int] = {}
        rows = sorted(self.orders, key=lambda r: (r["_at"], r["patient_id"], r["medication"]))
        seq = 0
        for row in rows:
            if "_dup_of" in row:
                continue
            seq += 1
            if row.get("_bad") != "empty order_id":
                row["order_id"] = f"ORD-2026-{seq:06d}"
        for row in rows:
            if "_dup_of" in row:
                row["order_id"] = row["_dup_of"]["order_id"]
        (out / "orders").mkdir(parents=True, exist_ok=True)
        for m in MONTHS:
            part = [r for r in rows if r["_at"].strftime("%Y-%m") == m]
            counts[f"orders/orders_{m}.csv"] = self._csv(out / "orders" / f"orders_{m}.csv",
                                                         ORDER_COLUMNS, part)
        labs = sorted(self.labs, key=lambda r: (r["_at"], r["patient_id"], r["test"]))
        counts["labs.csv"] = self._csv(out / "labs.csv", LAB_COLUMNS, labs)
        procs = sorted(self.procs, key=lambda r: (r["_at"], r["patient_id"]))
        counts["procedures.csv"] = self._csv(out / "procedures.csv", PROC_COLUMNS, procs)
        bad_rows = [{"defect": r["_bad"], "order_id": r["order_id"], "patient_id": r["patient_id"],
                     "file": f"orders/orders_{r['_at']:%Y-%m}.csv"} for r in rows if "_bad" in r]
        manifest = {"seed": SEED, "period": [PERIOD_START.date().isoformat(),
                                             PERIOD_END.date().isoformat()],
                    "scenarios": self.scenarios, "bad_rows": bad_rows}
        (out / "scenarios.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        return counts

    @staticmethod
    def _csv(path: Path, cols: list[str], rows: list[dict]) -> int:
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            w.writerow(cols)
            for r in rows:
                w.writerow([r[c] for c in cols])
        return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="output folder (default: the folder of this script)")
    args = ap.parse_args(argv)
    g = Generator()
    g.build()
    counts = g.write(args.out)
    ivig = sum(1 for r in g.orders if r["medication"] in IVIG_PRODUCTS)
    pids = {r["patient_id"] for r in g.orders if r["patient_id"]}
    for name, n in counts.items():
        print(f"{n:6d}  {name}")
    print(f"{sum(v for k, v in counts.items() if k.startswith('orders/')):6d}  order rows in total "
          f"({ivig} IVIG, {len(g.orders) - ivig} other), {len(pids)} patients, "
          f"{len(g.courses)} IVIG courses, {len(g.scenarios)} scenarios")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
