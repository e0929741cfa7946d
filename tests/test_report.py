"""Tests of the manager report (pipeline/reporting) and the `ivig-audit report` command."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from checks.outputs import COURSES, FINDINGS, QUARANTINE
from pipeline.reporting import PSEUDONYM_ENV, ReportOptions, ReportOptionsError, aggregate_table, build_report, headline_markdown, md_escape, pseudonym_map, render_html, render_markdown, summarise, worklist_frame, write_report
from pipeline.warehouse.scratch import scratch_database

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"
FORMULAS = ('=HYPERLINK("http://x")', "@SUM(1)", "+1", "-1+2", "\tx", "\rx")
PATIENTS = ("P1", "P2", "P3", "P4", "P5")
# The whole fixture history (Jan-Feb 2024) as one period.
ALL = dict(period_from=date(2024, 1, 1), period_to=date(2024, 2, 29))


def _empty(schema) -> pl.DataFrame:
    """An empty frame with the columns and dtypes of a Pandera schema."""
    return pl.DataFrame(schema={name: col.dtype.type for name, col in schema.columns.items()})


def _frame(schema, rows: list[dict], validate: bool = True) -> pl.DataFrame:
    """A frame of the schema's columns (missing values null), validated by the schema."""
    cols = {name: col.dtype.type for name, col in schema.columns.items()}
    df = pl.DataFrame([{c: r.get(c) for c in cols} for r in rows], schema=cols)
    return schema.validate(df) if validate else df


def _course(cid: str, pid: str, ind: str, start: datetime, total_g: float, ok: bool, excess: float = 0.0,
            service: str = "Neurology", facility: str = "North General") -> dict:
    return {
        "course_id": cid, "patient_id": pid, "facility": facility, "service": service, "prescriber_id": "DR1",
        "indication_group": ind.split("_")[0], "indication": ind, "course_number": 1, "start": start, "end": start,
        "n_days": 1, "span_days": 1, "doses": 1, "total_g": total_g, "order_ids": f"O-{cid}", "products": "Privigen",
        "actual_weight_kg": 70.0, "actual_weight_source": "current weight", "weight_basis": "actual",
        "weight_basis_reason": "not obese",
        "g_per_kg": total_g / 70.0, "appropriate": ok, "excess_g": excess,
    }


def _finding(fid: str, rule: str, sev: str, cid: str, pid: str, ind: str, msg: str, excess: float = 0.0,
             status: str = "open", resolved: str | None = None, **extra) -> dict:
    return {
        "finding_id": fid, "rule_id": rule, "rule_version": "1", "category": rule.split(".")[0], "severity": sev,
        "status": status, "patient_id": pid, "course_id": cid, "indication": ind, "message": msg,
        "expected": "target", "observed": "observed", "action": "Review the order.",
        "excess_g": excess, "first_seen_run": "run-1", "last_seen_run": "run-2", "resolved_run": resolved,
        "counts_against_course": sev != "info" and cid is not None, **extra,
    }


def make_tables(extra_courses: list[dict] | None = None, extra_findings: list[dict] | None = None,
                validate: bool = True) -> dict[str, pl.DataFrame]:
    """Six courses over Jan-Feb 2024, three indications, two facilities; findings under every lever.

    courses.appropriate and excess_g are what the audit stores (pipeline.audit.output_tables): appropriate
    unless a warning or critical finding is raised, excess the largest lever claim.
    """
    jan, feb = datetime(2024, 1, 10), datetime(2024, 2, 14)
    courses = [
        _course("P1:gbs:20240110", "P1", "gbs", jan, 140.0, False, excess=7.0),
        _course("P2:gbs:20240110", "P2", "gbs", jan, 160.0, False, excess=20.0),
        _course("P3:gbs:20240214", "P3", "gbs", feb, 140.0, True, excess=10.0, service="ICU"),
        _course("P4:cidp:20240110", "P4", "cidp_maintenance", jan, 70.5, False, excess=10.5),
        _course("P4:cidp:20240214", "P4", "cidp_maintenance", feb, 60.0, False, excess=5.0),
        _course("P5:kawasaki:20240214", "P5", "kawasaki", feb, 40.0, False, excess=40.0,
                service="Pediatrics", facility="Children's Hospital"),
    ] + (extra_courses or [])
    findings = [
        # P2: over-dose 20 g and rounding 5 g -> over-dose, 20 g (max), once.
        _finding("F1", "course_dose.above_target", "warning", "P2:gbs:20240110", "P2", "gbs", "Course above 2 g/kg", 20.0),
        _finding("F2", "course_dose.rounding_opportunity", "info", "P2:gbs:20240110", "P2", "gbs", "Round down", 5.0),
        # P3: an above-target finding cleared by a later run does not count; rounding 10 g does.
        _finding("F3", "course_dose.above_target", "critical", "P3:gbs:20240214", "P3", "gbs", "Old problem", 50.0,
                 resolved="run-2"),
        _finding("F4", "course_dose.rounding_opportunity", "info", "P3:gbs:20240214", "P3", "gbs", "Round down", 10.0),
        # P4 first course: repeat 10.5 g beats weight basis 8 g.
        _finding("F5", "repeat_justification.repeat_without_justification", "warning", "P4:cidp:20240110", "P4",
                 "cidp_maintenance", f"No justification {XSS_IMG}", 10.5),
        _finding("F6", "weight_basis.actual_weight_in_obesity", "warning", "P4:cidp:20240110", "P4",
                 "cidp_maintenance", "Actual weight in obesity", 8.0),
        # P4 second course: weight basis acknowledged (still avoidable grams, not open).
        _finding("F7", "weight_basis.actual_weight_in_obesity", "warning", "P4:cidp:20240214", "P4",
                 "cidp_maintenance", "Reviewed", 5.0, status="acknowledged"),
        # P5: the indication lever takes the whole course (40 g) over the over-dose (10 g).
        _finding("F8", "indication.unrecognised", "critical", "P5:kawasaki:20240214", "P5", "kawasaki",
                 f"Bad {XSS_SCRIPT} message", 40.0),
        _finding("F9", "course_dose.above_target", "warning", "P5:kawasaki:20240214", "P5", "kawasaki", "Above", 10.0),
        # P1: dismissed as clinically justified (a clearing reason): no grams and appropriate after review;
        # an info reminder counts against nothing.
        _finding("F10", "weight_basis.actual_weight_in_obesity", "warning", "P1:gbs:20240110", "P1", "gbs",
                 "Dismissed", 7.0, status="dismissed"),
        _finding("F11", "product_safety.slow_rate_reminder", "info", "P1:gbs:20240110", "P1", "gbs", "Infuse slowly"),
    ] + (extra_findings or [])
    reviews = pl.DataFrame([
        {"event_id": 1, "finding_id": "F10", "status": "dismissed", "reason_code": "clinically_justified",
         "note": None, "reviewed_by": "A. Pharmacist", "reviewed_at": datetime(2024, 2, 2)},
        {"event_id": 2, "finding_id": "F7", "status": "acknowledged", "reason_code": "prescriber_contacted",
         "note": None, "reviewed_by": "A. Pharmacist", "reviewed_at": datetime(2024, 2, 20)},
    ])
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
             "status": "succeeded", "profile": "default", "rule_pack_version": "2024.1", "rule_pack_hash": "h1",
             "inputs": "[]", "rows_read": 100, "rows_quarantined": 1, "rows_ivig": 80,
             "rows_passed_through": 19, "rows_out_of_scope": 0, "courses": 4, "findings": 3},
            {"run_id": "run-2", "started_at": datetime(2024, 3, 1, 2), "finished_at": datetime(2024, 3, 1, 2, 2),
             "status": "succeeded", "profile": "ontario", "rule_pack_version": "2024.2", "rule_pack_hash": "h2",
             "inputs": json.dumps(inputs), "rows_read": 160, "rows_quarantined": 1, "rows_ivig": 90,
             "rows_passed_through": 69, "rows_out_of_scope": 0, "courses": 6, "findings": 11},
        ]
    )
    return {
        "runs": runs,
        "courses": _frame(COURSES, courses, validate),
        "findings": _frame(FINDINGS, findings, validate),
        "quarantine": _frame(QUARANTINE, quarantine, validate),
        "review_events": reviews,
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
def data(tables):
    return summarise(tables, ReportOptions(cost_per_gram=100.0, **ALL))


@pytest.fixture(scope="module")
def html(tables) -> str:
    """The default report (last full month Feb 2024 and March to date) with an intervention."""
    return render_html(summarise(tables, ReportOptions(intervention=date(2024, 2, 1))))


# --------------------------------------------------------------------------- numbers (read from the views)


def test_each_course_counts_once_under_its_first_lever(tables):
    from pipeline.config.reference import reference_tables
    from pipeline.config.rulepack import load_rule_pack

    with scratch_database({**reference_tables(load_rule_pack()), **tables}) as con:
        levers = dict(((cid, (lever, g)) for cid, lever, g in con.execute(
            "SELECT course_id, lever, grams_avoidable FROM v_course_outcomes WHERE lever IS NOT NULL").fetchall()))
    assert levers == {
        "P2:gbs:20240110": ("over_dose", 20.0),  # rounding 5 g is not added
        "P3:gbs:20240214": ("rounding", 10.0),  # the resolved above-target finding does not count
        "P4:cidp:20240110": ("repeat", 10.5),  # repeat before weight basis
        "P4:cidp:20240214": ("weight_basis", 5.0),  # acknowledged still counts
        "P5:kawasaki:20240214": ("indication", 40.0),  # whole course, not over-dose too
    }  # P1: its only claim was dismissed as clinically justified


def test_by_lever_and_headline_as_flagged_and_after_review(data):
    h = data.headline
    assert (h.courses, h.patients) == (6, 5)
    assert (h.appropriate_flagged, h.pct_appropriate_flagged) == (1, pytest.approx(16.7))  # P3 only
    assert (h.appropriate_after_review, h.pct_appropriate_after_review) == (2, pytest.approx(33.3))  # and P1
    assert h.grams_used == pytest.approx(610.5)
    assert h.grams_avoidable_flagged == pytest.approx(92.5)  # courses.excess_g
    assert h.grams_avoidable == pytest.approx(85.5)  # P1's 7 g dismissed as justified
    assert h.courses_with_grams_avoidable == 5
    assert h.money_avoidable == pytest.approx(8550.0)
    assert (h.open_critical, h.open_warning, h.open_info) == (1, 4, 3)
    rows = {r["lever"]: (r["courses"], r["grams_avoidable"], r["money_avoidable"]) for r in data.by_lever.to_dicts()}
    assert list(rows) == ["indication", "repeat", "weight_basis", "over_dose", "rounding"]
    assert rows["indication"] == (1, 40.0, 4000.0)
    assert rows["over_dose"] == (1, 20.0, 2000.0)
    assert sum(v[1] for v in rows.values()) == pytest.approx(h.grams_avoidable)
    assert sum(v[2] for v in rows.values()) == pytest.approx(h.money_avoidable)


def test_default_periods_are_last_full_month_and_month_to_date(tables):
    d = summarise(tables, ReportOptions())  # as of the day the data runs to (the last course): 2024-02-14
    assert d.as_of == d.data_through == date(2024, 2, 14)
    (jan, feb) = d.periods
    assert (jan.period.start, jan.period.end) == (date(2024, 1, 1), date(2024, 1, 31))
    assert (feb.period.start, feb.period.end) == (date(2024, 2, 1), date(2024, 2, 14))
    assert jan.period.label == "January 2024" and feb.period.label == "February 2024 to date"
    assert jan.period.partial and feb.period.partial  # the data starts on 10 January and ends on 14 February
    assert (feb.headline.courses, feb.headline.appropriate_flagged, feb.headline.grams_avoidable) == (3, 1, 55.0)
    assert d.history.courses == 6  # trends: whole history
    assert d.by_month["month_label"].to_list() == ["Jan 2024", "Feb 2024"]
    assert d.by_month["partial"].to_list() == [True, True]
    assert d.by_month["grams_avoidable"].to_list() == pytest.approx([30.5, 55.0])
    d2 = summarise(tables, ReportOptions(as_of=date(2024, 2, 20)))
    assert [p.period.span for p in d2.periods] == ["2024-01-01 to 2024-01-31", "2024-02-01 to 2024-02-20"]


def test_stale_data_is_said(tables):
    assert summarise(tables, ReportOptions(today=date(2024, 2, 20))).stale_note is None
    note = summarise(tables, ReportOptions(today=date(2024, 3, 1))).stale_note
    assert "14 Feb 2024" in note and "16 days" in note
    assert summarise(tables, ReportOptions(today=date(2024, 3, 1), stale_after_days=None)).stale_note is None
    html = render_html(summarise(tables, ReportOptions(today=date(2024, 3, 1))))
    assert 'id="stale-data"' in html


def test_custom_period_and_bad_period(tables):
    d = summarise(tables, ReportOptions(period_from=date(2024, 2, 1)))
    assert len(d.periods) == 1 and d.periods[0].period.span == "2024-02-01 to 2024-02-14"
    assert d.headline.courses == 3
    with pytest.raises(ReportOptionsError, match="after"):
        summarise(tables, ReportOptions(period_from=date(2024, 3, 1), period_to=date(2024, 2, 1)))
    with pytest.raises(ReportOptionsError):
        summarise(tables, ReportOptions(cost_per_gram=-1.0))


def test_tables_by_indication_service_and_rules(data):
    rows = {r["group_key"]: r for r in data.by_indication.to_dicts()}
    assert rows["gbs"]["courses"] == 3 and rows["gbs"]["patients"] == 3
    assert rows["gbs"]["pct_appropriate_flagged"] == pytest.approx(33.3)
    assert rows["gbs"]["pct_appropriate_after_review"] == pytest.approx(66.7)
    assert rows["gbs"]["group_label"] == "Guillain-Barre syndrome"
    assert rows["gbs"]["grams_avoidable"] == pytest.approx(30.0)
    services = {r["group_key"]: r for r in data.by_service.to_dicts()}
    assert services["Neurology"]["courses"] == 4 and services["Pediatrics"]["grams_avoidable"] == 40.0
    top = {r["rule_id"]: r for r in data.top_rules.to_dicts()}
    assert top["course_dose.above_target"]["findings"] == 2  # F1, F9 (F3 resolved)
    assert top["course_dose.above_target"]["rule_title"] == "Course dose above target"  # the rule pack's words
    assert data.period_findings["severity"].to_list()[0] == "critical"
    assert data.period_findings_total == 5 and data.period_info_findings == 3
    assert data.review_status == {"open": 8, "acknowledged": 1, "actioned": 0, "dismissed": 1, "resolved": 1}


def test_facility_filter_and_unknown_facility(tables):
    d = summarise(tables, ReportOptions(facility="children's hospital", **ALL))
    assert d.facility == "Children's Hospital" and d.facility_note is None
    assert d.headline.courses == 1 and d.headline.grams_avoidable == 40.0
    assert set(d.worklist["patient_id"].to_list()) == {"P5"}
    d = summarise(tables, ReportOptions(facility="Nowhere", **ALL))
    assert d.headline.courses == 0 and d.worklist.height == 0
    assert "No courses for facility 'Nowhere'" in d.facility_note and "North General" in d.facility_note


def test_intervention_before_and_after(tables):
    d = summarise(tables, ReportOptions(intervention=date(2024, 2, 1), intervention_label="ABW protocol"))
    before, after = d.intervention.to_dicts()
    assert (before["courses"], after["courses"]) == (3, 3)
    assert before["pct_appropriate_flagged"] == 0.0 and after["pct_appropriate_flagged"] == pytest.approx(33.3)
    assert before["pct_appropriate_after_review"] == pytest.approx(33.3)
    assert before["grams_avoidable"] == pytest.approx(30.5) and before["money_avoidable"] == pytest.approx(30.5 * 80)


# --------------------------------------------------------------------------- HTML


def test_html_charts_and_content(html):
    assert html.count("<svg") == 10  # each chart drawn for a desktop and for a phone
    for fig in ("trend", "by-indication", "levers", "top-rules", "by-service"):
        assert f'id="fig-{fig}"' in html
    assert "January 2024" in html and "February 2024 to date" in html  # both periods side by side
    assert "Before and after: Intervention (2024-02-01)" in html
    assert "US$70-100 per gram" in html  # the cost assumption and its source
    assert "US$4,400" in html  # February: 55 g avoidable x US$80 (the rule pack's [costs])
    assert "Adjusted-weight dosing" in html and "Rounding to vial size" in html
    assert "P5" in html  # the findings table names patients (internal report)


def test_every_chart_specification_is_valid_vega_lite_in_the_report_style(tables, monkeypatch):
    import altair as alt
    from altair.utils.schemapi import validate_jsonschema

    from pipeline.reporting import charts

    drawn: list[dict] = []
    draw = charts.vlc.vegalite_to_svg
    monkeypatch.setattr(charts.vlc, "vegalite_to_svg", lambda spec: (drawn.append(spec), draw(spec))[1])
    render_html(summarise(tables, ReportOptions(intervention=date(2024, 2, 1))))
    assert len(drawn) == 10
    schema = alt.vegalite.v6.schema.load_schema()
    for spec in drawn:
        validate_jsonschema(spec, schema)  # the report skips Altair's validation (charts._spec): checked here
        assert spec["config"]["font"] == charts.FONT and spec["config"]["view"]["stroke"] is None


def test_html_is_self_contained(html):
    lowered = html.lower()
    for needle in ('src="http', "src='http", 'href="http', "href='http", "@import", "<script", "url(http"):
        assert needle not in lowered, needle
    assert "<link" not in lowered
    assert "default-src 'none'" in html  # no script could run even if one slipped in


def test_html_escapes_data_text():
    payload = f"{XSS_SCRIPT}{XSS_IMG}"
    tables = make_tables(
        [_course("P6:x:20240220", "P6", XSS_SCRIPT, datetime(2024, 2, 20), 30.0, False, excess=30.0,
                 service=payload, facility=payload)],
        [_finding("F12", "indication.unrecognised", "critical", "P6:x:20240220", "P6", XSS_SCRIPT, payload, 30.0)],
    )
    tables["runs"] = tables["runs"].with_columns(
        pl.when(pl.col("run_id") == "run-2")
        .then(pl.lit(json.dumps([{"path": f"evil{XSS_IMG}.csv", "rows": 3}])))
        .otherwise(pl.col("inputs"))
        .alias("inputs")
    )
    out = render_html(summarise(tables, ReportOptions(title="Audit <b>x</b>", facility=payload,
                                                      cost_source=XSS_IMG, **ALL)))
    assert XSS_SCRIPT not in out and XSS_IMG not in out and "<b>x</b>" not in out
    assert not re.search(r"<\s*(script|img)\b", out, re.IGNORECASE)  # no tag from data, escaped or not
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out
    assert out.count("<svg") == 10
    md = render_markdown(summarise(tables, ReportOptions(facility=payload, **ALL)))
    assert XSS_SCRIPT not in md and XSS_IMG not in md


def test_empty_database():
    data = summarise(empty_tables(), ReportOptions())
    assert data.headline.courses == 0 and data.headline.pct_appropriate_flagged is None
    assert data.headline.money_avoidable == 0
    out = render_html(data)
    assert "no courses audited yet" in out.lower()
    assert "<svg" not in out
    assert "no courses audited yet" in render_markdown(data).lower()


def test_missing_tables_and_runs():
    out = render_html(summarise({"courses": make_tables()["courses"]}, ReportOptions(**ALL)))
    assert "No audit run recorded" in out
    assert out.count("<svg") == 6  # no findings: no levers, no top rules
    assert "No open findings in the report window" in out


# --------------------------------------------------------------------------- Markdown and artifacts


def test_markdown_headline_and_tables(tables):
    md = render_markdown(summarise(tables, ReportOptions(cost_per_gram=100.0, **ALL)))
    assert md.startswith("# IVIG stewardship audit")
    assert "| Courses audited | 6 | 6 |" in md  # the period and all history
    assert "| Appropriate, as flagged | 17% (1 of 6) | 17% (1 of 6) |" in md
    assert "| Appropriate, after review | 33% (2 of 6) | 33% (2 of 6) |" in md
    assert "| Grams avoidable, as flagged | 92.5 g | 92.5 g |" in md
    assert "| Grams avoidable, after review | 85.5 g (5 courses) | 85.5 g (5 courses) |" in md
    assert "| Money avoidable, after review | US$8,550 | US$8,550 |" in md
    assert "| Guillain-Barre syndrome | 3 | 3 | 33% | 67% | 440 g | 30 g |" in md
    assert "| Jan 2024 (partial\\: 2024-01-10 to 2024-01-31) | 3 |" in md  # partial months say so
    assert "| Course dose above target | course_dose.above_target |" in md  # the rule's title, then its id
    assert "data/orders &amp; more.csv" in md or "data/orders & more.csv" in md
    for pid in PATIENTS:  # no patient identifiers in the Markdown summary
        assert pid not in md


def test_markdown_escapes_table_cells():
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("`x`") == "\\`x\\`"
    assert md_escape("<b>") == "&lt;b&gt;"
    assert md_escape("two\nlines") == "two lines"
    key = "odd|<key>`"
    md = render_markdown(summarise(make_tables([_course("P6:x:1", "P6", key, datetime(2024, 2, 20), 30.0, True)]),
                                   ReportOptions(**ALL)))
    assert "| odd\\|&lt;key&gt;\\` | 1 |" in md
    assert key not in md and "<key>" not in md


def test_artifacts_carry_no_patient_identifiers(tables):
    d = summarise(tables, ReportOptions())
    text = headline_markdown(d)
    rows = aggregate_table(d)
    assert "Courses audited" in text and "All history" in text
    assert {r["indication"] for r in rows} == {"Guillain-Barre syndrome", "CIDP maintenance", "Kawasaki disease"}
    blob = text + json.dumps(rows, ensure_ascii=False)
    for pid in PATIENTS + ("P9",):
        assert pid not in blob
    assert all(set(r) >= {"courses", "pct_appropriate_flagged", "pct_appropriate_after_review", "grams_avoidable"}
               for r in rows)


# --------------------------------------------------------------------------- worklist


def test_worklist_is_formula_safe_and_keeps_numbers():
    extra = [
        _finding(f"X{i}", "course_dose.above_target", "warning", "P2:gbs:20240110", "P2", "gbs", payload, -1.5 * i,
                 expected=payload, observed=payload, action=payload)
        for i, payload in enumerate(FORMULAS, start=1)
    ]
    tables = make_tables([_course("-7:gbs:20240120", "-7", "gbs", datetime(2024, 1, 20), 10.0, True,
                                  service="=cmd|'/c calc'!A0")],
                         extra + [_finding("X9", "monitoring.no_baseline_labs", "warning", "-7:gbs:20240120", "-7",
                                           "gbs", "@SUM(1)")], validate=False)
    df = worklist_frame(summarise(tables, ReportOptions(**ALL)))
    assert df.columns == ["finding_id", "severity", "category", "rule_title", "rule_id", "patient_id", "course_id",
                          "indication", "course_start", "facility", "service", "prescriber_id", "message", "expected",
                          "observed", "action", "excess_g", "status"]
    buf = io.StringIO()
    df.write_csv(buf, date_format="%Y-%m-%d")
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    for row in rows:
        for col, cell in row.items():
            if col in ("excess_g", "course_start"):
                continue
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (col, cell)
    by_id = {r["finding_id"]: r for r in rows}
    assert by_id["X1"]["message"] == "'=HYPERLINK(\"http://x\")"
    assert by_id["X2"]["message"] == "'@SUM(1)" and by_id["X3"]["message"] == "'+1"
    assert by_id["X4"]["message"] == "'-1+2" and by_id["X5"]["message"] == "'\tx"
    assert by_id["X1"]["excess_g"] == "-1.5"  # a negative number stays a number
    assert by_id["X9"]["patient_id"] == "'-7" and by_id["X9"]["service"] == "'=cmd|'/c calc'!A0"
    assert by_id["X9"]["course_start"] == "2024-01-20"


def test_write_report_files(tables, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("pipeline.reporting.charts.CHART_BUILDERS", ())  # charts are tested elsewhere
    paths, d = build_report(tables, tmp_path / "out", ReportOptions(cost_per_gram=90.0, **ALL))
    assert [p.name for p in paths] == ["index.html", "summary.md", "worklist.csv"]
    html_text, md_text = (p.read_text(encoding="utf-8") for p in paths[:2])
    assert "US$7,695" in html_text  # 85.5 g x 90
    assert "US$7,695" in md_text
    raw = paths[2].read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads UTF-8
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert len(rows) == 8 and rows[0]["severity"] == "critical"  # open findings, worst first
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert write_report(empty_tables(), tmp_path / "empty") == [tmp_path / "empty" / n
                                                                for n in ("index.html", "summary.md", "worklist.csv")]


# --------------------------------------------------------------------------- pseudonyms


def test_pseudonymized_outputs_hide_patient_ids(tables, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("pipeline.reporting.charts.CHART_BUILDERS", ())  # charts hold aggregates only
    monkeypatch.delenv(PSEUDONYM_ENV, raising=False)
    with pytest.raises(ReportOptionsError, match="pseudonym"):
        summarise(tables, ReportOptions(pseudonymize=True))
    monkeypatch.setenv(PSEUDONYM_ENV, "site-secret")
    paths, d = build_report(tables, tmp_path, ReportOptions(pseudonymize=True, **ALL))
    assert d.pseudonymized
    mapping = dict(pseudonym_map(pl.Series(list(PATIENTS)), b"site-secret").iter_rows())
    assert all(v.startswith("anon-") and len(v) == 21 for v in mapping.values())
    for path in paths:
        text = path.read_text(encoding="utf-8-sig")
        for pid in PATIENTS:
            assert f"{pid}:" not in text and f">{pid}<" not in text and f",{pid}," not in text, (path.name, pid)
    csv_text = paths[2].read_text(encoding="utf-8-sig")
    assert mapping["P5"] in csv_text and f"{mapping['P5']}:kawasaki:20240214" in csv_text  # course ids too
    assert mapping["P5"] in paths[0].read_text(encoding="utf-8")
    # Same key, same pseudonym; another key, another.
    again = summarise(tables, ReportOptions(pseudonymize=True, pseudonym_key="site-secret", **ALL))
    other = summarise(tables, ReportOptions(pseudonymize=True, pseudonym_key="other", **ALL))
    assert set(again.worklist["patient_id"]) == set(d.worklist["patient_id"])
    assert not set(other.worklist["patient_id"]) & set(d.worklist["patient_id"])
    assert again.headline == d.headline  # numbers do not change


def test_pseudonym_map_hashes_each_distinct_id_once():
    ids = pl.Series(["P1", "P2", "P1", None, "P1"])
    m = pseudonym_map(ids, b"k")
    assert m.height == 2 and m["pseudonym"].n_unique() == 2


# --------------------------------------------------------------------------- command line

runner = CliRunner()


def _cli(args: list[str]):
    from flows.cli import app

    return runner.invoke(app, ["report", *args])


@pytest.fixture()
def fake_db(tmp_path: Path, monkeypatch) -> Path:
    """A database file holding the fixture's tables."""
    db = tmp_path / "audit.duckdb"
    scratch_database(make_tables(), path=db).close()
    return db


def _one_line_error(result) -> str:
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--from", "2024-13-01"], 2, "--from must be a date"),
        (["--to", "yesterday"], 2, "--to must be a date"),
        (["--from", "2024-03-01", "--to", "2024-02-01"], 2, "is after"),
        (["--cost-per-gram", "abc"], 2, "--cost-per-gram"),
        (["--cost-per-gram", "-5"], 2, "--cost-per-gram"),
        (["--pseudonymize"], 2, "--pseudonym-key"),
    ],
)
def test_cli_bad_options_are_one_line(fake_db, tmp_path, monkeypatch, args, code, text):
    monkeypatch.delenv(PSEUDONYM_ENV, raising=False)
    result = _cli(["--db", str(fake_db), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == code
    assert text in _one_line_error(result)


def test_cli_unwritable_out_is_exit_3(fake_db, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        result = _cli(["--db", str(fake_db), "--out", str(out)])
        assert result.exit_code == 3
        assert "cannot write the report" in _one_line_error(result)


def test_cli_writes_report_with_options(fake_db, tmp_path):
    out = tmp_path / "r"
    result = _cli(["--db", str(fake_db), "--out", str(out), "--from", "2024-01-01", "--to", "2024-02-29",
                   "--cost-per-gram", "100", "--cost-source", "2024 contract", "--facility", "Nowhere",
                   "--pseudonymize", "--pseudonym-key", "k", "--intervention", "2024-02-01"])
    assert result.exit_code == 0, result.output
    assert "No courses for facility 'Nowhere'" in result.stderr and "check that the nightly extract" in result.stderr
    html_text = (out / "index.html").read_text(encoding="utf-8")
    assert "2024 contract" in html_text and "No courses for facility" in html_text
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "summary.md", "worklist.csv"]
