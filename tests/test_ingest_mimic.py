"""The real, de-identified MIMIC demo prescription tables (ODbL) audited end to end through their profiles."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.audit import Extracts, prepare, run_audit
from pipeline.contract.accounting import accounting_of
from pipeline.ingest.mappings import load_mapping
from pipeline.config.products import load_products
from pipeline.ingest.tables import scan_extract
from pipeline.config.rulepack import load_rule_pack

# The project's shared/ folder sits beside the checkout (CI lays a copy there too).
MIMIC = next(
    (p for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-demo", Path("/work/shared/data/mimic-demo"))
     if p.is_dir()),
    Path("../shared/data/mimic-demo"),
)
MIMIC3 = MIMIC / "mimic3_demo_PRESCRIPTIONS.csv"
MIMIC4 = MIMIC / "mimic4_demo_prescriptions.csv.gz"

pytestmark = pytest.mark.skipif(not MIMIC3.exists(), reason=f"MIMIC demo tables not found beside the checkout ({MIMIC})")


@pytest.fixture(scope="module")
def mimic3():
    lf, sources = scan_extract([MIMIC3], "orders", mapping=load_mapping("mimic3"))
    extracts = Extracts(orders=lf)
    return lf, prepare(extracts, load_products(), load_rule_pack()), run_audit(extracts, load_products(), load_rule_pack(), "test")


def test_mimic3_gammagard_is_audited_as_ivig(mimic3):
    _, prepared, result = mimic3
    ivig = prepared.ivig
    assert ivig["medication"].to_list() == ["Gammagard Liquid"]
    row = ivig.row(0, named=True)
    assert (row["product"], row["grams_per_dose"], row["total_g"]) == ("Gammagard Liquid", 40.0, 40.0)
    assert row["patient_id"] == "40310" and row["order_id"] == "3480234"
    assert result.orders["order_id"].to_list() == ["3480234"]
    assert result.courses.height == 1


def test_mimic3_hepatitis_b_immune_globulin_is_out_of_scope(mimic3):
    lf, prepared, _ = mimic3
    hbig_rows = lf.filter(pl.col("medication").str.contains("Hepatitis B Immune Globulin")).collect().height
    assert hbig_rows == 9 and prepared.rows_out_of_scope == hbig_rows
    assert not prepared.ivig["medication"].str.contains("Hepatitis").any()
    # its "10,000" UNIT doses are never a reason to quarantine: out-of-scope rows are not dose-checked
    assert not prepared.quarantine["raw"].str.contains("Hepatitis").any()


def test_mimic3_bags_are_not_ivig(mimic3):
    lf, prepared, _ = mimic3
    bags = lf.filter(pl.col("medication") == "Bag").collect()
    assert bags.height > 0
    assert "3480881" in bags["order_id"].to_list()  # the IVIGBAG diluent of the Gammagard order
    # Every "Bag" row (formulary IVIGBAG included) is another medication: passed through unparsed,
    # never IVIG, never an unrecognised immunoglobulin.
    read = set(prepared.ledger.filter(pl.col("extract") == "orders")["row_key"].to_list())
    assert not read & set(bags["order_id"].to_list())
    assert not prepared.unrecognised_ig["medication"].str.contains("Bag").any()
    assert prepared.ivig.height == 1


def test_mimic3_every_row_accounted_for(mimic3):
    _, prepared, result = mimic3
    acc = accounting_of(prepared).check()
    assert acc.rows_read == 10398
    assert accounting_of(result).check().rows_read == 10398


def test_mimic4_end_to_end():
    lf, sources = scan_extract([MIMIC4], "orders", mapping="mimic4")
    bags = lf.filter(pl.col("medication") == "Bag").select(pl.len()).collect().item()
    result = run_audit(Extracts(orders=lf), load_products(), load_rule_pack(), "test")
    acc = accounting_of(result).check()
    assert acc.rows_read == 18087
    assert result.orders.height == 0  # the demo holds no IVIG dose, only IVIGBAG diluent bags ...
    assert bags > 0 and result.rows_passed_through == 18087 - acc.quarantined - acc.out_of_scope  # ... passed through
    assert not result.quarantine["reason"].str.contains("order_id").any()  # pharmacy_id + drug is unique
