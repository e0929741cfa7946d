"""Shared pieces of the reliability tests (issue 8): extracts, a night without Prefect, table dumps, fault children.

`nightly()` runs one night as the flow does, without Prefect (`pipeline.night.run_night` in this
process); the warehouse, scenario and analyst-docs tests use it too. Every stage is looked up
through its module at call time, so a test can monkeypatch a stage (`pipeline.audit.prepare`,
`pipeline.warehouse.night_write._write_findings`, ...) to inject a fault.

Run as a script (`python -m tests.reliability_helpers MODE ...`) it is the *child* of the fault tests:
a separate process that runs a night and SIGKILLs itself at an injected point inside `write_run`, or
holds the database lock (mid-run or mid-review) until told to go on.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the child runs with cwd = REPO, but be explicit
    sys.path.insert(0, str(REPO))

from checks.inputs import ORDER_COLUMNS  # noqa: E402

# ----------------------------------------------------------------------------------- extracts

#: Identifiers and free text that must never reach a log (distinctive, so a match is never a coincidence).
PATIENTS = ("PTZQ-4471", "PTZQ-5582", "PTZQ-6693", "PTZQ-7704")
FREE_TEXT = (
    "guillain barre after Zorblaxian campylobacter",
    "relapsing ms Quaffleworth clinic",
    "sarcoid neuropathy Vexingdale",
    "refractory per Dr Plumtrees neurology",
)

_BASE = {"medication": "Privigen 10%", "dose_unit": "g", "route": "IV", "sex": "M", "age_years": "50",
         "weight_kg": "70", "height_cm": "180", "service": "Neurology", "prescriber_id": "DRZQ-01",
         "facility": "North General"}


def _dose(order_id: str, patient: str, day: str, grams: str = "28", **kw: str) -> dict[str, str]:
    return _BASE | {"order_id": order_id, "patient_id": patient, "dose": grams, "start": f"{day} 09:00:00"} | kw


def night_rows(night: int) -> list[dict[str, str]]:
    """A small night with findings in several categories, a quarantined row and a non-IVIG row.

    Night 1 starts courses; night 2 continues one (a course spanning two nights), adds a repeat course
    and a corrected order (same order_id, new dose), so the second write updates, resolves and inserts.
    """
    p1, p2, p3, p4 = PATIENTS
    gbs, ms, odd, why = FREE_TEXT
    if night == 1:
        return [
            _dose("OZQ-101", p1, "2026-11-01", indication=gbs),
            _dose("OZQ-102", p1, "2026-11-02", indication=gbs),
            _dose("OZQ-201", p2, "2026-11-01", "60", indication=ms, weight_kg="110", height_cm="165"),
            _dose("OZQ-301", p3, "2026-11-03", "40", indication=odd),
            _dose("OZQ-302", p3, "2026-11-04", "-5", indication=odd),  # quarantined: dose <= 0
            _dose("OZQ-401", p4, "2026-11-05", "81", medication="Aspirin 81 mg", dose_unit="mg", indication="KD"),
            _dose("OZQ-402", p4, "2026-11-05", "2", dose_unit="g/kg", weight_kg="20", height_cm="110",
                  age_years="4", indication="Kawasaki disease"),
        ]
    if night == 2:
        return [
            _dose("OZQ-103", p1, "2026-11-03", indication=gbs),
            _dose("OZQ-104", p1, "2026-11-04", "56", indication=gbs),
            _dose("OZQ-201", p2, "2026-11-01", "30", indication=ms, weight_kg="110", height_cm="165"),  # corrected
            _dose("OZQ-111", p1, "2026-12-20", indication=gbs, justification=why),  # repeat course
            _dose("OZQ-303", p3, "2026-11-05", "40", indication=odd),
            _dose("", p3, "2026-11-06", "40", indication=odd),  # quarantined: order_id missing
        ]
    raise ValueError(night)


def night3_rows() -> list[dict[str, str]]:
    """A third night: patient 1's repeat course goes on, and a new patient starts a course."""
    p1 = PATIENTS[0]
    gbs, _, _, why = FREE_TEXT
    return [
        _dose("OZQ-112", p1, "2026-12-21", indication=gbs, justification=why),
        _dose("OZQ-501", "PTZQ-8815", "2026-12-01", "35", indication=gbs),
    ]


def write_extract(path: Path, rows: list[dict[str, str]]) -> Path:
    """A canonical orders CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ORDER_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in ORDER_COLUMNS})
    return path


# ------------------------------------------------------------------------------------ a night

FIXED_REVIEW_TIME = datetime(2026, 11, 2, 12, 0, 0)


class _Interrupted(Exception):
    """A night stopped before one of its steps; `args` are that step's arguments."""


class StopBefore:
    """A Steps runner (pipeline.night) that runs every step in this process until the named one."""

    def __init__(self, step: str):
        from pipeline.night import DirectSteps

        self.step, self._direct = step, DirectSteps()

    def __call__(self, name, fn, *args):
        if name == self.step:
            raise _Interrupted(*args)
        return self._direct(name, fn, *args)

    def map(self, name, fn, calls):
        return [self(name, fn, *args) for args in calls]


def night_request(db: Path, extract: Path | list[Path], report_dir: Path | None = None, **inputs: list[Path]):
    """A night over one orders extract (or several), audited whatever was audited before (as a rerun does)."""
    from pipeline.night import NightRequest

    orders = [Path(p) for p in (extract if isinstance(extract, list) else [extract])]
    return NightRequest(db=Path(db), inputs={"orders": orders, **inputs}, report_dir=report_dir, force=True)


def compute_night(db: Path, extract: Path, run_id: str):
    """Everything a night does before its database write: (RunRecord, AuditResult, RulePack).

    The night itself (pipeline.night.run_night) stopped just before its "write database" step.
    """
    from pipeline.night import run_night

    try:
        run_night(night_request(db, extract), StopBefore("write database"), run_id=run_id)
    except _Interrupted as stopped:
        _, run, result, pack = stopped.args
        return run, result, pack
    raise AssertionError("the night reached no database write")


def write_night(db: Path, computed) -> None:
    """The database write of a computed night (one transaction)."""
    from pipeline.night import commit

    run, result, pack = computed
    commit(Path(db), run, result, pack)


def nightly(db: Path, extract: Path, run_id: str, report_dir: Path | None = None):
    """One night without Prefect (pipeline.night.run_night in this process), optionally followed by the report."""
    from pipeline.night import run_night

    return run_night(night_request(db, extract, report_dir), run_id=run_id)


# ------------------------------------------------------------------------------------- dumps

#: Wall-clock columns (and stage timings): differ between two otherwise identical runs (replaced before comparing).
#: Run ids need no normalising: the tests give the crashed and the control database the same ids.
VOLATILE = {"started_at", "finished_at", "applied_at", "created_at", "timings"}


def dump(db: Path) -> dict[str, Any] | None:
    """Every table of the database (rows sorted), its views and comments; None when there is no file."""
    db = Path(db)
    if not db.exists():
        return None
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1").fetchall()]
        out: dict[str, Any] = {}
        for name in tables:
            columns = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ? "
                "ORDER BY column_index", [name]).fetchall()]
            # Table names come from the catalog of this test database, quoted.
            rows = con.execute(f'SELECT * FROM "{name}" ORDER BY ALL').fetchall()
            out[name] = {"columns": columns, "rows": rows}
        out["__views__"] = con.execute(
            "SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal ORDER BY 1"
        ).fetchall()
    return out


def normalised(snapshot: dict[str, Any] | None) -> dict[str, Any] | None:
    """A dump with the VOLATILE columns blanked (rows re-sorted)."""
    if snapshot is None:
        return None
    out: dict[str, Any] = {}
    for name, table in snapshot.items():
        if name == "__views__":
            out[name] = table
            continue
        idx = [i for i, c in enumerate(table["columns"]) if c in VOLATILE]
        rows = [tuple("<time>" if i in idx else v for i, v in enumerate(row)) for row in table["rows"]]
        out[name] = {"columns": table["columns"], "rows": sorted(rows, key=repr)}
    return out


def row_counts(snapshot: dict[str, Any] | None) -> dict[str, int]:
    return {} if snapshot is None else {k: len(v["rows"]) for k, v in snapshot.items() if k != "__views__"}


# --------------------------------------------------------------------------- child processes

#: Points inside write_run where the child kills itself (after the named step has executed).
KILL_POINTS = ("migrate", "ledger", "orders", "courses", "findings", "quarantine", "runs",
               "before_commit", "after_commit")
#: The function of each step, as the module that calls it looks it up (the schema migration runs in
#: pipeline.warehouse.connection's transaction; the writes in pipeline.warehouse.night_write).
_STEP_FUNCTIONS = {"migrate": ("connection", "_migrate"), "runs": ("night_write", "_write_runs"),
                   "orders": ("night_write", "_write_orders"), "courses": ("night_write", "_write_courses"),
                   "findings": ("night_write", "_write_findings"), "quarantine": ("night_write", "_write_quarantine"),
                   "ledger": ("night_write", "_write_ledger")}


class _Connection:
    """A DuckDB connection that runs a hook before and after each statement (execute is read-only on the C type)."""

    def __init__(self, con, before=None, after=None):
        self._con, self._before, self._after = con, before, after

    def execute(self, query, *args, **kwargs):
        if self._before:
            self._before(query)
        result = self._con.execute(query, *args, **kwargs)
        if self._after:
            self._after(query)
        return result

    def __getattr__(self, name):
        return getattr(self._con, name)


class _DuckDB:
    """Stands in for the duckdb module inside pipeline.warehouse.base: connect() returns a hooked connection."""

    def __init__(self, before=None, after=None):
        self._before, self._after = before, after

    def connect(self, *args, **kwargs):
        return _Connection(duckdb.connect(*args, **kwargs), self._before, self._after)

    def __getattr__(self, name):
        return getattr(duckdb, name)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for(flag: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def child_main(argv: list[str]) -> None:
    """Modes:
    night DB EXTRACT RUN_ID          run a night
    kill POINT DB EXTRACT RUN_ID     run a night and SIGKILL at POINT inside write_run
    hold-run DB EXTRACT RUN_ID FLAG  run a night; inside the write transaction print 'holding' and wait for FLAG
    hold-review DB FINDING FLAG      record a review; inside its transaction print 'holding' and wait for FLAG
    """
    from pipeline import warehouse
    from pipeline.warehouse import base, connection, night_write

    mode = argv[0]
    if mode == "night":
        db, extract, run_id = argv[1:4]
        nightly(Path(db), Path(extract), run_id)
        print("done", flush=True)
        return
    if mode == "kill":
        point, db, extract, run_id = argv[1:5]
        if point in _STEP_FUNCTIONS:
            module_name, name = _STEP_FUNCTIONS[point]
            module = {"connection": connection, "night_write": night_write}[module_name]
            original = getattr(module, name)

            def killed_after(*args, **kwargs):
                original(*args, **kwargs)
                _die()

            setattr(module, name, killed_after)
        elif point == "before_commit":
            base.duckdb = _DuckDB(before=lambda q: _die() if q == "COMMIT" else None)
        elif point == "after_commit":
            base.duckdb = _DuckDB(after=lambda q: _die() if q == "COMMIT" else None)
        else:
            raise SystemExit(f"unknown kill point {point}")
        nightly(Path(db), Path(extract), run_id)
        print("survived", flush=True)  # the kill point was never reached: the test fails on this
        return
    if mode == "hold-run":
        db, extract, run_id, flag = argv[1:5]
        original = night_write._write_findings

        def holding(*args, **kwargs):
            original(*args, **kwargs)
            print("holding", flush=True)
            _wait_for(Path(flag))

        night_write._write_findings = holding
        nightly(Path(db), Path(extract), run_id)
        print("done", flush=True)
        return
    if mode == "hold-review":
        db, finding_id, flag = argv[1:4]

        def pause(query):
            if query == "COMMIT":
                print("holding", flush=True)
                _wait_for(Path(flag))

        base.duckdb = _DuckDB(before=pause)
        warehouse.record_review(Path(db), finding_id, "actioned", "B. Pharmacist", reason_code="dose_changed",
                            reviewed_at=FIXED_REVIEW_TIME)
        print("done", flush=True)
        return
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    child_main(sys.argv[1:])
