"""Tests of pipeline.warehouse: transactional writes, merges across runs, locks, views."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pandera.polars as pa
import polars as pl
import pytest

from checks import tables as catalog
from checks.outputs import COURSES, FINDINGS, ORDERS, QUARANTINE
from pipeline.config.reference import reference_tables
from pipeline.config.rulepack import load_rule_pack
from pipeline import warehouse as store
from pipeline.warehouse import night_write
from pipeline.warehouse import RunRecord, StoreError, read_tables, record_review, write_run

T0 = datetime(2026, 11, 1, 8, 0)

# ------------------------------------------------------------------------------------------
# Builders: one minimal valid row per table, overridable per test.
# ------------------------------------------------------------------------------------------


def order_row(order_id: str, patient_id: str, course_id: str, **kw) -> dict:
    row = dict(
        order_id=order_id, patient_id=patient_id, encounter_id="E1", facility="North",
        service="Neurology", prescriber_id="DR1", medication="Privigen 10%", product="Privigen",
        concentration_g_per_ml=0.1, contains_sucrose=False, iga_depleted=False, dose=35.0,
        dose_unit="g", doses=2, grams_per_dose=35.0, total_g=70.0, start=T0, route="IV",
        weight_kg=70.0, height_cm=175.0, sex="M", age_years=54.0, pregnant=None,
        indication_text="CIDP", indication_code="G61.81", indication="cidp",
        indication_source="code", justification=None, justification_code=None,
        pre_pregnancy_weight_kg=None, course_id=course_id,
        source_file="orders.csv", source_row=1,
    )
    return row | kw


def course_row(course_id: str, patient_id: str, **kw) -> dict:
    row = dict(
        course_id=course_id, patient_id=patient_id, facility="North", service="Neurology",
        prescriber_id="DR1", indication_group="neuro", indication="cidp", course_number=1,
        start=T0, end=T0 + timedelta(days=1), n_days=2, span_days=2, doses=2, total_g=70.0,
        order_ids="O1", products="Privigen", actual_weight_kg=70.0, current_weight_kg=70.0,
        pre_pregnancy_weight_kg=None, actual_weight_source="current weight", height_cm=175.0, sex="M",
        age_years=54.0, pregnant=None, bmi=22.9, ibw_kg=70.5, adjusted_weight_kg=70.2,
        obese=False, dosing_weight_kg=70.0, weight_basis="actual", weight_basis_reason="not obese",
        g_per_kg=1.0, interval_days=None, justification=None, justification_code=None, rejected_corrections=None,
        appropriate=True, excess_g=0.0,
    )
    return row | kw


def finding_row(finding_id: str, patient_id: str, course_id: str | None, run_id: str, **kw) -> dict:
    row = dict(
        finding_id=finding_id, rule_id="DOSE-001", rule_version="1", category="course_dose",
        severity="warning", status="open", patient_id=patient_id, course_id=course_id,
        order_ids="O1", indication="cidp", message="dose above policy", expected="<= 2 g/kg",
        observed="2.4 g/kg", action="review dose", evidence=None, excess_g=0.0,
        first_seen_run=run_id, last_seen_run=run_id, resolved_run=None, counts_against_course=course_id is not None,
    )
    return row | kw


def quarantine_row(source_row: int, run_id: str, **kw) -> dict:
    row = dict(
        run_id=run_id, extract="orders", source_file="orders.csv", source_row=source_row,
        order_id=None, patient_id="P9", reason="missing order_id", raw="{}",
    )
    return row | kw


def frame(schema: pa.DataFrameSchema, rows: list[dict]) -> pl.DataFrame:
    """Frame with the contract's dtypes, validated against the Pandera schema."""
    dtypes = {name: col.dtype.type for name, col in schema.columns.items()}
    return schema.validate(pl.DataFrame(rows, schema=dtypes))


def make_run(run_id: str, **kw) -> RunRecord:
    fields = dict(
        run_id=run_id, started_at=T0.replace(tzinfo=timezone.utc),
        finished_at=(T0 + timedelta(minutes=1)).replace(tzinfo=timezone.utc), status="succeeded",
        profile="default", rule_pack_version="2026.11", rule_pack_hash="ab" * 32,
        inputs=[{"extract": "orders", "path": "orders.csv", "sha256": "cd" * 32, "rows": 3}],
        rows_read=3, rows_quarantined=1, rows_ivig=2, rows_passed_through=0, rows_out_of_scope=0,
        courses=2, findings=3,
    )
    return RunRecord(**(fields | kw))


def base_frames(run_id: str) -> dict[str, pl.DataFrame]:
    """Two patients: P1 with two findings on course C1 (5 g and 3 g excess), P2 with one."""
    return dict(
        orders=frame(ORDERS, [order_row("O1", "P1", "C1"), order_row("O2", "P2", "C2", source_row=2)]),
        courses=frame(COURSES, [
            course_row("C1", "P1", appropriate=False, excess_g=5.0, total_g=84.0, g_per_kg=1.2),
            course_row("C2", "P2", indication="itp", service="Haematology", prescriber_id="DR2",
                       start=T0 + timedelta(days=40), end=T0 + timedelta(days=41)),
        ]),
        findings=frame(FINDINGS, [
            finding_row("F1", "P1", "C1", run_id, excess_g=5.0, severity="critical"),
            finding_row("F2", "P1", "C1", run_id, excess_g=3.0, category="weight_basis", rule_id="WT-001"),
            finding_row("F3", "P2", "C2", run_id, category="indication", rule_id="IND-001"),
        ]),
        quarantine=frame(QUARANTINE, [quarantine_row(3, run_id)]),
    )


def write(db: Path, run_id: str, **frames: pl.DataFrame) -> None:
    write_run(db, make_run(run_id), **(base_frames(run_id) | frames))


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every stored table, sorted, for before/after comparisons."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.sql("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {n: sorted(con.sql(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        con.close()


def sql(db: Path, query: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db))
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.duckdb"


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_write_then_read_back(db: Path) -> None:
    frames = base_frames("r1")
    write_run(db, make_run("r1"), **frames)

    out = read_tables(db)
    assert set(out) == {"runs", "orders", "courses", "findings", "quarantine"}
    for name, df in frames.items():
        stored = out[name]
        assert stored.height == df.height
        key = {"orders": "order_id", "courses": "course_id", "findings": "finding_id",
               "quarantine": "source_row"}[name]
        assert stored.select(df.columns).sort(key).equals(df.sort(key)), name
    assert out["orders"]["run_id"].to_list() == ["r1", "r1"]
    assert out["courses"]["run_id"].to_list() == ["r1", "r1"]

    runs = out["runs"]
    assert runs.height == 1
    assert runs["started_at"][0] == T0  # stored as naive UTC
    assert runs["rows_read"].dtype == pl.Int64
    assert '"sha256"' in runs["inputs"][0]

    assert sql(db, "SELECT version FROM schema_version") == [(store.SCHEMA_VERSION,)]
    missing = sql(db, """SELECT table_name, column_name FROM duckdb_columns()
                         WHERE NOT internal AND comment IS NULL AND table_name NOT LIKE 'v\\_%' ESCAPE '\\'""")
    assert missing == []
    assert sql(db, "SELECT comment FROM duckdb_columns() WHERE table_name = 'courses' AND column_name = 'g_per_kg'") \
        == [("course total grams / dosing weight",)]
    assert sql(db, "SELECT count(*) FROM duckdb_tables() WHERE comment IS NULL") == [(0,)]
    assert sql(db, "SELECT count(*) FROM duckdb_views() WHERE NOT internal AND comment IS NULL") == [(0,)]
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_rerun_same_input_no_duplicates(db: Path) -> None:
    write(db, "r1")
    before = read_tables(db)
    write(db, "r2")
    after = read_tables(db)

    assert after["runs"]["run_id"].to_list() == ["r1", "r2"]
    for name in ("orders", "courses", "findings"):
        assert after[name].height == before[name].height, name
    # A quarantined row belongs to the run that read it: a later run adds its own, never replaces it.
    assert sorted(after["quarantine"]["run_id"].to_list()) == ["r1", "r2"]
    f = after["findings"]
    assert f["first_seen_run"].to_list() == ["r1"] * 3
    assert f["last_seen_run"].to_list() == ["r2"] * 3
    assert f.drop("last_seen_run").equals(before["findings"].drop("last_seen_run"))
    assert set(after["orders"]["run_id"]) == {"r2"}


def test_review_status_survives_rerun(db: Path) -> None:
    write(db, "r1")
    sql(db, "UPDATE findings SET status = 'acknowledged' WHERE finding_id = 'F1'")
    write(db, "r2")
    f = read_tables(db, ["findings"])["findings"]
    assert dict(zip(f["finding_id"], f["status"])) == {"F1": "acknowledged", "F2": "open", "F3": "open"}


def test_cleared_finding_is_resolved_other_patients_untouched(db: Path) -> None:
    write(db, "r1")
    before = read_tables(db, ["findings"])["findings"]
    # Run 2 re-audits only P1; F2 (P1) is no longer raised.
    frames = base_frames("r2")
    write(db, "r2",
          courses=frames["courses"].filter(pl.col("patient_id") == "P1"),
          findings=frames["findings"].filter(pl.col("finding_id") == "F1"))
    f = read_tables(db, ["findings"])["findings"]
    rows = {r["finding_id"]: r for r in f.to_dicts()}
    assert rows["F2"]["resolved_run"] == "r2"
    assert rows["F2"]["last_seen_run"] == "r1"
    assert rows["F1"]["resolved_run"] is None and rows["F1"]["last_seen_run"] == "r2"
    assert f.filter(pl.col("finding_id") == "F3").equals(before.filter(pl.col("finding_id") == "F3"))

    # Run 3: F2 is raised again -> reopened (resolved_run cleared), review status kept.
    sql(db, "UPDATE findings SET status = 'actioned' WHERE finding_id = 'F2'")
    write(db, "r3")
    rows = {r["finding_id"]: r for r in read_tables(db, ["findings"])["findings"].to_dicts()}
    assert rows["F2"]["resolved_run"] is None
    assert rows["F2"]["status"] == "actioned"
    assert rows["F2"]["first_seen_run"] == "r1"


def test_courses_rebuilt_per_patient(db: Path) -> None:
    write(db, "r1")
    new_c1 = frame(COURSES, [course_row("C1b", "P1", course_number=2)])
    write(db, "r2", courses=new_c1)
    c = read_tables(db, ["courses"])["courses"]
    assert sorted(zip(c["course_id"], c["run_id"])) == [("C1b", "r2"), ("C2", "r1")]


def test_failure_mid_write_rolls_back(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(db, "r1")
    before = dump(db)

    def boom(con: duckdb.DuckDBPyConnection, run_id: str, replace_all: bool = False) -> None:
        assert con.sql("SELECT count(*) FROM orders WHERE run_id = 'r2'").fetchall() == [(2,)]
        raise RuntimeError("boom after orders and courses")

    monkeypatch.setattr(night_write, "_write_findings", boom)
    changed = frame(ORDERS, [order_row("O1", "P1", "C1", dose=99.0), order_row("O7", "P7", "C7")])
    with pytest.raises(RuntimeError, match="boom"):
        write(db, "r2", orders=changed)
    assert dump(db) == before

    monkeypatch.undo()
    write(db, "r2", orders=changed)
    # The orders of the patients the run judged (those of its courses) are replaced: P2's O2 is gone.
    assert sorted(read_tables(db, ["orders"])["orders"]["order_id"].to_list()) == ["O1", "O7"]


def test_database_error_mid_write_rolls_back(db: Path) -> None:
    write(db, "r1")
    before = dump(db)
    # Bypasses the Pandera uniqueness check: the primary key rejects it inside the transaction.
    dup = pl.concat([base_frames("r2")["orders"]] * 2)
    with pytest.raises(duckdb.ConstraintException):
        write(db, "r2", orders=dup)
    assert dump(db) == before
    with pytest.raises(ValueError, match="already stored"):
        write(db, "r1")
    assert dump(db) == before


def test_empty_frames(db: Path) -> None:
    write(db, "r1")
    empty = {name: frame(schema, []) for name, schema in
             [("orders", ORDERS), ("courses", COURSES), ("findings", FINDINGS), ("quarantine", QUARANTINE)]}
    write_run(db, make_run("r2"), **empty)
    out = read_tables(db)
    assert out["runs"].height == 2
    assert out["findings"]["resolved_run"].null_count() == 3  # no patient re-audited, nothing cleared
    assert out["orders"].height == 2 and out["quarantine"].height == 1


def test_wrong_frame_rejected_before_opening(db: Path) -> None:
    bad = base_frames("r1")["findings"].with_columns(pl.col("excess_g").cast(pl.String))
    with pytest.raises(ValueError, match="excess_g is String"):
        write(db, "r1", findings=bad)
    assert not db.exists()


def test_lock_is_reported_as_store_error(db: Path) -> None:
    write(db, "r1")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb,time; c=duckdb.connect({str(db)!r}); print('ok',flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError) as err:
            write(db, "r2")
        message = str(err.value)
        assert "in use" in message and "\n" not in message
        assert f"PID {holder.pid}" in message
        with pytest.raises(StoreError, match="in use"):
            read_tables(db)
    finally:
        holder.kill()
        holder.wait()
    write(db, "r2")


def test_version_and_missing_file_errors(db: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        read_tables(db)
    write(db, "r1")
    sql(db, "UPDATE schema_version SET version = 999")
    with pytest.raises(StoreError, match="newer"):
        write(db, "r2")
    with pytest.raises(StoreError, match="newer"):
        read_tables(db)
    with pytest.raises(ValueError, match="unknown table"):
        read_tables(db, ["orders; DROP TABLE runs"])


def test_views(db: Path) -> None:
    write(db, "r1")
    plain = [name for name, view in catalog.views().items() if not view.is_macro]
    out = read_tables(db, plain)
    for name, df in out.items():
        # empty here: no dismissal yet, and no run wrote the rule pack's levers (ref_levers)
        if name not in ("v_dismissals_by_reason", "v_grams_avoidable_by_lever"):
            assert df.height > 0, name
        for col, dtype in df.schema.items():
            assert not isinstance(dtype, pl.Decimal), f"{name}.{col} is {dtype}"

    open_f = out["v_open_findings"]
    assert open_f["finding_id"].to_list()[0] == "F1"  # critical first
    assert open_f["severity_rank"].is_sorted()

    ind = {r["group_key"]: r for r in out["v_summary_by_indication"].to_dicts()}
    cidp = ind["cidp"]
    assert (cidp["courses"], cidp["patients"], cidp["appropriate_flagged"], cidp["pct_appropriate_flagged"],
            cidp["grams_used"], cidp["grams_avoidable_flagged"]) == (1, 1, 0, 0.0, 84.0, 5.0)
    assert ind["itp"]["pct_appropriate_flagged"] == 100.0
    assert sorted(out["v_summary_by_month"]["group_key"]) == ["2026-11", "2026-12"]
    assert set(out["v_summary_by_service"]["group_key"]) == {"Neurology", "Haematology"}
    assert set(out["v_summary_by_prescriber"]["group_key"]) == {"DR1", "DR2"}


def test_a_dismissal_counts_after_review_by_its_reason(db: Path) -> None:
    write(db, "r1")
    with duckdb.connect(str(db)) as con:  # the rule pack's review reasons, as a run writes them
        con.register("dispositions", reference_tables(load_rule_pack())["ref_dispositions"])
        con.execute("INSERT INTO ref_dispositions SELECT * FROM dispositions")

    def c1() -> tuple:
        return sql(db, "SELECT appropriate_flagged, appropriate_after_review FROM v_course_outcomes WHERE course_id = 'C1'")[0]

    assert c1() == (False, False)
    record_review(db, "F1", "dismissed", "A. Pharmacist", reason_code="data_error")  # clears F1; F2 still counts
    assert c1() == (False, False)
    record_review(db, "F2", "dismissed", "A. Pharmacist", reason_code="other")  # 'other' does not clear
    assert c1() == (False, False)
    record_review(db, "F2", "dismissed", "A. Pharmacist", reason_code="not_applicable")
    assert c1() == (False, True)
    # C1 is appropriate after review; C2 keeps its open warning F3.
    assert sql(db, "SELECT courses, appropriate_flagged, appropriate_after_review FROM course_summary('all', NULL, NULL, NULL)") == [(2, 1, 1)]


def _ledger(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """Ledger rows (history.ledger_rows) of aspirin orders: (order_id, patient_id, start)."""
    from checks.inputs import EXTRACT_COLUMNS
    from pipeline.domain.history import ledger_rows

    text = pl.DataFrame(
        [{c: None for c in EXTRACT_COLUMNS["orders"]} | {"order_id": o, "patient_id": p, "start": s, "medication": "aspirin",
                                                        "dose": "81", "dose_unit": "mg"} for o, p, s in rows],
        schema={c: pl.String for c in EXTRACT_COLUMNS["orders"]},
    ).with_columns(source_file=pl.lit("orders.csv"), source_row=pl.int_range(1, len(rows) + 1), run_seq=pl.lit(1), file_pos=pl.lit(0))
    return ledger_rows(text.lazy(), "orders", "UTC").collect()


def _ledger_keys(db: Path) -> list[str]:
    return [r[0] for r in sql(db, "SELECT row_key FROM ledger ORDER BY row_key")]


def test_a_ledger_written_without_retention_keeps_every_row(db: Path) -> None:
    write(db, "r1", ledger=_ledger([("A1", "P9", "2020-01-01"), ("A2", "P9", "2026-11-01")]))
    assert _ledger_keys(db) == ["A1", "A2"]


def test_tonight_evidence_beyond_retention_is_not_stored_and_recent_evidence_is(db: Path) -> None:
    # P9 has no IVIG course: evidence is kept 30 days before the newest row of the history.
    write(db, "r1", ledger=_ledger([("A1", "P9", "2020-01-01"), ("A2", "P9", "2026-11-01")]),
          retention={"order": 30}, grace_days=0)
    assert _ledger_keys(db) == ["A2"]
