"""Review decisions on findings (append-only events; the finding's status follows the latest) and the worklist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from checks.outputs import STATUSES

from pipeline.warehouse.base import StoreError, _owner_only_files, _utc_naive
from pipeline.warehouse.connection import _transaction
from pipeline.warehouse.reads import read_findings

REVIEW_STATUSES = STATUSES


#: Structured disposition codes of a review decision (data: a site may extend this list).
DISPOSITION_CODES: dict[str, str] = {
    "prescriber_contacted": "prescriber contacted; decision pending",
    "dose_changed": "dose or remaining doses changed",
    "order_cancelled": "order or remaining doses cancelled",
    "documentation_added": "justification or indication documented after review",
    "clinically_justified": "clinically justified (specialist decision, exceptional case)",
    "approved_exception": "approved exception (committee or policy exception)",
    "data_error": "the extract data was wrong (weight, height, indication, unit)",
    "duplicate": "duplicate of another finding",
    "not_applicable": "rule does not apply to this patient",
    "other": "other (explain in the note)",
}


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
    if reason_code is not None and reason_code not in DISPOSITION_CODES:
        raise ValueError(f"unknown reason code '{reason_code}'; use one of {', '.join(DISPOSITION_CODES)}")
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
