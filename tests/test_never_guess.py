"""Issue 14, "Never guess, never crash": the cases reproduced by a new user, one test each (the hostile
corpus in tests/hostile/ holds the extracts that need a file; tests/test_config_validation.py the
configuration cases; tests/test_prefect_safety.py the Prefect ones)."""

from __future__ import annotations

import gzip
import os
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from checks.inputs import EXTRACT_COLUMNS, PLAUSIBILITY
from flows.cli import app
from pipeline.audit import Extracts, prepare
from pipeline.contract.accounting import accounting_of
from pipeline.ingest.mappings import load_mapping
from pipeline.ingest.errors import ExtractError
from pipeline.ingest.tables import scan_extract
from pipeline.config.rulepack import load_rule_pack
from tests.builders import ivig_order, lab_rows, order_rows, pack, products
from tests.reliability_helpers import PATIENTS, night_rows, nightly, write_extract


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _prepared(paths: list[Path], mapping=None, rules: Path | None = None):
    lf, _ = scan_extract(paths, "orders", mapping=mapping)
    return prepare(Extracts(orders=lf), products(), load_rule_pack(rules) if rules else pack())


def _reasons(prepared) -> dict[str, str]:
    q = prepared.quarantine
    return dict(zip(q["order_id"].to_list(), q["reason"].to_list()))


# ------------------------------------------------------------------------------------ dates
UK_PROFILE = """
[dates]
formats = ["%d/%m/%Y %H:%M", "%d/%m/%Y"]
"""


def _uk_extract(tmp_path: Path, birth_date: str = "05/03/1950") -> Path:
    rows = [ivig_order(f"UK{d}", "PUK", dose="14", start=f"{d:02d}/01/2026 09:00", birth_date=birth_date, age_years=None)
            for d in range(1, 6)]
    return write_extract(tmp_path / "uk.csv", rows)


def test_a_uk_extract_with_its_layout_declared_is_one_five_day_course(tmp_path: Path):
    """05/01/2026 is 5 January once the profile declares day-first: five daily doses, one course."""
    prepared = _prepared([_uk_extract(tmp_path)], load_mapping(_write(tmp_path / "uk.toml", UK_PROFILE)))
    assert sorted(prepared.ivig["start"].to_list()) == [datetime(2026, 1, d, 9) for d in range(1, 6)]
    # the declared layouts are the layouts of every date column: birth date 5 March 1950, not 3 May
    assert prepared.ivig["age_years"][0] == pytest.approx((date(2026, 1, 1) - date(1950, 3, 5)).days / 365.25)
    assert accounting_of(prepared).check().quarantined == 0


def test_declared_layouts_replace_the_defaults_for_date_only_columns_too(tmp_path: Path):
    """A profile declaring only a date-time layout: the date-only birth_date 05/03/1950 is no longer read
    month-first by a default tried after it (it became 3 May): the file is refused, and below the share
    each IVIG row is quarantined naming the layout expected."""
    profile = load_mapping(_write(tmp_path / "uk.toml", '[dates]\nformats = ["%d/%m/%Y %H:%M"]\n'))
    with pytest.raises(ExtractError) as caught:
        _prepared([_uk_extract(tmp_path)], profile)
    assert "100% of 'birth_date' values are not ISO 8601 (first: '05/03/1950')" in str(caught.value)
    lenient = _write(tmp_path / "site.toml", "[settings]\ndate_failure_share = 1.0\n")
    prepared = _prepared([_uk_extract(tmp_path)], profile, rules=lenient)
    reasons = _reasons(prepared)
    assert prepared.ivig.height == 0 and len(reasons) == 5
    assert all("birth_date is not a date: '05/03/1950' (expected ISO 8601" in r for r in reasons.values())


def test_an_undeclared_uk_extract_is_refused_and_the_share_is_a_setting(tmp_path: Path):
    extract = _uk_extract(tmp_path)
    with pytest.raises(ExtractError) as caught:
        _prepared([extract])
    message = str(caught.value)
    assert "\n" not in message and str(extract) in message
    assert "100% of 'start' values are not ISO 8601 (first: '01/01/2026 09:00')" in message
    assert '[dates] formats = ["%d/%m/%Y %H:%M"] or ["%m/%d/%Y %H:%M"]' in message
    # with the share at 100% the file is read: every row quarantined with the layout it should have had
    lenient = _write(tmp_path / "site.toml", "[settings]\ndate_failure_share = 1.0\n")
    prepared = _prepared([extract], rules=lenient)
    assert prepared.ivig.height == 0
    assert all("start is not a date: '0" in r for r in _reasons(prepared).values())


def test_a_few_bad_dates_are_quarantined_not_the_file(tmp_path: Path):
    rows = [ivig_order(f"O{d}", f"P{d}", start=f"2026-06-0{d} 09:00") for d in range(1, 4)]
    rows.append(ivig_order("O9", "P9", start="06/09/2026"))
    prepared = _prepared([write_extract(tmp_path / "x.csv", rows)])
    assert prepared.ivig.height == 3
    assert "start is not a date: '06/09/2026' (expected ISO 8601" in _reasons(prepared)["O9"]


def test_the_site_time_zone_converts_offsets(tmp_path: Path):
    rows = [ivig_order("O1", start="2026-06-01T08:00:00Z"), ivig_order("O2", "P2", start="2026-06-01 08:00:00")]
    london = _write(tmp_path / "site.toml", '[settings]\nsite_timezone = "Europe/London"\n')
    prepared = _prepared([write_extract(tmp_path / "x.csv", rows)], rules=london)
    starts = dict(zip(prepared.ivig["order_id"].to_list(), prepared.ivig["start"].to_list()))
    assert starts == {"O1": datetime(2026, 6, 1, 9), "O2": datetime(2026, 6, 1, 8)}  # BST; local as written


def test_the_shipped_epic_profile_declares_its_month_first_layouts():
    mapping = load_mapping("epic_clarity")
    assert "%m/%d/%Y %I:%M:%S %p" in mapping.date_formats and "%m/%d/%Y" in mapping.date_formats


# ------------------------------------------------------------------------------------ numbers
NUMERIC_COLUMNS = {
    "orders": {"dose", "doses", "weight_kg", "height_cm", "age_years", "pre_pregnancy_weight_kg"},
    "labs": {"value", "ref_low", "ref_high"},
}


def test_every_numeric_canonical_column_has_a_plausibility_range_in_one_place():
    assert NUMERIC_COLUMNS["orders"] <= set(EXTRACT_COLUMNS["orders"])
    assert NUMERIC_COLUMNS["labs"] <= set(EXTRACT_COLUMNS["labs"])
    for column in NUMERIC_COLUMNS["orders"]:
        assert column in PLAUSIBILITY, column
    assert {"lab_value", "lab_reference", "grams_per_day", "start_year"} <= set(PLAUSIBILITY)
    assert all(low <= high for low, high in PLAUSIBILITY.values())


def test_lab_values_that_are_not_finite_or_implausible_are_quarantined():
    from pipeline.contract.rows import check_labs
    from tests.builders import site_time_zone

    labs = lab_rows(
        {"patient_id": "P1", "collected_at": "2026-06-01", "test": "egfr", "value": "NaN"},
        {"patient_id": "P1", "collected_at": "2026-06-01", "test": "egfr", "value": "inf"},
        {"patient_id": "P1", "collected_at": "2026-06-01", "test": "creatinine", "value": "-5"},
        {"patient_id": "P1", "collected_at": "2026-06-01", "test": "creatinine", "value": "80", "ref_high": "high"},
        {"patient_id": "P1", "collected_at": "2026-06-01", "test": "egfr", "value": "75"},
    )
    valid, rejected = check_labs(labs, site_time_zone())
    reasons = rejected.collect()["reason"].to_list()
    assert valid.collect()["value"].to_list() == [75.0]
    assert "value is not a number: 'NaN'" in reasons[0] and "value is not a number: 'inf'" in reasons[1]
    assert "value -5 is outside the plausible 0-10000000" in reasons[2]
    assert "ref_high is not a number: 'high'" in reasons[3]


# ------------------------------------------------------------------------------------ extract shape
def test_a_nul_byte_late_in_a_gzip_extract_is_refused(tmp_path: Path):
    text = write_extract(tmp_path / "x.csv", [ivig_order(f"O{i}", f"P{i}") for i in range(800)]).read_bytes()
    path = tmp_path / "late_nul.csv.gz"
    path.write_bytes(gzip.compress(text[:-5] + b"\0" + text[-5:]))
    with pytest.raises(ExtractError) as caught:
        scan_extract([path], "orders")
    assert "holds a NUL byte at offset" in str(caught.value)


def test_a_broken_row_is_named_without_its_content(tmp_path: Path):
    """Polars quotes the offending field in its error; ours names the problem, never the patient's row."""
    path = write_extract(tmp_path / "orders.csv", [ivig_order()])
    path.write_text(path.read_text() + '"Jane Doe MRN123,1,2\n')
    problem = "quoted field is not closed"
    with pytest.raises(ExtractError) as caught:
        scan_extract([path], "orders")
    message = str(caught.value)
    assert problem in message and "\n" not in message
    assert "Jane" not in message and "MRN123" not in message


def test_a_night_names_the_file_of_a_broken_row_and_writes_nothing(tmp_path: Path):
    """The night parses rows once (in its selecting pass); a broken row still stops it naming its file, without its content."""
    from pipeline.night import NightRequest, run_night

    good = write_extract(tmp_path / "in" / "night_1.csv", [ivig_order("O1", "P1")])
    broken = write_extract(tmp_path / "in" / "night_2.csv", [ivig_order("O2", "P2")])
    broken.write_text(broken.read_text() + '"Jane Doe MRN123,1,2\n')
    db = tmp_path / "audit.duckdb"
    with pytest.raises(ExtractError) as caught:
        run_night(NightRequest(db=db, inputs={"orders": [good.parent]}))
    message = str(caught.value)
    assert str(broken) in message and str(good) not in message
    assert "quoted field is not closed" in message and "\n" not in message
    assert "Jane" not in message and "MRN123" not in message
    assert not db.exists()


def test_a_used_nested_parquet_column_is_a_one_line_error(tmp_path: Path):
    frame = order_rows(ivig_order()).collect().drop("source_file", "source_row").with_columns(indication=pl.lit(["GBS"]))
    path = tmp_path / "x.parquet"
    frame.write_parquet(path)
    with pytest.raises(ExtractError) as caught:
        scan_extract([path], "orders")
    assert "column indication is List(String) (nested or binary), not text, a number or a date" in str(caught.value)


def test_columns_a_mapping_does_not_read_are_never_read(tmp_path: Path):
    frame = pl.DataFrame({"ID": ["A1"], "PT": ["P1"], "DRUG": ["Privigen"], "AMT": [30.5], "UNIT": ["g"],
                          "WHEN": ["2026-06-01 09:00"], "NOTES": [[{"a": 1}]]})
    path = tmp_path / "site.parquet"
    frame.write_parquet(path)
    profile = _write(tmp_path / "p.toml", '[orders.columns]\norder_id = "ID"\npatient_id = "PT"\nmedication = "DRUG"\n'
                     'dose = "AMT"\ndose_unit = "UNIT"\nstart = "WHEN"\n')
    lf, _ = scan_extract([path], "orders", mapping=load_mapping(profile))
    row = lf.collect().row(0, named=True)
    assert (row["order_id"], row["dose"], row["start"]) == ("A1", "30.5", "2026-06-01 09:00")


# ------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--cost-per-gram", "abc"], "Invalid value for '--cost-per-gram'"),
        (["run", "--shards", "0"], "Invalid value for '--shards'"),
        (["findings", "--since", "2026-13-01"], "Invalid value for '--since'"),
        (["nonsense"], "No such command 'nonsense'"),
    ],
)
def test_a_bad_option_is_one_line_not_a_usage_box(args, needle):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ivig-audit: error: ") and needle in lines[0], result.stderr
    assert "╭" not in result.output and "Usage:" not in result.output


def test_an_unexpected_failure_is_one_line_with_exit_3(tmp_path: Path, monkeypatch):
    """A bug (not a user's mistake) is still one line, exit 3, and its stack (no message) in the debug log."""
    import pipeline.warehouse as warehouse

    def broken(*args, **kwargs):
        raise KeyError(f"patient {PATIENTS[0]}")

    monkeypatch.setattr(warehouse, "read_findings", broken)  # `findings` imports it when it runs
    monkeypatch.setenv("IVIG_AUDIT_DEBUG_LOG", str(tmp_path / "debug.log"))
    (tmp_path / "a.duckdb").touch()
    result = CliRunner().invoke(app, ["findings", "--db", str(tmp_path / "a.duckdb")])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "(KeyError)" in lines[0] and PATIENTS[0] not in result.stderr, result.stderr
    logged = (tmp_path / "debug.log").read_text(encoding="utf-8")
    assert "KeyError (message withheld)" in logged and PATIENTS[0] not in logged


# ------------------------------------------------------------------------------------ privacy
@pytest.fixture()
def audited_db(tmp_path: Path) -> Path:
    db = tmp_path / "audit.duckdb"
    nightly(db, write_extract(tmp_path / "n1.csv", night_rows(1)), "night1")
    return db


def test_export_is_owner_only_even_into_an_existing_folder_with_umask_022(audited_db: Path, tmp_path: Path):
    out = tmp_path / "export"
    out.mkdir(mode=0o755)
    previous = os.umask(0o022)
    try:
        result = CliRunner().invoke(app, ["export", "--db", str(audited_db), "--to", str(out)])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.parquet"))
    assert len(files) > 10 and (out.stat().st_mode & 0o777) == 0o700
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    assert PATIENTS[0] in pl.read_parquet(out / "courses.parquet")["patient_id"].to_list()


def test_export_pseudonymized_holds_no_patient_id_anywhere(audited_db: Path, tmp_path: Path):
    out = tmp_path / "anon"
    result = CliRunner().invoke(app, ["export", "--db", str(audited_db), "--to", str(out), "--pseudonymize",
                                      "--pseudonym-key", "site-secret"])
    assert result.exit_code == 0 and "pseudonymised" in result.stdout, result.output
    courses = pl.read_parquet(out / "courses.parquet")
    assert courses["patient_id"].str.starts_with("anon-").all()
    for path in out.glob("*.parquet"):
        frame = pl.read_parquet(path)
        text = "\n".join(str(v) for col in frame.columns for v in frame[col].cast(pl.String, strict=False).to_list())
        leaked = [p for p in PATIENTS if p in text]
        assert not leaked, (path.name, leaked)
    # the same key gives the report's pseudonyms
    from pipeline.reporting import pseudonym_map

    expected = pseudonym_map(pl.Series([PATIENTS[0]]), b"site-secret")["pseudonym"][0]
    assert expected in courses["patient_id"].to_list()


def test_export_pseudonymize_without_a_key_is_one_line_exit_2(audited_db: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("IVIG_AUDIT_PSEUDONYM_KEY", raising=False)
    result = CliRunner().invoke(app, ["export", "--db", str(audited_db), "--to", str(tmp_path / "x"), "--pseudonymize"])
    assert result.exit_code == 2 and "needs a key" in result.stderr and not (tmp_path / "x").exists()


def test_findings_on_the_terminal_strip_escape_sequences_and_bidi_overrides(tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    nasty = "\x1b]0;owned\x07\x1b[2J\x1b[31msarcoid neuropathy\u202egnp.exe\u2066x\u2069 \x08\x7f\x9b1m"
    rows = [r | {"indication": nasty} if r["order_id"] == "OZQ-301" else r for r in night_rows(1)]
    nightly(db, write_extract(tmp_path / "n1.csv", rows), "night1")
    result = CliRunner().invoke(app, ["findings", "--db", str(db)])
    assert result.exit_code == 0
    assert "sarcoid neuropathy" in result.stdout  # the text is shown...
    as_json = CliRunner().invoke(app, ["findings", "--db", str(db), "--json", "--include-info"])
    assert as_json.exit_code == 0 and "sarcoid neuropathy" in as_json.stdout
    for char in ("\x1b", "\u202e", "\u2066", "\u2069", "\x08", "\x7f", "\x9b", "\x07"):
        assert char not in result.stdout, repr(char)  # ...but nothing in it is acted on
        assert char not in as_json.stdout, repr(char)  # JSON escapes it (\u001b)
