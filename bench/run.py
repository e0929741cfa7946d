"""Benchmark our audit against the bare parse and against hand-written DuckDB / pandas / Polars audits.

    .venv/bin/python bench/run.py bench/data/orders_1m.csv            # Parquet twin found next to it
    .venv/bin/python bench/run.py bench/data/orders_10m.csv --skip pandas --out bench/out/results_10m.md

Every contender runs in a fresh subprocess (``python bench/run.py --child NAME PATH``); the
parent reads that child's own resource usage with ``os.wait4`` (peak RSS = ``ru_maxrss``, so
one contender's memory never hides another's). Two wall times per contender:

* ``work s``: measured inside the child around the work only (after imports);
* ``process s``: the whole child process (interpreter start, imports of Polars/Pandera/...).

Contenders (``--only`` / ``--skip`` take these names):

==================  =====================================================================
``parse_csv``       the floor: ``pl.read_csv(path, infer_schema=False)`` - every column of
                    every row parsed into memory as text (what our reader reads)
``parse_csv_stream`` the same parse streamed: every column touched (sum of byte lengths),
                    nothing kept - the memory floor of a streaming design
``parse_duckdb``    DuckDB's bare parse: ``read_csv(all_varchar = true)`` of every column of
                    every row into an in-memory table (the DuckDB twin of ``parse_csv``)
``ours_csv``        ``scan_extract`` + ``pipeline.audit.run_audit`` (no Prefect, no DuckDB)
``ours_csv_db``     the same plus ``pipeline.warehouse.write_run`` into a new temp DuckDB file
``ours_night``      the nightly run without Prefect: ``pipeline.night.run_night`` (``DirectSteps``)
                    into a new temp DuckDB file with the report - what the CLI runs, as tasks
``polars_core``     a hand-written lazy Polars audit of the core checks, streaming collect
``duckdb_sql``      the core checks as one DuckDB SQL query over ``read_csv``
``pandas``          the core checks in pandas (``read_csv(dtype=str)``)
``parse_parquet``   ``pl.read_parquet`` of the Parquet twin
``ours_parquet``    our audit from the Parquet twin
``polars_core_parquet`` the core checks from the Parquet twin
==================  =====================================================================

Core checks (identical in polars_core, duckdb_sql and pandas; the result counts are printed
so they can be compared): IVIG rows by product name (one regular expression), grams from
the unit (g/gm, mg / 1000, mL x strength from the name, g/kg x weight) x ``doses``; courses
per patient with a new course when the gap after the previous order's last dose day exceeds
7 days (window function); per course the first weight/height/sex/age; Devine IBW, adjusted
weight IBW + 0.4 (actual - IBW) for adults >= 152.4 cm heavier than IBW with BMI >= 30 or
actual > 120% IBW, else actual weight; g/kg = total grams / dosing weight; over-dose when
g/kg > 2.2 (2 g/kg + 10%). Our audit does much more (all rules, quarantine, evidence, JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The project checkout whose `pipeline` is measured (run.py --src DIR, e.g. a snapshot copy).
SRC = Path(os.environ.get("IVIG_BENCH_SRC", ROOT))

IVIG_PATTERN = (
    r"(privigen|gamunex|gammagard|gammaked|octagam|flebogamma|panzyga|gammaplex|bivigam|asceniv|carimune"
    r"|intratect|kiovig|\bivig\b|immune globulin iv|immune globulin intravenous)"
)
PCT5_PATTERN = r"5\s*%"
PCT10_PATTERN = r"(10\s*%|privigen|gamunex|gammagard liquid|panzyga|bivigam|asceniv|kiovig)"
GAP_DAYS = 7
OVER_G_PER_KG = 2.2

CONTENDERS = [
    "parse_csv", "parse_csv_stream", "parse_duckdb", "ours_csv", "ours_csv_db", "ours_night", "polars_core", "duckdb_sql", "pandas",
    "parse_parquet", "ours_parquet", "polars_core_parquet",
]


# ------------------------------------------------------------------------------ contenders (child side)

def parse_csv(path: Path) -> dict:
    import polars as pl

    df = pl.read_csv(path, infer_schema=False)
    return {"rows": df.height, "columns": df.width}


def parse_csv_stream(path: Path) -> dict:
    import polars as pl

    out = pl.scan_csv(path, infer_schema=False).select(pl.all().str.len_bytes().sum()).collect(engine="streaming")
    return {"bytes_in_fields": int(out.sum_horizontal().item())}


def parse_duckdb(path: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("CREATE TABLE t AS SELECT * FROM read_csv(?, all_varchar = true, header = true)", [str(path)])
    rows, columns = con.execute("SELECT count(*) FROM t").fetchall()[0][0], len(con.table("t").columns)
    return {"rows": rows, "columns": columns}


def ours_night(path: Path) -> dict:
    sys.path.insert(0, str(SRC))
    from pipeline.night import NightRequest, run_night

    with tempfile.TemporaryDirectory() as tmp:
        request = NightRequest(db=Path(tmp) / "bench.duckdb", inputs={"orders": [path]}, report_dir=Path(tmp) / "reports")
        summary = run_night(request)
    return {"rows": summary.rows.get("rows_read"), "ivig_rows": summary.rows.get("rows_ivig"), "courses": summary.courses,
            "findings": summary.findings, "stages": summary.timings}


def parse_parquet(path: Path) -> dict:
    import polars as pl

    df = pl.read_parquet(path)
    return {"rows": df.height, "columns": df.width}


def ours(path: Path, write_db: bool = False) -> dict:
    sys.path.insert(0, str(SRC))
    from pipeline.audit import Extracts, run_audit
    from pipeline.config.products import load_products
    from pipeline.ingest.tables import scan_extract
    from pipeline.config.rulepack import load_rule_pack

    products, pack = load_products(), load_rule_pack(None, None)
    t0 = time.perf_counter()
    # As the nightly flow reads: rows are parsed once, in the audit's streaming pass.
    lf, sources = scan_extract([path], "orders", validate_rows=False)
    result = run_audit(Extracts(orders=lf), products, pack, "bench")
    # The run records each file's sha256 (hashed in a background thread during the parse): wait for it.
    assert all(len(s.sha256) == 64 for s in sources)
    out = {
        "rows": result.rows_read, "ivig_rows": result.rows_ivig, "courses": result.courses.height,
        "findings": result.findings.height, "quarantined": result.quarantine.height,
        "over_dose_courses": int(result.findings.filter(result.findings["rule_id"] == "course_dose.above_target").height),
    }
    if write_db:
        from datetime import datetime, timezone

        from pipeline.warehouse import RunRecord, write_run

        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            now = datetime.now(timezone.utc)
            run = RunRecord(
                run_id="bench", started_at=now, finished_at=now, status="succeeded", profile=pack.profile_name,
                rule_pack_version=pack.version, rule_pack_hash=pack.config_hash,
                inputs=[s.record() for s in sources],
                rows_read=result.rows_read, rows_quarantined=result.quarantine.height, rows_ivig=result.rows_ivig,
                rows_passed_through=result.rows_passed_through, rows_out_of_scope=result.rows_out_of_scope,
                courses=result.courses.height, findings=result.findings.height,
            )
            write_run(Path(tmp) / "bench.duckdb", run, result.orders, result.courses, result.findings, result.quarantine)
        out["db_write_s"] = round(time.perf_counter() - t1, 2)
    out["audit_s"] = round(time.perf_counter() - t0 - out.get("db_write_s", 0.0), 2)
    return out


def polars_core(path: Path) -> dict:
    import polars as pl

    cols = ["patient_id", "medication", "dose", "dose_unit", "doses", "start", "weight_kg", "height_cm", "sex", "age_years"]
    if path.suffix == ".parquet":
        lf = pl.scan_parquet(path).select(pl.col(cols).cast(pl.String))
    else:
        lf = pl.scan_csv(path, infer_schema=False).select(cols)
    name = pl.col("medication").str.to_lowercase()
    num = lambda c: pl.col(c).cast(pl.Float64, strict=False)  # noqa: E731
    unit = pl.col("dose_unit").str.strip_chars().str.to_lowercase()
    conc = pl.when(name.str.contains(PCT5_PATTERN)).then(0.05).when(name.str.contains(PCT10_PATTERN)).then(0.10)
    grams = (
        pl.when(unit.is_in(["g", "gm"])).then(num("dose"))
        .when(unit == "mg").then(num("dose") / 1000)
        .when(unit == "ml").then(num("dose") * conc)
        .when(unit == "g/kg").then(num("dose") * num("weight_kg"))
    )
    start = pl.col("start").str.slice(0, 19).str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False)
    ivig = (
        lf.filter(name.str.contains(IVIG_PATTERN))
        .select(
            "patient_id", "sex",
            start.alias("start"),
            (grams * num("doses").fill_null(1)).alias("total_g"),
            (start.dt.date() + pl.duration(days=num("doses").fill_null(1).cast(pl.Int64) - 1)).alias("last_day"),
            num("weight_kg").alias("w"), num("height_cm").alias("h"), num("age_years").alias("age"),
        )
        .filter(pl.col("start").is_not_null())
        .collect(engine="streaming")
    )
    ibw = pl.when(pl.col("sex") == "M").then(50.0).otherwise(45.5) + 2.3 * (pl.col("h") / 2.54 - 60)
    courses = (
        ivig.lazy()
        .sort("patient_id", "start")
        .with_columns(
            new=(pl.col("start").dt.date() - pl.col("last_day").shift(1).over("patient_id")).dt.total_days().fill_null(999) > GAP_DAYS
        )
        .with_columns(course=pl.col("new").cum_sum().over("patient_id"))
        .group_by("patient_id", "course")
        .agg(pl.col("total_g").sum(), pl.col("w", "h", "sex", "age").first())
        .with_columns(ibw=ibw)
        .with_columns(adj=pl.col("ibw") + 0.4 * (pl.col("w") - pl.col("ibw")), bmi=pl.col("w") / (pl.col("h") / 100) ** 2)
        .with_columns(
            dosing=pl.when(
                (pl.col("age") >= 18) & (pl.col("h") >= 152.4) & (pl.col("w") > pl.col("ibw"))
                & ((pl.col("bmi") >= 30) | (pl.col("w") > 1.2 * pl.col("ibw")))
            ).then(pl.col("adj")).otherwise(pl.col("w"))
        )
        .with_columns(g_per_kg=pl.col("total_g") / pl.col("dosing"))
        .with_columns(over=pl.col("g_per_kg") > OVER_G_PER_KG)
        .collect()
    )
    return {"ivig_rows": ivig.height, "courses": courses.height, "over_dose_courses": int(courses["over"].sum())}


def duckdb_sql(path: Path) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    source = f"read_csv('{path}', all_varchar = true, header = true)"
    sql = f"""
    WITH ivig AS (
        SELECT patient_id, lower(medication) AS name, lower(trim(dose_unit)) AS unit,
               TRY_CAST(dose AS DOUBLE) AS dose, COALESCE(TRY_CAST(doses AS DOUBLE), 1) AS doses,
               TRY_STRPTIME(substr(start, 1, 19), '%Y-%m-%d %H:%M:%S') AS start,
               TRY_CAST(weight_kg AS DOUBLE) AS w, TRY_CAST(height_cm AS DOUBLE) AS h, sex,
               TRY_CAST(age_years AS DOUBLE) AS age
        FROM {source}
        WHERE regexp_matches(lower(medication), '{IVIG_PATTERN}')
    ), grams AS (
        SELECT *, doses * CASE
                WHEN unit IN ('g', 'gm') THEN dose
                WHEN unit = 'mg' THEN dose / 1000
                WHEN unit = 'ml' THEN dose * CASE WHEN regexp_matches(name, '{PCT5_PATTERN}') THEN 0.05
                                                  WHEN regexp_matches(name, '{PCT10_PATTERN}') THEN 0.10 END
                WHEN unit = 'g/kg' THEN dose * w END AS total_g,
               CAST(start AS DATE) + CAST(doses - 1 AS INTEGER) AS last_day
        FROM ivig WHERE start IS NOT NULL
    ), flagged AS (
        SELECT *, CASE WHEN CAST(start AS DATE) - LAG(last_day) OVER (PARTITION BY patient_id ORDER BY start) <= {GAP_DAYS}
                       THEN 0 ELSE 1 END AS new_course
        FROM grams
    ), numbered AS (
        SELECT *, SUM(new_course) OVER (PARTITION BY patient_id ORDER BY start ROWS UNBOUNDED PRECEDING) AS course
        FROM flagged
    ), courses AS (
        SELECT patient_id, course, SUM(total_g) AS total_g,
               arg_min(w, start) AS w, arg_min(h, start) AS h, arg_min(sex, start) AS sex, arg_min(age, start) AS age
        FROM numbered GROUP BY ALL
    ), weights AS (
        SELECT *, (CASE WHEN sex = 'M' THEN 50.0 ELSE 45.5 END) + 2.3 * (h / 2.54 - 60) AS ibw, w / pow(h / 100, 2) AS bmi
        FROM courses
    ), dosed AS (
        SELECT *, total_g / CASE WHEN age >= 18 AND h >= 152.4 AND w > ibw AND (bmi >= 30 OR w > 1.2 * ibw)
                                 THEN ibw + 0.4 * (w - ibw) ELSE w END AS g_per_kg
        FROM weights
    )
    SELECT count(*) AS courses, count(*) FILTER (WHERE g_per_kg > {OVER_G_PER_KG}) AS over_dose_courses,
           (SELECT count(*) FROM ivig) AS ivig_rows
    FROM dosed
    """
    courses, over, ivig_rows = con.sql(sql).fetchall()[0]
    return {"ivig_rows": ivig_rows, "courses": courses, "over_dose_courses": over}


def pandas_audit(path: Path) -> dict:
    import numpy as np
    import pandas as pd

    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    name = df["medication"].str.lower()
    ivig = df[name.str.contains(IVIG_PATTERN, regex=True, na=False)].copy()
    name = ivig["medication"].str.lower()
    num = lambda c: pd.to_numeric(ivig[c], errors="coerce")  # noqa: E731
    unit = ivig["dose_unit"].str.strip().str.lower()
    dose, w = num("dose"), num("weight_kg")
    conc = np.where(name.str.contains(PCT5_PATTERN, regex=True), 0.05,
                    np.where(name.str.contains(PCT10_PATTERN, regex=True), 0.10, np.nan))
    grams = np.select(
        [unit.isin(["g", "gm"]), unit == "mg", unit == "ml", unit == "g/kg"],
        [dose, dose / 1000, dose * conc, dose * w], default=np.nan,
    )
    doses = num("doses").fillna(1)
    ivig = ivig.assign(
        start=pd.to_datetime(ivig["start"].str.slice(0, 19), format="%Y-%m-%d %H:%M:%S", errors="coerce"),
        total_g=grams * doses, w=w, h=num("height_cm"), age=num("age_years"), doses=doses,
    ).dropna(subset=["start"])
    ivig["last_day"] = ivig["start"].dt.normalize() + pd.to_timedelta(ivig["doses"] - 1, unit="D")
    ivig = ivig.sort_values(["patient_id", "start"], kind="stable")
    prev_last = ivig.groupby("patient_id")["last_day"].shift(1)
    gap = (ivig["start"].dt.normalize() - prev_last).dt.days
    ivig["course"] = (gap.isna() | (gap > GAP_DAYS)).astype(int).groupby(ivig["patient_id"]).cumsum()
    c = ivig.groupby(["patient_id", "course"], sort=False).agg(
        total_g=("total_g", "sum"), w=("w", "first"), h=("h", "first"), sex=("sex", "first"), age=("age", "first"),
    )
    ibw = np.where(c["sex"] == "M", 50.0, 45.5) + 2.3 * (c["h"] / 2.54 - 60)
    bmi = c["w"] / (c["h"] / 100) ** 2
    adjusted = (c["age"] >= 18) & (c["h"] >= 152.4) & (c["w"] > ibw) & ((bmi >= 30) | (c["w"] > 1.2 * ibw))
    dosing = np.where(adjusted, ibw + 0.4 * (c["w"] - ibw), c["w"])
    g_per_kg = c["total_g"] / dosing
    return {"ivig_rows": int(len(ivig)), "courses": int(len(c)), "over_dose_courses": int((g_per_kg > OVER_G_PER_KG).sum())}


def run_child(name: str, path: Path) -> None:
    """Run one contender in this (fresh) process and print its result as one JSON line."""
    funcs = {
        "parse_csv": parse_csv, "parse_csv_stream": parse_csv_stream, "parse_parquet": parse_parquet,
        "parse_duckdb": parse_duckdb, "ours_night": ours_night,
        "ours_csv": ours, "ours_parquet": ours, "ours_csv_db": lambda p: ours(p, write_db=True),
        "polars_core": polars_core, "polars_core_parquet": polars_core,
        "duckdb_sql": duckdb_sql, "pandas": pandas_audit,
    }
    # Import the engine before the clock starts (imports are in "process s", not "work s").
    if name == "pandas":
        import pandas  # noqa: F401
    elif name in ("duckdb_sql", "parse_duckdb"):
        import duckdb  # noqa: F401
    else:
        import polars  # noqa: F401
        if name.startswith("ours"):
            sys.path.insert(0, str(SRC))
            import pipeline.audit  # noqa: F401
            import pipeline.warehouse  # noqa: F401
    t0 = time.perf_counter()
    detail = funcs[name](path)
    print(json.dumps({"work_s": time.perf_counter() - t0, "detail": detail}))


# ------------------------------------------------------------------------------ parent side

def _rss_mb(pid: int) -> float:
    """Current RSS of a process (Linux /proc), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def measure_command(command: list[str], timeout: float, max_rss_mb: float, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> dict:
    """Run one command in a fresh process: its wall time, peak RSS (`os.wait4`) and the last JSON line it printed.

    The process is killed when it runs longer than `timeout` or its RSS passes `max_rss_mb` (a guard
    for a shared machine); the result then holds an `error` saying so, with the time and memory reached.
    """
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            over_time, rss = time.perf_counter() > deadline, _rss_mb(proc.pid)
            if over_time or rss > max_rss_mb:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                why = f"timed out after {timeout:.0f} s" if over_time else f"killed at RSS {rss:.0f} MB > {max_rss_mb:.0f} MB"
                return {"error": f"{why} (ran {time.perf_counter() - t0:.0f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB)"}
            time.sleep(0.05)
        process_s = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        if code != 0:
            tail = err.read().strip().splitlines()[-1:] or ["no output"]
            return {"error": f"exit {code}: {tail[0][:200]}"}
    return {
        "process_s": process_s, "peak_rss_mb": usage.ru_maxrss / 1024, "json": json.loads(lines[-1]) if lines else None,
        "load": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
    }


def measure(name: str, path: Path, timeout: float, max_rss_mb: float, src: Path) -> dict:
    """Run one contender in a fresh subprocess; its work time, process time and peak RSS (`measure_command`)."""
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", IVIG_BENCH_SRC=str(src))
    run = measure_command([sys.executable, __file__, "--child", name, str(path)], timeout, max_rss_mb, env)
    if "error" not in run and run["json"] is None:
        run = {"error": "no output"}
    if "error" in run:
        return {"name": name, "input": path.name, "error": run["error"]}
    result = run["json"]
    return {
        "name": name, "input": path.name, "work_s": result["work_s"], "process_s": run["process_s"],
        "peak_rss_mb": run["peak_rss_mb"], "detail": result["detail"], "load": run["load"],
    }


def _best(results: dict, name: str) -> dict | None:
    r = results.get(name)
    return r if r and "error" not in r else None


def floor_of(results: dict) -> dict | None:
    """The floor the audit is compared with: the faster of the bare Polars and DuckDB parses measured."""
    parses = [r for r in (_best(results, "parse_csv"), _best(results, "parse_duckdb")) if r]
    return min(parses, key=lambda r: r["work_s"]) if parses else None


def markdown(results: dict, csv_path: Path, parquet_path: Path | None, repeat: int) -> str:
    """The results table and the ratios against the issue's targets, as Markdown."""
    parse = floor_of(results)
    lines = [
        f"Extract: `{csv_path}` ({csv_path.stat().st_size / 1e6:.0f} MB CSV"
        + (f", Parquet twin {parquet_path.stat().st_size / 1e6:.0f} MB" if parquet_path else "")
        + f"); machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"best of {repeat} run(s) per contender.",
        "",
        f"| contender | input | work s | process s | peak RSS MB | work / {parse['name'] if parse else 'parse'} | load before/after | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in CONTENDERS:
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | {r['input']} | - | - | - | - | - | {r['error']} |")
            continue
        ratio = f"{r['work_s'] / parse['work_s']:.2f}x" if parse else "-"
        detail = ", ".join(f"{k} {v}" for k, v in r["detail"].items())
        lines.append(
            f"| {name} | {r['input']} | {r['work_s']:.2f} | {r['process_s']:.2f} | {r['peak_rss_mb']:.0f} | {ratio} | {r['load']} | {detail} |"
        )
    ours_csv, ours_pq = _best(results, "ours_csv"), _best(results, "ours_parquet")
    floor = parse["name"] if parse else "the parse"
    lines += ["", f"Targets (issues 7, 18): ratio = ours work s / {floor} work s (the faster bare parse); marginal cost = (ours - parse) / parse.", ""]
    if ours_csv and parse:
        ratio = ours_csv["work_s"] / parse["work_s"]
        marginal = ratio - 1
        lines.append(
            f"- marginal cost of our audit over the bare parse = {marginal:.2f}x of the parse; "
            f"issue target <= 1.3x: {'met' if marginal <= 1.3 else 'MISSED'}"
        )
        lines.append(
            f"- ours / bare parse = {ratio:.2f}x; stricter reading (the whole run <= 1.3x the parse): "
            + ("met" if ratio <= 1.3 else f"MISSED by {100 * (ratio / 1.3 - 1):.0f}%")
        )
    if ours_csv:
        mb = ours_csv["peak_rss_mb"]
        lines.append(f"- peak RSS of our audit (CSV) = {mb:.0f} MB; target <= 1024 MB: {'met' if mb <= 1024 else f'MISSED by {mb / 1024:.1f}x'}")
    if ours_csv and ours_pq:
        faster = ours_pq["work_s"] < ours_csv["work_s"]
        lines.append(
            f"- ours from Parquet {ours_pq['work_s']:.2f} s vs CSV {ours_csv['work_s']:.2f} s "
            f"({ours_csv['work_s'] / ours_pq['work_s']:.2f}x); target Parquet faster: {'met' if faster else 'MISSED'}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        run_child(argv[1], Path(argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--parquet", type=Path, default=None, help="Parquet twin (default: CSV path with .parquet)")
    parser.add_argument("--only", default="", help="comma-separated contenders to run")
    parser.add_argument("--skip", default="", help="comma-separated contenders to skip")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the fastest is kept")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per contender run")
    parser.add_argument("--max-rss-mb", type=float, default=8000, help="kill a contender whose RSS passes this")
    parser.add_argument("--src", type=Path, default=ROOT, help="project checkout whose pipeline/ is measured")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown (and a .json) here")
    args = parser.parse_args(argv)
    parquet = args.parquet or args.csv.with_suffix(".parquet")
    parquet = parquet if parquet.exists() else None
    names = [n for n in (args.only.split(",") if args.only else CONTENDERS) if n and n not in args.skip.split(",")]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s): {', '.join(unknown)}")
    results: dict[str, dict] = {}
    for name in names:
        path = parquet if "parquet" in name else args.csv
        if path is None:
            print(f"{name}: skipped (no Parquet twin)", file=sys.stderr)
            continue
        runs = [measure(name, path, args.timeout, args.max_rss_mb, args.src.resolve()) for _ in range(args.repeat)]
        results[name] = best(runs, "work_s")
        r = results[name]
        print(f"{name:20s} " + (r["error"] if "error" in r else
              f"work {r['work_s']:7.2f} s  process {r['process_s']:7.2f} s  peak {r['peak_rss_mb']:6.0f} MB  {r['detail']}"),
              file=sys.stderr, flush=True)
    text = markdown(results, args.csv, parquet, args.repeat)
    if args.src.resolve() != ROOT:
        text += f"\nOur audit measured from `{args.src}`.\n"
    report(text, results, args.out)


def best(runs: list[dict], key: str) -> dict:
    """The fastest successful run (or the first failure)."""
    ok = [r for r in runs if "error" not in r]
    return min(ok, key=lambda r: r[key]) if ok else runs[0]


def report(text: str, results: dict, out: Path | None) -> None:
    """Print the Markdown table; with `out`, write it there and the raw results beside it (.json)."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
