"""One night in this process, step by step: each step's wall time, peak RSS and RSS after it.

    .venv/bin/python bench/night_steps.py bench/data/orders_10m.csv [--db NEW.duckdb] [--no-report]

`pipeline.night.run_night` with a `Steps` runner that times every step, while a thread samples
VmRSS (`/proc/self/status`) every 5 ms: a step's peak is the highest sample during it, "after" the
RSS when it returned. The process's own peak (VmHWM) is printed at the end. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status_mb(field: str) -> float:
    """One memory field of /proc/self/status (VmRSS, VmHWM), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """The highest VmRSS since the last `reset`, sampled in a background thread."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.peak, self.every_s, self._stop = 0.0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_mb("VmRSS"))
            time.sleep(self.every_s)

    def reset(self) -> float:
        """The peak so far; sampling starts again from now."""
        peak, self.peak = max(self.peak, _status_mb("VmRSS")), _status_mb("VmRSS")
        return peak

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    """Run one night on an orders extract into a new database; print each step's seconds and memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("orders", type=Path)
    parser.add_argument("--db", type=Path, default=None, help="database (default: a new one in a temporary folder)")
    parser.add_argument("--no-report", action="store_true", help="skip the report step")
    args = parser.parse_args(argv)
    from pipeline.night import DirectSteps, NightRequest, run_night

    sampler = Sampler()
    steps: list[dict] = []

    class Timed(DirectSteps):
        def __call__(self, name, fn, *call_args):
            sampler.reset()
            t0 = time.perf_counter()
            out = fn(*call_args)
            steps.append({"step": name, "s": round(time.perf_counter() - t0, 3), "peak_mb": round(sampler.reset()),
                          "after_mb": round(_status_mb("VmRSS"))})
            return out

    work = Path(tempfile.mkdtemp(prefix="ivig-night-steps-"))
    db = args.db or work / "night.duckdb"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = run_night(NightRequest.of(orders=str(args.orders), db=str(db),
                                        report_dir=None if args.no_report else str(work / "reports")), Timed())
    wall = time.perf_counter() - t0
    sampler.stop()
    print("| step | s | peak RSS MB | RSS after MB |\n|---|---|---|---|")
    for s in steps:
        if s["s"] >= 0.05 or s["peak_mb"] > 400:
            print(f"| {s['step']} | {s['s']:.2f} | {s['peak_mb']:,} | {s['after_mb']:,} |")
    print(f"\nnight {wall:.2f} s, process peak (VmHWM) {_status_mb('VmHWM'):,.0f} MB, load {load:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"{summary.courses} courses, {summary.findings} findings; timings {json.dumps(summary.timings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
