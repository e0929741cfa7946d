"""Tests of column-mapping profiles: loading, validation, and each transformation on small frames."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from checks.inputs import ORDER_COLUMNS
from pipeline.contract.accounting import OrderAccounting, accounting
from pipeline.ingest.errors import MappingError
from pipeline.ingest.mappings import load_mapping, shipped_mappings
from pipeline.domain.normalise import classify_medications
from pipeline.config.products import normalise_ndc_prefix
from pipeline.contract.rows import check_orders
from pipeline.ingest.errors import ExtractError
from pipeline.ingest.tables import scan_extract
from tests.builders import ivig_order, order_rows, products, site_time_zone


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ loading
def test_shipped_profiles_load():
    names = shipped_mappings()
    for expected in ("canonical", "epic_clarity", "fhir_medication_request", "fhir_medication_administration", "mimic3", "mimic4"):
        assert expected in names
        mapping = load_mapping(expected)
        assert mapping.name == expected and len(mapping.config_hash) == 64
    assert load_mapping("EPIC-CLARITY").name == "epic_clarity"  # case and dash tolerant


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(MappingError) as err:
        load_mapping("cerner")
    assert "epic_clarity" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ExtractError)  # the CLI turns it into exit status 2


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[orders.columns]\norder_idd = 'X'\n", "order_idd"),
        ("format = 'xml'\n", "format"),
        ("[orders.units]\nweight = 'stone'\n", "stone"),
        ("[orders.schedule]\nend = 'E'\n", "frequency"),
        ("[read]\nencoding = 'ebcdic'\n", "encoding"),
        ("[orders]\ncolumn = {}\n", "unknown key"),
        ("not toml at all [", "TOML"),
        # issue 14: the dotted key and the nearest known key
        ("[orders.columns]\nordr_id = 'X'\n", "unknown key orders.columns.ordr_id (did you mean order_id?)"),
        ("[ordres.columns]\norder_id = 'X'\n", "unknown key ordres (did you mean orders?)"),
        ("[read]\nseperator = ';'\n", "unknown key read.seperator (did you mean separator?)"),
        ("[read]\nseparator = ';;'\n", "read.separator: must be one character"),
        ("[dates]\nformats = ['%Q/%m']\n", "dates.formats.0: not a date layout"),
        ("[dates]\nformats = '%d/%m/%Y'\n", "dates.formats: input should be a valid list"),
        ("[orders.units]\nweight = 'stone'\n", "orders.units.weight: unknown unit (kg, lb, g, oz) (got 'stone')"),
        ("[orders.schedule]\nend = 'E'\n", "missing key orders.schedule.frequency"),
        ("[orders.values.dose_unit]\n'3' = 3\n", "orders.values.dose_unit.3: input should be a valid string"),
        ("format = 'fhir'\n", "a fhir profile needs a [fhir] table"),
        ("extends = 'fhir_medication_request'\n[fhir]\nobservation_max_age_days = '1 year'\n",
         "fhir.observation_max_age_days: input should be a valid integer"),
    ],
)
def test_bad_profile_is_a_one_line_error(tmp_path: Path, toml: str, message: str):
    path = _write(tmp_path, "site.toml", toml)
    with pytest.raises(MappingError) as err:
        load_mapping(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_site_profile_extends_a_shipped_one(tmp_path: Path):
    path = _write(
        tmp_path, "site.toml",
        'extends = "epic_clarity"\nname = "north"\n[orders.values.dose_unit]\n"3" = "g"\n[orders.constants]\nfacility = "North"\n',
    )
    mapping = load_mapping(path)
    orders = mapping.for_extract("orders")
    assert mapping.name == "north"
    assert orders.columns["order_id"] == ("order_med_id",)  # inherited
    assert orders.values["dose_unit"] == {"3": "g"}
    assert orders.constants["facility"] == "North"


# ------------------------------------------------------------------------------------ transformations
def _mapped(tmp_path: Path, profile: str, header: str, *lines: str) -> pl.DataFrame:
    path = _write(tmp_path, "profile.toml", profile)
    data = _write(tmp_path, "extract.csv", "\n".join([header, *lines]) + "\n")
    lf, _ = scan_extract([data], "orders", mapping=load_mapping(path))
    return lf.collect()


BASE = """
[orders.columns]
order_id = "ID"
patient_id = "PT"
medication = "DRUG"
dose = "AMT"
dose_unit = "UNIT"
start = "WHEN"
"""


def test_rename_gives_the_canonical_text_layout(tmp_path: Path):
    df = _mapped(tmp_path, BASE, "ID,PT,DRUG,AMT,UNIT,WHEN,EXTRA", "A1,P1,Privigen,30,g,2026-06-01 09:00,x")
    assert df.columns == [*ORDER_COLUMNS, "source_file", "source_row"]
    assert all(t == pl.String for c, t in df.schema.items() if c != "source_row")
    assert df.row(0, named=True) | {} == df.row(0, named=True)
    row = df.row(0, named=True)
    assert (row["order_id"], row["medication"], row["dose"], row["source_row"]) == ("A1", "Privigen", "30", 1)


def test_first_non_empty_of_several_columns_and_templates_and_constants(tmp_path: Path):
    profile = BASE.replace('dose_unit = "UNIT"', 'dose_unit = ["UNIT_NAME", "UNIT_CODE"]').replace('order_id = "ID"\n', "") + (
        '\n[orders.templates]\norder_id = "{ID}-{LINE}"\n[orders.constants]\nfacility = "North"\n'
        '[orders.values.dose_unit]\n"3" = "g"\n'
    )
    df = _mapped(
        tmp_path, profile, "ID,LINE,PT,DRUG,AMT,UNIT_NAME,UNIT_CODE,WHEN",
        "A1,1,P1,Privigen,30,,3,2026-06-01", "A1,2,P1,Privigen,30,mg,3,2026-06-01",
    )
    assert df["order_id"].to_list() == ["A1-1", "A1-2"]
    assert df["dose_unit"].to_list() == ["g", "mg"]
    assert df["facility"].to_list() == ["North", "North"]


@pytest.mark.parametrize(
    ("units", "weight", "unit_col", "height", "expected_kg", "expected_cm"),
    [
        ('weight = "lb"\nheight = "in"', "176", "", "70", "79.832", "177.8"),
        ('weight = "lb"', "80", "kg", "180", "80", "180"),          # the row's unit column wins
        ("", "176 lb", "", "5' 10\"", "79.832", "177.8"),          # a unit written with the number wins
        ("", "80kg", "", "1.8 m", "80", "180"),
        ("", "3500 g", "", "50 cm", "3.5", "50"),
        ("", "12 stone", "", "", "12 stone", None),               # not converted: the contract says why
    ],
)
def test_weight_and_height_units(tmp_path: Path, units, weight, unit_col, height, expected_kg, expected_cm):
    profile = BASE + '\nweight_kg = "WT"\nheight_cm = "HT"\n[orders.units]\nweight_unit_column = "WT_UNIT"\n' + units
    df = _mapped(
        tmp_path, profile, "ID,PT,DRUG,AMT,UNIT,WHEN,WT,WT_UNIT,HT",
        f'A1,P1,Privigen,30,g,2026-06-01,{weight},{unit_col},"{height.replace(chr(34), chr(34) * 2)}"',
    )
    assert df["weight_kg"][0] == expected_kg
    assert df["height_cm"][0] == expected_cm


def test_profile_date_formats_and_schedule(tmp_path: Path):
    profile = BASE + (
        '\n[dates]\nformats = ["%d.%m.%Y %H:%M"]\n[orders.schedule]\nend = "UNTIL"\nfrequency = "FREQ"\n'
    )
    df = _mapped(
        tmp_path, profile, "ID,PT,DRUG,AMT,UNIT,WHEN,UNTIL,FREQ",
        "A1,P1,Privigen,30,g,01.06.2026 09:00,05.06.2026 09:00,daily",
        "A2,P1,Privigen,30,g,01.06.2026 09:00,,ONCE",
        "A3,P1,Privigen,30,g,01.06.2026 09:00,02.06.2026 09:00,BID",
        "A4,P1,Privigen,30,g,01.06.2026 09:00,,DAILY",
        "A5,P1,Privigen,30,g,01.06.2026 09:00,31.05.2026 09:00,Q24H",
        "A6,P1,Privigen,30,g,01.06.2026 09:00,,",
    )
    assert df["start"].to_list()[0] == "2026-06-01 09:00:00"
    doses = df["doses"].to_list()
    assert doses[:2] == ["5", "1"]
    assert "'BID' is not daily or once" in doses[2]
    assert "without an end date" in doses[3]
    assert "end before the start" in doses[4]
    assert doses[5] is None  # no frequency: one dose (the contract's default)


def test_missing_source_column_names_the_profile(tmp_path: Path):
    with pytest.raises(ExtractError) as err:
        _mapped(tmp_path, BASE, "ID,PT,DRUG,AMT,WHEN", "A1,P1,Privigen,30,2026-06-01")
    message = str(err.value)
    assert "UNIT (for dose_unit)".lower() in message.lower() and "mapping profile" in message and "\n" not in message


# ------------------------------------------------------------------------------------ dictionaries
@pytest.mark.parametrize(
    ("text", "digits"),
    [("0944-2700", "009442700"), ("44206-439", "442060439"), ("61953-0004", "619530004"), ("13533-805-45", "13533080545")],
)
def test_ndc_prefix_normalisation(text, digits):
    assert normalise_ndc_prefix(text) == digits


@pytest.mark.parametrize(
    ("medication", "ndc", "product", "scope"),
    [
        ("Bag", "00944270005", "Gammagard Liquid", "ivig"),  # a code that is the product's wins
        ("Gammagard Liquid", "00944270005", "Gammagard Liquid", "ivig"),  # MIMIC 11-digit
        ("IVIG", "0944-2658-04", "Gammagard S/D", "ivig"),  # 4-4-2 with dashes
        ("Privigen", "44206-439-40", "Privigen", "ivig"),  # 5-3-2
        ("Bag", "0", None, "other"),  # MIMIC diluent bag: not IVIG
        ("Bag", None, None, "other"),
        ("Octagam", "1234567890", "Octagam (strength not stated)", "ivig"),  # ambiguous 10 digits: the name decides
        ("Hepatitis B Vaccine", None, None, "other"),  # a vaccine is not an immune globulin
        ("Hepatitis B Immune Globulin (Nabi-HB)", "59730420301", "Hepatitis B immune globulin", "other_ig"),
        ("Tetanus-Diphtheria Toxoid", None, None, "other"),
        ("Rabies Vaccine", None, None, "other"),
        ("Varicella Virus Vaccine Live", None, None, "other"),
        ("VariZIG", None, "Varicella zoster immune globulin", "other_ig"),
        ("HyperRAB", None, "Rabies immune globulin", "other_ig"),
        ("Gammagard Liquid ERC", "0944-2705-10", "Gammagard Liquid ERC", "ivig"),
    ],
)
def test_products_by_ndc_then_name(medication, ndc, product, scope):
    valid, _ = check_orders(order_rows(ivig_order(medication=medication, ndc=ndc)), site_time_zone())
    row = classify_medications(valid, products()).collect().row(0, named=True)
    assert (row["product"], row["scope"]) == (product, scope)


def _ndc_layouts(prefix: str) -> list[str]:
    """The raw ways an extract may write a code starting with an 11-digit-form prefix (+ package 01)."""
    labeler, product = prefix[:5], prefix[5:9]
    layouts = [f"{labeler}-{product}-01", f"{labeler}{product}01", f" {labeler}-{product} "]
    if labeler.startswith("0"):
        layouts.append(f"{labeler[1:]}-{product}-01")  # 4-4-2
    if product.startswith("0"):
        layouts.append(f"{labeler}-{product[1:]}-01")  # 5-3-2
    return layouts


def _every_dictionary_ndc() -> list[str]:
    digits = {normalise_ndc_prefix(n) for p in products().products for n in p.get("ndc_prefixes", [])}
    return sorted({raw for prefix in digits if len(prefix) >= 9 for raw in _ndc_layouts(prefix)})


def test_the_pass_over_every_row_keeps_whatever_the_exact_tests_keep():
    """`candidate_rows` (cheap, run on every row of an extract) must never drop a row the exact
    immunoglobulin or evidence tests would keep."""
    from pipeline.domain.normalise import candidate_rows, evidence_rows, immunoglobulin_rows
    from pipeline.config.rulepack import load_rule_pack

    pack = load_rule_pack(None, None)
    names = [p["name"] for p in products().products] + [
        "IVIG", "ivigg", "Immune Globulin IV 10%", "immunoglobulin g (human) 10% IV", "Gamma-globulin", "IgG",
        "Rho(D) immune globulin", "WinRho SDF", "CMV-IGIV", "HyperHEP B", "Atgam", "thymoglobulin", "SCIG 20%",
        "Aspirin 81 mg", "acetylsalicylic acid", "ASA", "", "   ", None, "Bag", "prednisone", "Hepatitis B Vaccine",
    ]
    ndcs = _every_dictionary_ndc() + [None, "0", "1234567890", "00000-0000-00"]
    rows = pl.DataFrame(
        {"medication": names + ["Bag"] * len(ndcs), "ndc": [None] * len(names) + ndcs}, schema={"medication": pl.String, "ndc": pl.String}
    )
    judged = rows.with_columns(
        exact=immunoglobulin_rows(products(), "ndc") | evidence_rows(pack.evidence_patterns),
        candidate=candidate_rows(products(), pack.evidence_patterns, "ndc"),
    )
    assert judged.filter(pl.col("exact") & ~pl.col("candidate")).is_empty()
    assert judged.filter(pl.col("ndc").is_in(_every_dictionary_ndc()))["exact"].all()  # the layouts are real matches
    assert judged.filter(pl.col("medication").is_in(["prednisone", "Hepatitis B Vaccine"]))["candidate"].sum() == 0


# ------------------------------------------------------------------------------------ accounting
def test_accounting_adds_up_or_says_by_how_much():
    quarantine = pl.DataFrame({"extract": ["orders", "orders", "labs"]})
    ok = accounting(10, ivig=3, passed_through=4, out_of_scope=1, unrecognised_ig=0, quarantine=quarantine)
    assert isinstance(ok, OrderAccounting) and ok.balanced and ok.check() is ok
    assert ok.quarantined == 2  # labs rows are not order rows
    lost = accounting(11, ivig=3, passed_through=4, out_of_scope=1, unrecognised_ig=0, quarantine=quarantine)
    assert not lost.balanced and lost.unaccounted == 1
    with pytest.raises(AssertionError, match="difference 1"):
        lost.check()


def test_labs_section_maps_the_labs_extract(tmp_path: Path):
    profile = _write(
        tmp_path, "site.toml",
        '[dates]\nformats = ["%d.%m.%Y"]\n[labs.columns]\npatient_id = "MRN"\ncollected_at = "DRAWN"\ntest = "ANALYTE"\nvalue = "RESULT"\n',
    )
    data = _write(tmp_path, "labs.csv", "MRN,DRAWN,ANALYTE,RESULT\nP1,01.06.2026,Creatinine,1.1\n")
    df = scan_extract([data], "labs", mapping=load_mapping(profile))[0].collect()
    assert df.row(0, named=True) | {"source_file": None} == {
        "patient_id": "P1", "collected_at": "2026-06-01 00:00:00", "test": "Creatinine", "value": "1.1",
        "unit": None, "ref_low": None, "ref_high": None, "source_file": None, "source_row": 1,
    }
