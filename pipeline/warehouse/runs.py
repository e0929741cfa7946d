"""The runs table: what each run did, and what the next night must know of the last ones."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

import duckdb

from checks.outputs import REPORT_STATUSES, RUN_STATUSES

from pipeline.warehouse.base import StoreError, _owner_only_files, _q, _utc_naive
from pipeline.warehouse.connection import (
    _open_existing,
    _transaction,
    connect_read_only,
)



@dataclass(frozen=True)
class RunRecord:
    """Metadata of one audit run, stored as one row of table `runs` (lists and dicts as JSON)."""

    run_id: str
    started_at: datetime
    finished_at: datetime
    status: str
    profile: str
    rule_pack_version: str
    rule_pack_hash: str
    inputs: list[dict]
    rows_read: int
    rows_quarantined: int
    rows_ivig: int
    rows_passed_through: int
    rows_out_of_scope: int
    courses: int
    findings: int
    timings: dict[str, float] = field(default_factory=dict)
    skipped_inputs: list[dict] = field(default_factory=list)
    cost_per_gram: float | None = None
    rows_unrecognised_ig: int = 0
    rows_quarantined_orders: int = 0
    seq: int | None = None
    audit_scope: str = "incremental"
    patients_audited: int = 0
    reaudit_reason: str | None = None
    products_hash: str | None = None
    report_status: str | None = None
    error: str | None = None
    data_through: dict[str, str | None] = field(default_factory=dict)


_JSON_FIELDS = ("inputs", "timings", "skipped_inputs", "data_through")


def _write_runs(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Insert the run row (every RunRecord field, lists and dicts as JSON); a run_id already stored is an error."""
    if con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchall()[0][0]:
        raise ValueError(f"run {run.run_id} is already stored; every run needs a new run_id")
    if run.status not in RUN_STATUSES:
        raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not '{run.status}'")
    names = [f.name for f in fields(RunRecord)]
    values = []
    for name in names:
        value = getattr(run, name)
        if name in _JSON_FIELDS:
            value = json.dumps(value)
        elif isinstance(value, datetime):
            value = _utc_naive(value)
        values.append(value)
    con.execute(
        f"INSERT INTO runs ({', '.join(_q(n) for n in names)}) VALUES ({', '.join('?' for _ in names)})", values
    )


@_owner_only_files
def write_run_record(db_path: Path, run: RunRecord) -> None:
    """Record a run that changed no audit table (nothing new) in its own transaction."""
    with _transaction(db_path) as con:
        run = _sequenced(con, run)
        _write_runs(con, dataclasses.replace(run, data_through=_data_through(con)))


def _sequenced(con: duckdb.DuckDBPyConnection, run: RunRecord) -> RunRecord:
    """The run with its sequence number: the next one. A run planned with another number lost a race
    (another run committed after it read the history) and must not overwrite that run's work."""
    if con.execute("SELECT COUNT(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchall()[0][0]:
        raise ValueError(f"run {run.run_id} is already stored; every run needs a new run_id")
    following = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchall()[0][0]
    if run.seq is None:
        return dataclasses.replace(run, seq=following)
    if run.seq != following:
        raise StoreError(
            f"another run committed to the database while run {run.run_id} was auditing; "
            "nothing was written: run it again"
        )
    return run


@_owner_only_files
def set_report_status(db_path: Path, run_id: str, status: str) -> None:
    """Record what happened to a run's report (after the run's own commit)."""
    if status not in REPORT_STATUSES:
        raise ValueError(f"report status must be one of {', '.join(REPORT_STATUSES)}, not '{status}'")
    with _transaction(db_path) as con:
        con.execute("UPDATE runs SET report_status = ? WHERE run_id = ?", [status, run_id])


@dataclass(frozen=True)
class NightState:
    """What the database says before a night reads its inputs."""

    last_seq: int
    rule_pack_hash: str | None  # of the latest run that audited (None: no run has)
    products_hash: str | None
    has_history: bool
    extracts_given: frozenset[str] = frozenset()  # extracts any run has read (a labs extract once given is always judged)
    labs_through: datetime | None = None  # the newest lab result the history holds


def latest_audit_seq(db_path: Path) -> int | None:
    """The sequence number of the latest run that audited (None: no run has)."""
    con = _open_existing(db_path)
    if con is None:
        return None
    try:
        return con.execute("SELECT MAX(seq) FROM runs WHERE status = 'succeeded'").fetchall()[0][0]
    finally:
        con.close()


def read_night_state(db_path: Path) -> NightState:
    """The last run's sequence number and configuration, before a night starts."""
    con = _open_existing(db_path)
    if con is None:
        return NightState(0, None, None, False)
    try:
        last_seq = con.execute("SELECT COALESCE(MAX(seq), 0) FROM runs").fetchall()[0][0]
        latest = con.execute(
            "SELECT rule_pack_hash, products_hash FROM runs WHERE status = 'succeeded' ORDER BY seq DESC LIMIT 1"
        ).fetchall()
        has_history = con.execute("SELECT COUNT(*) > 0 FROM ledger").fetchall()[0][0]
        given = con.execute(
            "SELECT DISTINCT json_extract_string(i.value, '$.extract') FROM runs, json_each(runs.inputs) AS i"
        ).fetchall()
        labs_through = con.execute("SELECT MAX(event_at) FROM ledger WHERE extract = 'labs'").fetchall()[0][0]
    finally:
        con.close()
    pack_hash, products_hash = latest[0] if latest else (None, None)
    extracts = frozenset(row[0] for row in given if row[0])
    return NightState(int(last_seq), pack_hash, products_hash, bool(has_history), extracts, labs_through)


def processed_hashes(db_path: Path) -> set[str]:
    """Content hashes of every input file a stored run has audited."""
    return audited_inputs(db_path)[0]


def audited_inputs(db_path: Path) -> tuple[set[str], set[int] | None]:
    """Content hashes and byte sizes of every input file stored runs audited.

    The sizes are None when a stored input lacks its size (runs written before sizes were
    recorded): then no file can be called new by its size alone.
    """
    con = _open_existing(Path(db_path))
    if con is None:
        return set(), set()
    try:
        rows = con.execute(
            "SELECT DISTINCT json_extract_string(i.value, '$.sha256'), TRY_CAST(json_extract(i.value, '$.bytes') AS BIGINT) "
            "FROM runs, json_each(runs.inputs) AS i"
        ).fetchall()
    finally:
        con.close()
    hashes = {digest for digest, _ in rows if digest}
    sizes = {size for _, size in rows}
    return hashes, (None if None in sizes else sizes)


def read_run(db_path: Path, run_id: str) -> dict | None:
    """One stored run's metadata (inputs decoded from JSON), or None when there is no such run."""
    con = connect_read_only(Path(db_path))
    try:
        rows = con.execute(
            "SELECT run_id, started_at, profile, rule_pack_version, rule_pack_hash, inputs FROM runs WHERE run_id = ?",
            [run_id],
        ).fetchall()
    finally:
        con.close()
    if not rows:
        return None
    run_id_, started_at, profile, version, pack_hash, inputs = rows[0]
    return {
        "run_id": run_id_,
        "started_at": started_at,
        "profile": profile,
        "rule_pack_version": version,
        "rule_pack_hash": pack_hash,
        "inputs": json.loads(inputs or "[]"),
    }


def _data_through(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    """The newest clinical time of each extract the history holds (what the data runs to)."""
    rows = dict(con.execute("SELECT extract, CAST(MAX(event_at) AS VARCHAR) FROM ledger GROUP BY extract").fetchall())
    return {extract: rows.get(extract) for extract in ("orders", "labs", "procedures")}
