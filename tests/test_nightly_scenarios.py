"""Named scenarios of the nightly history (docs/history.md): each a way a real feed differs from one batch."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import duckdb

from tests.conftest import SAMPLE
from tests.nightly_cohort import audit_batch, audit_nights, by_week, night, outcome, table, weekly_files, write_rows


def test_the_shipped_sample_audited_week_by_week_ends_with_the_open_findings_of_one_run(tmp_path: Path):
    """Each row in the weekly file of its own date, audited week by week: exactly one run's open findings
    (it used to end with 51 false 'no baseline labs' more: labs of the week before were thrown away)."""
    feed = weekly_files(
        {"orders": sorted((SAMPLE / "orders").glob("*.csv")), "labs": [SAMPLE / "labs.csv"],
         "procedures": [SAMPLE / "procedures.csv"]},
        tmp_path / "feed",
    )
    weeks = by_week(feed)
    assert len(weeks) > 25
    audit_batch(tmp_path / "batch.duckdb", feed)
    audit_nights(tmp_path / "weekly.duckdb", weeks)
    batch, weekly = outcome(tmp_path / "batch.duckdb"), outcome(tmp_path / "weekly.duckdb")
    assert len(batch["open findings"]) > 150
    for name in batch:
        assert weekly[name] == batch[name], name
    with duckdb.connect(str(tmp_path / "weekly.duckdb"), read_only=True) as con:
        runs = con.execute("SELECT COUNT(*), SUM(patients_audited), MAX(patients_audited) FROM runs").fetchone()
        patients = con.execute("SELECT COUNT(DISTINCT patient_id) FROM courses").fetchone()[0]
    # Every week was a run, and each judged only the patients its rows touched.
    assert runs[0] == len(weeks) and runs[2] < patients


# ------------------------------------------------------------------------------------ small feeds
ADULT = {"patient_id": "SC-A", "medication": "Privigen 10%", "dose_unit": "g", "doses": 1, "route": "IV", "sex": "M",
         "age_years": 50, "weight_kg": 70, "height_cm": 175, "indication": "GBS", "service": "Neurology"}
CHILD = ADULT | {"patient_id": "SC-K", "age_years": 4, "weight_kg": 16, "height_cm": 102, "indication": "Kawasaki disease"}
PLEXED = ADULT | {"patient_id": "SC-P"}
SHELL_SAFE = r"^[A-Za-z0-9._-]+$"


def dose(order_id: str, patient: dict, day: int, grams: float = 28.0, **kw) -> dict:
    """One daily dose on 2026-05-<day>."""
    return patient | {"order_id": order_id, "dose": grams, "start": f"2026-05-{day:02d} 09:00:00"} | kw


def lab(patient: str, day: int, test: str, value: float) -> dict:
    return {"patient_id": patient, "collected_at": f"2026-05-{day:02d} 08:00:00", "test": test, "value": value,
            "unit": "umol/L" if test == "creatinine" else "g/L", "ref_low": 50, "ref_high": 110}


def rules_of(db: Path, patient: str) -> set[str]:
    return {r[0] for r in table(db, "SELECT rule_id FROM findings WHERE patient_id = ? AND resolved_run IS NULL", [patient])}


def test_evidence_that_arrives_before_the_first_ivig_order_is_kept(tmp_path: Path):
    """Baseline labs, a plasma exchange a week before and aspirin started before IVIG in Kawasaki
    disease all come before the patient's first IVIG order: they used to be thrown away."""
    db = tmp_path / "audit.duckdb"
    night(db, orders=write_rows(tmp_path / "n1" / "orders.csv", "orders", [
              {"order_id": "SC-ASA", "patient_id": "SC-K", "medication": "Aspirin 81 mg", "dose": 81, "dose_unit": "mg",
               "doses": 14, "start": "2026-05-01 08:00:00", "route": "PO"}]),
          labs=write_rows(tmp_path / "n1" / "labs.csv", "labs", [lab("SC-A", 1, "creatinine", 80), lab("SC-A", 1, "hemoglobin", 130)]),
          procedures=write_rows(tmp_path / "n1" / "procedures.csv", "procedures", [
              {"patient_id": "SC-P", "performed_at": "2026-05-01 10:00:00", "procedure": "Plasma exchange"}]))
    assert table(db, "SELECT COUNT(*) FROM courses") == [(0,)]  # nobody has IVIG yet
    night(db, orders=write_rows(tmp_path / "n2" / "orders.csv", "orders", [
        *(dose(f"SC-A{d}", ADULT, d) for d in range(5, 10)),
        dose("SC-K1", CHILD, 3, 32.0),
        *(dose(f"SC-P{d}", PLEXED, d) for d in range(8, 13)),
    ]))
    assert "monitoring.no_baseline_labs" not in rules_of(db, "SC-A")
    assert "combination.kawasaki_without_aspirin" not in rules_of(db, "SC-K")
    assert "combination.ivig_with_plasma_exchange" in rules_of(db, "SC-P")


def test_labs_no_rule_can_read_for_a_stored_course_judge_nobody_and_end_as_one_run(tmp_path: Path):
    """A result outside every rule's window around the patient's courses (or of a test no rule reads)
    cannot change a finding: the night does not judge the patient; one in a window does. Either way
    the end is that of one run over the same files."""
    db = tmp_path / "nightly.duckdb"
    # The labs already run to 30 June after the first night (someone else's result): no follow-up
    # window comes due on a later night, so only the patient's own rows can make them judged.
    first = {
        "orders": write_rows(tmp_path / "n1" / "orders.csv", "orders", [dose(f"SC-A{d}", ADULT, d) for d in range(5, 10)]),
        "labs": write_rows(tmp_path / "n1" / "labs.csv", "labs", [
            lab("SC-A", 1, "creatinine", 80), lab("SC-A", 1, "hemoglobin", 130),
            {**lab("SC-OTHER", 1, "creatinine", 80), "collected_at": "2026-06-30 08:00:00"}]),
    }
    outside = write_rows(tmp_path / "n2" / "labs.csv", "labs", [
        lab("SC-A", 28, "hemoglobin", 128),  # 19 days after the last dose: past the 10-day hemolysis window
        {**lab("SC-A", 10, "sodium", 140), "unit": "mmol/L"},  # a test no rule reads
    ])
    inside = write_rows(tmp_path / "n3" / "labs.csv", "labs", [lab("SC-A", 12, "creatinine", 85)])  # in the renal follow-up window
    night(db, **first)
    stored = table(db, "SELECT finding_id, last_seen_run FROM findings WHERE patient_id = 'SC-A' ORDER BY 1")
    assert stored
    quiet = night(db, labs=outside)
    assert quiet.patients_audited == 0
    assert table(db, "SELECT finding_id, last_seen_run FROM findings WHERE patient_id = 'SC-A' ORDER BY 1") == stored
    # The result is kept for the courses to come (the sodium never was: no rule reads it).
    assert table(db, "SELECT kind, event_at FROM ledger WHERE patient_id = 'SC-A' AND extract = 'labs' AND run_id = ?",
                 [quiet.run_id]) == [("hemoglobin", datetime(2026, 5, 28, 8, 0))]
    assert night(db, labs=inside).patients_audited == 1
    batch = tmp_path / "batch.duckdb"
    night(batch, orders=first["orders"], labs=[first["labs"], outside, inside])
    assert outcome(db) == outcome(batch)


def test_a_new_course_judges_it_and_leaves_the_patients_earlier_courses_as_they_were(tmp_path: Path):
    """A dose months after the patient's last course can change only the courses within the course gap
    of it and the later ones: the new course is judged (as the second of its series: a repeat), the
    earlier one is not read again nor re-stamped, and the end is that of one run over the same files."""
    db = tmp_path / "nightly.duckdb"
    may = write_rows(tmp_path / "n1" / "orders.csv", "orders", [dose(f"SC-A{d}", ADULT, d, 40.0) for d in range(5, 10)])  # above target
    july = write_rows(tmp_path / "n2" / "orders.csv", "orders",
                      [dose(f"SC-J{d}", ADULT, d, start=f"2026-07-{d:02d} 09:00:00") for d in range(1, 6)])
    first = night(db, orders=may)
    earlier = table(db, "SELECT finding_id, last_seen_run FROM findings WHERE patient_id = 'SC-A' ORDER BY 1")
    assert earlier and {run for _, run in earlier} == {first.run_id}
    second = night(db, orders=july)
    after = table(db, "SELECT finding_id, last_seen_run FROM findings WHERE patient_id = 'SC-A' AND resolved_run IS NULL ORDER BY 1")
    assert set(earlier) < set(after)  # the May course's findings are untouched, not raised again
    assert {run for f, run in after if (f, run) not in earlier} == {second.run_id}
    assert "repeat_justification.repeat_without_justification" in rules_of(db, "SC-A")
    assert table(db, "SELECT COUNT(*) FROM courses WHERE patient_id = 'SC-A'") == [(2,)]
    batch = tmp_path / "batch.duckdb"
    night(batch, orders=[may, july])
    assert outcome(db) == outcome(batch)


def test_a_feed_that_reuses_one_file_name_keeps_every_nights_quarantine_and_counts(tmp_path: Path):
    db, inbox = tmp_path / "audit.duckdb", tmp_path / "inbox" / "orders.csv"
    write_rows(inbox, "orders", [dose("SC-A1", ADULT, 1), dose("SC-A2", ADULT, 2, -5)])
    night(db, "night1", orders=inbox)
    write_rows(inbox, "orders", [dose("SC-A3", ADULT, 3), dose("", ADULT, 4), dose("SC-A5", ADULT, 5)])
    night(db, "night2", orders=inbox)
    assert table(db, "SELECT run_id, rows_read, rows_quarantined FROM runs ORDER BY seq") == [("night1", 2, 1), ("night2", 3, 1)]
    # Each night's rejected row belongs to its run: the second night did not replace the first's.
    assert table(db, "SELECT run_id, source_row FROM quarantine ORDER BY run_id") == [("night1", 2), ("night2", 2)]
    assert table(db, "SELECT order_id FROM orders ORDER BY order_id") == [("SC-A1",), ("SC-A3",), ("SC-A5",)]


def test_the_same_path_given_twice_in_one_run_is_read_once(tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    extract = write_rows(tmp_path / "orders.csv", "orders", [dose(f"SC-A{d}", ADULT, d) for d in range(1, 6)])
    summary = night(db, orders=[extract, extract, tmp_path])
    assert summary.rows["rows_read"] == 5
    assert table(db, "SELECT COUNT(*) FROM orders") == [(5,)]
    assert table(db, "SELECT json_array_length(inputs) FROM runs") == [(1,)]


def test_a_correction_that_fails_the_contract_leaves_the_last_good_version_in_force_on_every_night(tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    night(db, orders=write_rows(tmp_path / "n1.csv", "orders", [dose(f"SC-A{d}", ADULT, d) for d in range(1, 6)]))
    night(db, orders=write_rows(tmp_path / "n2.csv", "orders", [dose("SC-A1", ADULT, 1, "28-30")]))
    for n in (3, 4):  # later nights touching the patient (a lab) or not (another patient)
        if n == 3:
            night(db, labs=write_rows(tmp_path / "n3.csv", "labs", [lab("SC-A", 6, "creatinine", 80)]))
        else:
            night(db, orders=write_rows(tmp_path / "n4.csv", "orders", [dose("SC-B1", ADULT | {"patient_id": "SC-B"}, 7)]))
        assert table(db, "SELECT dose FROM orders WHERE order_id = 'SC-A1'") == [(28.0,)], n
        assert table(db, "SELECT total_g FROM courses WHERE patient_id = 'SC-A'") == [(140.0,)], n
        (note,) = table(db, "SELECT rejected_corrections FROM courses WHERE patient_id = 'SC-A'")[0]
        assert "SC-A1" in note and "n2.csv" in note and "range" in note, n
        assert "data_quality.correction_rejected" in rules_of(db, "SC-A"), n
    assert table(db, "SELECT state FROM ledger WHERE row_key = 'SC-A1' ORDER BY run_seq") == [("in_force",), ("rejected",)]
    # A valid correction arrives: it is in force, the note and its finding go.
    night(db, orders=write_rows(tmp_path / "n5.csv", "orders", [dose("SC-A1", ADULT, 1, 30.0)]))
    assert table(db, "SELECT dose FROM orders WHERE order_id = 'SC-A1'") == [(30.0,)]
    assert table(db, "SELECT rejected_corrections FROM courses WHERE patient_id = 'SC-A'") == [(None,)]
    assert "data_quality.correction_rejected" not in rules_of(db, "SC-A")


def test_a_dose_charted_late_keeps_the_course_and_its_reviewed_finding(tmp_path: Path):
    """An earlier dose charted a day late makes it the course's first: the course keeps its id, so
    does the finding, with its review; its facts changed since, and it says so (not reopened)."""
    from pipeline.warehouse import record_review

    db = tmp_path / "audit.duckdb"
    night(db, orders=write_rows(tmp_path / "n1.csv", "orders", [dose(f"SC-A{d}", ADULT, d, 45.0) for d in range(2, 6)]))
    (course_id,) = table(db, "SELECT course_id FROM courses")[0]
    over = f"{course_id}.course_dose.above_target"
    record_review(db, over, "acknowledged", "A. Pharmacist", note="called neurology")
    night(db, orders=write_rows(tmp_path / "n2.csv", "orders", [dose("SC-A1", ADULT, 1, 45.0)]))
    assert table(db, "SELECT course_id, start, n_days FROM courses") == [(course_id, datetime(2026, 5, 1, 9, 0), 5)]
    assert table(db, "SELECT status, changed_since_review, resolved_run FROM findings WHERE finding_id = ?", [over]) == [
        ("acknowledged", True, None)
    ]
    assert table(db, "SELECT change FROM finding_history JOIN runs USING (run_id) WHERE finding_id = ? ORDER BY seq", [over]) == [("raised",), ("changed",)]
    # Reviewed again, the mark goes; the finding's facts no longer differ from what was reviewed.
    record_review(db, over, "actioned", "A. Pharmacist", reason_code="dose_changed")
    assert table(db, "SELECT changed_since_review FROM findings WHERE finding_id = ?", [over]) == [(False,)]
    ids = [r[0] for r in table(db, "SELECT finding_id FROM findings")] + [course_id]
    assert all(re.match(SHELL_SAFE, i) for i in ids), ids
    assert table(db, "SELECT first_seen_run = (SELECT run_id FROM runs WHERE seq = 1) FROM findings WHERE finding_id = ?",
                 [over]) == [(True,)]


def test_a_reviewed_finding_whose_facts_do_not_change_is_not_marked(tmp_path: Path):
    from pipeline.warehouse import record_review

    db = tmp_path / "audit.duckdb"
    night(db, orders=write_rows(tmp_path / "n1.csv", "orders", [dose(f"SC-A{d}", ADULT, d, 45.0) for d in range(1, 6)]))
    (finding_id,) = table(db, "SELECT finding_id FROM findings WHERE rule_id = 'course_dose.above_target'")[0]
    record_review(db, finding_id, "dismissed", "A. Pharmacist", reason_code="clinically_justified")
    night(db, labs=write_rows(tmp_path / "n2.csv", "labs", [lab("SC-A", 1, "creatinine", 80)]))  # the patient is judged again
    assert table(db, "SELECT status, changed_since_review, last_seen_run = (SELECT run_id FROM runs WHERE seq = 2) "
                     "FROM findings WHERE finding_id = ?", [finding_id]) == [("dismissed", False, True)]


def test_a_new_rule_pack_judges_everyone_again_and_keeps_what_the_old_one_raised(tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    extract = write_rows(tmp_path / "n1.csv", "orders", [dose(f"SC-A{d}", ADULT, d, 35.0) for d in range(1, 6)])
    night(db, orders=extract)
    (over,) = table(db, "SELECT finding_id FROM findings WHERE rule_id = 'course_dose.above_target'")[0]
    site = tmp_path / "site.toml"
    site.write_text('[pack]\nversion = "2026.12.site"\n[settings]\ndose_tolerance = 0.5\n', encoding="utf-8")
    summary = night(db, rules=site, orders=extract)  # nothing new: the pack alone changed
    assert summary.audit_scope == "full" and "rule pack" in summary.reaudit_reason
    assert table(db, "SELECT status, audit_scope, rule_pack_version FROM runs ORDER BY seq") == [
        ("succeeded", "incremental", "2026.11.1"), ("succeeded", "full", "2026.12.site"),
    ]
    # The past is kept: the finding raised under the old pack is resolved under the new one, not rewritten.
    assert table(db, "SELECT raised_pack_version, confirmed_pack_version, resolved_run IS NOT NULL FROM findings "
                     "WHERE finding_id = ?", [over]) == [("2026.11.1", "2026.11.1", True)]
    assert table(db, "SELECT change, pack_version FROM finding_history JOIN runs USING (run_id) WHERE finding_id = ? ORDER BY seq", [over]) == [
        ("raised", "2026.11.1"), ("resolved", "2026.12.site"),
    ]
    again = night(db, rules=site, orders=extract)
    assert again.nothing_new


def test_every_run_is_recorded_and_a_missing_report_is_written_again(tmp_path: Path):
    db, reports = tmp_path / "audit.duckdb", tmp_path / "reports"
    extract = write_rows(tmp_path / "n1.csv", "orders", [dose(f"SC-A{d}", ADULT, d) for d in range(1, 6)])
    first = night(db, report_dir=reports, orders=extract)
    assert first.report_status == "written"
    (reports / "index.html").unlink()  # killed after the commit, or deleted
    second = night(db, report_dir=reports, orders=extract)
    assert second.nothing_new and second.report_status == "written" and (reports / "index.html").is_file()
    third = night(db, report_dir=reports, orders=extract)
    assert third.nothing_new and third.report_status == "up_to_date"
    assert table(db, "SELECT status, report_status FROM runs ORDER BY seq") == [
        ("succeeded", "written"), ("nothing_new", "written"), ("nothing_new", "up_to_date"),
    ]
