"""Hostile extracts (tests/hostile/, made by make_corpus.py): every row accounted for, nothing crashes,
nothing reaches the report or a spreadsheet as live HTML or a live formula.

For each file of the corpus: scan_extract + the audit (or a one-line ExtractError for a file the manifest
says is refused), the order accounting balanced, the run written to a fresh database, the report written
from it, then index.html parsed (no script, no event handler, no javascript: URL, no payload verbatim),
summary.md checked, and every cell of worklist.csv and of `ivig-audit findings --csv` checked for formulas.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.contract.accounting import accounting_of
from pipeline.ingest.errors import ExtractError
from pipeline.warehouse import read_tables
from tests.reliability_helpers import compute_night, write_night

HOSTILE = Path(__file__).resolve().parent / "hostile"
MANIFEST = json.loads((HOSTILE / "manifest.json").read_text(encoding="utf-8"))
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def test_corpus_is_what_make_corpus_generates():
    """The committed files are exactly what the committed script writes (nobody edited one by hand)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.corpus()
    assert sorted(generated) == sorted(MANIFEST)
    for name, (data, outcome, payloads) in generated.items():
        assert (HOSTILE / name).read_bytes() == data, name
        assert MANIFEST[name] == {"outcome": outcome, "payloads": payloads}


class _Dangerous(HTMLParser):
    """Collects what would run in a browser: script/iframe/object elements, on* handlers, javascript: URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "iframe", "object", "embed", "frame", "base", "meta") and tag != "meta":
            self.found.append(f"<{tag}>")
        if tag == "meta" and any(k == "http-equiv" and (v or "").lower() == "refresh" for k, v in attrs):
            self.found.append("<meta refresh>")
        for key, value in attrs:
            if key.startswith("on"):
                self.found.append(f"{tag} {key}=")
            if key in ("href", "src", "action", "formaction", "xlink:href") and (value or "").strip().lower().startswith(
                ("javascript:", "data:text/html", "vbscript:")
            ):
                self.found.append(f"{tag} {key}={value}")


def assert_html_inert(html: str, payloads: list[str]) -> None:
    parser = _Dangerous()
    parser.feed(html)
    assert not parser.found, parser.found[:5]
    for payload in payloads:
        if "<" in payload or ">" in payload or '"' in payload:
            assert payload not in html, f"payload unescaped in index.html: {payload!r}"


def assert_csv_formula_safe(path: Path) -> int:
    """Every cell: not starting like a formula unless it is a plain number (numbers are never formulas)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    for row in rows:
        for cell in row:
            if cell.startswith(FORMULA_START):
                try:
                    float(cell)
                except ValueError:
                    pytest.fail(f"live formula in {path.name}: {cell[:60]!r}")
    return len(rows) - 1


def assert_markdown_inert(markdown: str) -> None:
    """summary.md parsed as CommonMark: no link, image or HTML from the data, and nothing GitHub would
    autolink (a scheme's colon, www., an e-mail @ are escaped)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    found = []
    for token in tokens:
        for child in [token, *(token.children or [])]:
            if child.type in ("link_open", "image", "html_inline", "html_block"):
                found.append((child.type, child.content or child.attrs))
            if child.type == "text" and re.search(r"(?i)\b(https?|ftp|javascript|data|vbscript|mailto):|\bwww\.|\S@\S", child.content):
                # the text node keeps the character, the source has it escaped: check the source line
                line = markdown.splitlines()[token.map[0]] if token.map else ""
                if re.search(r"(?i)\b(https?|ftp|javascript|data|vbscript|mailto):|\bwww\.|[^\\]@", line):
                    found.append(("autolink", line[:80]))
    assert not found, found[:5]


#: What a terminal acts on: escape sequences, control characters (but the line breaks between findings)
#: and bidirectional overrides.
TERMINAL_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


AUDITED = sorted(n for n, spec in MANIFEST.items() if spec["outcome"] == "audited")
REFUSED = sorted(n for n, spec in MANIFEST.items() if spec["outcome"] == "refused")


@pytest.mark.parametrize("name", REFUSED)
def test_refused_file_is_a_one_line_extract_error(name: str, tmp_path: Path):
    db = tmp_path / "audit.duckdb"
    with pytest.raises(ExtractError) as caught:
        compute_night(db, HOSTILE / name, "hostile")
    message = str(caught.value)
    assert message and "\n" not in message and "\r" not in message and len(message) < 300
    assert name in message
    assert not db.exists()


@pytest.mark.parametrize("name", AUDITED)
def test_hostile_file_is_accounted_for_stored_and_reported_safely(name: str, tmp_path: Path):
    from pipeline.reporting import write_report

    db, reports = tmp_path / "audit.duckdb", tmp_path / "reports"
    computed = compute_night(db, HOSTILE / name, "hostile")
    run, result, _ = computed
    accounting = accounting_of(result)
    assert accounting.balanced, accounting.describe()
    assert result.quarantine["reason"].is_not_null().all()
    # Every quarantined orders row keeps its file and row number and its original text.
    assert result.quarantine["source_row"].is_not_null().all() and result.quarantine["raw"].is_not_null().all()
    write_night(db, computed)
    tables = read_tables(db)
    # Lose nothing between the audit and the database.
    assert tables["orders"].height == result.orders.height
    assert tables["findings"].height == result.findings.height
    assert tables["quarantine"].height == result.quarantine.unique(["source_file", "source_row", "reason"]).height

    paths = write_report(tables, reports)
    payloads = MANIFEST[name]["payloads"]
    html = (reports / "index.html").read_text(encoding="utf-8")
    assert_html_inert(html, payloads)
    summary = (reports / "summary.md").read_text(encoding="utf-8")
    for payload in payloads:
        if "<" in payload:
            assert payload not in summary, f"payload unescaped in summary.md: {payload!r}"
    assert "<script" not in summary.lower()
    assert_markdown_inert(summary)
    assert_csv_formula_safe(reports / "worklist.csv")
    assert len(paths) == 3

    # The pharmacists' export: `ivig-audit findings --csv`.
    from flows.cli import app

    out = tmp_path / "findings.csv"
    cli = CliRunner().invoke(app, ["findings", "--db", str(db), "--csv", str(out)])
    assert cli.exit_code == 0, cli.output
    exported = assert_csv_formula_safe(out)
    # The worklist on the terminal: text from the data is shown, never acted on.
    shown = CliRunner().invoke(app, ["findings", "--db", str(db)])
    assert shown.exit_code == 0, shown.output
    assert not TERMINAL_CONTROL.search(shown.stdout), repr(TERMINAL_CONTROL.findall(shown.stdout)[:5])
    open_findings = tables["findings"].filter(
        (tables["findings"]["status"] == "open") & tables["findings"]["resolved_run"].is_null()
    ).height
    assert exported == open_findings
    if payloads:
        # The payloads did reach the outputs (as inert text): the test checks something.
        text = out.read_text(encoding="utf-8")
        assert any(("'" + p) in text or p.strip("\t") in text for p in payloads)


def test_payloads_reach_findings_so_the_escaping_is_exercised(tmp_path: Path):
    """The formula and HTML files raise findings whose message, observed value and ids carry the payloads."""
    for name in ("formula_payloads.csv", "html_payloads.csv"):
        _, result, _ = compute_night(tmp_path / "x.duckdb", HOSTILE / name, "hostile")
        text = "\n".join(
            str(v) for col in ("patient_id", "course_id", "message", "observed") for v in result.findings[col].to_list()
        )
        planted = [p for p in MANIFEST[name]["payloads"] if p in text]
        assert len(planted) == len(MANIFEST[name]["payloads"]), (name, planted)


def test_formula_safe_export_prefixes_every_dangerous_cell(tmp_path: Path):
    """pipeline.reporting.files.write_safe_csv on the payloads directly (every spreadsheet trigger character)."""
    import polars as pl

    from pipeline.reporting.files import write_safe_csv

    values = MANIFEST["formula_payloads.csv"]["payloads"] + ["\r=1", "@x", "-cmd", "+x", "plain", "", None]
    frame = pl.DataFrame({"text": values, "number": [-1.5] * len(values)})
    path = write_safe_csv(frame, tmp_path / "out.csv")
    assert assert_csv_formula_safe(path) == len(values)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_impossible_dates_are_quarantined_with_a_reason(tmp_path: Path):
    """Far-future and far-past order starts are not audited (they would stretch the monthly trend over
    millennia); a negative year is not a date."""
    _, result, _ = compute_night(tmp_path / "x.duckdb", HOSTILE / "far_dates.csv", "hostile")
    reasons = dict(zip(result.quarantine["order_id"].to_list(), result.quarantine["reason"].to_list()))
    assert "outside the plausible years" in reasons["D1"] and "outside the plausible years" in reasons["D2"]
    assert "outside the plausible years" in reasons["D3"] and "outside the plausible years" in reasons["D8"]
    assert "is not a date" in reasons["D11"]
    # born in year 1: an age of 2025 years is not a number the audit may use (age_years was empty)
    assert "age_years 2025" in reasons["D10"] and "outside the plausible 0-130 years" in reasons["D10"]
    assert set(result.orders["order_id"].to_list()) >= {"D9", "D12", "D13"}
    assert accounting_of(result).balanced


# ------------------------------------------------------------------------------ patient data


# Once flows.cli has imported Prefect (another test of the session), Prefect's API handler is attached to
# the `pipeline` loggers and warns that there is no flow run here: irrelevant to what is logged.
@pytest.mark.filterwarnings("ignore:Logger .* attempted to send logs to the API")
def test_logs_of_a_whole_audit_carry_no_patient_data(tmp_path: Path, caplog):
    """Python logging of a night, a review, a rerun and the report (DEBUG, loggers pipeline and flows)
    holds no patient id, order id or free-text indication/justification of the input."""
    import logging

    from pipeline.warehouse import record_review
    from tests.reliability_helpers import FREE_TEXT, PATIENTS, night_rows, nightly, write_extract

    rows = night_rows(1) + night_rows(2)
    db = tmp_path / "audit.duckdb"
    for name in ("pipeline", "flows"):
        caplog.set_level(logging.DEBUG, logger=name)
    nightly(db, write_extract(tmp_path / "n1.csv", night_rows(1)), "night1", report_dir=tmp_path / "reports")
    finding = read_tables(db, ["findings"])["findings"]["finding_id"][0]
    record_review(db, finding, "acknowledged", "A. Pharmacist", note=FREE_TEXT[3])
    nightly(db, write_extract(tmp_path / "n2.csv", night_rows(2)), "night2", report_dir=tmp_path / "reports")
    # Also the Latin-1 path of the reader, which logs.
    compute_night(tmp_path / "other.duckdb", HOSTILE / "mixed_encoding_latin1.csv", "latin1")
    logged = "\n".join(
        r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.split(".")[0] in ("pipeline", "flows")
    )
    assert len(caplog.records) >= 3, "the audit logged nothing: the test would prove nothing"
    secrets = set(PATIENTS) | set(FREE_TEXT) | {r["order_id"] for r in rows if r["order_id"]}
    secrets |= {r["indication"] for r in rows if r.get("indication")} - {"KD"}  # 'KD' is too short to be telling
    secrets |= {"PM1", "PM2 Fran"}
    leaked = sorted(s for s in secrets if s in logged)
    assert not leaked, leaked


# SQL built with f-strings may interpolate only these expressions: identifiers and SQL fragments that
# come from module constants, never from data. Each was read by hand:
#   _q(...), cols, course_cols, select, assignments  quoted column names of checks.outputs contracts (_columns)
#   order                                            ORDER BY of the table catalog (order_by)
#   audited                                          "TRUE" or a constant sub-query (write_run replace_all)
#   _q(table)/_q(column)/_q(view), _literal(...)     comments: descriptions of the table catalog (checks/catalog)
#   _q(table.name), _q(c.name), c.type, default,     DDL of the table catalog: names, types, defaults and
#   _q(sequence), kept, previous, recorded,          sequences of its documents (schema.py: _sync_tables,
#   create_table_sql(table)                          _rebuild, _stored_state)
#   ' AND '.join(conditions)                         read_findings(): "lower(column) = lower(?)" with constant column names; values are parameters
#   ', '.join(_q(n) ...), ', '.join('?' ...)         runs columns: the RunRecord field names, one ? each
#   _AUDITED, cleared, facts, new, where, source, alias, change   _write_findings' constant conditions
#                                                    (_history_sql is called with constants only)
#   _LEDGER_INSERT/_LEDGER_SELECT/_LEDGER_STATE, _LEDGER_READ   ledger column lists (module constants)
ALLOWED_INTERPOLATIONS = {
    "_q(name)", "_q(table)", "_q(column)", "_q(view)", "_literal(text)", "_literal(table.description)",
    "_literal(view.description)", "_literal(c.description)", "_q(table.name)", "_q(c.name)", "c.type", "default",
    "_q(sequence)", "kept", "previous", "recorded",
    "cols", "course_cols", "select", "assignments", "order", "audited", "' AND '.join(conditions)",
    "', '.join((_q(c) for c in cols))", "', '.join((_q(n) for n in names))", "', '.join(('?' for _ in names))",
    "_AUDITED", "cleared", "facts", "new", "', '.join(_LEDGER_INSERT)", "', '.join(_LEDGER_SELECT)", "_LEDGER_STATE",
    "_LEDGER_READ", "_LEDGER_UNSEEN", "incoming", "merged", "stored", "listed",
    "_q(key)", "scope", "same", "twice", "_RETENTION_JOINS", "_FORGOTTEN", "forgotten", "joins", "_may_go('l')",
    "due", "judged_from", "_LEDGER_READ_OF_L", "_JUDGED_COURSE",
}
#: Functions returning SQL built from constants only (read by hand).
ALLOWED_SQL_BUILDERS = {"_history_sql", "_known_versions_sql", "create_table_sql"}


def _sql_calls(tree):
    import ast

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("execute", "sql", "query", "executemany")
            and node.args
        ):
            yield node


def test_sql_is_parameterised_everywhere():
    """Every con.execute/con.sql in pipeline/ and flows/ gets a constant string, or an f-string whose
    interpolations are all in ALLOWED_INTERPOLATIONS; never %-formatting, .format() or concatenation
    with data."""
    import ast

    root = Path(__file__).resolve().parents[1]
    problems, checked = [], 0
    for path in sorted([*(root / "pipeline").rglob("*.py"), *(root / "flows").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Names bound to f-strings in the module are looked through (e.g. a query built before the call).
        for call in _sql_calls(tree):
            checked += 1
            query = call.args[0]
            where = f"{path.relative_to(root)}:{call.lineno}"
            if isinstance(query, ast.Constant) or isinstance(query, ast.Name):
                continue  # a literal, or a name (a constant such as VIEWS[...] / a statement of MIGRATIONS)
            if isinstance(query, ast.Subscript) or (isinstance(query, ast.Call) and ast.unparse(query.func) in ALLOWED_SQL_BUILDERS):
                continue
            if isinstance(query, ast.JoinedStr):
                for part in query.values:
                    if isinstance(part, ast.FormattedValue):
                        text = ast.unparse(part.value)
                        if text not in ALLOWED_INTERPOLATIONS:
                            problems.append(f"{where}: f-string interpolates {text}")
                continue
            if isinstance(query, ast.BinOp) and isinstance(query.op, ast.Mod):
                problems.append(f"{where}: %-formatted SQL")
            elif isinstance(query, ast.Call) and isinstance(query.func, ast.Attribute) and query.func.attr == "format":
                problems.append(f"{where}: str.format SQL")
            elif isinstance(query, ast.BinOp) and isinstance(query.op, ast.Add):
                if any(isinstance(n, ast.Name) for n in ast.walk(query)):
                    problems.append(f"{where}: concatenated SQL: {ast.unparse(query)[:80]}")
            else:
                problems.append(f"{where}: unexpected SQL argument {ast.unparse(query)[:80]}")
    assert checked > 30
    assert not problems, problems


# ------------------------------------------------------------------------------ issue 14: never guess, never crash


def _reasons_by_order(name: str, tmp_path: Path) -> tuple[dict[str, str], object]:
    _, result, _ = compute_night(tmp_path / "x.duckdb", HOSTILE / name, "hostile")
    assert accounting_of(result).balanced, accounting_of(result).describe()
    return dict(zip(result.quarantine["order_id"].to_list(), result.quarantine["reason"].to_list())), result


def test_day_first_and_month_first_files_are_refused_naming_the_layout_to_declare():
    """05/01/2026 was read as May 1 (days 13-31 quarantined): now no non-ISO layout is guessed, and a file
    of such dates is refused with the layout(s) to declare in a mapping profile."""
    for name, suggestion in (
        ("uk_day_first_dates.csv", '["%d/%m/%Y %H:%M"] or ["%m/%d/%Y %H:%M"] (the values fit both)'),
        ("us_month_first_dates.csv", '["%m/%d/%Y %I:%M:%S %p"]'),
    ):
        with pytest.raises(ExtractError) as caught:
            compute_night(Path("/nonexistent/never-written.duckdb"), HOSTILE / name, "hostile")
        message = str(caught.value)
        assert "values are not ISO 8601" in message and f"[dates] formats = {suggestion}" in message, message


def test_iso_offsets_are_converted_to_the_site_time_zone(tmp_path: Path):
    reasons, result = _reasons_by_order("iso_offsets.csv", tmp_path)
    starts = dict(zip(result.orders["order_id"].to_list(), result.orders["start"].to_list()))
    assert starts == {
        "Z1": datetime(2026, 6, 1, 9), "Z2": datetime(2026, 6, 2, 9), "Z3": datetime(2026, 6, 3, 9),
        "Z4": datetime(2026, 6, 4, 8, 0, 0, 500000),
    }  # the shipped pack's site_timezone is UTC
    assert "start is not a date: '2026-06-01 09:00:00 BST' (expected ISO 8601" in reasons["Z5"]


def test_nan_inf_and_impossible_values_are_quarantined_not_a_crash(tmp_path: Path):
    """NaN or inf in age_years or pre_pregnancy_weight_kg crashed the run with a Polars traceback (exit 1)."""
    reasons, result = _reasons_by_order("nan_inf_values.csv", tmp_path)
    assert result.orders["order_id"].to_list() == ["V11"]
    assert "age_years is not a number: 'NaN'" in reasons["V1"]
    assert "age_years is not a number: 'inf'" in reasons["V2"] and "age_years is not a number: '-inf'" in reasons["V3"]
    assert "pre_pregnancy_weight_kg is not a number: 'NaN'" in reasons["V4"]
    assert "pre_pregnancy_weight_kg is not a number: 'inf'" in reasons["V5"]
    assert "weight_kg is not a number: 'NaN'" in reasons["V6"] and "height_cm is not a number: 'inf'" in reasons["V6"]
    assert "age_years 200 is outside the plausible 0-130 years" in reasons["V7"]
    assert "pre_pregnancy_weight_kg 900 is outside the plausible 0.3-350 kg" in reasons["V8"]
    assert "age_years -" in reasons["V9"] and "outside the plausible 0-130 years" in reasons["V9"]
    assert "birth_date is not a date: '05/03/1950'" in reasons["V10"]


def test_a_dose_that_rounds_to_zero_grams_is_quarantined_not_a_crash(tmp_path: Path):
    """1e-323 mg is 0 g after conversion: it crashed the run with a Pandera traceback."""
    reasons, result = _reasons_by_order("zero_after_conversion.csv", tmp_path)
    assert result.orders["order_id"].to_list() == ["T5"]
    for order in ("T1", "T2", "T3", "T4"):
        assert "is below the plausible 0.01 g" in reasons[order], reasons[order]
    assert "(1e-323 mg)" in reasons["T1"]


def test_ten_billion_daily_doses_are_quarantined_before_any_expansion(tmp_path: Path):
    """doses = 10000000000 grew the process to all the machine's memory: the count is range-checked before
    an order is expanded into daily doses (an aspirin order too: rules read its doses as evidence)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reasons, result = _reasons_by_order("huge_doses_count.csv", tmp_path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "doses 10000000000 is above the plausible 366 daily doses of one order" in reasons["C1"]
    assert "doses 367 is above the plausible 366" in reasons["C2"]
    assert "doses 9999999999 is above the plausible 366" in reasons["C4"]
    assert sorted(result.orders["order_id"].to_list()) == ["C3", "C5"]
    assert result.courses.filter(result.courses["patient_id"] == "PDC3")["doses"].to_list() == [366]
    assert grown_mb < 500, f"the audit of five rows grew the process by {grown_mb:.0f} MB"


def test_time_zone_aware_and_nested_parquet_columns_are_read(tmp_path: Path):
    """A time-zone-aware Parquet start quarantined every row; an unused list/struct column refused the file."""
    reasons, result = _reasons_by_order("tz_aware_start.parquet", tmp_path)
    # 09:00 in London in June is 08:00 UTC (the shipped pack's site time zone)
    assert sorted(result.orders["start"].to_list()) == [datetime(2026, 6, d, 8) for d in (1, 2, 3)]
    assert not reasons
    reasons, nested = _reasons_by_order("unused_nested_columns.parquet", tmp_path)
    assert nested.orders.height == 3 and not reasons


def test_shape_problems_are_one_line_errors_naming_the_problem():
    """A second `dose` column was silently dropped, a NUL byte after 64 KiB was stored in the database."""
    expected = {
        "duplicate_dose_column.csv": "names column(s) dose more than once",
        "duplicate_column_other_case.csv": "names column(s) patient_id more than once",
        "nul_after_64k.csv": "holds a NUL byte at offset",
    }
    for name, text in expected.items():
        with pytest.raises(ExtractError) as caught:
            compute_night(Path("/nonexistent/never-written.duckdb"), HOSTILE / name, "hostile")
        assert text in str(caught.value), (name, str(caught.value))
