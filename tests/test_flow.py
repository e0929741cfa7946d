"""End-to-end: the Prefect flow audits the shipped sample data into DuckDB (few tests: each starts Prefect work)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.conftest import SAMPLE

pytestmark = pytest.mark.prefect

CATEGORIES = {
    "indication", "weight_basis", "course_dose", "repeat_justification",
    "combination", "product_safety", "monitoring", "data_quality",
}


def _run(db: Path, report_dir: Path | None, force: bool = False):
    from flows.audit import audit_flow

    return audit_flow(
        orders=[str(SAMPLE / "orders")],
        labs=str(SAMPLE / "labs.csv"),
        procedures=str(SAMPLE / "procedures.csv"),
        db=str(db),
        report_dir=str(report_dir) if report_dir else None,
        force=force,
    )


@pytest.fixture(scope="module")
def audited(prefect_harness, tmp_path_factory):
    """The sample data audited twice into one database, with a review decision in between."""
    root = tmp_path_factory.mktemp("flow")
    db = root / "audit.duckdb"
    first = _run(db, root / "reports")
    with duckdb.connect(str(db)) as con:
        before = con.execute("SELECT finding_id, rule_id, severity, excess_g FROM findings ORDER BY finding_id").fetchall()
        reviewed = con.execute("SELECT finding_id FROM findings WHERE severity = 'critical' ORDER BY finding_id LIMIT 1").fetchone()[0]
        con.execute("UPDATE findings SET status = 'acknowledged' WHERE finding_id = ?", [reviewed])
    skipped = _run(db, None)
    second = _run(db, None, force=True)
    return {"db": db, "root": root, "first": first, "second": second, "skipped": skipped,
            "before": before, "reviewed": reviewed}


def test_flow_writes_every_table(audited):
    with duckdb.connect(str(audited["db"]), read_only=True) as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "orders", "courses", "findings", "quarantine")}
        categories = {row[0] for row in con.execute("SELECT DISTINCT category FROM findings").fetchall()}
        statuses = con.execute("SELECT status FROM runs ORDER BY seq").fetchall()
    assert counts["runs"] == 3  # the second run found nothing new: recorded all the same
    assert counts["courses"] == audited["first"].courses > 400
    assert counts["orders"] == audited["first"].rows["rows_ivig"]
    # Each run that read the files quarantined their bad rows (the first and the forced one).
    assert counts["quarantine"] == audited["first"].rows["rows_quarantined"] + audited["second"].rows["rows_quarantined"] == 24
    assert categories == CATEGORIES
    assert statuses == [("succeeded",), ("nothing_new",), ("succeeded",)]


def test_runs_account_for_every_order_row(audited):
    query = """SELECT rows_read, rows_ivig + rows_passed_through + rows_out_of_scope + rows_unrecognised_ig
                      + rows_quarantined_orders FROM runs WHERE status = 'succeeded'"""
    with duckdb.connect(str(audited["db"]), read_only=True) as con:
        rows = con.execute(query).fetchall()
    assert rows and all(read == accounted > 0 for read, accounted in rows)


def test_rerun_keeps_findings_and_review_state(audited):
    with duckdb.connect(str(audited["db"]), read_only=True) as con:
        after = con.execute("SELECT finding_id, rule_id, severity, excess_g FROM findings ORDER BY finding_id").fetchall()
        status = con.execute("SELECT status FROM findings WHERE finding_id = ?", [audited["reviewed"]]).fetchone()[0]
        runs = con.execute("SELECT run_id FROM runs WHERE status = 'succeeded' ORDER BY seq").fetchall()
        seen = con.execute("SELECT DISTINCT first_seen_run, last_seen_run FROM findings").fetchall()
    assert after == audited["before"]
    assert status == "acknowledged"
    assert seen == [(runs[0][0], runs[1][0])]


def test_already_audited_files_are_skipped(audited):
    assert audited["skipped"].nothing_new
    assert audited["skipped"].skipped_files == 9


def test_flow_writes_offline_report(audited):
    html = (audited["root"] / "reports" / "index.html").read_text(encoding="utf-8")
    assert "<svg" in html and 'src="http' not in html
    assert (audited["root"] / "reports" / "summary.md").stat().st_size > 200


def test_patient_ids_stay_out_of_prefect_home(audited, prefect_home):
    """No patient identifier in Prefect's database, logs or result storage."""
    import csv

    ids = set()
    for path in (SAMPLE / "orders").glob("*.csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            ids |= {row["patient_id"] for row in csv.DictReader(handle) if row["patient_id"]}
    leaked = []
    for path in prefect_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaked += [(path.name, pid) for pid in ids if pid.encode() in data]
    assert not leaked, leaked[:5]


def test_flow_on_a_dask_cluster_gives_the_same_audit(audited, tmp_path):
    """Patient shards audited on a distributed.LocalCluster: the same courses and findings as one process."""
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.audit import audit_flow

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        sharded = audit_flow.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        db = tmp_path / "dask.duckdb"
        summary = sharded(
            orders=[str(SAMPLE / "orders")], labs=str(SAMPLE / "labs.csv"),
            procedures=str(SAMPLE / "procedures.csv"), db=str(db), report_dir=None, shards=3,
        )
    assert summary.courses == audited["first"].courses
    query = "SELECT finding_id, rule_id, severity, excess_g FROM findings ORDER BY finding_id"
    with duckdb.connect(str(db), read_only=True) as con:
        sharded_findings = con.execute(query).fetchall()
    assert sharded_findings == audited["before"]


def test_the_command_line_without_prefect_gives_the_same_audit(audited, tmp_path):
    """`ivig-audit run --no-prefect` (no server, no PREFECT_API_URL): the flow's courses and findings, and Prefect is never imported."""
    import os
    import subprocess
    import sys

    db = tmp_path / "direct.duckdb"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "no-prefect")}
    probe = (
        "import sys, runpy; sys.argv = ['ivig-audit'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('flows.cli', run_name='__main__')\n"
        "finally:\n    print('prefect imported' if 'prefect' in sys.modules else 'prefect not imported', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "run", "--no-prefect", "--orders", str(SAMPLE / "orders"), "--labs", str(SAMPLE / "labs.csv"),
         "--procedures", str(SAMPLE / "procedures.csv"), "--db", str(db), "--report-dir", str(tmp_path / "reports")],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{audited['first'].courses} courses" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "prefect not imported"
    assert not (tmp_path / "no-prefect").exists()  # no temporary server, no Prefect database
    query = "SELECT finding_id, rule_id, severity, excess_g FROM findings ORDER BY finding_id"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(query).fetchall() == audited["before"]
    assert (tmp_path / "reports" / "index.html").is_file()
