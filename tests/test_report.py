"""Tests of the manager report (pipeline/report.py)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from checks.outputs import COURSES, FINDINGS, QUARANTINE
from pipeline.report import (
    ReportOptions,
    md_escape,
    render_html,
    render_markdown,
    summarise,
    write_report,
)

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"


def _empty(schema) -> pl.DataFrame:
    """An empty frame with the columns and dtypes of a Pandera schema."""
    return pl.DataFrame(schema={name: col.dtype.type for name, col in schema.columns.items()})


def _frame(schema, rows: list[dict]) -> pl.DataFrame:
    """A frame of the schema's columns (missing values null), validated by the schema."""
    cols = {name: col.dtype.type for name, col in schema.columns.items()}
    df = pl.DataFrame([{c: r.get(c) for c in cols} for r in rows], schema=cols)
    return schema.validate(df)


def _course(cid: str, pid: str, ind: str, start: datetime, total_g: float, ok: bool, excess: float = 0.0) -> dict:
    return {
        "course_id": cid, "patient_id": pid, "service": "Neurology", "indication_group": ind.split("_")[0],
        "indication": ind, "course_number": 1, "start": start, "end": start, "n_days": 1, "span_days": 1,
        "doses": 1, "total_g": total_g, "order_ids": f"O-{cid}", "products": "Privigen",
        "actual_weight_kg": 70.0, "weight_basis": "actual", "weight_basis_reason": "not obese",
        "g_per_kg": total_g / 70.0, "appropriate": ok, "excess_g": excess,
    }


def _finding(fid: str, rule: str, cat: str, sev: str, cid: str, pid: str, ind: str, msg: str,
             excess: float = 0.0, status: str = "open", resolved: str | None = None) -> dict:
    return {
        "finding_id": fid, "rule_id": rule, "rule_version": "1", "category": cat, "severity": sev,
        "status": status, "patient_id": pid, "course_id": cid, "indication": ind, "message": msg,
        "excess_g": excess, "first_seen_run": "run-1", "last_seen_run": "run-2", "resolved_run": resolved,
    }


def make_tables(extra_courses: list[dict] | None = None) -> dict[str, pl.DataFrame]:
    """Six courses over Jan-Feb 2024 and three indications; findings of mixed severity, one resolved."""
    jan, feb = datetime(2024, 1, 10), datetime(2024, 2, 14)
    courses = [
        _course("C1", "P1", "gbs", jan, 140.0, True),
        _course("C2", "P2", "gbs", jan, 160.0, False, excess=20.0),
        _course("C3", "P3", "gbs", feb, 140.0, True),
        _course("C4", "P4", "cidp_maintenance", jan, 70.5, False, excess=10.5),
        _course("C5", "P4", "cidp_maintenance", feb, 60.0, True),
        _course("C6", "P5", "kawasaki", feb, 40.0, False),
    ] + (extra_courses or [])
    findings = [
        _finding("F1", "DOSE-001", "course_dose", "warning", "C2", "P2", "gbs", "Course above 2 g/kg", 20.0),
        _finding("F2", "IND-001", "indication", "critical", "C6", "P5", "kawasaki", f"Bad {XSS_SCRIPT} message"),
        _finding("F3", "REP-001", "repeat_justification", "warning", "C4", "P4", "cidp_maintenance",
                 f"No justification {XSS_IMG}", 10.5),
        _finding("F4", "MON-001", "monitoring", "info", "C1", "P1", "gbs", "No creatinine before course"),
        _finding("F5", "DOSE-001", "course_dose", "critical", "C3", "P3", "gbs", "Old problem", 50.0,
                 resolved="run-2"),
        _finding("F6", "WB-001", "weight_basis", "warning", "C5", "P4", "cidp_maintenance", "Reviewed",
                 5.0, status="acknowledged"),
    ]
    quarantine = [
        {"run_id": "run-2", "extract": "orders", "source_file": "orders.csv", "source_row": 7,
         "order_id": "X7", "patient_id": None, "reason": "dose <= 0", "raw": "{}"},
        {"run_id": "run-1", "extract": "orders", "source_file": "orders.csv", "source_row": 9,
         "order_id": "X9", "patient_id": "P9", "reason": "unknown unit", "raw": "{}"},
    ]
    inputs = [
        {"extract": "orders", "path": "data/orders & more.csv", "sha256": "ab" * 32, "rows": 120},
        {"extract": "labs", "path": "data/labs.parquet", "sha256": "cd" * 32, "rows": 40},
    ]
    runs = pl.DataFrame(
        [
            {"run_id": "run-1", "started_at": datetime(2024, 2, 1, 2), "finished_at": datetime(2024, 2, 1, 2, 1),
             "status": "completed", "profile": "default", "rule_pack_version": "2024.1", "rule_pack_hash": "h1",
             "inputs": "[]", "rows_read": 100, "rows_quarantined": 1, "rows_ivig": 80,
             "rows_passed_through": 19, "rows_out_of_scope": 0, "courses": 4, "findings": 3},
            {"run_id": "run-2", "started_at": datetime(2024, 3, 1, 2), "finished_at": datetime(2024, 3, 1, 2, 2),
             "status": "completed", "profile": "default", "rule_pack_version": "2024.2", "rule_pack_hash": "h2",
             "inputs": json.dumps(inputs), "rows_read": 160, "rows_quarantined": 1, "rows_ivig": 90,
             "rows_passed_through": 69, "rows_out_of_scope": 0, "courses": 6, "findings": 6},
        ]
    )
    return {
        "runs": runs,
        "courses": _frame(COURSES, courses),
        "findings": _frame(FINDINGS, findings),
        "quarantine": _frame(QUARANTINE, quarantine),
    }


def empty_tables() -> dict[str, pl.DataFrame]:
    return {
        "runs": pl.DataFrame(schema={"run_id": pl.String, "started_at": pl.Datetime("us")}),
        "courses": _empty(COURSES),
        "findings": _empty(FINDINGS),
        "quarantine": _empty(QUARANTINE),
    }


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return make_tables()


@pytest.fixture(scope="module")
def html(tables) -> str:
    return render_html(summarise(tables, ReportOptions()))


# --------------------------------------------------------------------------- summarise


def test_headline_numbers(tables):
    h = summarise(tables, ReportOptions(cost_per_gram=100.0)).headline
    assert (h.courses, h.patients, h.appropriate) == (6, 5, 3)
    assert h.pct_appropriate == pytest.approx(50.0)
    assert h.grams_used == pytest.approx(610.5)
    assert h.grams_above_target == pytest.approx(30.5)
    assert h.money_avoidable == pytest.approx(30.5 * 100.0)
    # F5 is resolved and F6 acknowledged: neither is open.
    assert (h.open_critical, h.open_warning, h.open_info) == (1, 2, 1)
    assert h.open_findings == 4
    assert h.rows_quarantined == 1


def test_by_indication(tables):
    data = summarise(tables, ReportOptions())
    rows = {r["indication"]: r for r in data.by_indication.to_dicts()}
    assert rows["gbs"]["courses"] == 3 and rows["gbs"]["patients"] == 3
    assert rows["gbs"]["pct_appropriate"] == pytest.approx(200 / 3)
    assert rows["gbs"]["label"] == "Guillain-Barré syndrome"
    assert rows["gbs"]["grams"] == pytest.approx(440.0)
    assert rows["gbs"]["grams_above_target"] == pytest.approx(20.0)
    assert rows["cidp_maintenance"]["patients"] == 1
    assert rows["cidp_maintenance"]["pct_appropriate"] == pytest.approx(50.0)
    assert rows["kawasaki"]["pct_appropriate"] == pytest.approx(0.0)


def test_by_month_and_findings(tables):
    data = summarise(tables, ReportOptions())
    months = data.by_month.to_dicts()
    assert [m["month_label"] for m in months] == ["Jan 2024", "Feb 2024"]
    assert [m["courses"] for m in months] == [3, 3]
    assert months[0]["pct_appropriate"] == pytest.approx(100 / 3)
    assert months[1]["grams"] == pytest.approx(240.0)
    wide = {r["label"]: r for r in data.findings_table.to_dicts()}
    assert set(wide) == {"Course dose", "Indication", "Repeat justification", "Monitoring"}
    assert wide["Course dose"]["critical"] == 0 and wide["Course dose"]["warning"] == 1
    excess = {r["category"]: r["excess_g"] for r in data.excess_by_category.to_dicts()}
    assert excess == {"course_dose": pytest.approx(20.0), "repeat_justification": pytest.approx(10.5)}
    assert data.top_rules["rule_id"].to_list()[0] in {"DOSE-001", "IND-001", "REP-001", "MON-001"}
    assert data.top_rules.filter(pl.col("rule_id") == "DOSE-001")["findings"].item() == 1
    assert data.recent_critical["rule_id"].to_list() == ["IND-001"]
    assert data.review_status == {"open": 4, "acknowledged": 1, "actioned": 0, "dismissed": 0, "resolved": 1}
    assert data.period_start == datetime(2024, 1, 10) and data.period_end == datetime(2024, 2, 14)


def test_run_metadata(tables):
    run = summarise(tables, ReportOptions()).run
    assert run is not None and run.run_id == "run-2" and run.rule_pack_version == "2024.2"
    assert [(f.name, f.extract, f.rows) for f in run.inputs] == [
        ("data/orders & more.csv", "orders", 120),
        ("data/labs.parquet", "labs", 40),
    ]
    assert run.rows_read == 160 and run.runs_total == 2


# --------------------------------------------------------------------------- HTML


def test_html_has_one_svg_per_chart(html):
    assert html.count("<svg") == 4
    for fig in ("by-indication", "trend", "findings", "excess"):
        assert f'id="fig-{fig}"' in html
    assert "Guillain-Barré syndrome" in html
    assert "US$2,440" in html  # 30.5 g x 80
    assert "US$70-100 per gram" in html  # the cost assumption and its source
    assert "IND-001" in html and "P5" in html  # critical findings table


def test_html_is_self_contained(html):
    lowered = html.lower()
    for needle in ('src="http', "src='http", 'href="http', "href='http", "@import", "<script", "url(http"):
        assert needle not in lowered, needle
    assert "<link" not in lowered


def test_html_escapes_data_text():
    tables = make_tables([_course("C7", "P6", XSS_SCRIPT, datetime(2024, 2, 20), 30.0, True)])
    tables["runs"] = tables["runs"].with_columns(
        pl.when(pl.col("run_id") == "run-2")
        .then(pl.lit(json.dumps([{"path": f"evil{XSS_IMG}.csv", "rows": 3}])))
        .otherwise(pl.col("inputs"))
        .alias("inputs")
    )
    out = render_html(summarise(tables, ReportOptions(title="Audit <b>x</b>")))
    assert XSS_SCRIPT not in out
    assert XSS_IMG not in out
    assert "<b>x</b>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out
    assert out.count("<svg") == 4


def test_empty_database():
    data = summarise(empty_tables(), ReportOptions())
    assert data.headline.courses == 0 and data.headline.pct_appropriate is None
    assert data.headline.money_avoidable == 0
    out = render_html(data)
    assert "no courses audited yet" in out.lower()
    assert "<svg" not in out
    md = render_markdown(data)
    assert "no courses audited yet" in md.lower()


def test_missing_tables_and_runs():
    out = render_html(summarise({"courses": make_tables()["courses"]}, ReportOptions()))
    assert "No audit run recorded" in out
    assert out.count("<svg") == 2  # no findings: the two findings charts become notes
    assert "No open findings" in out


# --------------------------------------------------------------------------- Markdown


def test_markdown_headline_and_tables(tables):
    md = render_markdown(summarise(tables, ReportOptions()))
    assert md.startswith("# IVIG stewardship audit")
    assert "| Courses audited | 6 |" in md
    assert "| Patients | 5 |" in md
    assert "50% (3 of 6)" in md
    assert "US$2,440 at US$80 per gram" in md
    assert "critical 1, warning 2, info 1" in md
    assert "| Indication | Courses | Patients | % appropriate | Grams | Grams above target |" in md
    assert "| Guillain-Barré syndrome | 3 | 3 | 67% | 440 g | 20 g |" in md
    assert "| CIDP maintenance | 2 | 1 | 50% | 130.5 g | 10.5 g |" in md
    assert "P5" not in md  # no patient identifiers in the Markdown summary
    assert "data/orders & more.csv" in md


def test_markdown_escapes_table_cells():
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("`x`") == "\\`x\\`"
    assert md_escape("<b>") == "&lt;b&gt;"
    assert md_escape("two\nlines") == "two lines"
    key = "odd|<key>`"
    md = render_markdown(summarise(make_tables([_course("C7", "P6", key, datetime(2024, 2, 20), 30.0, True)]),
                                   ReportOptions()))
    assert "| odd\\|&lt;key&gt;\\` | 1 |" in md
    assert key not in md and "<key>" not in md


# --------------------------------------------------------------------------- files


def test_write_report(tables, tmp_path: Path):
    paths = write_report(tables, tmp_path / "out", ReportOptions(cost_per_gram=90.0))
    assert [p.name for p in paths] == ["index.html", "summary.md"]
    html_text, md_text = (p.read_text(encoding="utf-8") for p in paths)
    assert html_text.count("<svg") == 4 and "US$2,745" in html_text
    assert "US$2,745" in md_text


def test_write_report_empty(tmp_path: Path):
    paths = write_report(empty_tables(), tmp_path)
    assert all(p.exists() for p in paths)
