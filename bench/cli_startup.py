"""How long do the commands a pharmacist types all day take, from the shell prompt to the answer?

Audits sample_data/ into a temporary database (in this process, no Prefect), then runs each command
in a fresh interpreter (`python -m flows.cli ...`, as the console script does) --repeat times and
prints the fastest and the median wall time, and which heavy modules the command loaded.

    .venv/bin/python bench/cli_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("prefect", "polars", "duckdb", "pandera", "altair")

PROBE = """
import runpy, sys
sys.argv = ["ivig-audit", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("flows.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("loaded:", *(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(code)
"""


def _cpu() -> float:
    """CPU seconds (user + system) used by the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(args: list[str], repeat: int) -> tuple[float, float, float, str]:
    """Fastest and median wall seconds of `ivig-audit ARGS` in a new interpreter, its fastest CPU seconds
    (steadier than wall time on a loaded machine), and the heavy modules it loaded."""
    seconds, cpu, loaded = [], [], ""
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), _cpu()
        done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=REPO,
                              capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - start)
        cpu.append(_cpu() - cpu_start)
        loaded = done.stderr.strip().splitlines()[-1].removeprefix("loaded:").strip() if done.stderr.strip() else "?"
        if done.returncode:
            loaded = f"exit {done.returncode}: not a command of this version"
    return min(seconds), statistics.median(seconds), min(cpu), loaded or "-"


def main() -> None:
    """Print the table of start-up times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.night import NightRequest, run_night

    sample = REPO / "sample_data"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "audit.duckdb"
        run_night(NightRequest(db=db, inputs={"orders": [sample / "orders"], "labs": [sample / "labs.csv"],
                                              "procedures": [sample / "procedures.csv"]}))
        import duckdb

        with duckdb.connect(str(db), read_only=True) as con:
            finding = con.execute("SELECT finding_id FROM v_open_findings LIMIT 1").fetchone()[0]
        shutil.copy(db, Path(tmp) / "review.duckdb")
        commands = {
            "--help": ["--help"],
            "findings --help": ["findings", "--help"],
            "findings": ["findings", "--db", str(db)],
            "findings --json": ["findings", "--db", str(db), "--json"],
            "review": ["review", finding, "--status", "acknowledged", "--by", "bench", "--db", str(Path(tmp) / "review.duckdb")],
            "dose": ["dose", "--indication", "GBS", "--weight", "100", "--height", "175", "--sex", "M", "--product", "Privigen"],
            "runs": ["runs", "--db", str(db)],
        }
        print(f"| command | wall s, fastest | wall s, median of {options.repeat} | CPU s, fastest | heavy modules loaded |")
        print("|---|---|---|---|---|")
        for name, args in commands.items():
            fastest, median, cpu, loaded = _time(args, options.repeat)
            print(f"| `ivig-audit {name}` | {fastest:.2f} | {median:.2f} | {cpu:.2f} | {loaded} |")


if __name__ == "__main__":
    main()
