"""The database as the programme's memory: history across nights, corrections, reviews, migrations."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline import warehouse as store
from pipeline.warehouse import (
    StoreError,
    export_parquet,
    processed_hashes,
    read_tables,
    record_review,
    worklist,
)
from tests.reliability_helpers import nightly, write_extract

PATIENT = {"patient_id": "P1", "weight_kg": "70", "height_cm": "180", "sex": "M", "age_years": "50",
           "indication": "GBS", "medication": "Privigen 10%", "dose_unit": "g", "service": "Neurology"}


def gbs_dose(order_id: str, day: int, grams: float = 28.0) -> dict:
    """One daily GBS dose of a 70 kg man (0.4 g/kg = 28 g)."""
    return PATIENT | {"order_id": order_id, "dose": str(grams), "start": f"2026-11-{day:02d} 09:00:00"}


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.duckdb"


def test_course_spanning_two_nights_is_judged_whole(db: Path, tmp_path: Path):
    nightly(db, write_extract(tmp_path / "n1.csv", [gbs_dose("O1", 1), gbs_dose("O2", 2)]), "run1")
    first = read_tables(db, ["courses", "findings"])
    assert first["courses"]["total_g"].to_list() == [56.0]
    assert "course_dose.below_target" in first["findings"]["rule_id"].to_list()

    nightly(db, write_extract(tmp_path / "n2.csv", [gbs_dose("O3", 3), gbs_dose("O4", 4), gbs_dose("O5", 5)]), "run2")
    second = read_tables(db, ["runs", "courses", "findings", "orders"])
    assert second["courses"]["total_g"].to_list() == [140.0]
    assert second["courses"]["n_days"].to_list() == [5]
    assert second["orders"].height == 5
    below = second["findings"].filter(pl.col("rule_id") == "course_dose.below_target")
    assert below["resolved_run"].to_list() == ["run2"]
    assert below["first_seen_run"].to_list() == ["run1"]
    # The run counts cover only tonight's extract.
    assert second["runs"].sort("run_id")["rows_ivig"].to_list() == [2, 3]


def test_corrected_order_replaces_the_stored_one(db: Path, tmp_path: Path):
    nightly(db, write_extract(tmp_path / "n1.csv", [gbs_dose(f"O{d}", d, 56.0) for d in range(1, 6)]), "run1")
    over = read_tables(db, ["findings"])["findings"].filter(pl.col("rule_id") == "course_dose.above_target")
    assert over.height == 1 and over["resolved_run"].to_list() == [None]

    corrected = [gbs_dose(f"O{d}", d, 28.0) for d in range(1, 6)]
    nightly(db, write_extract(tmp_path / "n2.csv", corrected), "run2")
    tables = read_tables(db, ["courses", "findings", "orders"])
    assert tables["orders"].height == 5
    assert tables["courses"]["total_g"].to_list() == [140.0]
    over = tables["findings"].filter(pl.col("rule_id") == "course_dose.above_target")
    assert over["resolved_run"].to_list() == ["run2"]
    with duckdb.connect(str(db), read_only=True) as con:
        versions = con.execute(
            "SELECT row_key, state, run_id FROM ledger WHERE extract = 'orders' ORDER BY row_key, run_seq"
        ).fetchall()
    # Each order has two versions: the first superseded by the correction, which is in force.
    assert versions == [(f"O{d}", state, run) for d in range(1, 6) for state, run in (("superseded", "run1"), ("in_force", "run2"))]


def test_review_status_survives_reruns_and_events_append(db: Path, tmp_path: Path):
    extract = write_extract(tmp_path / "n1.csv", [gbs_dose(f"O{d}", d, 56.0) for d in range(1, 6)])
    nightly(db, extract, "run1")
    finding_id = read_tables(db, ["findings"])["findings"]["finding_id"][0]
    record_review(db, finding_id, "acknowledged", "A. Pharmacist", note="called neurology")
    record_review(db, finding_id, "actioned", "A. Pharmacist", reason_code="dose_changed")
    nightly(db, extract, "run2")
    findings = read_tables(db, ["findings"])["findings"]
    assert findings.filter(pl.col("finding_id") == finding_id)["status"].to_list() == ["actioned"]
    events = read_tables(db, ["review_events"])["review_events"]
    assert events["status"].to_list() == ["acknowledged", "actioned"]
    assert events["event_id"].to_list() == sorted(events["event_id"].to_list())


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [
        ("dismissed", None, "needs a --reason"),
        ("closed", None, "status must be one of"),
        ("actioned", "because", "unknown reason code"),
    ],
)
def test_bad_review_is_refused(db: Path, tmp_path: Path, status, reason, message):
    nightly(db, write_extract(tmp_path / "n1.csv", [gbs_dose("O1", 1)]), "run1")
    finding_id = read_tables(db, ["findings"])["findings"]["finding_id"][0]
    with pytest.raises(ValueError, match=message):
        record_review(db, finding_id, status, "A. Pharmacist", reason_code=reason)
    with pytest.raises(ValueError, match="no finding"):
        record_review(db, "not-a-finding", "acknowledged", "A. Pharmacist")
    assert read_tables(db, ["review_events"])["review_events"].height == 0


FIXTURES = Path(__file__).parent / "fixtures"


def _old_database(db: Path, version: int) -> None:
    """A database as ivig-audit of that schema version created it (tests/fixtures/schema_vN.sql), with one run."""
    with duckdb.connect(str(db)) as con:
        con.execute((FIXTURES / f"schema_v{version}.sql").read_text())
        con.execute(f"INSERT INTO schema_version VALUES ({version}, now())")
        con.execute(
            "INSERT INTO runs (run_id, started_at, finished_at, status, profile, rule_pack_version, rule_pack_hash, "
            "inputs, rows_read, rows_quarantined, rows_ivig, rows_passed_through, rows_out_of_scope, courses, findings) "
            "VALUES ('old', now(), now(), 'succeeded', 'default', '0.9', 'h', '[]', 1, 0, 1, 0, 0, 1, 0)"
        )


def _shape(db: Path) -> set[tuple]:
    """Every table column (type, nullability, default, comment), key and view comment of a database."""
    with duckdb.connect(str(db), read_only=True) as con:
        columns = con.execute(
            """SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.column_default, c.comment
               FROM duckdb_columns() AS c WHERE c.schema_name = 'main'"""
        ).fetchall()
        keys = [(t, k, tuple(cols)) for t, k, cols in con.execute(
            "SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints() "
            "WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'NOT NULL')").fetchall()]
        objects = con.execute(
            "SELECT table_name, comment FROM duckdb_tables() UNION ALL "
            "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal UNION ALL "
            "SELECT function_name, comment FROM duckdb_functions() WHERE NOT internal AND schema_name = 'main'"
        ).fetchall()
    return set(columns) | set(keys) | set(objects)


@pytest.mark.parametrize("version", [1, 4])
def test_an_old_database_upgrades_in_place_to_the_shape_of_a_new_one(db: Path, tmp_path: Path, version: int):
    _old_database(db, version)
    nightly(db, write_extract(tmp_path / "n1.csv", [gbs_dose("O1", 1)]), "run1")
    tables = read_tables(db, ["schema_version", "runs"])
    assert tables["schema_version"]["version"].to_list() == [store.SCHEMA_VERSION]
    runs = tables["runs"].sort("run_id")
    assert runs["run_id"].to_list() == ["old", "run1"]
    assert runs["timings"].to_list()[0] == "{}"
    fresh = tmp_path / "fresh.duckdb"
    nightly(fresh, write_extract(tmp_path / "n2.csv", [gbs_dose("O1", 1)]), "run1")
    assert _shape(db) == _shape(fresh)


def test_versions_stored_with_null_members_are_known_after_the_upgrade(db: Path, tmp_path: Path):
    # A database of schema version 6 stored every canonical column in a version, blank ones as null.
    from checks.inputs import EXTRACT_COLUMNS
    from pipeline.domain.history import text_struct

    sent = [gbs_dose(f"O{d}", d) for d in range(1, 4)]
    nightly(db, write_extract(tmp_path / "n1.csv", sent), "run1")
    with duckdb.connect(str(db)) as con:
        stored = con.sql("SELECT DISTINCT version FROM ledger").pl()
        with_nulls = stored.select(
            pl.col("version").alias("now"),
            pl.col("version").str.json_decode(text_struct("orders")).struct.json_encode().alias("before"),
        )
        assert with_nulls["before"].str.contains('"encounter_id":null').all()
        con.register("with_nulls", with_nulls)
        con.execute("UPDATE ledger SET version = w.before, version_hash = md5_number(w.before) "
                    "FROM with_nulls AS w WHERE ledger.version = w.now")
        con.execute("UPDATE schema_version SET version = 6")
    # The same three orders again, with a fourth: only the fourth is a new version.
    nightly(db, write_extract(tmp_path / "n2.csv", sent + [gbs_dose("O4", 4)]), "run2")
    with duckdb.connect(str(db), read_only=True) as con:
        ledger = con.sql("SELECT row_key, version, version_hash = md5_number(version) AS hashed, run_id "
                             "FROM ledger ORDER BY row_key").pl()
    assert ledger["row_key"].to_list() == ["O1", "O2", "O3", "O4"]
    assert ledger["run_id"].to_list() == ["run1", "run1", "run1", "run2"]
    assert ledger["hashed"].all() and not ledger["version"].str.contains(":null").any()
    decoded = ledger.select(pl.col("version").str.json_decode(text_struct("orders"))).unnest("version")
    assert decoded.columns == list(EXTRACT_COLUMNS["orders"]) and decoded["encounter_id"].is_null().all()
    assert decoded["dose"].to_list() == ["28.0"] * 4


def test_processed_hashes_worklist_and_export(db: Path, tmp_path: Path):
    extract = write_extract(tmp_path / "n1.csv", [gbs_dose(f"O{d}", d, 56.0) for d in range(1, 6)])
    nightly(db, extract, "run1")
    from pipeline.ingest.files import file_sha256

    assert processed_hashes(db) == {file_sha256(extract)}
    assert worklist(db, severity="critical").height == 1
    assert worklist(db, category="indication").height == 0
    assert worklist(db, service="Neurology").height >= 1
    written = export_parquet(db, tmp_path / "export")
    names = {p.stem for p in written}
    assert {"courses", "findings", "runs", "v_open_findings", "v_grams_avoidable_by_lever"} <= names
    assert pl.read_parquet(tmp_path / "export" / "courses.parquet").height == 1


def test_audited_inputs_skip_same_content_under_any_name_and_record_sizes(db: Path, tmp_path: Path):
    from pipeline.night import find_new_inputs
    from pipeline.ingest.files import file_sha256

    audited = write_extract(tmp_path / "n1.csv", [gbs_dose(f"O{d}", d) for d in range(1, 3)])
    nightly(db, audited, "run1")
    assert store.audited_inputs(db) == ({file_sha256(audited)}, {audited.stat().st_size})
    copy = tmp_path / "n1-again.csv"
    copy.write_bytes(audited.read_bytes())  # same content under another name: already audited
    longer = write_extract(tmp_path / "n2.csv", [gbs_dose(f"O{d}", d) for d in range(1, 4)])
    new, skipped = find_new_inputs({"orders": [audited, copy, longer, audited]}, db, False)
    assert new == {"orders": [longer]}  # a path given twice is read once
    assert [(s["path"], s["why"]) for s in skipped] == [(str(audited), "audited before"), (str(copy), "audited before")]
    assert all(s["bytes"] == audited.stat().st_size for s in skipped)


def test_runs_stored_without_sizes_make_every_file_hashed(db: Path, tmp_path: Path):
    audited = write_extract(tmp_path / "n1.csv", [gbs_dose("O1", 1)])
    nightly(db, audited, "run1")
    with duckdb.connect(str(db)) as con:  # a run recorded before input sizes were
        con.execute("UPDATE runs SET inputs = json_array(json_object('extract', 'orders', 'path', 'x', 'sha256', 'abc'))")
    assert store.audited_inputs(db) == ({"abc"}, None)


def test_grams_avoidable_by_lever_counts_a_course_once(db: Path, tmp_path: Path):
    # A repeat GBS course without justification that is also an over-dose: both rules claim grams.
    first = [gbs_dose(f"A{d}", d, 28.0) for d in range(1, 6)]
    repeat = [gbs_dose(f"B{d}", d, 56.0) | {"start": f"2026-12-{d:02d} 09:00:00"} for d in range(1, 6)]
    nightly(db, write_extract(tmp_path / "n1.csv", first + repeat), "run1")
    with duckdb.connect(str(db), read_only=True) as con:
        claims = con.execute(
            "SELECT rule_id, excess_g FROM findings WHERE excess_g > 0 ORDER BY rule_id"
        ).fetchall()
        levers = con.execute("SELECT lever, courses, grams_avoidable, money_avoidable FROM v_grams_avoidable_by_lever WHERE courses > 0").fetchall()
    assert claims == [("course_dose.above_target", 140.0), ("repeat_justification.repeat_without_justification", 280.0)]
    assert levers == [("repeat", 1, 280.0, 280.0 * 80.0)]


def test_reader_gets_clear_message_while_writer_holds_the_file(db: Path, tmp_path: Path):
    nightly(db, write_extract(tmp_path / "n1.csv", [gbs_dose("O1", 1)]), "run1")
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb,time; c=duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError, match="in use by another process"):
            record_review(db, "x", "acknowledged", "A. Pharmacist")
    finally:
        holder.kill()
        holder.wait()
