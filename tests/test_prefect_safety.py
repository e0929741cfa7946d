"""Prefect around the audit: failures leave no patient or order id in Prefect's database, logs or result
storage, print one line, and the temporary server never outlives the run that started it (issue 14).

The command-line runs are child processes (their terminal output is what a user sees) pointed at the
session's Prefect test server; the SIGKILL test starts its own temporary server.
"""

from __future__ import annotations

import base64
import binascii
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.reliability_helpers import write_extract

pytestmark = pytest.mark.prefect

SECRET_ORDER, SECRET_PATIENTS = "ORDQX-77120-SECRET", ("PATQX-40001", "PATQX-40002")


def _rows(order_id: str = SECRET_ORDER) -> list[dict[str, str]]:
    base = {"medication": "Privigen 10%", "dose": "28", "dose_unit": "g", "start": "2026-06-01 09:00:00",
            "weight_kg": "70", "height_cm": "175", "sex": "M", "age_years": "45", "indication": "GBS"}
    # the same order id for two patients: with --shards they land in different shards
    return [base | {"order_id": order_id, "patient_id": p} for p in SECRET_PATIENTS]


def _harness_db() -> list[Path]:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    db = Path(url.split(":///", 1)[1])
    return [p for p in db.parent.glob(db.name + "*") if p.is_file()]


def _texts(path: Path) -> list[bytes]:
    """A file's bytes, and the decoded content of a base64 file (Prefect's result storage pickles)."""
    data = path.read_bytes()
    out = [data]
    try:
        out.append(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        pass
    return out


def _leaks(roots: list[Path], secrets: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                for data in _texts(path):
                    found += [(str(path), s) for s in secrets if s.encode() in data]
    return sorted(set(found))


def _cli(args: list[str], prefect_home: Path, api_url: str | None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | env_extra
    env.pop("PREFECT_LOGGING_LEVEL", None)  # the user's default: INFO
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    """The lines of a failed run's terminal output that report the failure (Prefect's INFO progress aside)."""
    return [line for line in stderr.splitlines() if line.strip() and " | INFO " not in line
            and not line.startswith("See https://www.prefect.io")]


@pytest.fixture(scope="module")
def api_url(prefect_harness) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def test_sharded_run_with_a_shared_order_id_keeps_the_id_out_of_prefect(api_url, prefect_home, tmp_path):
    """The issue's case: combine() named the order id; it reached Prefect's database and a pickled
    ExtractError in PREFECT_HOME/storage (0644). Now: one line, exit 2, the id nowhere in Prefect."""
    extract = write_extract(tmp_path / "orders.csv", _rows())
    db = tmp_path / "audit.duckdb"
    result = _cli(["run", "--orders", str(extract), "--db", str(db), "--report-dir", str(tmp_path / "r"),
                   "--shards", "2"], prefect_home, api_url)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("ivig-audit: error: ") and "--shards" in errors[0], errors
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr
    assert not db.exists()
    secrets = (SECRET_ORDER, *SECRET_PATIENTS)
    assert not _leaks([prefect_home, *_harness_db()], secrets)
    assert any(prefect_home.joinpath("storage").iterdir()), "no flow failure was stored: the test proves nothing"


def test_an_exception_quoting_a_patient_id_never_reaches_prefect(prefect_harness, prefect_home, tmp_path, monkeypatch):
    """Whatever a stage raises (here a ValueError quoting a patient id, as a library message may), Prefect
    records only the stage, the kind and the type: the flow raises a data-free StageFailure, detached from
    the exception it replaced (`raise ... from None` kept it as __context__, and a Dask run pickled it)."""
    import pipeline.audit as stages
    from flows.audit import audit_flow
    from flows.prefect_runtime import StageFailure, failure_detail

    # As in a run on Dask: importing distributed installs tblib's exception pickling, which writes an
    # exception's whole chain (__context__, __cause__) into the pickle Prefect stores for a failed flow.
    pytest.importorskip("distributed.utils")

    extract = write_extract(tmp_path / "orders.csv", _rows("ORDQX-1")[:1])

    def judge_that_fails(*args, **kwargs):
        raise ValueError(f"bad course of patient {SECRET_PATIENTS[0]} (order {SECRET_ORDER})")

    monkeypatch.setattr(stages, "judge", judge_that_fails)
    with pytest.raises(StageFailure) as caught:
        audit_flow(orders=[str(extract)], db=str(tmp_path / "a.duckdb"), report_dir=None)
    failure = caught.value
    assert (failure.stage, failure.error_type, failure.exit_status) == ("audit_tonight", "ValueError", 3)
    assert SECRET_PATIENTS[0] not in str(failure) and SECRET_PATIENTS[0] not in failure_detail(failure)
    assert "audit_tonight" in failure_detail(failure)  # the stage that failed, named for the user
    assert not _leaks([prefect_home, *_harness_db()], (SECRET_ORDER, *SECRET_PATIENTS))


def test_a_bad_database_file_is_one_line_with_the_prefect_logs_in_the_debug_log(api_url, prefect_home, tmp_path):
    """Errors raised inside the flow printed 20-100 lines of Prefect ERROR logs and tracebacks; now the
    terminal gets one line, and the detail goes to the owner-only debug log."""
    db = tmp_path / "bad.duckdb"
    db.write_bytes(b"this is not a DuckDB file\n" * 10)
    debug_log = tmp_path / "debug.log"
    result = _cli(["run", "--db", str(db), "--report-dir", str(tmp_path / "r")], prefect_home, api_url,
                  IVIG_AUDIT_DEBUG_LOG=str(debug_log))
    assert result.returncode == 3, result.stderr[-2000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "not a valid DuckDB database file" in errors[0], errors
    logged = debug_log.read_text(encoding="utf-8")
    assert "Task run failed with exception" in logged and "StageFailure" in logged
    assert (debug_log.stat().st_mode & 0o777) == 0o600


def _children(pid: int) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of the live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append((int(entry.name), fields[0], cmdline))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_of_a_run_leaves_no_temporary_prefect_server(tmp_path):
    """A run without PREFECT_API_URL starts Prefect's temporary server; SIGKILL of the run (no atexit
    handler runs) used to leave that server running for ever. It now stops within seconds."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--db", str(tmp_path / "a.duckdb"), "--report-dir", str(tmp_path / "r")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        deadline = time.monotonic() + 120
        while server is None and time.monotonic() < deadline and run.poll() is None:
            server = next((pid for pid, _, cmd in _children(run.pid) if "uvicorn" in cmd), None)
            time.sleep(0.2)
        assert server is not None, "the run started no temporary server"
        time.sleep(1.0)  # the server process is up (its watchdog runs from its first instructions)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    still = _alive(server)
    if still:
        os.kill(server, signal.SIGKILL)  # do not leave it behind for the rest of the session
    assert not still, "the temporary Prefect server outlived the run that started it"
