"""Shared test setup: Prefect runs against a temporary home, offline, started once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect: a private PREFECT_HOME, no telemetry, no result persistence.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="ivig-audit-prefect-"))
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


@pytest.fixture(scope="session")
def prefect_home() -> Path:
    """The temporary PREFECT_HOME of this test session."""
    return _PREFECT_HOME


@pytest.fixture(scope="session")
def prefect_harness(prefect_home):
    """One temporary Prefect server for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield prefect_home
