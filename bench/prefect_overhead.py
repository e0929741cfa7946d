"""What Prefect costs a small night: the temporary server, a running server, or no Prefect at all.

Each run is a fresh process of this checkout (`python -m flows.cli run ...`, telemetry off), with a new
database and report folder:

1. a bare flow with one trivial task, and `ivig-audit run` on sample_data/, each starting Prefect's
   temporary server (no PREFECT_API_URL: what an ad-hoc run pays by default);
2. `ivig-audit run` on sample_data/ and on a night of `--night-rows` rows against a running
   `prefect server start` (started here in the background on a free port, stopped at the end);
3. the same two with `--no-prefect`: the same night in the process, no server at all.

Prints the median wall time of `--repeat` runs of each, and the ratio of the sample audit to the bare flow
(temporary server; the target of issue 7 was <= 1.5x).

    .venv/bin/python bench/prefect_overhead.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from cli_path import prefect_server, tiny_night

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


def audit_command(work: Path, tag: str, orders: Path | None, *extra: str) -> list[str]:
    """`python -m flows.cli run` of this checkout into a new database and report folder (no orders: the sample)."""
    shutil.rmtree(work / tag, ignore_errors=True)
    (work / tag).mkdir()
    given = ["--orders", str(orders)] if orders else []
    return [sys.executable, "-m", "flows.cli", "run", *given, "--db", str(work / tag / "a.duckdb"),
            "--report-dir", str(work / tag / "reports"), *extra]


def main() -> int:
    """Measure each way of running a small night; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--night", type=Path, default=BENCH / "data" / "orders_1m.csv",
                        help="extract whose first --night-rows rows make the small night (bench/generate.py)")
    parser.add_argument("--night-rows", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ivig-overhead-"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "IVIG_AUDIT_DEBUG_LOG": str(work / "debug.log"),
    }
    night = tiny_night(args.night, args.night_rows, work / "night.csv") if args.night.exists() else None
    python = sys.executable
    rows: list[tuple[str, list[float]]] = []

    def measure(label: str, command_of) -> None:
        runs = [timed(command_of(i), server_env, REPO) for i in range(args.repeat)]
        rows.append((label, runs))
        print(f"{label}: {', '.join(f'{x:.1f}' for x in runs)}", file=sys.stderr, flush=True)

    try:
        server_env = env
        # Warm-up: the first start of a temporary server migrates its database.
        timed([python, "-c", BARE_FLOW], env, work)
        measure("bare one-task flow, temporary server", lambda i: [python, "-c", BARE_FLOW])
        measure("ivig-audit run on sample_data/, temporary server", lambda i: audit_command(work, "temp", None))
        with prefect_server(work, env) as url:
            server_env = env | {"PREFECT_API_URL": url}
            timed(audit_command(work, "warm", None), server_env, REPO)
            measure("ivig-audit run on sample_data/, running server", lambda i: audit_command(work, "srv", None))
            if night:
                measure(f"ivig-audit run on a {args.night_rows}-row night, running server",
                        lambda i: audit_command(work, "srv-night", night))
        server_env = env
        measure("ivig-audit run --no-prefect on sample_data/", lambda i: audit_command(work, "direct", None, "--no-prefect"))
        if night:
            measure(f"ivig-audit run --no-prefect on a {args.night_rows}-row night",
                    lambda i: audit_command(work, "direct-night", night, "--no-prefect"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {label: statistics.median(runs) for label, runs in rows}
    print(f"Median of {args.repeat} run(s) each; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end.\n")
    print("| what | median wall (s) | runs |")
    print("|---|---|---|")
    for label, runs in rows:
        print(f"| {label} | {medians[label]:.1f} | {', '.join(f'{x:.1f}' for x in runs)} |")
    bare, sample = medians[rows[0][0]], medians[rows[1][0]]
    print(f"\nratio audit / bare flow (temporary server): {sample / bare:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
