"""The report's numbers are the database's: every headline number equals its view (on the sample and on
random cohorts), the views agree with the stored columns and with a recomputation from the findings, and
review decisions move the after-review numbers as their reasons say."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline.config.rulepack import load_rule_pack
from pipeline.night import NightRequest, run_night
from pipeline.reporting import ReportOptions, render_html, summarise
from pipeline.reporting.formatting import fmt_grams, fmt_money
from pipeline.reporting.options import Headline
from pipeline.rules.levers import lever_expr
from pipeline.warehouse import connect_read_only, read_tables, record_review
from tests import nightly_cohort as nc
from tests.conftest import SAMPLE

#: Headline fields read from `course_summary` under the same name.
SUMMARY_FIELDS = [f.name for f in dataclasses.fields(Headline) if f.name not in ("money_avoidable", "rows_quarantined")]


def _reviewed(db: Path) -> Path:
    """Record a few decisions: two clearing dismissals, one that does not clear, one acknowledgement."""
    findings = read_tables(db, ["findings"])["findings"].filter(
        pl.col("counts_against_course") & pl.col("resolved_run").is_null())
    # Courses with one finding against them first: clearing it makes the course appropriate after review.
    ids = (findings.with_columns(pl.len().over("course_id").alias("against"))
           .sort("against", "finding_id")["finding_id"].to_list())
    for finding_id, status, reason in zip(ids, ("dismissed", "dismissed", "dismissed", "acknowledged"),
                                          ("data_error", "clinically_justified", "other", "prescriber_contacted")):
        record_review(db, finding_id, status, "A. Pharmacist", reason_code=reason)
    return db


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory) -> Path:
    """The shipped sample audited, with review decisions."""
    db = tmp_path_factory.mktemp("metrics") / "audit.duckdb"
    run_night(NightRequest(db=db, inputs={"orders": [SAMPLE / "orders"], "labs": [SAMPLE / "labs.csv"],
                                          "procedures": [SAMPLE / "procedures.csv"]}))
    return _reviewed(db)


@pytest.fixture(scope="module", params=[11, 23, 37])
def cohort_db(request, tmp_path_factory) -> Path:
    """A random cohort delivered as weekly files and audited night by night, with review decisions."""
    root = tmp_path_factory.mktemp(f"cohort{request.param}")
    rng = random.Random(request.param)
    feed = nc.files(nc.random_cohort(rng), root / "feed", period_days=7, reuse_names=False)
    db = root / "audit.duckdb"
    nc.audit_nights(db, nc.by_week(feed))
    return _reviewed(db)


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> pl.DataFrame:
    return con.sql(sql, params=params).pl()


def _check_report_equals_views(db: Path) -> None:
    con = connect_read_only(db)
    try:
        data = summarise(con, ReportOptions())
        cost = data.options.cost_per_gram
        headlines = [(ph.period.start, ph.period.end, ph.headline) for ph in data.periods]
        headlines += [(data.window.start, data.window.end, data.headline), (None, None, data.history)]
        for start, end, headline in headlines:
            view = _query(con, "SELECT * FROM course_summary('all', ?, ?, NULL)", [start, end])
            money = _query(con, "SELECT SUM(money_avoidable) AS m FROM lever_summary(?, ?, NULL, ?)", [start, end, cost])
            if view.height == 0:
                assert headline.courses == 0
                continue
            row = view.row(0, named=True)
            assert {f: getattr(headline, f) for f in SUMMARY_FIELDS} == {f: row[f] for f in SUMMARY_FIELDS}
            assert headline.money_avoidable == pytest.approx(money["m"][0] or 0.0)
        window = [data.window.start, data.window.end]
        assert data.by_indication.equals(_query(con, "SELECT * FROM course_summary('indication', ?, ?, NULL)", window))
        assert data.by_service.equals(_query(con, "SELECT * FROM course_summary('service', ?, ?, NULL)", window))
        assert data.by_lever.equals(_query(con, "SELECT * FROM lever_summary(?, ?, NULL, ?)", [*window, cost]))
        assert data.by_month.equals(_query(con, "SELECT * FROM monthly_summary(NULL)", []))
        assert data.worklist["finding_id"].to_list() == _query(con, "SELECT finding_id FROM v_open_findings", [])["finding_id"].to_list()
        # The analysts' view over the whole history is the same definition.
        history = _query(con, "SELECT * FROM v_summary_by_indication", [])
        assert history["courses"].sum() == data.history.courses
        assert history["grams_avoidable"].sum() == pytest.approx(data.history.grams_avoidable, abs=0.05 * history.height)
    finally:
        con.close()
    page = render_html(data)
    assert fmt_money(data.history.money_avoidable, data.options.currency) in page
    assert fmt_grams(data.history.grams_used) in page


def _check_views_equal_recomputation(db: Path) -> None:
    """The views' verdicts recomputed in Polars from the stored findings, reviews and the rule pack."""
    pack = load_rule_pack()
    tables = read_tables(db, ["courses", "findings", "review_events"])
    courses, findings, events = tables["courses"], tables["findings"], tables["review_events"]
    clearing = [code for code, d in pack.dispositions.items() if d.clears_finding]
    latest = events.sort("event_id").group_by("finding_id").agg(pl.col("reason_code").last())
    current = (
        findings.filter(pl.col("resolved_run").is_null(), pl.col("course_id").is_not_null())
        .join(latest, on="finding_id", how="left")
        .with_columns(cleared=(pl.col("status") == "dismissed") & pl.col("reason_code").is_in(clearing).fill_null(False),
                      lever=lever_expr(pack.levers, pack.rules, pl.col("rule_id")))
    )
    flagged_bad = set(current.filter(pl.col("counts_against_course"))["course_id"])
    reviewed_bad = set(current.filter(pl.col("counts_against_course") & ~pl.col("cleared"))["course_id"])
    grams_flagged = current.filter(pl.col("lever").is_not_null()).group_by("course_id").agg(pl.col("excess_g").max())
    grams_reviewed = current.filter(pl.col("lever").is_not_null() & ~pl.col("cleared")).group_by("course_id").agg(
        pl.col("excess_g").max())
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute("SELECT courses, appropriate_flagged, appropriate_after_review, grams_avoidable_flagged, "
                          "grams_avoidable FROM course_summary('all', NULL, NULL, NULL)").fetchall()[0]
    n = courses.height
    # The stored verdict (written by the audit) is the findings' verdict.
    assert set(courses.filter(~pl.col("appropriate"))["course_id"]) == flagged_bad
    assert courses["excess_g"].sum() == pytest.approx(grams_flagged["excess_g"].fill_null(0).sum())
    assert row[:3] == (n, n - len(flagged_bad), n - len(reviewed_bad))
    assert row[3] == pytest.approx(courses["excess_g"].sum(), abs=0.05)
    assert row[4] == pytest.approx(grams_reviewed["excess_g"].fill_null(0).sum(), abs=0.05)


def test_sample_report_equals_its_views(sample_db):
    _check_report_equals_views(sample_db)


def test_sample_views_equal_a_recomputation(sample_db):
    _check_views_equal_recomputation(sample_db)
    with duckdb.connect(str(sample_db), read_only=True) as con:  # the decisions moved the after-review numbers
        flagged, reviewed = con.execute("SELECT appropriate_flagged, appropriate_after_review "
                                        "FROM course_summary('all', NULL, NULL, NULL)").fetchall()[0]
    assert reviewed > flagged


def test_cohort_report_equals_its_views(cohort_db):
    _check_report_equals_views(cohort_db)
    _check_views_equal_recomputation(cohort_db)


def test_each_levers_grams_are_what_its_words_say(sample_db):
    """The lever table's meanings (rule pack [levers.*]) against the sample's courses."""
    with duckdb.connect(str(sample_db), read_only=True) as con:
        rows = con.execute(
            "SELECT lever, indication, total_g, grams_avoidable, appropriate_flagged FROM v_course_outcomes").fetchall()
        meanings = dict(con.execute("SELECT lever, meaning FROM ref_levers").fetchall())
        rounding_against = con.execute(
            "SELECT COUNT(*) FROM v_finding_verdicts WHERE lever = 'rounding' AND against_course_flagged").fetchall()[0][0]
    by_lever: dict[str | None, list[tuple]] = {}
    for lever, indication, total_g, grams, appropriate in rows:
        by_lever.setdefault(lever, []).append((indication, total_g, grams, appropriate))
    assert "the whole course" in meanings["indication"]
    assert by_lever["indication"] and all(grams == total for _, total, grams, _ in by_lever["indication"])
    assert "missing indication is not counted" in meanings["indication"]
    assert all(ind != "missing" for ind, *_ in by_lever["indication"])
    assert "does not make the course inappropriate" in meanings["rounding"]
    assert by_lever["rounding"] and rounding_against == 0
    assert all(grams > 0 for lever, courses in by_lever.items() if lever for _, _, grams, _ in courses)
    assert all(grams == 0 for _, _, grams, _ in by_lever.get(None, []))
