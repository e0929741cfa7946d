"""Faults: the run killed inside its database write, an exception in every stage, two writers at once,
a full disk and an unwritable report folder. The database is never harmed and the next run catches up.

Every fault test starts from the same base database (night 1 audited, one review decision) and
compares full table dumps (every table, rows sorted, plus the views):
- after the fault: the dump equals the base dump exactly (nothing written, nothing lost);
- after the next, undisturbed run: the dump equals a control database that never saw a fault, with the
  same inputs and run ids (only wall-clock columns are blanked: tests/reliability_helpers.VOLATILE).

The SIGKILL tests run a child process (`python -m tests.reliability_helpers kill POINT ...`): a night
without Prefect that kills itself with SIGKILL right after a step of write_run has executed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import time
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline import audit, warehouse
from pipeline.ingest import tables as read
from pipeline.warehouse import connection, night_write
from pipeline.warehouse import StoreError, read_tables, record_review
from tests.reliability_helpers import (
    FIXED_REVIEW_TIME,
    KILL_POINTS,
    REPO,
    compute_night,
    dump,
    night3_rows,
    night_request,
    night_rows,
    nightly,
    normalised,
    row_counts,
    write_extract,
    write_night,
)

CHILD = [sys.executable, "-m", "tests.reliability_helpers"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Extracts of two nights, the base database (night 1 + a review) and the control (base + night 2)."""
    root = tmp_path_factory.mktemp("faults")
    n1 = write_extract(root / "in" / "night1.csv", night_rows(1))
    n2 = write_extract(root / "in" / "night2.csv", night_rows(2))
    night1 = root / "night1.duckdb"
    nightly(night1, n1, "night1")
    base = root / "base.duckdb"
    shutil.copy(night1, base)
    reviewed = read_tables(base, ["findings"])["findings"]["finding_id"][0]
    record_review(base, reviewed, "acknowledged", "A. Pharmacist", note="called the ward", reviewed_at=FIXED_REVIEW_TIME)
    control = root / "control.duckdb"
    shutil.copy(base, control)
    nightly(control, n2, "night2")
    world = {
        "root": root, "n1": n1, "n2": n2, "base": base, "reviewed": reviewed,
        "night1_dump": normalised(dump(night1)), "base_dump": dump(base), "control_dump": normalised(dump(control)),
    }
    # The control really changed things: the second night updates, resolves and inserts.
    before, after = row_counts(world["base_dump"]), row_counts(dump(control))
    assert after["runs"] == 2 and after["orders"] > before["orders"] and after["findings"] > before["findings"]
    return world


def fresh_copy(world, tmp_path: Path, name: str = "audit.duckdb") -> Path:
    db = tmp_path / name
    shutil.copy(world["base"], db)
    return db


def assert_private(folder: Path, prefix: str) -> None:
    """Every file DuckDB left for this database (the file, a .wal) is readable by its owner only."""
    for path in folder.iterdir():
        if path.name.startswith(prefix) and path.is_file():
            assert (path.stat().st_mode & 0o777) == 0o600, f"{path.name} is {oct(path.stat().st_mode & 0o777)}"


# ---------------------------------------------------------------------------------- SIGKILL


@pytest.fixture(scope="module")
def killed(world):
    """Every kill point run at once (children in parallel), plus a kill during the very first night."""
    root = world["root"] / "killed"
    root.mkdir()
    jobs = {}
    for point in KILL_POINTS:
        folder = root / point
        folder.mkdir()
        db = folder / "audit.duckdb"
        shutil.copy(world["base"], db)
        jobs[point] = (db, ["kill", point, str(db), str(world["n2"]), "night2"])
    first = root / "first_night"
    first.mkdir()
    jobs["first_night"] = (first / "audit.duckdb", ["kill", "findings", str(first / "audit.duckdb"), str(world["n1"]), "night1"])
    procs = {
        key: subprocess.Popen(CHILD + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, (_, args) in jobs.items()
    }
    outcome = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        outcome[key] = {"db": jobs[key][0], "returncode": proc.returncode, "stdout": out, "stderr": err}
    return outcome


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_inside_write_run_leaves_the_database_as_before_and_the_next_run_catches_up(world, killed, point):
    child = killed[point]
    assert child["returncode"] == -signal.SIGKILL, child["stderr"][-2000:]
    assert "survived" not in child["stdout"]
    db = child["db"]
    assert_private(db.parent, db.name)  # including a .wal left behind by the kill
    after_kill = dump(db)
    if point == "after_commit":
        # Killed after COMMIT returned: the run is durable, complete, identical to the undisturbed one.
        assert normalised(after_kill) == world["control_dump"]
    else:
        assert after_kill == world["base_dump"]
    if point == "after_commit":  # night 2 is stored: the next run is a rerun (a new run id), not the control
        nightly(db, world["n2"], "night3")
        control = row_counts(world["control_dump"])
        # The rerun read night 2's file again: its quarantined row is quarantined again, by the new run.
        assert row_counts(dump(db)) == control | {"runs": 3, "quarantine": control["quarantine"] + 1}
        return
    nightly(db, world["n2"], "night2")
    assert normalised(dump(db)) == world["control_dump"]
    findings = read_tables(db, ["findings"])["findings"]
    assert findings.filter(pl.col("finding_id") == world["reviewed"])["status"].to_list() == ["acknowledged"]


def test_sigkill_during_the_first_night_leaves_an_empty_database_the_next_run_fills(world, killed):
    child = killed["first_night"]
    assert child["returncode"] == -signal.SIGKILL, child["stderr"][-2000:]
    db = child["db"]
    assert_private(db.parent, db.name)
    # The database is created whole before the night writes (built under another name, then
    # renamed): after the kill it holds the schema (with the catalog's vocabularies) and no audit row.
    counts = row_counts(dump(db))
    assert counts.pop("schema_version") == 1 and counts.pop("ref_vocabulary") > 0
    assert counts and set(counts.values()) == {0}
    assert not [p for p in db.parent.iterdir() if ".creating-" in p.name]
    nightly(db, world["n1"], "night1")  # used to fail: "holds no audit data (no schema_version table)"
    assert normalised(dump(db)) == world["night1_dump"]


# ------------------------------------------------------------------- an exception in each stage


def _raise(exc: BaseException):
    def failing(*args, **kwargs):
        raise exc

    return failing


def _after_original(module, name: str, exc: BaseException):
    original = getattr(module, name)

    def failing(*args, **kwargs):
        original(*args, **kwargs)
        raise exc

    return failing


def _sql_error_after(name: str):
    """A real DuckDB error inside the open transaction, after the named step ran."""
    original = getattr(night_write, name)

    def failing(con, *args, **kwargs):
        original(con, *args, **kwargs)
        con.execute("INSERT INTO findings (finding_id) VALUES (NULL)")  # violates NOT NULL

    return failing


# What DuckDB raises when the disk fills up during its write (not an OSError).
DISK_FULL = duckdb.IOException('IO Error: Could not write file "audit.duckdb.wal": No space left on device')

STAGE_FAULTS = {
    "read": lambda: (read, "scan_extract", _raise(RuntimeError("injected: read"))),
    "history": lambda: (warehouse, "read_history", _raise(StoreError("injected: history"))),
    "contract_normalise": lambda: (audit, "prepare", _raise(RuntimeError("injected: contract"))),
    "courses": lambda: (audit, "courses_with_regimen", _raise(RuntimeError("injected: courses"))),
    "rules": lambda: (audit, "judge", _raise(RuntimeError("injected: rules"))),
    "output_tables": lambda: (audit, "output_tables", _raise(ValueError("injected: output contract"))),
    "ledger_rows": lambda: (audit, "ledger_rows", _raise(RuntimeError("injected: ledger rows"))),
    "store_frame_check": lambda: (night_write, "_check_frame", _raise(ValueError("injected: frame contract"))),
    "store_migrate": lambda: (connection, "_migrate", _after_original(connection, "_migrate", RuntimeError("injected"))),
    "store_orders": lambda: (night_write, "_write_orders", _after_original(night_write, "_write_orders", RuntimeError("injected"))),
    "store_findings_sql_error": lambda: (night_write, "_write_findings", _sql_error_after("_write_findings")),
    "store_disk_full": lambda: (night_write, "_write_ledger", _after_original(night_write, "_write_ledger", DISK_FULL)),
    "store_interrupted": lambda: (night_write, "_write_quarantine", _after_original(night_write, "_write_quarantine", KeyboardInterrupt())),
}


@pytest.mark.parametrize("stage", sorted(STAGE_FAULTS))
def test_exception_in_a_stage_writes_nothing_and_the_next_run_succeeds(world, tmp_path, monkeypatch, stage):
    db = fresh_copy(world, tmp_path)
    module, name, replacement = STAGE_FAULTS[stage]()
    with monkeypatch.context() as patch:
        patch.setattr(module, name, replacement)
        with pytest.raises((Exception, KeyboardInterrupt)) as caught:
            nightly(db, world["n2"], "night2")
    if stage == "store_disk_full":  # a one-line StoreError (exit 3 on the command line, retried by the flow)
        assert caught.type is StoreError and "No space left on device" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert dump(db) == world["base_dump"]
    assert_private(tmp_path, db.name)
    nightly(db, world["n2"], "night2")
    assert normalised(dump(db)) == world["control_dump"]


def test_report_failure_after_the_store_commit_keeps_the_complete_run(world, tmp_path, monkeypatch):
    db, reports = fresh_copy(world, tmp_path), tmp_path / "reports"
    original = Path.write_text

    def disk_full(self, data, *args, **kwargs):
        original(self, data[: len(data) // 2], *args, **kwargs)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", disk_full)
        with pytest.raises(OSError):
            nightly(db, world["n2"], "night2", report_dir=reports)
    runs = read_tables(db, ["runs"])["runs"]
    assert runs.filter(pl.col("run_id") == "night2")["report_status"].to_list() == ["failed"]
    assert _without_report_status(normalised(dump(db))) == _without_report_status(world["control_dump"])
    # No half-written report is left: not as index.html, not as a temporary file.
    assert list(reports.iterdir()) == []
    nightly(db, world["n2"], "night2-again", report_dir=reports)
    # The report, and the stamp saying which state of the database it shows (pipeline.night).
    assert sorted(p.name for p in reports.iterdir()) == [".ivig-audit-report.json", "index.html", "summary.md", "worklist.csv"]


# ------------------------------------------------------------------------------ the command line


def _one_line_error(result) -> str:
    text = result.stderr.strip()
    assert text.startswith("ivig-audit: error:"), text
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in result.output
    return text


def test_cli_report_on_a_full_disk_prints_one_line_and_exits_3(world, tmp_path, monkeypatch):
    from flows.cli import app

    db = fresh_copy(world, tmp_path)
    nightly(db, world["n2"], "night2")
    before = dump(db)
    monkeypatch.setattr(Path, "write_text", _raise(OSError(errno.ENOSPC, "No space left on device")))
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(tmp_path / "reports")])
    assert result.exit_code == 3, result.output
    assert "No space left on device" in _one_line_error(result)
    assert dump(db) == before


def test_cli_report_into_a_read_only_folder_prints_one_line_and_exits_3(world, tmp_path, monkeypatch):
    from flows.cli import app

    db = fresh_copy(world, tmp_path)
    out = tmp_path / "reports"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.geteuid() == 0 or os.access(out, os.W_OK):
            # Tests run as root in CI containers: chmod does not stop root from writing, so the
            # permission error the kernel would raise is injected where the report writes its files.
            monkeypatch.setattr(Path, "write_text", _raise(PermissionError(errno.EACCES, "Permission denied")))
        result = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    finally:
        out.chmod(0o700)
    assert result.exit_code == 3, result.output
    assert "Permission denied" in _one_line_error(result)
    assert dump(db) == world["base_dump"]


RUN_FAILURES = {
    "database_disk_full": ("store", DISK_FULL, "No space left on device"),
    "report_disk_full": ("report", OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    "report_read_only": ("report", PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
}


@pytest.mark.parametrize("case", sorted(RUN_FAILURES))
def test_cli_run_failing_on_the_disk_prints_one_line_and_exits_3(world, tmp_path, monkeypatch, case):
    """`ivig-audit run` whose run fails writing the database or the report: one line and exit 3, not a
    traceback with exit 1 (which cron would read as 'critical findings'). The flow is replaced by the
    same stages without Prefect (`nightly`), with the fault injected."""
    import flows.audit
    from flows.cli import app

    where, failure, text = RUN_FAILURES[case]
    db = fresh_copy(world, tmp_path)

    def flow_with_a_fault(**kwargs):
        with pytest.MonkeyPatch.context() as patch:
            if where == "store":
                patch.setattr(night_write, "_write_findings", _after_original(night_write, "_write_findings", failure))
            else:
                patch.setattr(Path, "write_text", _raise(failure))
            nightly(Path(kwargs["db"]), world["n2"], "night2", report_dir=Path(kwargs["report_dir"]))

    monkeypatch.setattr(flows.audit, "audit_flow", flow_with_a_fault)
    result = CliRunner().invoke(
        app, ["run", "--orders", str(world["n2"]), "--db", str(db), "--report-dir", str(tmp_path / "reports")]
    )
    assert result.exit_code == 3, result.output
    assert text in _one_line_error(result)
    if where == "store":
        assert dump(db) == world["base_dump"]
    else:  # the report comes after the commit: the run is stored whole (its report recorded as failed)
        assert _without_report_status(normalised(dump(db))) == _without_report_status(world["control_dump"])


def _without_report_status(snapshot):
    """A dump with the runs' report_status blanked (a run whose report failed says so)."""
    runs = snapshot["runs"]
    at = runs["columns"].index("report_status")
    rows = [tuple(None if i == at else v for i, v in enumerate(r)) for r in runs["rows"]]
    return snapshot | {"runs": {"columns": runs["columns"], "rows": rows}}


# ---------------------------------------------------------------------- two writers at once


def _start_child(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(CHILD + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "holding":
        proc.kill()
        raise AssertionError(f"child did not reach its hold point: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def _release(proc: subprocess.Popen, flag: Path) -> str:
    flag.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return out


def test_a_second_run_waits_for_the_first_and_reads_what_it_wrote(world, tmp_path):
    """Two real processes on one database: the second run waits for the first (the writer lock) and
    then audits with its rows, so nothing the first wrote is lost (it used to replace the first
    run's orders and resolve its findings). A review meanwhile waits briefly, then says why."""
    db, flag = fresh_copy(world, tmp_path), tmp_path / "go"
    n3 = write_extract(tmp_path / "night3.csv", night3_rows())
    writer = _start_child(["hold-run", str(db), str(world["n2"]), "night2", str(flag)])
    second = subprocess.Popen(CHILD + ["night", str(db), str(n3), "night3"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert second.poll() is None  # waiting for the writer lock, not failed
        with pytest.raises(StoreError, match="in use by another process") as review:
            record_review(db, world["reviewed"], "actioned", "B. Pharmacist", reason_code="dose_changed")
        assert "\n" not in str(review.value)
    finally:
        out = _release(writer, flag)
    assert out.strip().endswith("done")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-2000:]
    runs = read_tables(db, ["runs"])["runs"]
    assert runs.sort("seq").select("run_id", "seq").rows() == [("night1", 1), ("night2", 2), ("night3", 3)]
    # Exactly what one night over night 2 and then night 3 leaves: night 2's work is all there.
    expected = tmp_path / "expected.duckdb"
    shutil.copy(world["base"], expected)
    nightly(expected, world["n2"], "night2")
    nightly(expected, n3, "night3")
    got, want = normalised(dump(db)), normalised(dump(expected))
    for table in ("orders", "courses", "findings", "ledger"):
        assert got[table] == want[table], table


def test_a_run_that_cannot_get_the_writer_lock_in_time_says_who_holds_it(world, tmp_path):
    db, flag = fresh_copy(world, tmp_path), tmp_path / "go"
    writer = _start_child(["hold-run", str(db), str(world["n2"]), "night2", str(flag)])
    try:
        from pipeline.night import run_night

        request = night_request(db, world["n2"])
        with pytest.raises(StoreError, match=r"being audited by another run \(PID \d+\)") as waited:
            run_night(dataclasses.replace(request, lock_timeout_seconds=0.5), run_id="night2-second")
        assert "\n" not in str(waited.value)
    finally:
        _release(writer, flag)
    assert normalised(dump(db)) == world["control_dump"]


def test_run_stops_with_a_clear_message_while_a_review_is_being_recorded_and_the_review_survives(world, tmp_path):
    db, flag = fresh_copy(world, tmp_path), tmp_path / "go"
    reviewer = _start_child(["hold-review", str(db), world["reviewed"], str(flag)])
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            nightly(db, world["n2"], "night2")
    finally:
        _release(reviewer, flag)
    assert row_counts(dump(db))["runs"] == 1  # the run wrote nothing
    nightly(db, world["n2"], "night2")  # retried once the review is done
    tables = read_tables(db, ["findings", "review_events"])
    assert tables["findings"].filter(pl.col("finding_id") == world["reviewed"])["status"].to_list() == ["actioned"]
    assert tables["review_events"]["status"].to_list() == ["acknowledged", "actioned"]


def test_review_recorded_while_a_run_computes_survives_its_write(world, tmp_path):
    """The run read the history before the review and writes after it: the review is not overwritten."""
    db = fresh_copy(world, tmp_path)
    computed = compute_night(db, world["n2"], "night2")  # the run is in progress (not holding the file)
    record_review(db, world["reviewed"], "dismissed", "B. Pharmacist", reason_code="clinically_justified")
    write_night(db, computed)
    tables = read_tables(db, ["findings", "review_events"])
    assert tables["findings"].filter(pl.col("finding_id") == world["reviewed"])["status"].to_list() == ["dismissed"]
    assert tables["review_events"]["status"].to_list() == ["acknowledged", "dismissed"]
    # Apart from that review, the database is the control's.
    control = world["control_dump"]
    got = normalised(dump(db))
    assert {k: v for k, v in got.items() if k not in ("findings", "review_events")} == {
        k: v for k, v in control.items() if k not in ("findings", "review_events")
    }
    assert len(got["findings"]["rows"]) == len(control["findings"]["rows"])


# ------------------------------------------------------------------------------- file modes


def test_database_file_is_private_after_write_run(world, tmp_path):
    old = os.umask(0o022)
    try:
        db = tmp_path / "new.duckdb"
        nightly(db, world["n1"], "night1")
    finally:
        os.umask(old)
    assert (db.stat().st_mode & 0o777) == 0o600
    assert_private(tmp_path, db.name)
    assert os.umask(old) == old  # the writer restored the process umask


def test_report_folder_and_files_are_private(world, tmp_path):
    from pipeline.reporting import write_report

    old = os.umask(0o022)
    try:
        out = tmp_path / "reports" / "nested"
        paths = write_report(read_tables(world["base"]), out)
        existing = tmp_path / "existing"
        existing.mkdir(mode=0o755)
        write_report(read_tables(world["base"]), existing)
    finally:
        os.umask(old)
    for folder in (out, existing):
        assert (folder.stat().st_mode & 0o777) == 0o700, oct(folder.stat().st_mode)
        for path in folder.iterdir():
            assert (path.stat().st_mode & 0o777) == 0o600, path.name
    assert len(paths) == 3
