"""How much does the sample audit cost beyond Prefect's own start-up?

Runs, each in a fresh process started the same way (temporary Prefect server, same PREFECT_HOME,
telemetry off): (1) a bare flow with one trivial task, (2) `ivig-audit run` on sample_data/.
Prints the wall times (median of --repeat runs) and the ratio; the target is <= 1.5x.

    .venv/bin/python bench/prefect_overhead.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BARE_FLOW = """
from prefect import flow, task

@task
def one() -> int:
    return 1

@flow(name="bare")
def bare() -> int:
    return one()

bare()
"""


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one command (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ivig-overhead-"))
    env = os.environ | {
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    }
    env.pop("PREFECT_API_URL", None)
    python = sys.executable
    cli = str(Path(python).with_name("ivig-audit"))
    # Warm-up: the first start of a temporary server migrates its database.
    timed([python, "-c", BARE_FLOW], env, work)
    bare, audit = [], []
    for i in range(args.repeat):
        bare.append(timed([python, "-c", BARE_FLOW], env, work))
        db = work / f"audit{i}.duckdb"
        audit.append(timed([cli, "run", "--db", str(db), "--report-dir", str(work / f"reports{i}")], env, REPO))
    b, a = statistics.median(bare), statistics.median(audit)
    print("| what | median wall (s) | runs |")
    print("|---|---|---|")
    print(f"| bare one-task flow (temporary server) | {b:.1f} | {', '.join(f'{x:.1f}' for x in bare)} |")
    print(f"| ivig-audit run on sample_data/ | {a:.1f} | {', '.join(f'{x:.1f}' for x in audit)} |")
    print(f"\nratio audit / bare flow: {a / b:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
