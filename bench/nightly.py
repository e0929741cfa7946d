"""A year of nights for a large hospital: does a night's cost grow with what arrived, or with the history?

Issue 13, item 7: about 30,000 IVIG doses and 2 million labs a year, delivered one file per
extract per night (each row in the file of the day it is delivered). Every night is audited with
`pipeline.night.run_night` in this process (no Prefect: its own overhead is measured by
`prefect_overhead.py`), into one database. Printed per night and summarised in `--out`:

* wall   the whole night (lock, inputs, read, history, audit, write)
* write  the database transaction (the time the database is locked for writing)
* patients judged, ledger rows, database size

Seeded and deterministic (numpy default_rng): the same `--seed` gives the same year.

    .venv/bin/python bench/nightly.py --days 365 --out bench/out/nightly.md     # ~15 minutes on 2 cores
    .venv/bin/python bench/nightly.py --days 30 --labs-per-year 200000           # a quick look
    .venv/bin/python bench/nightly.py --days 365 --probe-only                    # the probe again, on the histories left
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from checks.inputs import EXTRACT_COLUMNS  # noqa: E402

YEAR_START = date(2026, 1, 1)

#: Regimens of the generated courses: indication text, code, daily g/kg, days, courses a year.
ACUTE = [
    ("Guillain-Barre syndrome", "G61.0", 0.4, 5),
    ("Immune thrombocytopenia", "D69.3", 1.0, 2),
    ("Myasthenia gravis crisis", "G70.01", 0.4, 5),
    ("Kawasaki disease", "M30.3", 2.0, 1),
]


def _ivig_doses(rng: np.random.Generator, days: int, cidp_patients: int, acute_patients: int) -> pl.DataFrame:
    """Every IVIG dose of the year, with the day it is delivered (0-2 days after it is given).

    Courses are spread over a whole year whatever `days` (a shorter run delivers its first nights).
    """
    days = 365
    rows = []
    for p in range(cidp_patients):  # maintenance every 21-28 days, two daily doses of 0.5 g/kg
        weight = float(rng.uniform(50, 120))
        day = int(rng.integers(0, 28))
        while day < days:
            for d in range(2):
                rows.append((f"IV-C{p:05d}", "CIDP maintenance", "G61.81", round(0.5 * weight, 1), day + d, weight))
            day += int(rng.integers(21, 29))
    for p in range(acute_patients):
        text, code, g_per_kg, n = ACUTE[p % len(ACUTE)]
        weight = float(rng.uniform(12, 25)) if "Kawasaki" in text else float(rng.uniform(50, 120))
        for start in sorted(rng.choice(days, size=int(rng.integers(1, 3)), replace=False)):
            for d in range(n):
                rows.append((f"IV-A{p:05d}", text, code, round(g_per_kg * weight, 1), int(start) + d, weight))
    frame = pl.DataFrame(rows, schema=["patient_id", "indication", "indication_code", "dose", "day", "weight_kg"], orient="row")
    return frame.with_columns(delivered=pl.col("day") + pl.Series(rng.integers(0, 3, frame.height)))


def write_year(root: Path, days: int, labs_per_year: int, others_per_night: int, seed: int,
               cidp_patients: int, acute_patients: int) -> list[dict[str, Path]]:
    """The year's nightly files (orders and labs per night); returns each night's inputs."""
    rng = np.random.default_rng(seed)
    doses = _ivig_doses(rng, days, cidp_patients, acute_patients).filter(pl.col("delivered") < days).sort("delivered", "patient_id", "day")
    doses = doses.with_columns(order_id=pl.format("IVO-{}", pl.int_range(pl.len()).cast(pl.String).str.zfill(7)))
    ivig_ids = doses["patient_id"].unique().sort().to_numpy()  # sorted: unique() alone has no fixed order
    labs_per_night = labs_per_year // 365
    nights = []
    for night in range(days):
        day = YEAR_START + timedelta(days=night)
        files = _night_files(root, night)
        files["orders"].parent.mkdir(parents=True, exist_ok=True)
        tonight = doses.filter(pl.col("delivered") == night)
        at = lambda col: (pl.lit(datetime.combine(YEAR_START, datetime.min.time())) + pl.duration(days=col, hours=9)).dt.strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
        ivig = tonight.select(
            "order_id", "patient_id", pl.lit("Privigen 10%").alias("medication"), pl.col("dose").cast(pl.String),
            pl.lit("g").alias("dose_unit"), pl.lit("1").alias("doses"), at(pl.col("day")).alias("start"),
            pl.lit("IV").alias("route"), pl.col("weight_kg").round(1).cast(pl.String), pl.lit("170").alias("height_cm"),
            pl.lit("F").alias("sex"), pl.lit("55").alias("age_years"), "indication", "indication_code",
            pl.lit("INCAT improved 4 to 3").alias("justification"), pl.lit("Neurology").alias("service"),
        )
        n = others_per_night
        others = pl.DataFrame({
            "order_id": [f"OTH-{night:03d}-{i:05d}" for i in range(n)],
            "patient_id": [f"LP-{x:06d}" for x in rng.integers(0, 60_000, n)],
            "medication": rng.choice(["heparin", "saline 0.9%", "acetaminophen", "aspirin 81 mg", "ondansetron"], n,
                                     p=[0.3, 0.3, 0.29, 0.01, 0.1]),
            "dose": ["1"] * n, "dose_unit": ["mg"] * n, "doses": ["1"] * n,
            "start": [f"{day:%Y-%m-%d} 08:00:00"] * n, "route": ["PO"] * n,
        })
        orders = pl.concat([ivig, others], how="diagonal").select(
            [pl.col(c) if c in ivig.columns or c in others.columns else pl.lit(None, dtype=pl.String).alias(c)
             for c in EXTRACT_COLUMNS["orders"]]
        )
        orders.write_csv(files["orders"])
        m = labs_per_night
        from_ivig = rng.random(m) < 0.08
        patients = np.where(from_ivig, rng.choice(ivig_ids, m), np.char.add("LP-", np.char.zfill(rng.integers(0, 60_000, m).astype(str), 6)))
        tests = rng.choice(["creatinine", "egfr", "hemoglobin", "platelets", "sodium", "potassium"], m)
        labs = pl.DataFrame({
            "patient_id": patients, "collected_at": [f"{day:%Y-%m-%d} 06:30:00"] * m, "test": tests,
            "value": np.round(rng.uniform(50, 150, m), 1).astype(str), "unit": ["umol/L"] * m,
            "ref_low": ["45"] * m, "ref_high": ["110"] * m,
        })
        labs.write_csv(files["labs"])
        nights.append(files)
    return nights


def _size(db: Path) -> int:
    """Bytes of the database file and its write-ahead log."""
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + ".wal")) if p.exists())


def _locked(timings: dict[str, float]) -> float:
    """Seconds the night held the writer lock: from taking it (database state, history, audit) to the commit."""
    return sum(timings.get(step, 0.0) for step in ("history", "audit", "store"))


def _night_files(feed: Path, night: int) -> dict[str, Path]:
    """The files of one night of the feed folder (0 is the first), as write_year writes them."""
    day = YEAR_START + timedelta(days=night)
    return {e: feed / f"{day:%Y-%m-%d}" / f"{e}_{day:%Y-%m-%d}.csv" for e in ("orders", "labs")}


def _probes(args: argparse.Namespace, db: Path, every_night: list[dict[str, Path]]) -> dict[str, tuple[float, float, float, int, float]]:
    """The next night audited on a copy of the history after --probe-after nights and after every night,
    best of 3 (each on a fresh copy): wall s, locked s, write s, patients judged, database MB.

    Each history gets the night that follows it (the same generator, so a night of the same size):
    the files of a later date on the short history would move the date the labs run to by months,
    which brings every course's follow-up due at once.
    """
    from pipeline.night import NightRequest, run_night

    probes = {}
    last = len(every_night) - 1
    for label, source, probe in ((f"after {args.probe_after} nights", args.work / "after_probe_night.duckdb", every_night[args.probe_after]),
                                 (f"after {last} nights", db, every_night[last])):
        copy = args.work / "probe.duckdb"
        best = None
        for _ in range(3):
            shutil.copy(source, copy)
            clock = time.perf_counter()
            summary = run_night(NightRequest(db=copy, inputs={k: [v] for k, v in probe.items()}))
            wall = time.perf_counter() - clock
            if best is None or wall < best[0]:
                best = (wall, _locked(summary.timings), summary.timings.get("store", 0.0), summary.patients_audited, _size(source) / 1e6)
        probes[label] = best
    return probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--labs-per-year", type=int, default=2_000_000)
    parser.add_argument("--others-per-night", type=int, default=3_000, help="non-IVIG order rows per night")
    parser.add_argument("--cidp-patients", type=int, default=900)
    parser.add_argument("--acute-patients", type=int, default=700)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--probe-after", type=int, default=60,
                        help="also audit the next night (the probe) on the history as it was after this many nights")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "nightly")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the summary")
    parser.add_argument("--probe-only", action="store_true",
                        help="only audit the probe night again, on the two databases a previous run left in --work "
                             "(compares code changes on the same histories)")
    args = parser.parse_args()

    from pipeline.night import NightRequest, run_night

    db = args.work / "audit.duckdb"
    if args.probe_only:
        for label, (wall, locked, write, patients, mb) in _probes(args, db, [_night_files(args.work / "feed", n) for n in range(args.days + 1)]).items():
            print(f"probe {label}: wall {wall:.2f} s, locked {locked:.2f} s, write {write:.2f} s, {patients} patients judged, "
                  f"database {mb:.0f} MB")
        return
    shutil.rmtree(args.work, ignore_errors=True)
    started = time.perf_counter()
    # One night more than the year: the probe of the long history (the night after the last).
    every_night = write_year(args.work / "feed", args.days + 1, args.labs_per_year, args.others_per_night, args.seed,
                             args.cidp_patients, args.acute_patients)
    nights = every_night[:-1]
    print(f"generated {len(every_night)} nights in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for i, inputs in enumerate(nights, start=1):
        clock = time.perf_counter()
        summary = run_night(NightRequest(db=db, inputs={k: [v] for k, v in inputs.items()}))
        wall = time.perf_counter() - clock
        rows.append({
            "night": i, "wall_s": wall, "locked_s": _locked(summary.timings), "write_s": summary.timings.get("store", 0.0),
            "audit_s": summary.timings.get("audit", 0.0),
            "history_s": summary.timings.get("history", 0.0), "patients": summary.patients_audited,
            "ivig_rows": summary.rows.get("rows_ivig", 0), "db_mb": _size(db) / 1e6,
            "rows_read": summary.rows.get("rows_read", 0),
        })
        if i == args.probe_after:
            shutil.copy(db, args.work / "after_probe_night.duckdb")
        if i == 1 or i % 30 == 0 or i == len(nights):
            r = rows[-1]
            print(f"night {i:3d}: wall {r['wall_s']:.2f} s, write {r['write_s']:.2f} s, {r['patients']} patients, "
                  f"db {r['db_mb']:.0f} MB", flush=True)
    table = pl.DataFrame(rows)
    import duckdb

    probes = _probes(args, db, every_night)

    with duckdb.connect(str(db), read_only=True) as con:
        ledger = dict(con.execute("SELECT extract, COUNT(*) FROM ledger GROUP BY ALL").fetchall())
        totals = con.execute("SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM courses), (SELECT COUNT(*) FROM findings)").fetchone()
    first, last = table.row(0, named=True), table.row(-1, named=True)
    head = table.slice(1, 10).mean().row(0, named=True)
    tail = table.tail(10).mean().row(0, named=True)
    lines = [
        f"# A year of nights ({args.days} nights, seed {args.seed})",
        "",
        f"`.venv/bin/python bench/nightly.py --days {args.days} --labs-per-year {args.labs_per_year} "
        f"--others-per-night {args.others_per_night}`",
        "",
        (f"Load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores "
         "(a shared machine: figures of a loaded one are slower and noisier)."),
        "",
        f"IVIG doses {int(table['ivig_rows'].sum()):,}; labs {args.labs_per_year // 365 * args.days:,}; other order rows "
        f"{args.others_per_night * args.days:,}. At the end: {totals[0]:,} orders, {totals[1]:,} courses, {totals[2]:,} "
        f"findings; ledger {', '.join(f'{k} {v:,}' for k, v in sorted(ledger.items()))}; database {last['db_mb']:.0f} MB.",
        "",
        "| night | wall s | locked s (writer lock held) | write s (the transaction) | patients judged |",
        "|---|---|---|---|---|",
        *[f"| {name} | {r['wall_s']:.2f} | {r['locked_s']:.2f} | {r['write_s']:.2f} | {r['patients']:.0f} |"
          for name, r in (("first", first), ("2-11 (mean)", head), ("last 10 (mean)", tail), ("last", last))],
        "",
        f"Last night / first night: wall {last['wall_s'] / first['wall_s']:.2f}x, locked {last['locked_s'] / first['locked_s']:.2f}x; "
        f"last 10 / nights 2-11: wall {tail['wall_s'] / head['wall_s']:.2f}x, locked {tail['locked_s'] / head['locked_s']:.2f}x "
        "(target <= 1.5x). The first nights judge few patients: the IVIG population builds up over the first weeks.",
        "",
        "The next night (the probe) on a short and on a long history, best of 3:",
        "",
        "| history | database MB | wall s | locked s | write s | patients judged |",
        "|---|---|---|---|---|---|",
        *[f"| {label} | {mb:.0f} | {wall:.2f} | {locked:.2f} | {write:.2f} | {patients} |"
          for label, (wall, locked, write, patients, mb) in probes.items()],
        "",
    ]
    (short_wall, short_locked, *_), (long_wall, long_locked, *_) = probes.values()
    lines.append(f"Long history / short history, the next night of each: wall {long_wall / short_wall:.2f}x, "
                 f"locked {long_locked / short_locked:.2f}x (target <= 1.5x).")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        table.write_csv(args.out.with_suffix(".csv"))


if __name__ == "__main__":
    main()
