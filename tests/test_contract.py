"""Tests of the input contract: text parsing, row checks with quarantine, and reading extract files."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from checks.inputs import ORDER_COLUMNS, required_columns
from pipeline.contract.parse import canonical_unit, parse_datetime, parse_number
from pipeline.contract.rows import check_orders
from pipeline.ingest.errors import ExtractError
from pipeline.ingest.tables import scan_extract
from pipeline.audit import Extracts, prepare
from tests.builders import ivig_order, order_rows, pack, products, site_time_zone


def _apply(expr_factory, values: list[str | None]) -> list:
    """One parsing expression applied to a text column holding `values`."""
    frame = pl.DataFrame({"x": values}, schema={"x": pl.String})
    return frame.select(expr_factory("x"))["x"].to_list()


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10,000", 10000.0),
        ("1,000,000.5", 1000000.5),
        ("30", 30.0),
        (" 30 ", 30.0),
        ("0.4", 0.4),
        ("-20", -20.0),
        ("1-2", None),
        ("1,5", None),  # not a thousands grouping: never guessed
        ("abc", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_number(text, expected):
    assert _apply(parse_number, [text]) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-06-01 09:30:00", datetime(2026, 6, 1, 9, 30)),
        ("2026-06-01T09:30:00", datetime(2026, 6, 1, 9, 30)),
        ("2026-06-01 09:30", datetime(2026, 6, 1, 9, 30)),
        ("2026-06-01 09:30:00.250", datetime(2026, 6, 1, 9, 30, 0, 250000)),
        ("2026-06-01", datetime(2026, 6, 1)),
        ("20260601", datetime(2026, 6, 1)),
        (" 2026-06-01 ", datetime(2026, 6, 1)),
        # an offset is converted to the site's time zone (the shipped pack: UTC)
        ("2026-06-01T09:30:00Z", datetime(2026, 6, 1, 9, 30)),
        ("2026-06-01T09:30:00+01:00", datetime(2026, 6, 1, 8, 30)),
        ("2026-06-01T09:30:00.5-05:00", datetime(2026, 6, 1, 14, 30, 0, 500000)),
        ("2026-06-01 09:30:00+0100", datetime(2026, 6, 1, 8, 30)),
        # never guessed: month-first and day-first layouts must be declared by a mapping profile
        ("05/01/2026", None),
        ("8/29/2022 1:34:00 PM", None),
        ("08/29/2022 01:34 AM", None),
        ("6/1/2026", None),
        ("yesterday", None),
        ("31/31/2026", None),
        ("2026-13-45", None),
        ("2026-06-01 09:30:00 BST", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_datetime(text, expected):
    assert _apply(lambda c: parse_datetime(c, site_time_zone()), [text]) == [expected]


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("2026-06-01T09:30:00Z", "Europe/London", datetime(2026, 6, 1, 10, 30)),    # BST
        ("2026-01-15T09:30:00Z", "Europe/London", datetime(2026, 1, 15, 9, 30)),    # GMT
        ("2026-06-01T09:30:00+02:00", "America/Toronto", datetime(2026, 6, 1, 3, 30)),
        ("2026-06-01 09:30:00", "America/Toronto", datetime(2026, 6, 1, 9, 30)),    # no offset: local as written
    ],
)
def test_offsets_are_converted_to_the_site_time_zone(text, zone, expected):
    assert _apply(lambda c: parse_datetime(c, zone), [text]) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("g", "g"), ("gm", "g"), ("GM", "g"), ("G", "g"), ("grams", "g"), (" g ", "g"),
        ("mg", "mg"), ("MG", "mg"), ("milligrams", "mg"),
        ("mL", "ml"), ("ml", "ml"), ("ML", "ml"), ("cc", "ml"),
        ("g/kg", "g/kg"), ("G/KG", "g/kg"), ("g / kg", "g/kg"), ("gm/kg", "g/kg"),
        ("tabs", None), ("vials", None), ("units", None), ("mcg", None), ("", None), (None, None),
    ],
)
def test_canonical_unit(text, expected):
    assert _apply(canonical_unit, [text]) == [expected]


# ------------------------------------------------------------------------------------ check_orders
def _check(*rows) -> tuple[pl.DataFrame, pl.DataFrame]:
    valid, rejected = check_orders(order_rows(*rows), site_time_zone())
    return valid.collect(), rejected.collect()


def test_good_rows_pass_with_typed_columns():
    valid, rejected = _check(
        ivig_order("O1", dose="10,000", dose_unit="mg", start="2026-08-29T13:34:00"),
        ivig_order("O2", doses=None, weight_kg=" 82.5 "),
    )
    assert rejected.height == 0
    assert valid["order_id"].to_list() == ["O1", "O2"]
    assert valid.schema["dose"] == pl.Float64
    assert valid.schema["start"] == pl.Datetime("us")
    assert valid["dose"].to_list() == [10000.0, 28.0]
    assert valid["dose_unit"].to_list() == ["mg", "g"]
    assert valid["doses"].to_list() == [1, 1]  # empty doses means one dose
    assert valid["weight_kg"].to_list() == [70.0, 82.5]
    assert valid["start"][0] == datetime(2026, 8, 29, 13, 34)


def test_age_from_birth_date_when_age_missing():
    valid, _ = _check(ivig_order(age_years=None, birth_date="1976-06-01", start="2026-06-01 09:00"))
    assert valid["age_years"][0] == pytest.approx(50.0, abs=0.01)


@pytest.mark.parametrize(
    ("override", "reason_part"),
    [
        (dict(order_id=None), "order_id missing"),
        (dict(order_id="   "), "order_id missing"),
        (dict(patient_id=None), "patient_id missing"),
        (dict(medication=""), "medication missing"),
        (dict(start=None), "start missing"),
        (dict(start="yesterday"), "start is not a date: 'yesterday'"),
        (dict(start="31/31/2026"), "start is not a date"),
        (dict(doses="0"), "doses must be a whole number"),
        (dict(doses="2.5"), "doses must be a whole number"),
        (dict(weight_kg="0"), "weight_kg must be above zero"),
        (dict(height_cm="-170"), "height_cm must be above zero"),
    ],
)
def test_bad_row_is_quarantined_with_reason(override, reason_part):
    valid, rejected = _check(ivig_order("GOOD", patient_id="P0"), ivig_order("BAD") | override)
    assert valid["order_id"].to_list() == ["GOOD"]
    assert rejected.height == 1
    row = rejected.row(0, named=True)
    assert reason_part in row["reason"]
    assert row["extract"] == "orders"
    assert row["source_file"] == "orders.csv" and row["source_row"] == 2
    assert row["raw"].startswith("{")  # the original text is kept


def test_several_problems_are_all_named():
    _, rejected = _check(ivig_order() | dict(order_id=None, patient_id=None, start="nope"))
    reason = rejected["reason"][0]
    assert "order_id missing" in reason and "patient_id missing" in reason and "start is not a date" in reason


def test_duplicated_order_id_with_different_content_quarantines_both():
    valid, rejected = _check(
        ivig_order("O1", dose="80"),
        ivig_order("O2", patient_id="P2"),
        ivig_order("O1", dose="90"),
    )
    assert valid["order_id"].to_list() == ["O2"]
    assert rejected["order_id"].to_list() == ["O1", "O1"]
    assert sorted(rejected["source_row"].to_list()) == [1, 3]
    assert all("appears 2 times in one file with different content" in r for r in rejected["reason"])


def test_exact_duplicate_keeps_first_and_quarantines_second():
    row = ivig_order("O1")
    valid, rejected = _check(row, ivig_order("O2", patient_id="P2"), row | {"source_row": 3})
    assert sorted(valid["order_id"].to_list()) == ["O1", "O2"]
    kept = valid.filter(pl.col("order_id") == "O1")
    assert kept["source_row"].to_list() == [1]
    assert rejected.height == 1
    assert rejected["source_row"].to_list() == [3]
    assert "exact duplicate" in rejected["reason"][0]


def test_the_same_row_in_two_files_is_one_version_first_seen_in_the_earlier_file():
    row = ivig_order("O1")
    extracts = Extracts(orders=order_rows(
        row | {"source_file": "b.csv", "source_row": 1},
        row | {"source_file": "a.csv", "source_row": 7},
    ))
    prepared = prepare(extracts, products(), pack())
    # Not a duplicate to quarantine (a feed re-sends rows): one version, at its first arrival.
    assert prepared.quarantine.height == 0 and prepared.rows_ivig == 2
    assert prepared.ivig.select("order_id", "source_file", "source_row").rows() == [("O1", "a.csv", 7)]


def test_dose_problems_do_not_reject_the_row_structurally():
    # Dose checks only matter for IVIG; a non-IVIG drug with 'units' is evidence, not a reject.
    valid, rejected = _check(ivig_order("O1", medication="Heparin", dose="5000", dose_unit="units"))
    assert rejected.height == 0
    assert "unknown dose unit 'units'" in valid["dose_problem"][0]


# ------------------------------------------------------------------------------------ reading files
HEADER = ",".join(ORDER_COLUMNS)


def _csv_row(**values: str) -> str:
    return ",".join(values.get(c, "") for c in ORDER_COLUMNS)


GOOD_LINE = _csv_row(
    order_id="O1", patient_id="P1", medication="Privigen 10%", dose="30", dose_unit="g", start="2026-06-01 09:00:00"
)


def _one_line(message: str) -> str:
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


def test_reads_a_csv_as_text_with_provenance(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_text(HEADER + "\n" + GOOD_LINE + "\n")
    lf, sources = scan_extract([path], "orders")
    df = lf.collect()
    assert df.height == 1
    assert all(dtype == pl.String for name, dtype in df.schema.items() if name != "source_row")
    assert df.schema["source_row"] == pl.Int64
    assert df.columns == [*ORDER_COLUMNS, "source_file", "source_row"]
    assert df["source_file"][0] == str(path) and df["source_row"][0] == 1
    assert len(sources) == 1 and len(sources[0].sha256) == 64


@pytest.mark.parametrize("own", ["source_row", "source_row,_source_row"])
def test_a_file_column_named_like_the_row_number_is_not_taken_for_it(tmp_path: Path, own: str):
    path = tmp_path / "orders.csv"
    extra = ",".join("x" for _ in own.split(","))
    path.write_text(HEADER + f",{own}\n" + GOOD_LINE + f",{extra}\n" + GOOD_LINE.replace("O1", "O2") + f",{extra}\n")
    lf, _ = scan_extract([path], "orders")
    df = lf.collect()
    assert df["source_row"].to_list() == [1, 2] and df["order_id"].to_list() == ["O1", "O2"]
    assert lf.select(pl.len()).collect().item() == 2


def test_missing_optional_columns_are_added_as_nulls(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_text(",".join(required_columns("orders")) + "\nO1,P1,IVIG,30,g,2026-06-01\n")
    df = scan_extract([path], "orders")[0].collect()
    assert df["indication"].to_list() == [None]
    assert df["dose"].to_list() == ["30"]


def test_header_names_are_trimmed_and_case_folded(tmp_path: Path):
    path = tmp_path / "orders.csv"
    header = ",".join(f" {c.upper()}" if c == "order_id" else c for c in ORDER_COLUMNS)
    path.write_text("\ufeff" + header + "\n" + GOOD_LINE + "\n", encoding="utf-8")
    df = scan_extract([path], "orders")[0].collect()
    assert df["order_id"].to_list() == ["O1"]


def test_missing_file_is_an_extract_error(tmp_path: Path):
    with pytest.raises(ExtractError) as err:
        scan_extract([tmp_path / "nope.csv"], "orders")
    assert "not found" in _one_line(str(err.value))


def test_empty_file_is_an_extract_error(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_bytes(b"")
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders")
    assert "empty" in _one_line(str(err.value))


@pytest.mark.parametrize("ending", ["\n", ""])
def test_header_only_file_gives_zero_rows(tmp_path: Path, ending: str):
    """A header with no data is a valid extract of a quiet night: zero rows, not an error."""
    path = tmp_path / "orders.csv"
    path.write_text(HEADER + ending)
    lf, sources = scan_extract([path], "orders")
    df = lf.collect()
    assert df.height == 0
    assert df.columns == [*ORDER_COLUMNS, "source_file", "source_row"]
    assert len(sources) == 1


def test_missing_required_column_is_named(tmp_path: Path):
    path = tmp_path / "orders.csv"
    columns = [c for c in ORDER_COLUMNS if c != "dose_unit"]
    path.write_text(",".join(columns) + "\n" + ",".join("x" for _ in columns) + "\n")
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders")
    message = _one_line(str(err.value))
    assert "dose_unit" in message
    assert "order_id" not in message.split("column(s):")[1]


def test_missing_required_lab_column_is_named(tmp_path: Path):
    path = tmp_path / "labs.csv"
    path.write_text("patient_id,collected_at,value\nP1,2026-06-01,1.0\n")
    with pytest.raises(ExtractError, match="test"):
        scan_extract([path], "labs")


def test_semicolon_delimited_file_hints_at_the_delimiter(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_text(HEADER.replace(",", ";") + "\n" + GOOD_LINE.replace(",", ";") + "\n")
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders")
    assert "delimiter" in _one_line(str(err.value))


def test_folder_of_csvs_is_concatenated_with_each_source_file(tmp_path: Path):
    folder = tmp_path / "orders"
    folder.mkdir()
    (folder / "a.csv").write_text(HEADER + "\n" + GOOD_LINE + "\n")
    second = GOOD_LINE.replace("O1", "O2")
    (folder / "b.csv").write_text(HEADER + "\n" + second + "\n" + second.replace("O2", "O3") + "\n")
    (folder / "notes.md").write_text("not an extract")
    lf, sources = scan_extract([folder], "orders")
    df = lf.collect().sort("order_id")
    assert df["order_id"].to_list() == ["O1", "O2", "O3"]
    assert df["source_file"].to_list() == [str(folder / "a.csv"), str(folder / "b.csv"), str(folder / "b.csv")]
    assert df["source_row"].to_list() == [1, 1, 2]
    assert [s.path for s in sources] == [str(folder / "a.csv"), str(folder / "b.csv")]


def test_folder_without_extracts_is_an_extract_error(tmp_path: Path):
    with pytest.raises(ExtractError, match="no CSV or Parquet"):
        scan_extract([tmp_path], "orders")


@pytest.mark.parametrize("name", ["orders.csv", "orders.parquet"])
def test_binary_garbage_is_an_extract_error(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 8 + b"\x00\xff\xfe" * 100)
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders")
    _one_line(str(err.value))


def test_parquet_extract_is_read_as_text(tmp_path: Path):
    path = tmp_path / "orders.parquet"
    pl.DataFrame({c: ["x"] for c in ORDER_COLUMNS}).with_columns(dose=pl.lit(30.5)).write_parquet(path)
    df = scan_extract([path], "orders")[0].collect()
    assert df["dose"].to_list() == ["30.5"]


def test_truncated_parquet_is_an_extract_error(tmp_path: Path):
    path = tmp_path / "orders.parquet"
    pl.DataFrame({c: [f"{c}-{i}" for i in range(200)] for c in ORDER_COLUMNS}).write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders")
    assert "cannot read" in _one_line(str(err.value))


# scan_extract parses every field up front (tables.py refuse_unparseable_rows): a ragged row is a one-line ExtractError.
def test_ragged_csv_is_an_extract_error(tmp_path: Path):
    from pipeline.audit import Extracts, run_audit
    from tests.builders import pack, products

    path = tmp_path / "orders.csv"
    path.write_text(HEADER + "\n" + GOOD_LINE + "\n" + GOOD_LINE.replace("O1", "O2") + ",extra,fields\n")
    with pytest.raises(ExtractError) as err:
        lf, _ = scan_extract([path], "orders")
        run_audit(Extracts(lf), products(), pack(), "run")
    assert str(path) in _one_line(str(err.value))
