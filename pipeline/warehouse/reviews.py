"""Review decisions on findings (append-only events; the finding's status follows the latest) and the worklist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from checks.outputs import STATUSES

from pipeline.warehouse.base import StoreError, _owner_only_files, _utc_naive
from pipeline.warehouse.connection import _transaction
from pipeline.warehouse.reads import read_findings

REVIEW_STATUSES = STATUSES


def disposition_codes(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Reason codes a review may give, with their words: the rule pack's `[review.dispositions]` as the
    latest run stored them (ref_dispositions), else the shipped pack's (a database no run has written)."""
    stored = dict(con.execute("SELECT reason_code, label FROM ref_dispositions ORDER BY reason_code").fetchall())
    if stored:
        return stored
    from pipeline.config.rulepack import load_rule_pack

    return {code: d.label for code, d in load_rule_pack().dispositions.items()}


@dataclass(frozen=True)
class ReviewEvent:
    """One review decision on a finding."""

    finding_id: str
    status: str
    reason_code: str | None
    note: str | None
    reviewed_by: str
    reviewed_at: datetime


@_owner_only_files
def record_review(
    db_path: Path,
    finding_id: str,
    status: str,
    reviewed_by: str,
    reason_code: str | None = None,
    note: str | None = None,
    reviewed_at: datetime | None = None,
) -> ReviewEvent:
    """Append a review decision and set the finding's status to it (one transaction)."""
    if status not in REVIEW_STATUSES:
        raise ValueError(f"status must be one of {', '.join(REVIEW_STATUSES)}, not '{status}'")
    if status == "dismissed" and reason_code is None:
        raise ValueError("dismissing a finding needs a --reason code")
    if not reviewed_by.strip():
        raise ValueError("a review needs the reviewer's name (--by)")
    event = ReviewEvent(
        finding_id=finding_id,
        status=status,
        reason_code=reason_code,
        note=note,
        reviewed_by=reviewed_by.strip(),
        reviewed_at=_utc_naive(reviewed_at or datetime.now(timezone.utc)),
    )
    db_path = Path(db_path)
    if not db_path.is_file():
        raise StoreError(f"database {db_path} does not exist; run the audit first")
    with _transaction(db_path) as con:
        if not con.execute("SELECT COUNT(*) FROM findings WHERE finding_id = ?", [finding_id]).fetchall()[0][0]:
            raise ValueError(f"no finding with id '{finding_id}'")
        codes = disposition_codes(con)
        if reason_code is not None and reason_code not in codes:
            raise ValueError(f"unknown reason code '{reason_code}'; use one of {', '.join(codes)}")
        con.execute(
            "INSERT INTO review_events (finding_id, status, reason_code, note, reviewed_by, reviewed_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [event.finding_id, event.status, event.reason_code, event.note, event.reviewed_by, event.reviewed_at],
        )
        # The facts the reviewer saw: if they change later, the finding is marked changed since review.
        con.execute(
            "UPDATE findings SET status = ?, reviewed_facts_hash = facts_hash, changed_since_review = false "
            "WHERE finding_id = ?",
            [status, finding_id],
        )
    return event


def worklist(
    db_path: Path,
    category: str | None = None,
    severity: str | None = None,
    service: str | None = None,
    since: datetime | None = None,
) -> pl.DataFrame:
    """Open findings for a pharmacist's worklist, filtered (every filter is a query parameter; see `read_findings`)."""
    return read_findings(db_path, "open", category=category, severity=severity, service=service, since=since)[0]
