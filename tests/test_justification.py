"""Reading justification text (pipeline/domain/justification.py): negation scope, placeholders, uncertainty,
measured changes, codes, and the labelled set's precision and recall per kind."""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pytest

from pipeline.domain.justification import read_justifications, with_readings
from pipeline.config.rulepack import RulePackError, load_rule_pack
from pipeline.rules.engine import documents, why_not_documented
from tests.builders import audit, ivig_order, pack

LABELLED = Path(__file__).resolve().parent / "data" / "justification_labelled.csv"
KINDS = ("response", "fluctuation", "refractory", "ms_pregnancy")


def read(*texts: str) -> dict[str, dict]:
    """The reading of each text, by text."""
    frame = read_justifications(pl.LazyFrame({"text": list(texts)}, schema={"text": pl.String}), pack().justification)
    return {row["text"]: row for row in frame.collect().iter_rows(named=True)}


def judged(kinds: list[str], texts: list[str | None], codes: list[str | None] | None = None) -> pl.DataFrame:
    """Whether each course-like row documents one of the kinds, and why not, through the rules' helpers."""
    courses = pl.LazyFrame(
        {
            "course_id": [str(n) for n in range(len(texts))],
            "justification": texts,
            "justification_code": codes or [None] * len(texts),
            "indication_text": [None] * len(texts),
        },
        schema={"course_id": pl.String, "justification": pl.String, "justification_code": pl.String, "indication_text": pl.String},
    )
    vocabulary = pack().justification
    return with_readings(courses, vocabulary).select(
        "course_id", "justification", "justification_code",
        documented=documents(vocabulary, kinds), why=why_not_documented(vocabulary, kinds),
    ).collect().sort(pl.col("course_id").cast(pl.Int64))


# ------------------------------------------------------------------------------------ scope
def test_a_negation_ends_at_its_terminator():
    r = read("No relapse; INCAT improved 5 to 3", "no improvement in INCAT", "no improvement in INCAT but grip stronger")
    assert r["No relapse; INCAT improved 5 to 3"]["response"] == "affirmed"
    assert r["no improvement in INCAT"]["response"] == "negated"
    assert r["no improvement in INCAT"]["response_clause"] == "no improvement in INCAT"
    assert r["no improvement in INCAT but grip stronger"]["response"] == "affirmed"


def test_a_negative_outcome_covers_the_words_before_it():
    r = read("response not sustained", "improvement not seen", "INCAT unchanged", "MRC sum score stable 56")
    assert r["response not sustained"]["response"] == "negated"
    assert r["improvement not seen"]["response"] == "negated"
    assert r["INCAT unchanged"]["response"] is None and r["INCAT unchanged"]["negated_clause"] == "INCAT unchanged"
    assert r["MRC sum score stable 56"]["response"] == "affirmed"


def test_measured_changes_are_read_by_the_direction_each_scale_improves():
    r = read("INCAT 5->3", "INCAT 3 -> 5", "MRC 50 -> 56", "MRC 56 -> 50", "INCAT 3 -> 3", "MRC sum up 6", "INCAT up 2", "plt 9 → 110")
    assert [r[t]["response"] for t in ("INCAT 5->3", "MRC 50 -> 56", "MRC sum up 6", "plt 9 → 110")] == ["affirmed"] * 4
    assert [r[t]["response"] for t in ("INCAT 3 -> 5", "MRC 56 -> 50", "INCAT 3 -> 3", "INCAT up 2")] == ["negated"] * 4


def test_an_earlier_kind_claims_its_words():
    r = read("plt 12 after initial response", "deteriorated after initial improvement", "Refractory: failed azathioprine; MG-ADL 9 -> 3")
    assert (r["plt 12 after initial response"]["fluctuation"], r["plt 12 after initial response"]["response"]) == ("affirmed", None)
    assert r["deteriorated after initial improvement"]["fluctuation"] == "affirmed"
    assert r["deteriorated after initial improvement"]["response"] is None
    both = r["Refractory: failed azathioprine; MG-ADL 9 -> 3"]
    assert (both["refractory"], both["response"]) == ("affirmed", "affirmed")


def test_placeholders_and_uncertainty_document_nothing():
    r = read("none", "n/a; see notes", "-", "pending review", "?response", "INCAT 4 -> 2; review pending")
    assert r["none"]["placeholder"] and r["n/a; see notes"]["placeholder"] and r["-"]["placeholder"]
    assert r["pending review"]["uncertain_clause"] == "pending review"
    assert r["?response"]["response"] == "uncertain"
    assert r["INCAT 4 -> 2; review pending"]["response"] == "affirmed"  # the doubt is in the other clause


def test_every_distinct_text_gets_one_reading_row():
    frame = read_justifications(pl.LazyFrame({"text": ["none", "none", None, "INCAT 5->3", "   "]}), pack().justification).collect()
    assert sorted(frame["text"].to_list()) == ["INCAT 5->3", "none"]


# ------------------------------------------------------------------------------------ why it did not count
def test_the_reason_names_what_was_read():
    j = judged(["response"], ["none", "no improvement in INCAT", "pending review", None, "continue as before please", "fluctuation on day 10", "INCAT 5 -> 3"])
    why = dict(zip(j["justification"].to_list(), j["why"].to_list()))
    assert j["documented"].to_list() == [False, False, False, False, False, False, True]
    assert why["none"] == "placeholder: 'none'"
    assert why["no improvement in INCAT"] == "negated: 'no improvement in INCAT'"
    assert why["pending review"] == "placeholder: 'pending review'"
    assert why[None] == "no justification documented"
    assert why["continue as before please"] == "no objective response in the text"
    assert why["fluctuation on day 10"] == "documents treatment-related fluctuation or poor response, not objective response"


def test_a_code_is_used_before_the_text():
    j = judged(
        ["response"],
        ["no improvement", "INCAT 5 -> 3", None, None, None],
        ["response", "NONE", "Fluctuation", "XYZ", "RESPONSE, XYZ"],
    )
    assert j["documented"].to_list() == [True, False, False, False, True]
    assert j["why"][1] == "coded 'NONE' (nothing documented), not objective response"
    assert j["why"][2] == "coded 'Fluctuation' (treatment-related fluctuation or poor response), not objective response"
    assert j["why"][3] == "justification code 'XYZ' is not in the rule pack's [justification.codes]"


def test_a_bad_site_vocabulary_is_a_one_line_error(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text("[justification.codes]\nREVIEWED = 'reviewed'\n", encoding="utf-8")
    with pytest.raises(RulePackError, match="not a justification kind"):
        load_rule_pack(site)
    site.write_text("[justification]\nnegation_cues = ['(unclosed']\n", encoding="utf-8")
    with pytest.raises(RulePackError, match="not a valid regular expression"):
        load_rule_pack(site)
    site.write_text("[rules.\"repeat_justification.repeat_without_justification\".params]\njustified_by = ['vibes']\n", encoding="utf-8")
    with pytest.raises(RulePackError, match="'vibes' is not a justification kind"):
        load_rule_pack(site)


def test_a_site_can_extend_the_vocabulary(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text("[justification.kinds.response]\nphrases = ['\\bbetter\\b', '\\bwalks? further\\b']\n", encoding="utf-8")
    r = read_justifications(pl.LazyFrame({"text": ["walks further", "INCAT improved"]}), load_rule_pack(site).justification).collect()
    by_text = dict(zip(r["text"], r["response"]))
    assert by_text == {"walks further": "affirmed", "INCAT improved": None}  # the site's list replaces the shipped one


# ------------------------------------------------------------------------------------ the labelled set
def _labelled() -> list[dict[str, str]]:
    with LABELLED.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_the_labelled_set_is_large_and_varied():
    rows = _labelled()
    assert len(rows) >= 150 and len({r["text"] for r in rows}) == len(rows)
    assert {r["split"] for r in rows} == {"dev", "holdout"}
    categories = {r["category"] for r in rows}
    assert {"affirmed", "negated", "placeholder", "mixed", "misspelled", "abbreviated", "uncertain"} <= categories
    for text in ("INCAT 5->3", "MRC sum up 6", "plt 12 after initial response"):
        assert text in {r["text"] for r in rows}


def score(rows: list[dict[str, str]], kind: str) -> tuple[float, float, list[str], list[str]]:
    """Precision, recall, false positives and false negatives of `documents([kind])` on the labelled rows."""
    j = judged([kind], [r["text"] for r in rows])
    found = dict(zip(j["justification"].to_list(), j["documented"].to_list()))
    truth = {r["text"]: r[kind] == "1" for r in rows}
    tp = sum(found[t] and truth[t] for t in truth)
    false_pos = sorted(t for t in truth if found[t] and not truth[t])
    false_neg = sorted(t for t in truth if truth[t] and not found[t])
    precision = tp / (tp + len(false_pos)) if tp + len(false_pos) else 1.0
    recall = tp / (tp + len(false_neg)) if tp + len(false_neg) else 1.0
    return precision, recall, false_pos, false_neg


def test_labelled_set_precision_and_recall_per_kind(capsys):
    """Printed per kind for the whole set and for the held-out rows (written before they were first
    scored, with the vocabulary frozen); documented response must reach 0.95 on both."""
    rows = _labelled()
    splits = {"all": rows, "holdout": [r for r in rows if r["split"] == "holdout"]}
    figures = {(name, kind): score(part, kind) for name, part in splits.items() for kind in KINDS}
    with capsys.disabled():
        for name, part in splits.items():
            print(f"\nlabelled justification set ({name}): {len(part)} phrases")
            for kind in KINDS:
                precision, recall, false_pos, false_neg = figures[(name, kind)]
                positives = sum(r[kind] == "1" for r in part)
                print(f"  {kind:<13} precision {precision:.3f}  recall {recall:.3f}  ({positives} affirmed)")
                for text in false_pos:
                    print(f"    false positive: {text!r}")
                for text in false_neg:
                    print(f"    false negative: {text!r}")
    for name in splits:
        precision, recall, _, _ = figures[(name, "response")]
        assert precision >= 0.95 and recall >= 0.95, name


# ------------------------------------------------------------------------------------ follow-up windows
def _gbs_course_and_labs():
    """A 2 g/kg GBS course (last dose 06-14) with baseline labs, and labs that arrive on two nights."""
    orders = [ivig_order(f"G{d}", start=f"2026-06-{10 + d} 09:00:00") for d in range(5)]
    first_night_labs = [
        dict(patient_id="P1", collected_at="2026-06-08 07:00:00", test="creatinine", value="0.9", ref_high="1.3", source_file="labs1.csv"),
        dict(patient_id="P1", collected_at="2026-06-08 07:00:00", test="hemoglobin", value="14", source_file="labs1.csv"),
        dict(patient_id="P1", collected_at="2026-06-16 07:00:00", test="platelets", value="250", source_file="labs1.csv"),
    ]
    second_night_labs = [
        dict(patient_id="P1", collected_at="2026-07-10 07:00:00", test="platelets", value="240", source_file="labs2.csv"),
    ]
    return orders, first_night_labs, second_night_labs


def _open_monitoring(result) -> set[str]:
    return set(result.findings.filter(pl.col("rule_id").str.starts_with("monitoring."))["rule_id"].to_list())


def test_a_follow_up_window_is_judged_only_once_the_labs_run_past_it():
    orders, first, second = _gbs_course_and_labs()
    assert _open_monitoring(audit(orders, labs=first)) == set()  # labs end 06-16, the window on 06-24: not yet due
    assert _open_monitoring(audit(orders, labs=first + second)) == {"monitoring.no_hemoglobin_after_course"}


def test_follow_up_nights_end_as_one_batch_run(tmp_path):
    """Night 1 (labs to 06-16) raises nothing; night 2 brings only another patient's lab of 07-10: the
    data now runs past P1's follow-up window, so P1's course is judged again although no row of P1 came."""
    from tests.nightly_cohort import night, table, write_rows

    orders, first, second = _gbs_course_and_labs()
    other = [row | {"patient_id": "P-OTHER"} for row in second]
    db = tmp_path / "audit.duckdb"
    night(db, orders=write_rows(tmp_path / "orders.csv", "orders", orders), labs=write_rows(tmp_path / "labs1.csv", "labs", first))
    assert table(db, "SELECT rule_id FROM findings WHERE rule_id LIKE 'monitoring.%'") == []
    summary = night(db, labs=write_rows(tmp_path / "labs2.csv", "labs", other))
    assert summary.patients_audited == 1
    batch = audit(orders, labs=first + other)
    assert {r[0] for r in table(db, "SELECT rule_id FROM findings WHERE resolved_run IS NULL")} == set(batch.findings["rule_id"])
    assert _open_monitoring(batch) == {"monitoring.no_hemoglobin_after_course"}
