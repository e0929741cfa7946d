"""Every SQL query in docs/analysts.md runs against an audited database and returns rows."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from pipeline.warehouse import record_review, read_tables
from tests.conftest import REPO
from tests.reliability_helpers import nightly, write_extract
from tests.test_warehouse import gbs_dose

QUERIES = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "analysts.md").read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A database with over-dosed, obese and reviewed findings."""
    root = tmp_path_factory.mktemp("analysts")
    db = root / "audit.duckdb"
    obese = {"patient_id": "P2", "weight_kg": "120", "height_cm": "170", "prescriber_id": "DR2"}
    rows = [gbs_dose(f"O{d}", d, 56.0) | {"prescriber_id": "DR1"} for d in range(1, 6)]
    rows += [gbs_dose(f"Q{d}", d, 48.0) | obese for d in range(1, 6)]
    rows += [gbs_dose("BAD1", 6) | {"dose": "1-2"}]
    nightly(db, write_extract(root / "n1.csv", rows), "run1")
    findings = read_tables(db, ["findings"])["findings"]
    record_review(db, findings["finding_id"][0], "dismissed", "A. Pharmacist", reason_code="clinically_justified")
    return db


def test_the_page_has_queries():
    assert len(QUERIES) >= 8


@pytest.mark.parametrize("query", QUERIES, ids=[f"query{i}" for i in range(len(QUERIES))])
def test_query_runs_and_returns_rows(db: Path, query: str):
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(query).fetchall()
    assert rows, query
