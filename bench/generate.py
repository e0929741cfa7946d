"""Generate a large, synthetic, mixed pharmacy orders extract for benchmarking the audit.

Seeded and deterministic (``numpy.random.default_rng(seed)``, fixed reference dates, no wall
clock): the same ``--rows``/``--seed`` always give the same rows. Vectorised (numpy arrays,
then Polars string expressions), so 10M rows take well under a minute of generation plus the
CSV write.

    .venv/bin/python bench/generate.py --rows 1000000 --out bench/data/orders_1m.csv --parquet
    .venv/bin/python bench/generate.py --rows 10000000 --out bench/data/orders_10m.csv --parquet

Content (canonical order columns, ``../shared/design/contract.md``):

* ~0.5% IVIG rows (``--ivig-share``): realistic courses of 1-5 daily doses per patient
  (GBS, CIDP induction/maintenance every 3-4 weeks, MG crisis, Kawasaki children with aspirin,
  ITP, a little MS and unrecognised indications), doses computed from the regimen target and
  the dosing weight (Devine IBW / adjusted weight for obese adults), a share over- and
  under-dosed or dosed on actual weight; brands and generics in mixed case; units g / G / gm /
  mg / mL (fixed-strength products only) / g/kg; ~15% of multi-day courses as one row with
  ``doses`` > 1; repeat courses with free-text justification (commas, doubled quotes).
* A few SC immunoglobulins and hyperimmune globulins (out of scope), ~0.01% bad rows
  (dose 0, unknown unit, unparseable date: quarantine).
* The rest: ordinary medications (heparin, saline, acetaminophen, ...; aspirin ~0.8% of rows,
  as in the MIMIC demo prescriptions), many patients, order lengths in ``doses``.

Rows are written in ``start`` order, ``order_id`` numbered in that order. ``--parquet`` also
writes the same rows as Parquet next to the CSV (typed columns: numbers as Float64, ``start``
as a timestamp, ``birth_date`` as a date, ``pregnant`` as a boolean; zstd) - what a warehouse
export would hold. Needs numpy (comes with the ``bench`` extra through pandas).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

ORDER_COLUMNS = [
    "order_id", "patient_id", "encounter_id", "facility", "medication", "dose", "dose_unit",
    "doses", "start", "route", "weight_kg", "height_cm", "sex", "age_years", "birth_date",
    "indication", "indication_code", "pregnant", "justification", "prescriber_id", "service",
]
SEED = 20261128
PERIOD_START = np.datetime64("2026-01-01T00:00:00", "s")
PERIOD_DAYS = 365
AS_OF = np.datetime64("2026-07-01", "D")  # reference date for birth dates

# IVIG spellings (name, concentration g/mL or 0 when not fixed, weight)
IVIG_NAMES = [
    ("Privigen 10%", 0.10, 16), ("PRIVIGEN", 0.10, 5), ("privigen", 0.10, 2), ("Gamunex-C", 0.10, 14),
    ("GAMUNEX-C 10%", 0.10, 3), ("Gammagard Liquid 10%", 0.10, 10), ("Gammagard S/D", 0.0, 1),
    ("Octagam 5%", 0.05, 5), ("Octagam 10%", 0.10, 6), ("Flebogamma DIF 5%", 0.05, 4),
    ("Flebogamma DIF 10%", 0.10, 2), ("Panzyga", 0.10, 5), ("Gammaplex 10%", 0.10, 4),
    ("Bivigam", 0.10, 3), ("Asceniv", 0.10, 2), ("Carimune NF", 0.0, 1), ("Kiovig", 0.10, 2),
    ("Immune Globulin Intravenous (Human)", 0.0, 5), ("IVIG", 0.0, 8), ("immune globulin IV", 0.0, 3),
]
OUT_OF_SCOPE_IG = [("Hizentra", "g", "SC"), ("Cuvitru", "g", "SC"), ("HyQvia", "g", "SC"),
                   ("Hepatitis B Immune Globulin", "mL", "IM"), ("Rho(D) Immune Globulin", "mcg", "IM")]
# ordinary medications: (name, unit, typical dose, route, weight). Aspirin is ~0.8% of rows, as in
# the MIMIC demo prescriptions (0.72% MIMIC-III, 0.94% MIMIC-IV); before 2026-11-28 it was ~8%,
# which made the audit carry ten times the realistic number of evidence rows.
OTHER_MEDS = [
    ("aspirin", "mg", 81, "PO", 0.7), ("Aspirin 81 mg", "mg", 81, "PO", 0.4), ("heparin", "units", 5000, "SC", 8),
    ("Heparin 25,000 units/250 mL", "units", 1000, "IV", 3), ("enoxaparin", "mg", 40, "SC", 7),
    ("acetaminophen", "mg", 650, "PO", 10), ("Tylenol", "mg", 650, "PO", 4), ("diphenhydramine", "mg", 25, "PO", 5),
    ("normal saline", "mL", 1000, "IV", 9), ("pantoprazole", "mg", 40, "PO", 6), ("ondansetron", "mg", 4, "IV", 5),
    ("methylprednisolone", "mg", 1000, "IV", 2), ("prednisone", "mg", 40, "PO", 4), ("metformin", "mg", 500, "PO", 6),
    ("atorvastatin", "mg", 40, "PO", 6), ("lisinopril", "mg", 10, "PO", 5), ("furosemide", "mg", 40, "IV", 4),
    ("vancomycin", "mg", 1250, "IV", 3), ("ceftriaxone", "g", 1, "IV", 4), ("morphine", "mg", 2, "IV", 3),
    ("insulin glargine", "units", 20, "SC", 3), ("potassium chloride", "mcg", 20, "PO", 3),
    ("Fresh frozen plasma", "mL", 250, "IV", 1), ("Albumin 5%", "mL", 250, "IV", 1),
]
# indication groups: (text spellings, codes, target g/kg per course, days options, weight)
INDICATIONS = {
    "gbs": (["GBS", "Guillain-Barre", "Guillain Barre syndrome", "AIDP"], ["G61.0"], 2.0, [5, 5, 2, 3], 22),
    "cidp": (["CIDP", "CIDP induction", "CIDP maint", "CIDP maintenance"], ["G61.81"], 1.0, [1, 2, 2, 5], 24),
    "mg": (["MG crisis", "myasthenic crisis", "MG maintenance"], ["G70.01", "G70.00"], 2.0, [2, 3, 5, 5], 14),
    "kawasaki": (["Kawasaki", "KD"], ["M30.3"], 2.0, [1, 1, 1, 1], 10),
    "itp": (["ITP", "immune thrombocytopenia"], ["D69.3"], 1.0, [1, 1, 2, 2], 22),
    "ms": (["multiple sclerosis", "MS relapse"], ["G35"], 2.0, [5, 5, 5, 5], 3),
    "other": (["hypogammaglobulinemia?", "sepsis", "fatigue"], ["A41.9", "R53.83"], 1.0, [1, 1, 2, 2], 5),
}
JUSTIFICATIONS = [
    "INCAT improved 2 points; grip strength up",
    'Relapse after taper, "objective" MRC decline',
    "Plt 8, bleeding; second course per heme",
    "Poor response, fluctuation at 3 weeks",
    "Neurology review: stable on q4w, deterioration when spaced",
]
MED_VOCAB = [n for n, _, _ in IVIG_NAMES] + [m[0] for m in OTHER_MEDS] + [m[0] for m in OUT_OF_SCOPE_IG] + ["Aspirin"]
OTHER_OFFSET = len(IVIG_NAMES)
OOS_OFFSET = OTHER_OFFSET + len(OTHER_MEDS)
UNIT_VOCAB = ["g", "G", "gm", "mg", "mL", "g/kg", "units", "mcg", "vials"]
ROUTE_VOCAB = ["IV", "iv", "PO", "SC", "IM"]
FACILITIES = ["North General", "St. Mary's", "Children's Hospital", "East Valley"]
SERVICES = ["Neurology", "Hematology", "Pediatrics", "ICU", "Rheumatology", "Medicine", "Surgery"]


def _pick(rng: np.random.Generator, weights: list[float], n: int) -> np.ndarray:
    """n indices drawn with the given (unnormalised) weights."""
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def _take(values: list, idx: np.ndarray) -> pl.Series:
    """values[idx] as a Polars series; index -1 is null."""
    codes = pl.Series(idx.astype(np.int64))
    codes = pl.select(pl.when(codes >= 0).then(codes).cast(pl.UInt32)).to_series()
    return pl.Series(values, dtype=pl.String).gather(codes)


def _patients(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Patient attributes: sex, age, height, weight (a third of adults obese), children 15%."""
    sex_f = rng.random(n) < 0.5
    child = rng.random(n) < 0.15
    age = np.where(child, rng.integers(1, 17, n), rng.integers(18, 90, n)).astype(float)
    height_adult = np.where(sex_f, rng.normal(162, 7, n), rng.normal(176, 7.5, n))
    height_child = 75 + age * 6.0 + rng.normal(0, 4, n)
    height = np.round(np.where(child, height_child, height_adult) * 2) / 2
    bmi = np.where(rng.random(n) < 0.33, rng.uniform(30, 45, n), rng.uniform(18, 28.5, n))
    weight = np.where(child, 8 + age * 2.4 + rng.normal(0, 2, n), bmi * (height / 100) ** 2)
    weight = np.round(np.clip(weight, 7.5, 250), 1)
    birth = AS_OF - (age * 365.25).astype("timedelta64[D]") - rng.integers(0, 365, n).astype("timedelta64[D]")
    return {
        "sex_f": sex_f, "child": child, "age": age, "height": height, "weight": weight, "birth": birth,
        "facility": np.where(child, 2, _pick(rng, [5, 4, 0.0001, 3], n)),
        "age_missing": rng.random(n) < 0.2, "birth_missing": rng.random(n) < 0.2,
    }


def _dosing_weight(p: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """rules.md 2: Devine IBW, adjusted weight when BMI >= 30 or actual > 120% IBW (adults >= 152.4 cm)."""
    h, w = p["height"][idx], p["weight"][idx]
    ibw = np.where(p["sex_f"][idx], 45.5, 50.0) + 2.3 * (h / 2.54 - 60)
    adj = ibw + 0.4 * (w - ibw)
    obese = (w / (h / 100) ** 2 >= 30) | (w > 1.2 * ibw)
    use_adj = obese & ~p["child"][idx] & (h >= 152.4) & (w > ibw)
    return np.where(use_adj, adj, w)


def generate(rows: int, seed: int = SEED, ivig_share: float = 0.005) -> pl.DataFrame:
    """The extract as a frame of text columns, sorted by start, order_id numbered in that order."""
    rng = np.random.default_rng(seed)
    n_patients = max(2_000, rows // 20)
    pat = _patients(rng, n_patients)

    # ---------------------------------------------------------------- IVIG courses
    rows_per_course = 2.4
    n_courses = max(20, int(round(rows * ivig_share / rows_per_course)))
    n_ivig_patients = max(10, n_courses // 2)
    # IVIG patients are the first n_ivig_patients adults/children of the population
    course_patient = np.arange(n_courses) % n_ivig_patients
    course_seq = np.arange(n_courses) // n_ivig_patients  # 0 = first course of that patient
    groups = list(INDICATIONS)
    patient_group = _pick(rng, [INDICATIONS[g][4] for g in groups], n_ivig_patients)
    # Kawasaki patients are children, the others adults
    kd = groups.index("kawasaki")
    pat["child"][:n_ivig_patients] = patient_group == kd
    pat["age"][:n_ivig_patients] = np.where(
        patient_group == kd, rng.integers(1, 8, n_ivig_patients), np.maximum(pat["age"][:n_ivig_patients], 18)
    )
    pat["weight"][:n_ivig_patients] = np.where(
        patient_group == kd, np.round(8 + pat["age"][:n_ivig_patients] * 2.4, 1), pat["weight"][:n_ivig_patients]
    )
    pat["height"][:n_ivig_patients] = np.where(
        patient_group == kd, np.round(75 + pat["age"][:n_ivig_patients] * 6.0), pat["height"][:n_ivig_patients]
    )
    pat["facility"][:n_ivig_patients] = np.where(patient_group == kd, 2, pat["facility"][:n_ivig_patients] % 2)
    pat["birth"] = AS_OF - (pat["age"] * 365.25).astype("timedelta64[D]") - rng.integers(0, 365, n_patients).astype("timedelta64[D]")
    c_group = patient_group[course_patient]
    base_day = rng.integers(0, PERIOD_DAYS - 120, n_ivig_patients)
    interval = rng.integers(21, 36, n_courses)
    c_day = base_day[course_patient] + course_seq * interval
    c_day = np.minimum(c_day, PERIOD_DAYS - 6)
    c_start = PERIOD_START + c_day.astype("timedelta64[D]") + (
        rng.integers(7, 16, n_courses) * 3600
    ).astype("timedelta64[s]")
    days_opts = np.array([INDICATIONS[g][3] for g in groups])
    c_days = days_opts[c_group, rng.integers(0, 4, n_courses)]
    target = np.array([INDICATIONS[g][2] for g in groups])[c_group]
    dosing_w = _dosing_weight(pat, course_patient)
    on_actual = rng.random(n_courses) < 0.08  # obese patients dosed on actual weight
    dosing_w = np.where(on_actual, pat["weight"][course_patient], dosing_w)
    factor = np.select(
        [(u := rng.random(n_courses)) < 0.06, u < 0.09, u < 0.14], [1.27, 1.8, 0.72], default=1.0
    )
    g_per_day = np.maximum(np.round(target * dosing_w * factor / c_days / 5) * 5, 5.0)
    one_row = (rng.random(n_courses) < 0.15) & (c_days > 1)
    c_rows = np.where(one_row, 1, c_days)
    c_product = _pick(rng, [w for _, _, w in IVIG_NAMES], n_courses)
    c_conc = np.array([c for _, c, _ in IVIG_NAMES])[c_product]
    c_unit = _pick(rng, [60, 8, 4, 10, 12, 6], n_courses)  # g, G, gm, mg, mL, g/kg
    c_unit = np.where((c_unit == 4) & (c_conc == 0), 0, c_unit)  # mL only for fixed strengths
    c_unit = np.where((c_unit == 5) & (dosing_w != pat["weight"][course_patient]), 0, c_unit)
    c_text = rng.integers(0, 4, n_courses)
    c_text_missing = rng.random(n_courses) < 0.15
    c_code_missing = (rng.random(n_courses) < 0.25) & ~c_text_missing
    c_justified = (course_seq > 0) & (rng.random(n_courses) < 0.8)
    c_just = rng.integers(0, len(JUSTIFICATIONS), n_courses)

    # one row per IVIG dose (or one row per course with doses = days)
    ci = np.repeat(np.arange(n_courses), c_rows)
    day_in_course = np.arange(ci.size) - np.repeat(np.cumsum(c_rows) - c_rows, c_rows)
    ivig_start = c_start[ci] + (day_in_course * 86400).astype("timedelta64[s]")
    grams = g_per_day[ci]
    unit_i = c_unit[ci]
    dose_val = np.select(
        [unit_i == 3, unit_i == 4, unit_i == 5],
        [grams * 1000, grams / np.where(c_conc[ci] > 0, c_conc[ci], 1), np.round(grams / np.maximum(pat["weight"][course_patient[ci]], 1), 3)],
        default=grams,
    )
    gtexts = [INDICATIONS[g][0] for g in groups]
    gcodes = [INDICATIONS[g][1] for g in groups]
    text_vocab = [t for ts in gtexts for t in ts]
    code_vocab = [c for cs in gcodes for c in cs]
    text_off = np.cumsum([0] + [len(t) for t in gtexts])[:-1]
    code_off = np.cumsum([0] + [len(c) for c in gcodes])[:-1]
    text_len = np.array([len(t) for t in gtexts])
    code_len = np.array([len(c) for c in gcodes])
    ind_text = text_off[c_group] + c_text % text_len[c_group]
    ind_code = code_off[c_group] + c_text % code_len[c_group]
    ivig = {
        "kind": np.zeros(ci.size, dtype=np.int8),  # 0 IVIG, 1 aspirin evidence, 2 other, 3 out of scope
        "patient": course_patient[ci],
        "start": ivig_start,
        "med": c_product[ci],
        "dose": dose_val,
        "unit": unit_i,
        "doses": np.where(one_row[ci], c_days[ci], 1),
        "route": np.where(rng.random(ci.size) < 0.03, 1, 0),
        "indication": np.where(c_text_missing[ci], -1, ind_text[ci]),
        "indication_code": np.where(c_code_missing[ci], -1, ind_code[ci]),
        "justification": np.where(c_justified[ci], c_just[ci], -1),
        "encounter": ci.astype(np.int64) + 1,
    }

    # ---------------------------------------------------------------- Kawasaki aspirin (evidence)
    kd_courses = np.flatnonzero((c_group == kd) & (rng.random(n_courses) < 0.95))
    asa = {
        "kind": np.ones(kd_courses.size, dtype=np.int8),
        "patient": course_patient[kd_courses],
        "start": c_start[kd_courses] + np.timedelta64(2, "h"),
        "med": np.where(rng.random(kd_courses.size) < 0.5, OTHER_OFFSET, len(MED_VOCAB) - 1),
        "dose": np.full(kd_courses.size, 80 * 20.0),
        "unit": np.full(kd_courses.size, 3),
        "doses": np.full(kd_courses.size, 14),
        "route": np.full(kd_courses.size, 2),
        "encounter": kd_courses.astype(np.int64) + 1,
    }

    # ---------------------------------------------------------------- other medications
    n_other = max(0, rows - ci.size - kd_courses.size)
    n_oos = n_other // 2000  # SC / hyperimmune globulins
    n_med = n_other - n_oos
    med_i = _pick(rng, [m[4] for m in OTHER_MEDS], n_med)
    oos_i = rng.integers(0, len(OUT_OF_SCOPE_IG), n_oos)
    typical = np.array([m[2] for m in OTHER_MEDS], dtype=float)[med_i]
    other = {
        "kind": np.concatenate([np.full(n_med, 2, dtype=np.int8), np.full(n_oos, 3, dtype=np.int8)]),
        "patient": rng.integers(0, n_patients, n_other),
        "start": PERIOD_START + rng.integers(0, PERIOD_DAYS * 86400, n_other).astype("timedelta64[s]") // 300 * 300,
        "med": np.concatenate([OTHER_OFFSET + med_i, OOS_OFFSET + oos_i]),
        "dose": np.concatenate([typical * rng.choice([1, 1, 1, 2], n_med), rng.integers(1, 40, n_oos) * 1.0]),
        "unit": np.concatenate([np.array([UNIT_VOCAB.index(m[1]) for m in OTHER_MEDS])[med_i],
                                np.array([UNIT_VOCAB.index(m[1]) for m in OUT_OF_SCOPE_IG])[oos_i]]),
        "doses": rng.integers(1, 8, n_other),
        "route": np.concatenate([np.array([ROUTE_VOCAB.index(m[3]) for m in OTHER_MEDS])[med_i],
                                 np.array([ROUTE_VOCAB.index(m[2]) for m in OUT_OF_SCOPE_IG])[oos_i]]),
        "encounter": rng.integers(1, max(2, rows // 8), n_other) + 10_000_000,
    }

    parts = [ivig, asa, other]
    cols = {k: np.concatenate([p[k] for p in parts]) for k in ("kind", "patient", "start", "med", "dose", "unit", "doses", "route", "encounter")}
    n = cols["kind"].size
    for k in ("indication", "indication_code", "justification"):
        cols[k] = np.concatenate([ivig[k], np.full(n - ci.size, -1)])

    order = np.argsort(cols["start"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    p = cols["patient"]
    start_s = cols["start"].astype("datetime64[us]")
    bad = rng.random(n) < 0.0001  # quarantine: dose 0, unknown unit or unparseable date
    bad_kind = rng.integers(0, 3, n)

    df = pl.DataFrame(
        {
            "order_id": np.arange(1, n + 1),
            "patient_id": p + 1,
            "encounter_id": cols["encounter"],
            "facility": _take(FACILITIES, pat["facility"][p]),
            "medication": _take(MED_VOCAB, cols["med"]),
            "dose": np.where(bad & (bad_kind == 0), 0.0, cols["dose"]),
            "dose_unit": _take(UNIT_VOCAB, np.where(bad & (bad_kind == 1), UNIT_VOCAB.index("vials"), cols["unit"])),
            "doses": cols["doses"],
            "start": pl.Series(start_s).cast(pl.Datetime("us")),
            "start_bad": bad & (bad_kind == 2),
            "route": _take(ROUTE_VOCAB, cols["route"]),
            "weight_kg": pat["weight"][p],
            "height_cm": pat["height"][p],
            "sex": _take(["M", "F"], pat["sex_f"][p].astype(np.int64)),
            "age_years": np.where(pat["age_missing"][p] & ~pat["birth_missing"][p], np.nan, pat["age"][p]),
            "birth_date": pl.Series(pat["birth"][p]).cast(pl.Date),
            "birth_missing": pat["birth_missing"][p],
            "indication": _take(text_vocab, cols["indication"]),
            "indication_code": _take(code_vocab, cols["indication_code"]),
            "pregnant": np.where(pat["sex_f"][p] & (rng.random(n) < 0.01), True, False),
            "justification": _take(JUSTIFICATIONS, cols["justification"]),
            "prescriber": (p % 120) + 1,
            "service": _take(SERVICES, np.where(pat["child"][p], 2, p % len(SERVICES))),
        }
    )
    return df.select(
        pl.format("ORD-{}", pl.col("order_id").cast(pl.String).str.zfill(9)).alias("order_id"),
        pl.format("P{}", pl.col("patient_id").cast(pl.String).str.zfill(7)).alias("patient_id"),
        pl.format("E{}", pl.col("encounter_id").cast(pl.String).str.zfill(8)).alias("encounter_id"),
        "facility",
        "medication",
        pl.col("dose").round(3).alias("dose"),
        "dose_unit",
        pl.col("doses").cast(pl.Float64).alias("doses"),
        pl.when(pl.col("start_bad")).then(None).otherwise(pl.col("start")).alias("start"),
        "route",
        pl.col("weight_kg").round(1),
        pl.col("height_cm").round(1),
        "sex",
        pl.col("age_years").fill_nan(None).round(0),
        pl.when(pl.col("birth_missing")).then(None).otherwise(pl.col("birth_date")).alias("birth_date"),
        "indication",
        "indication_code",
        pl.when(pl.col("sex") == "F").then(pl.col("pregnant")).alias("pregnant"),
        "justification",
        pl.format("DR{}", pl.col("prescriber").cast(pl.String).str.zfill(3)).alias("prescriber_id"),
        "service",
        pl.col("start_bad"),
    )


def to_text(df: pl.DataFrame) -> pl.DataFrame:
    """The CSV layout: every column as text, whole numbers without '.0', bad dates as '31/31/2026'."""
    def number(c: str) -> pl.Expr:
        x = pl.col(c)
        return pl.when(x == x.round(0)).then(x.cast(pl.Int64).cast(pl.String)).otherwise(x.cast(pl.String)).alias(c)

    return df.select(
        "order_id", "patient_id", "encounter_id", "facility", "medication",
        number("dose"), "dose_unit", number("doses"),
        pl.when(pl.col("start_bad")).then(pl.lit("31/31/2026"))
        .otherwise(pl.col("start").dt.strftime("%Y-%m-%d %H:%M:%S")).alias("start"),
        "route", number("weight_kg"), number("height_cm"), "sex", number("age_years"),
        pl.col("birth_date").dt.strftime("%Y-%m-%d"),
        "indication", "indication_code",
        pl.col("pregnant").cast(pl.String),
        "justification", "prescriber_id", "service",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default bench/data/orders_<rows>.csv)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--ivig-share", type=float, default=0.005)
    parser.add_argument("--parquet", action="store_true", help="also write <out>.parquet (typed columns)")
    parser.add_argument("--nights", type=int, default=0,
                        help="also write the same rows as this many nightly files (consecutive slices) in <out>_nights/")
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).parent / "data" / f"orders_{args.rows}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    typed = generate(args.rows, args.seed, args.ivig_share)
    t1 = time.perf_counter()
    to_text(typed).write_csv(out, null_value="")
    t2 = time.perf_counter()
    msg = f"{out}: {typed.height} rows, {out.stat().st_size / 1e6:.0f} MB (generate {t1 - t0:.1f} s, csv {t2 - t1:.1f} s)"
    if args.parquet:
        pq = out.with_suffix(".parquet")
        typed.with_columns(pl.when(pl.col("start_bad")).then(None).otherwise(pl.col("start")).alias("start")).drop(
            "start_bad"
        ).write_parquet(pq, compression="zstd")
        msg += f"; {pq}: {pq.stat().st_size / 1e6:.0f} MB ({time.perf_counter() - t2:.1f} s)"
    if args.nights:
        folder = out.with_name(f"{out.stem}_nights")
        folder.mkdir(exist_ok=True)
        text = to_text(typed)
        size = -(-text.height // args.nights)
        for night in range(args.nights):
            text.slice(night * size, size).write_csv(folder / f"night_{night + 1:03d}.csv", null_value="")
        msg += f"; {folder}/: {args.nights} nightly files"
    ivig_rows = typed.filter(
        pl.col("medication").str.to_lowercase().str.contains(r"privigen|gamunex|gammagard|octagam|flebogamma|panzyga|gammaplex|bivigam|asceniv|carimune|kiovig|ivig|intravenous|globulin iv")
    ).height
    print(msg + f"; IVIG rows {ivig_rows} ({100 * ivig_rows / typed.height:.2f}%)")


if __name__ == "__main__":
    main()
