"""Small cohorts delivered as a feed delivers them, for the nightly-equals-batch tests.

A cohort is a set of canonical rows (orders, labs, procedures), each with the day it is
delivered: its own clinical day plus some lateness (a dose charted late, a lab resulted the next
day), a correction some days after the version it corrects. `files()` cuts the deliveries into
files (one per day or per week, names dated or reused every night), `nights()` cuts the files
into nights, and `audit_nights()` / `audit_batch()` run them through `pipeline.night.run_night`.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from checks.inputs import EXTRACT_COLUMNS

DAY0 = datetime(2026, 3, 2, 9, 0)
EXTRACTS = ("orders", "labs", "procedures")


@dataclass
class Row:
    """One canonical row and the day (from DAY0) a feed delivers it."""

    extract: str
    values: dict[str, str]
    delivered: int


@dataclass
class Cohort:
    """Rows of a few patients; `versioned` when every order row carries updated_at."""

    rows: list[Row] = field(default_factory=list)
    versioned: bool = False

    def add(self, extract: str, delivered: int, **values: Any) -> None:
        self.rows.append(Row(extract, {k: ("" if v is None else str(v)) for k, v in values.items()}, delivered))


def _day(offset: float) -> str:
    return (DAY0 + timedelta(days=offset)).strftime("%Y-%m-%d %H:%M:%S")


PATIENTS = {
    # patient id: (sex, age, weight, height, indication, code)
    "NB-ADULT": ("M", 50, 70, 175, "Guillain-Barre syndrome", "G61.0"),
    "NB-OBESE": ("F", 62, 104, 160, "CIDP", "G61.81"),
    "NB-CHILD": ("M", 4, 16, 102, "Kawasaki disease", "M30.3"),
    "NB-ITP": ("F", 70, 60, 165, "ITP", "D69.3"),
}


def random_cohort(rng: random.Random, versioned: bool = False, max_lateness: int = 6) -> Cohort:
    """A cohort with findings of several kinds: courses over several deliveries, late doses,
    corrections (good and rejected), evidence before the first IVIG order, re-sent rows."""
    cohort = Cohort(versioned=versioned)
    order_seq = 0
    for patient, (sex, age, weight, height, indication, code) in PATIENTS.items():
        if rng.random() < 0.15:
            continue
        starts = sorted(rng.sample(range(5, 80), k=rng.randint(1, 3)))
        starts = [s for i, s in enumerate(starts) if i == 0 or s - starts[i - 1] > 12]
        for start in starts:
            days = 1 if patient == "NB-CHILD" else rng.randint(1, 5)
            grams = round(rng.choice([0.4, 0.5, 0.6]) * weight * (2 if days == 1 and patient == "NB-CHILD" else 1), 1)
            for d in range(days):
                order_seq += 1
                order_id = f"NO-{order_seq:03d}"
                base = dict(
                    order_id=order_id, patient_id=patient, medication=rng.choice(["Privigen 10%", "Gamunex-C", "Octagam 10%"]),
                    dose=grams, dose_unit="g", doses=1, start=_day(start + d), route="IV", weight_kg=weight,
                    height_cm=height, sex=sex, age_years=age, indication=indication,
                    indication_code=code if rng.random() < 0.5 else None, service="Neurology", prescriber_id="DR-1",
                    justification=rng.choice([None, "INCAT improved 5 to 3", "fluctuation after first course"]),
                )
                if versioned:
                    base["updated_at"] = _day(start + d - 0.5)
                delivered = start + d + rng.randint(0, max_lateness)
                cohort.add("orders", delivered, **base)
                roll = rng.random()
                later = delivered + rng.randint(1, 9)
                if roll < 0.12:  # a correction of the dose
                    corrected = base | {"dose": round(grams * rng.choice([0.5, 1.5]), 1)}
                    if versioned:
                        corrected["updated_at"] = _day(start + d + 0.5)
                    cohort.add("orders", later, **corrected)
                elif roll < 0.2:  # a correction that fails the contract: the earlier version stays
                    rejected = base | {"dose": rng.choice(["1-2", "-5", "abc"])}
                    if versioned:
                        rejected["updated_at"] = _day(start + d + 0.5)
                    cohort.add("orders", later, **rejected)
                elif roll < 0.27:  # the feed sends the same row again
                    cohort.add("orders", later, **base)
            # Evidence, often before the first IVIG order.
            if rng.random() < 0.7:
                taken = start - rng.randint(0, 35)
                for test, value, unit in (("creatinine", rng.choice([70, 180]), "umol/L"), ("hemoglobin", 125, "g/L")):
                    if rng.random() < 0.8:
                        cohort.add("labs", taken + rng.randint(0, 2), patient_id=patient, collected_at=_day(taken),
                                   test=test, value=value, unit=unit, ref_low=50, ref_high=110 if test == "creatinine" else 160)
            if rng.random() < 0.5:  # a follow-up hemoglobin or creatinine, in its window or too late
                taken = start + days + rng.randint(0, 14)
                cohort.add("labs", taken + rng.randint(0, 2), patient_id=patient, collected_at=_day(taken),
                           test=rng.choice(["hemoglobin", "creatinine"]), value=120, unit="g/L", ref_low=50, ref_high=160)
            if rng.random() < 0.2:
                taken = start - rng.randint(0, 60)
                cohort.add("labs", taken + 1, patient_id=patient, collected_at=_day(taken), test="IgA", value=0.05,
                           unit="g/L", ref_low=0.7, ref_high=4.0)
            if rng.random() < 0.25:
                done = start + rng.randint(-10, 8)
                cohort.add("procedures", done + rng.randint(0, 2), patient_id=patient, performed_at=_day(done),
                           procedure=rng.choice(["Plasma exchange", "PLEX", "TPE"]))
            if patient == "NB-CHILD" and rng.random() < 0.6:
                order_seq += 1
                asa = dict(order_id=f"NO-{order_seq:03d}", patient_id=patient, medication="Aspirin 81 mg", dose=81,
                           dose_unit="mg", doses=14, start=_day(start - rng.randint(0, 2)), route="PO")
                if versioned:
                    asa["updated_at"] = _day(start - 3)
                cohort.add("orders", start - 1, **asa)
        if starts and rng.random() < 0.6:  # results long after the last course (in no rule's window): no finding may move
            for _ in range(rng.randint(1, 3)):
                taken = starts[-1] + days + rng.randint(15, 60)
                test = rng.choice(["sodium", "platelets", "creatinine", "hemoglobin"])
                cohort.add("labs", taken + rng.randint(0, 2), patient_id=patient, collected_at=_day(taken),
                           test=test, value=140 if test == "sodium" else 120, unit="mmol/L" if test == "sodium" else "g/L",
                           ref_low=50, ref_high=160)
    # Someone without IVIG: labs and an aspirin order that must stay evidence only.
    cohort.add("labs", 20, patient_id="NB-OTHER", collected_at=_day(19), test="creatinine", value=90, unit="umol/L")
    cohort.add("orders", 21, order_id="NO-900", patient_id="NB-OTHER", medication="aspirin", dose=75, dose_unit="mg",
               start=_day(21), **({"updated_at": _day(20)} if versioned else {}))
    return cohort


@dataclass(frozen=True)
class FeedFile:
    """One delivered file: its extract, path and the period (day or week) it belongs to."""

    extract: str
    path: Path
    period: int


def files(cohort: Cohort, root: Path, period_days: int, reuse_names: bool) -> list[FeedFile]:
    """The cohort's deliveries cut into files, one per extract and period (in delivery order).

    With `reuse_names` every period's files are called orders.csv, labs.csv, procedures.csv (in a
    folder of their own), as a feed that overwrites one inbox file every night.
    """
    groups: dict[tuple[int, str], list[dict[str, str]]] = {}
    for row in sorted(cohort.rows, key=lambda r: r.delivered):
        groups.setdefault((row.delivered // period_days, row.extract), []).append(row.values)
    out = []
    for (period, extract), rows in sorted(groups.items()):
        folder = root / f"period-{period:03d}"
        name = f"{extract}.csv" if reuse_names else f"{extract}_{period:03d}.csv"
        path = folder / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(EXTRACT_COLUMNS[extract]))
            writer.writeheader()
            for values in rows:
                writer.writerow({c: values.get(c, "") for c in EXTRACT_COLUMNS[extract]})
        out.append(FeedFile(extract, path, period))
    return out


def nights(feed: list[FeedFile], rng: random.Random, shuffle_orders: bool) -> list[list[FeedFile]]:
    """The files cut into nights.

    Order files arrive in the order they were produced (a correction after what it corrects),
    grouped into consecutive nights; a labs or procedures file arrives on its own night or any
    later one (a result sent late), so before or after the orders it is evidence for. With
    `shuffle_orders` (every order carries updated_at) the order files arrive in any order too.
    """
    periods = sorted({f.period for f in feed})
    cuts = sorted(rng.sample(range(1, len(periods)), k=min(len(periods) - 1, rng.randint(1, 6)))) if len(periods) > 1 else []
    if len(periods) <= 25 and rng.random() < 0.4:  # every week its own night, as a weekly feed: the labs move a week at a time
        cuts = list(range(1, len(periods)))
    bounds = [0, *cuts, len(periods)]
    groups = [set(periods[a:b]) for a, b in zip(bounds, bounds[1:])]
    own_night = {p: i for i, g in enumerate(groups) for p in g}
    out: list[list[FeedFile]] = [[] for _ in groups]
    order_nights = list(range(len(groups)))
    if shuffle_orders:
        rng.shuffle(order_nights)
    for f in feed:
        if f.extract == "orders":
            night = order_nights[own_night[f.period]]
        else:
            night = rng.randrange(own_night[f.period], len(groups))
        out[night].append(f)
    return [n for n in out if n]


def request(db: Path, feed: list[FeedFile], rules: Path | None = None):
    """A night (or a batch) over some files: each extract's files in their delivery order."""
    from pipeline.night import NightRequest

    inputs = {e: [f.path for f in sorted(feed, key=lambda f: f.period) if f.extract == e] for e in EXTRACTS}
    return NightRequest(db=db, inputs={e: p for e, p in inputs.items() if p}, rules=rules)


def audit_batch(db: Path, feed: list[FeedFile], rules: Path | None = None) -> None:
    """One run over every file."""
    from pipeline.night import run_night

    run_night(request(db, feed, rules))


def audit_nights(db: Path, schedule: list[list[FeedFile]], rules: Path | None = None) -> None:
    """One run per night."""
    from pipeline.night import run_night

    for night in schedule:
        run_night(request(db, night, rules))


#: Columns that name a row rather than say something about it: ids (a course that grew an earlier
#: dose keeps the id its first night gave it), runs, and the file a version was first seen in (a
#: row re-sent in two files was first seen in whichever arrived first).
NAMING = {"course_id", "finding_id", "run_id", "first_seen_run", "last_seen_run", "resolved_run", "status",
          "source_file", "source_row"}


def outcome(db: Path) -> dict[str, list[tuple]]:
    """The orders, courses and open findings of a database, without their names (sorted rows)."""
    tables = {
        "orders": "SELECT * FROM orders",
        "courses": "SELECT * FROM courses",
        "open findings": "SELECT * FROM findings WHERE resolved_run IS NULL",
    }
    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        for name, query in tables.items():
            result = con.execute(query)
            columns = [d[0] for d in result.description]
            keep = [i for i, c in enumerate(columns) if c not in NAMING and c not in ("facts_hash", "raised_pack_version",
                                                                                    "confirmed_pack_version", "reviewed_facts_hash",
                                                                                    "changed_since_review")]
            out[name] = sorted((tuple(_comparable(row[i]) for i in keep) for row in result.fetchall()), key=repr)
    return out


def _comparable(value: Any) -> Any:
    """A value as compared: floats to 9 decimals (two runs may sum the same grams in another order)."""
    return round(value, 9) if isinstance(value, float) else value


#: The column dating each extract's rows (a feed delivers a row in the file of its own date).
DATED_BY = {"orders": "start", "labs": "collected_at", "procedures": "performed_at"}


def weekly_files(extracts: dict[str, list[Path]], root: Path) -> list[FeedFile]:
    """Every row of the given extracts in the weekly file of its own date (`<extract>_<ISO week>.csv`).

    A row whose date is not a date goes to the first week's file (it is quarantined wherever it is).
    """
    import polars as pl

    out = []
    for extract, paths in extracts.items():
        rows = pl.concat([pl.read_csv(p, infer_schema=False) for p in paths], how="diagonal")
        day = pl.col(DATED_BY[extract]).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        rows = rows.with_columns(week=(day.dt.year() * 100 + day.dt.week()))
        first = rows["week"].min()
        rows = rows.with_columns(pl.col("week").fill_null(first))
        for (week,), part in rows.partition_by("week", as_dict=True, maintain_order=True).items():
            path = root / f"week-{week}" / f"{extract}_{week}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            part.drop("week").write_csv(path)
            out.append(FeedFile(extract, path, int(week)))
    return sorted(out, key=lambda f: (f.period, EXTRACTS.index(f.extract)))


def by_week(feed: list[FeedFile]) -> list[list[FeedFile]]:
    """One night per week, each with that week's files."""
    weeks: dict[int, list[FeedFile]] = {}
    for f in feed:
        weeks.setdefault(f.period, []).append(f)
    return [weeks[w] for w in sorted(weeks)]


def write_rows(path: Path, extract: str, rows: list[dict[str, Any]]) -> Path:
    """A canonical CSV of one extract (missing columns empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(EXTRACT_COLUMNS[extract]))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else str(row.get(c))) for c in EXTRACT_COLUMNS[extract]})
    return path


def night(db: Path, run_id: str | None = None, report_dir: Path | None = None, rules: Path | None = None,
          force: bool = False, **inputs: Path | list[Path]):
    """One night over the given extracts (orders=..., labs=..., procedures=...), in this process."""
    from pipeline.night import NightRequest, run_night

    given = {k: (v if isinstance(v, list) else [v]) for k, v in inputs.items()}
    return run_night(NightRequest(db=Path(db), inputs=given, report_dir=report_dir, rules=rules, force=force), run_id=run_id)


def table(db: Path, query: str, params: list | None = None) -> list[tuple]:
    """Rows of a query on the database (read-only)."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query, params or []).fetchall()
