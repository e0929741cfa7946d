"""The vocabularies the report's renderers use (severities and review states, in display order)."""

from __future__ import annotations

from checks.outputs import SEVERITIES as _SEVERITIES
from checks.outputs import STATUSES

SEVERITIES: tuple[str, ...] = _SEVERITIES
REVIEW_STATUSES: tuple[str, ...] = STATUSES
