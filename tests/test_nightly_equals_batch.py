"""The invariant at the centre of the history (docs/history.md): nightly equals batch.

For any split of a set of extracts into nights (by day or by week, file names dated or reused,
corrections good and rejected, evidence before or after the IVIG order, labs in any night), the
final orders, courses and open findings equal those of one run over all the files. Ids are left
out of the comparison: a course that grew an earlier dose keeps the id its first night gave it.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.nightly_cohort import audit_batch, audit_nights, files, nights, outcome, random_cohort
from tests.test_properties import SCALE

NIGHTS = settings(max_examples=12 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _site_rules(folder: Path, late_arrival_days: int) -> Path:
    """A site rule pack keeping evidence only `late_arrival_days` beyond the farthest any rule reads it."""
    path = folder / "site_rules.toml"
    path.write_text(f"[settings]\nlate_arrival_days = {late_arrival_days}\n", encoding="utf-8")
    return path


@NIGHTS
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    period_days=st.sampled_from([1, 3, 7]),
    reuse_names=st.booleans(),
    versioned=st.booleans(),
    short_retention=st.booleans(),
)
def test_any_split_of_the_feed_into_nights_ends_as_one_batch_run(seed, period_days, reuse_names, versioned, short_retention):
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="ivig-nightly-"))
    try:
        # With a short retention, evidence of patients without IVIG is pruned between nights: an
        # order may then arrive at most that late and still find all its evidence.
        lateness = 6
        rules = _site_rules(root, lateness) if short_retention else None
        cohort = random_cohort(rng, versioned=versioned, max_lateness=lateness)
        feed = files(cohort, root / "feed", period_days, reuse_names)
        # With updated_at on every order the order files may arrive in any order, as long as no
        # order comes later than the retention allows.
        schedule = nights(feed, rng, shuffle_orders=versioned and not short_retention)
        audit_batch(root / "batch.duckdb", feed, rules)
        audit_nights(root / "nightly.duckdb", schedule, rules)
        batch, nightly = outcome(root / "batch.duckdb"), outcome(root / "nightly.duckdb")
        assert batch["courses"], "the cohort built no course: the test would prove nothing"
        for table in batch:
            assert nightly[table] == batch[table], f"{table} differ after {len(schedule)} nights"
    finally:
        shutil.rmtree(root, ignore_errors=True)
