"""Each shipped profile against a small realistic fixture (tests/fixtures/ingest/), audited end to end."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from checks.inputs import ORDER_COLUMNS
from pipeline.audit import Extracts, prepare, run_audit
from pipeline.contract.accounting import accounting_of
from pipeline.ingest.mappings import load_mapping
from pipeline.ingest.tables import scan_extract
from tests.builders import pack, products

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
REPO = Path(__file__).resolve().parents[1]


def _prepared(paths, mapping):
    lf, sources = scan_extract(paths, "orders", mapping=mapping)
    return lf, sources, prepare(Extracts(orders=lf), products(), pack())


def _reasons(prepared) -> dict[str, str]:
    return dict(zip(prepared.quarantine["order_id"].to_list(), prepared.quarantine["reason"].to_list()))


# ------------------------------------------------------------------------------------ Epic Clarity
def test_epic_clarity_fixture():
    lf, sources, prepared = _prepared([FIXTURES / "epic_clarity_orders.csv"], "epic_clarity")
    text = lf.collect()
    assert text.columns == [*ORDER_COLUMNS, "source_file", "source_row"]
    first = text.filter(pl.col("order_id") == "1001").row(0, named=True)
    assert first["start"] == "2022-08-29 13:34:00"  # 8/29/2022 1:34:00 PM
    assert first["doses"] == "5"  # DAILY 8/29 .. 9/2, inclusive
    assert first["weight_kg"] == "79.832" and first["height_cm"] == "177.8"  # 176 lb, 5' 10"
    heparin = text.filter(pl.col("order_id") == "1009").row(0, named=True)
    assert heparin["justification"] == "hold if platelets < 50,\nrecheck daily"  # quoted comma and line break
    assert heparin["source_row"] == 9

    ivig = prepared.ivig.sort("order_id")
    assert ivig["order_id"].to_list() == ["1001", "1003", "1011"]
    assert ivig["total_g"].to_list() == pytest.approx([0.4 * 79.832 * 5, 30.0, 2 * 19.958])
    assert ivig["product"].to_list() == ["Privigen", "Gamunex-C", "Gammagard Liquid"]
    reasons = _reasons(prepared)
    assert "'1-2' is a range" in reasons["1004"]
    assert "unknown dose unit '3'" in reasons["1005"]
    assert "'Q12H' is not daily or once" in reasons["1006"]
    assert "weight_kg 900" in reasons["1008"] and "0.3-350" in reasons["1008"]
    assert "daily dose 400 g is above the plausible 300 g" in reasons["1013"]
    assert prepared.unrecognised_ig["order_id"].to_list() == ["1010"]
    # Aspirin is evidence (Kawasaki rule); heparin is passed through unparsed.
    assert prepared.evidence["order_id"].to_list() == ["1002"]
    acc = accounting_of(prepared).check()
    assert (acc.rows_read, acc.ivig, acc.passed_through, acc.out_of_scope, acc.unrecognised_ig, acc.quarantined) == (13, 3, 2, 2, 1, 5)
    assert all(q.endswith("epic_clarity_orders.csv") for q in prepared.quarantine["source_file"].to_list())


def test_site_profile_maps_its_unit_codes(tmp_path: Path):
    site = tmp_path / "north.toml"
    site.write_text('extends = "epic_clarity"\nname = "north"\n[orders.values.dose_unit]\n"3" = "g"\n')
    _, _, prepared = _prepared([FIXTURES / "epic_clarity_orders.csv"], load_mapping(site))
    assert "1005" in prepared.ivig["order_id"].to_list()
    assert accounting_of(prepared).check().ivig == 4


def test_epic_fixture_audits_end_to_end():
    lf, _ = scan_extract([FIXTURES / "epic_clarity_orders.csv"], "orders", mapping="epic_clarity")
    result = run_audit(Extracts(orders=lf), products(), pack(), "run-epic")
    assert result.orders.height == 3
    assert accounting_of(result).check().rows_read == 13
    assert "data_quality.unrecognised_immunoglobulin" in result.findings["rule_id"].to_list()


# ------------------------------------------------------------------------------------ FHIR R4
def test_fhir_medication_request_fixture():
    lf, sources, prepared = _prepared([FIXTURES / "fhir"], "fhir_medication_request")
    assert len(sources) == 4 and all(len(s.sha256) == 64 for s in sources)
    text = lf.collect()
    assert text.columns == [*ORDER_COLUMNS, "source_file", "source_row"]
    assert text["order_id"].to_list() == ["mr1", "mr2", "mr3", "mr4", "mr5", "mr6"]  # only MedicationRequests
    mr1 = text.row(0, named=True)
    assert (mr1["patient_id"], mr1["encounter_id"], mr1["ndc"]) == ("p1", "e1", "44206-0439-40")
    assert (mr1["indication_code"], mr1["indication"]) == ("G61.0", "Guillain-Barre syndrome")
    assert mr1["weight_kg"] == "80"  # as of the order: the 85 kg weighed after it is not used
    assert mr1["height_cm"] == "177.8"  # 70 [in_i]
    # FHIR dateTimes stay as written (ISO 8601): the contract converts the offset to the site's time zone
    assert (mr1["sex"], mr1["birth_date"], mr1["doses"], mr1["start"]) == ("male", "1980-01-01", "5", "2026-06-01T09:00:00Z")
    mr2 = text.row(1, named=True)
    assert (mr2["weight_kg"], mr2["height_cm"], mr2["indication"]) == ("19.958", "110", "Kawasaki disease")  # 44 [lb_av]
    assert text.row(5, named=True)["weight_kg"] is None  # entered-in-error weight is not used

    ivig = prepared.ivig.sort("order_id")
    assert ivig["order_id"].to_list() == ["mr1", "mr2"]
    assert ivig["total_g"].to_list() == pytest.approx([160.0, 2 * 19.958])
    assert ivig["start"][0] == datetime(2026, 6, 1, 9, 0)  # 09:00Z in the shipped pack's site zone (UTC)
    reasons = _reasons(prepared)
    assert "entered-in-error" in reasons["mr4"]
    assert "timing 2 per 1 d is not daily or once" in reasons["mr6"]
    acc = accounting_of(prepared).check()
    assert (acc.rows_read, acc.ivig, acc.passed_through, acc.out_of_scope, acc.quarantined) == (6, 2, 1, 1, 2)


def test_fhir_medication_administration_fixture():
    _, _, prepared = _prepared([FIXTURES / "fhir"], "fhir_medication_administration")
    ivig = prepared.ivig.sort("order_id")
    assert ivig["order_id"].to_list() == ["ma1", "ma2"]
    assert ivig["grams_per_dose"].to_list() == pytest.approx([32.0, 32.0])  # 320 mL of a 10% product
    assert ivig["weight_kg"].to_list() == pytest.approx([80.0, 80.0])
    assert "not-done" in _reasons(prepared)["ma3"]
    assert accounting_of(prepared).check().rows_read == 3


def test_fhir_broken_line_is_an_extract_error(tmp_path: Path):
    path = tmp_path / "MedicationRequest.ndjson"
    path.write_text('{"resourceType": "MedicationRequest", "id": "x"}\n{"resourceType": "Medicat\n')
    from pipeline.ingest.errors import ExtractError

    with pytest.raises(ExtractError) as err:
        scan_extract([path], "orders", mapping="fhir_medication_request")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


# ------------------------------------------------------------------------------------ canonical
def test_canonical_profile_reads_the_sample_like_no_profile():
    path = REPO / "sample_data" / "orders" / "orders_2026-05.csv"
    plain = scan_extract([path], "orders")[0].collect()
    profiled = scan_extract([path], "orders", mapping="canonical")[0].collect()
    assert profiled.equals(plain)
