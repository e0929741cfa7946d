"""The whole command line against a tiny night and the bare parses: what a user's `ivig-audit run` costs.

    .venv/bin/python bench/cli_path.py bench/data/orders_10m.csv --repeat 3

Each run is a fresh process (`python -m flows.cli run --orders FILE --db NEW.duckdb --report-dir NEW/`
from this checkout), timed from outside, peak RSS from `os.wait4` (bench/run.py `measure_command`):

* ``cli_tiny``  the same command on a night of the file's header and first `--tiny-rows` rows: the fixed
  cost of a run (interpreter, imports, Prefect's flow and task runs, the database, the report);
* ``cli_full``  the command on the whole file. The audit's **marginal cost** is cli_full - cli_tiny;
* ``parse_csv`` / ``parse_duckdb`` the bare parses (bench/run.py); the floor is the faster one.

Printed: the marginal cost as a ratio of the floor (the issue's target is <= 1.3x) and each run's peak
RSS (target <= 1 GB), with the stage timings the run recorded in its database.

Prefect: with PREFECT_API_URL set, that server is used. Without it, a `prefect server start` is run
in the background on a free port (its own PREFECT_HOME in a temporary folder) for the duration of
the benchmark and stopped at the end, so no run pays a temporary server's start (bench/prefect_overhead.py
measures that separately). `--ephemeral` measures the runs without any server instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import best, floor_of, measure, measure_command, report


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, seconds: float) -> None:
    """Wait until a Prefect API answers its health check (RuntimeError after `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"no Prefect server answered at {url} within {seconds:.0f} s")


@contextlib.contextmanager
def prefect_server(home: Path, env: dict[str, str]) -> Iterator[str]:
    """A `prefect server start` of our own in the background (its own PREFECT_HOME); yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with open(home / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env | {"PREFECT_HOME": str(home / "prefect")}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_healthy(url, 120)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and its workers, nothing else
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def tiny_night(csv: Path, rows: int, out: Path) -> Path:
    """The header and the first `rows` rows of a CSV extract, as a file of its own."""
    with open(csv, "rb") as source, open(out, "wb") as target:
        for _ in range(rows + 1):
            line = source.readline()
            if not line:
                break
            target.write(line)
    return out


def recorded_timings(db: Path) -> dict:
    """The stage timings the run recorded in its database (read, select, history, audit; seconds)."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT timings FROM runs ORDER BY seq DESC LIMIT 1").fetchall()
    return json.loads(rows[0][0]) if rows and rows[0][0] else {}


def cli_run(orders: Path, work: Path, tag: str, env: dict[str, str], timeout: float, max_rss_mb: float, src: Path = ROOT) -> dict:
    """One `python -m flows.cli run` of an orders extract (the command line of checkout `src`) into a new database and report folder."""
    db, reports = work / f"{tag}.duckdb", work / f"{tag}-reports"
    command = [sys.executable, "-m", "flows.cli", "run", "--orders", str(orders), "--db", str(db), "--report-dir", str(reports)]
    run = measure_command(command, timeout, max_rss_mb, env=env, cwd=src)
    if "error" in run:
        return {"error": run["error"]}
    timings = recorded_timings(db)
    for leftover in (db, Path(f"{db}.wal"), reports):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    return {"wall_s": run["process_s"], "peak_rss_mb": run["peak_rss_mb"], "timings": timings, "load": run["load"]}


def main(argv: list[str] | None = None) -> int:
    """Measure the command line on one extract; print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest is kept")
    parser.add_argument("--tiny-rows", type=int, default=1000, help="rows of the tiny night")
    parser.add_argument("--ephemeral", action="store_true", help="no server: each run starts Prefect's temporary one")
    parser.add_argument("--skip-parse", action="store_true", help="measure the command line only")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--max-rss-mb", type=float, default=8000)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown (and a .json) here")
    parser.add_argument("--src", type=Path, default=ROOT, help="project checkout whose command line is measured")
    args = parser.parse_args(argv)
    args.src, args.csv = args.src.resolve(), args.csv.resolve()
    work = Path(tempfile.mkdtemp(prefix="ivig-cli-bench-"))
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(work / "prefect"),
               IVIG_AUDIT_DEBUG_LOG=str(work / "debug.log"))
    tiny = tiny_night(args.csv, args.tiny_rows, work / "tiny_night.csv")
    results: dict[str, dict] = {}
    try:
        with contextlib.ExitStack() as stack:
            if args.ephemeral:
                env.pop("PREFECT_API_URL", None)
                server = "none (each run starts Prefect's temporary server)"
            elif env.get("PREFECT_API_URL"):
                server = f"PREFECT_API_URL={env['PREFECT_API_URL']}"
            else:
                env["PREFECT_API_URL"] = stack.enter_context(prefect_server(work, env))
                server = "a `prefect server start` of this benchmark's own"
            # A first run creates Prefect's flow and task records: not part of any measured night.
            cli_run(tiny, work, "warm-up", env, args.timeout, args.max_rss_mb, args.src)
            for _ in range(args.repeat):  # alternated, so a burst of load hits both alike
                results.setdefault("cli_tiny", {"runs": []})["runs"].append(cli_run(tiny, work, "tiny", env, args.timeout, args.max_rss_mb, args.src))
                results.setdefault("cli_full", {"runs": []})["runs"].append(cli_run(args.csv, work, "full", env, args.timeout, args.max_rss_mb, args.src))
                for name, result in results.items():
                    last = result["runs"][-1]
                    print(f"{name:10s} " + (last["error"] if "error" in last else f"{last['wall_s']:7.2f} s  peak {last['peak_rss_mb']:6.0f} MB  {last['timings']}"),
                          file=sys.stderr, flush=True)
        if not args.skip_parse:
            for name in ("parse_csv", "parse_duckdb"):
                runs = [measure(name, args.csv, args.timeout, args.max_rss_mb, ROOT) for _ in range(args.repeat)]
                results[name] = best(runs, "work_s")
                r = results[name]
                print(f"{name:12s} " + (r["error"] if "error" in r else f"{r['work_s']:7.2f} s  peak {r['peak_rss_mb']:6.0f} MB"), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(results, args.csv, args.repeat, server, args.tiny_rows)
    if args.src != ROOT:
        text += f"\nCommand line measured from `{args.src}`.\n"
    report(text, results, args.out)
    return 0


def markdown(results: dict, csv: Path, repeat: int, server: str, tiny_rows: int) -> str:
    """The table of the command line's runs and the bare parses, and the ratios against the targets."""
    tiny, full = best(results["cli_tiny"]["runs"], "wall_s"), best(results["cli_full"]["runs"], "wall_s")
    floor = floor_of(results)
    lines = [
        (f"Extract: `{csv}` ({csv.stat().st_size / 1e6:.0f} MB); Prefect server: {server}; best of {repeat} run(s); "
         f"{os.cpu_count()} CPUs."), "",
        "| what | wall s (best) | all runs | peak RSS MB | recorded stages (s) | load before/after |", "|---|---|---|---|---|---|",
    ]
    for name, label in (("cli_tiny", f"`ivig-audit run`, tiny night ({tiny_rows} rows)"), ("cli_full", "`ivig-audit run`, the whole file")):
        r = best(results[name]["runs"], "wall_s")
        runs = ", ".join("-" if "error" in x else f"{x['wall_s']:.2f}" for x in results[name]["runs"])
        if "error" in r:
            lines.append(f"| {label} | - | {runs} | - | {r['error']} | - |")
            continue
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items())
        lines.append(f"| {label} | {r['wall_s']:.2f} | {runs} | {r['peak_rss_mb']:.0f} | {stages} | {r['load']} |")
    for name in ("parse_csv", "parse_duckdb"):
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | - | - | - | {r['error']} | - |")
        else:
            lines.append(f"| {name} (bare parse, work s) | {r['work_s']:.2f} | - | {r['peak_rss_mb']:.0f} | - | {r['load']} |")
    lines.append("")
    if "error" not in tiny and "error" not in full:
        marginal = full["wall_s"] - tiny["wall_s"]
        lines.append(f"- marginal cost of the audit (whole file - tiny night) = {marginal:.2f} s")
        if floor:
            ratio = marginal / floor["work_s"]
            lines.append(
                f"- CLI path: marginal cost / {floor['name']} ({floor['work_s']:.2f} s, the faster bare parse) = **{ratio:.2f}x**; "
                f"target <= 1.3x: {'met' if ratio <= 1.3 else 'MISSED'}"
            )
        mb = full["peak_rss_mb"]
        lines.append(f"- CLI path: peak RSS = **{mb:.0f} MB**; target <= 1024 MB: {'met' if mb <= 1024 else 'MISSED'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
