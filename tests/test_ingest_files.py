"""Reading real files: encodings, line ends, quoting, several files per night, Parquet and CSV mixed, bad inputs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from checks.inputs import ORDER_COLUMNS
from pipeline.ingest.errors import ExtractError
from pipeline.ingest.tables import scan_extract

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
HEADER = ",".join(ORDER_COLUMNS)


def _line(**values: str) -> str:
    return ",".join(values.get(c, "") for c in ORDER_COLUMNS)


def _order(order_id: str, medication: str = "Privigen 10%", **kw: str) -> str:
    return _line(order_id=order_id, patient_id="P1", medication=medication, dose="30", dose_unit="g",
                 start="2026-06-01 09:00:00", **kw)


def _one_line(message: str) -> str:
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


# ------------------------------------------------------------------------------------ encodings
@pytest.mark.parametrize(
    ("encoding", "bom"),
    [("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("cp1252", b""), ("latin-1", b"")],
)
def test_text_encodings_are_detected_and_nothing_is_replaced(tmp_path: Path, encoding: str, bom: bytes):
    text = HEADER + "\r\n" + _order("O1", medication="Privigen 10%", indication="Guillain-Barré, AIDP") .replace(
        "Guillain-Barré, AIDP", '"Guillain-Barré, AIDP"') + "\r\n"
    path = tmp_path / "orders.csv"
    path.write_bytes(bom + text.encode(encoding))
    df = scan_extract([path], "orders")[0].collect()
    assert df["indication"].to_list() == ["Guillain-Barré, AIDP"]
    assert df["order_id"].to_list() == ["O1"]
    assert df["medication"].to_list() == ["Privigen 10%"]  # no trailing \r from CRLF


def test_windows_1252_punctuation_is_kept(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_bytes((HEADER + "\n" + _order("O1", justification="response \u201cgood\u201d \u2013 INCAT") + "\n").encode("cp1252"))
    assert scan_extract([path], "orders")[0].collect()["justification"][0] == "response \u201cgood\u201d \u2013 INCAT"


def test_text_that_is_neither_utf8_nor_cp1252_is_an_error(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_bytes((HEADER + "\n" + _order("O1")).encode() + b",\x81\x8d\n")
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders")
    assert "neither UTF-8 nor cp1252" in _one_line(str(err.value))


def _with_char_at(offset: int, encoding: str) -> bytes:
    """An extract of ASCII rows, then an order whose indication's 'é' starts at byte `offset`."""
    head = (HEADER + "\n").encode()
    filler = (_order("F", medication="aspirin") + "\n").encode()
    target = (_order("O1", indication="Guillain-Barré") + "\n").encode(encoding)
    before_char = offset - target.index("é".encode(encoding))
    fillers = (before_char - len(head)) // len(filler) - 1
    pad = _order("P", medication="aspirin", justification="x")
    gap = before_char - len(head) - fillers * len(filler) - len(pad) - 1
    padding = (_order("P", medication="aspirin", justification="x" * (1 + gap)) + "\n").encode()
    data = head + filler * fillers + padding + target
    assert data[offset:].startswith("é".encode(encoding))
    return data


@pytest.mark.parametrize(
    ("encoding", "offset"),
    [("utf-8", (1 << 20) - 1), ("utf-8", 1 << 20), ("cp1252", 1 << 20), ("cp1252", (1 << 20) + 5000)],
)
def test_a_character_after_a_megabyte_of_ascii_is_decoded_right(tmp_path: Path, encoding: str, offset: int):
    # The encoding check skips pure-ASCII read blocks (1 MiB): a two-byte UTF-8 character split
    # across a block boundary, or a lone cp1252 byte past one, must still be read right.
    path = tmp_path / "orders.csv"
    path.write_bytes(_with_char_at(offset, encoding))
    df = scan_extract([path], "orders")[0].collect()
    assert df.filter(pl.col("order_id") == "O1")["indication"].to_list() == ["Guillain-Barré"]
    assert df.filter(pl.col("order_id") == "F").height > 1000


def test_utf16_export_is_read(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_bytes((HEADER + "\r\n" + _order("O1") + "\r\n").encode("utf-16"))
    assert scan_extract([path], "orders")[0].collect()["order_id"].to_list() == ["O1"]


def test_quoted_fields_with_commas_and_line_breaks(tmp_path: Path):
    path = tmp_path / "orders.csv"
    row = _order("O1", justification="X").replace(",X,", ',"INCAT improved,\nkeep going",')
    path.write_text(HEADER + "\n" + row + "\n" + _order("O2") + "\n")
    df = scan_extract([path], "orders")[0].collect()
    assert df["justification"].to_list() == ["INCAT improved,\nkeep going", None]
    assert df["source_row"].to_list() == [1, 2]  # data rows, not physical lines


def test_several_files_csv_gzip_and_parquet_mixed(tmp_path: Path):
    import gzip

    folder = tmp_path / "night"
    folder.mkdir()
    (folder / "a.csv").write_text(HEADER + "\n" + _order("O1") + "\n")
    (folder / "b.csv.gz").write_bytes(gzip.compress((HEADER + "\n" + _order("O2") + "\n").encode()))
    from datetime import datetime

    pl.DataFrame({"order_id": ["O3"], "patient_id": ["P1"], "medication": ["Privigen"], "dose": [30.0],
                  "dose_unit": ["g"], "start": [datetime(2026, 6, 1, 9)]}).write_parquet(folder / "c.parquet")
    lf, sources = scan_extract([folder], "orders", mapping="canonical")
    df = lf.collect()
    assert df["order_id"].to_list() == ["O1", "O2", "O3"]
    assert df["dose"].to_list() == ["30", "30", "30.0"]
    assert df["start"].to_list()[2].startswith("2026-06-01 09:00:00")  # a Parquet datetime as text
    assert [Path(s.path).name for s in sources] == ["a.csv", "b.csv.gz", "c.parquet"]


# ------------------------------------------------------------------------------------ bad inputs
def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp_path / "empty.csv"
    files["empty"].write_bytes(b"")
    files["binary"] = tmp_path / "binary.csv"
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["truncated_parquet"] = tmp_path / "truncated.parquet"
    pl.DataFrame({c: [f"{c}-{i}" for i in range(200)] for c in ORDER_COLUMNS}).write_parquet(files["truncated_parquet"])
    files["truncated_parquet"].write_bytes(files["truncated_parquet"].read_bytes()[:500])
    files["wrong_delimiter"] = tmp_path / "semicolon.csv"
    files["wrong_delimiter"].write_text(HEADER.replace(",", ";") + "\n" + _order("O1").replace(",", ";") + "\n")
    files["missing_column"] = tmp_path / "missing.csv"
    files["missing_column"].write_text(HEADER.replace("dose_unit,", "") + "\n")
    files["ragged"] = tmp_path / "ragged.csv"
    files["ragged"].write_text(HEADER + "\n" + _order("O1") + ",x,y\n")
    files["open_quote"] = tmp_path / "quote.csv"
    files["open_quote"].write_text(HEADER + "\n" + _order("O1").replace("Privigen", '"Privigen') + "\n")
    return files


@pytest.mark.parametrize("kind", ["empty", "binary", "truncated_parquet", "wrong_delimiter", "missing_column", "ragged", "open_quote"])
@pytest.mark.parametrize("mapping", [None, "canonical", "epic_clarity"])
def test_bad_input_is_one_clear_line(tmp_path: Path, kind: str, mapping: str | None):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders", mapping=mapping)
    message = _one_line(str(err.value))
    assert str(path) in message
    if kind == "missing_column":
        assert "dose_unit" in message.lower() or "dose_unit_name" in message.lower()
    if kind == "wrong_delimiter":
        assert "delimiter" in message


def test_header_only_file_is_zero_rows_with_a_profile(tmp_path: Path):
    path = tmp_path / "orders.csv"
    path.write_text(HEADER + "\n")
    df = scan_extract([path], "orders", mapping="canonical")[0].collect()
    assert df.height == 0 and df.columns == [*ORDER_COLUMNS, "source_file", "source_row"]


def test_a_profile_separator_reads_semicolons(tmp_path: Path):
    profile = tmp_path / "site.toml"
    profile.write_text('extends = "canonical"\n[read]\nseparator = ";"\n')
    path = tmp_path / "orders.csv"
    path.write_text(HEADER.replace(",", ";") + "\n" + _order("O1").replace(",", ";") + "\n")
    assert scan_extract([path], "orders", mapping=str(profile))[0].collect()["order_id"].to_list() == ["O1"]


def test_fixture_folder_has_realistic_files():
    assert (FIXTURES / "epic_clarity_orders.csv").read_bytes().count(b"\r\n") >= 14  # CRLF export


def test_the_background_hash_is_the_files_sha256_and_survives_pickling(tmp_path: Path):
    import hashlib
    import pickle

    path = tmp_path / "orders.csv"
    path.write_text(HEADER + "\n" + _order("O1") + "\n")
    _, sources = scan_extract([path], "orders")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    copy = pickle.loads(pickle.dumps(sources[0]))  # as a Dask worker returns it
    assert sources[0].sha256 == copy.sha256 == expected
    assert copy.record() == {"extract": "orders", "path": str(path), "sha256": expected, "bytes": path.stat().st_size}


def test_a_file_gone_before_its_hash_is_read_is_an_extract_error(tmp_path: Path):
    from pipeline.ingest.files import file_sha256

    with pytest.raises(ExtractError, match="cannot read"):
        file_sha256(tmp_path / "gone.csv")
