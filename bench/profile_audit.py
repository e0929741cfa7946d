"""Profile our audit on one extract: wall time per stage, then cProfile of the whole run.

    .venv/bin/python bench/profile_audit.py bench/data/orders_1m.csv            # -> bench/out/profile_orders_1m.*

Writes to bench/out/ (git-ignored):

* ``profile_<name>_stages.md``  wall time of each stage of ``run_audit`` (the same calls in the
  same order as ``pipeline.audit.run_audit``: scan_extract, prepare, courses_with_regimen,
  judge, output_tables), and inside ``prepare`` each of its lazy queries collected alone (the
  ``pl.collect_all`` shares work between them, so the parts add up to more than the whole);
* ``profile_<name>.prof``  the cProfile data (``python -m pstats``, snakeviz);
* ``profile_<name>_cprofile.txt``  the top functions by cumulative and by own time.

Polars runs its queries in Rust threads, so cProfile sees one long ``collect``/``collect_all``
call per stage; the stage table and the per-query table say which Polars query the time goes to.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# --src DIR: profile the pipeline/ of another checkout (for example a snapshot or a prototype copy).
SRC = Path(sys.argv[sys.argv.index("--src") + 1]) if "--src" in sys.argv else ROOT
sys.path.insert(0, str(SRC))

import polars as pl  # noqa: E402

from pipeline import audit  # noqa: E402
from pipeline.contract.rows import check_orders  # noqa: E402
from pipeline.domain.normalise import classify_medications, map_indications, split_orders  # noqa: E402
from pipeline.config.products import load_products  # noqa: E402
from pipeline.ingest.tables import scan_extract  # noqa: E402
from pipeline.config.rulepack import load_rule_pack  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_times(path: Path) -> list[tuple[str, float, float]]:
    """(stage, seconds, peak RSS MB so far) for each stage of run_audit."""
    products, pack = load_products(), load_rule_pack(None, None)
    rows = []
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        rows.append((name, now - t, _peak_mb()))
        t = now

    lf, _ = scan_extract([path], "orders", validate_rows=False)
    lap("scan_extract (schema, encoding check; the sha256 runs in the background)")
    prepared = audit.prepare(audit.Extracts(orders=lf), products, pack)
    lap("prepare (contract + normalise, pl.collect_all, Pandera IVIG rows)")
    courses, order_course = audit.courses_with_regimen(prepared.ivig, pack)
    lap("courses_with_regimen")
    findings = audit.judge(courses, prepared, pack, "profile")
    lap("judge (rules)")
    audit.output_tables(prepared, courses, order_course, findings, "profile")
    lap("output_tables (Pandera output contracts)")
    rows.append((f"(IVIG rows {prepared.ivig.height}, evidence rows {prepared.evidence.height}, courses {courses.height}, findings {findings.height})", 0.0, _peak_mb()))
    return rows


def prepare_query_times(path: Path) -> list[tuple[str, float]]:
    """The parts of prepare(), each timed on its own: the pass over the extract, then the rows read."""
    products, pack = load_products(), load_rule_pack(None, None)
    lf, _ = scan_extract([path], "orders", validate_rows=False)
    out = []
    t = time.perf_counter()
    lf.select(pl.len()).collect(engine="streaming")
    out.append(("count the rows of the extract (streaming)", time.perf_counter() - t))
    t = time.perf_counter()
    source, _ = audit.select_relevant(audit.Extracts(orders=lf), products, pack)
    read = source.orders.collect()
    out.append((f"select_relevant: one streaming pass keeping {read.height} rows, and the count", time.perf_counter() - t))
    valid, rejected = check_orders(source.orders, pack.settings["site_timezone"])
    classified = classify_medications(valid, products)
    split = split_orders(classified)
    queries = {
        "check_orders on the rows read (valid)": valid,
        "check_orders on the rows read (rejected, raw JSON)": rejected,
        "classify_medications (product regexes)": classified,
        "IVIG rows (map_indications)": map_indications(split.ivig, pack),
    }
    for name, query in queries.items():
        t = time.perf_counter()
        query.collect(engine="in-memory")
        out.append((name, time.perf_counter() - t))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout whose pipeline/ is profiled")
    parser.add_argument("--tag", default="", help="suffix for the output file names")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_{args.path.stem}{args.tag}"

    stages = stage_times(args.path)
    queries = prepare_query_times(args.path)
    lines = [f"# Profile of our audit: {args.path} ({args.path.stat().st_size / 1e6:.0f} MB), pipeline from {SRC}",
             f"(load average before: {os.getloadavg()[0]:.1f}; 2-core machine shared with other work)", "",
             "| stage of run_audit | wall s | peak RSS so far MB |", "|---|---|---|"]
    total = sum(s for _, s, _ in stages)
    lines += [f"| {name} | {secs:.2f} ({100 * secs / total:.0f}%) | {mb:.0f} |" if secs else f"| {name} | | {mb:.0f} |"
              for name, secs, mb in stages]
    lines += [f"| **total** | {total:.2f} | |", "",
              "| part of prepare(), timed alone | wall s |", "|---|---|"]
    lines += [f"| {name} | {secs:.2f} |" for name, secs in queries]
    (args.out / f"{stem}_stages.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))

    products, pack = load_products(), load_rule_pack(None, None)
    profiler = cProfile.Profile()
    profiler.enable()
    lf, _ = scan_extract([args.path], "orders", validate_rows=False)
    audit.run_audit(audit.Extracts(orders=lf), products, pack, "profile")
    profiler.disable()
    profiler.dump_stats(args.out / f"{stem}.prof")
    text = io.StringIO()
    for key in ("cumulative", "tottime"):
        text.write(f"===== top {args.top} by {key} =====\n")
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(key).print_stats(args.top)
    (args.out / f"{stem}_cprofile.txt").write_text(text.getvalue(), encoding="utf-8")
    print(f"\nwrote {args.out / (stem + '_stages.md')}, {stem}.prof, {stem}_cprofile.txt")


if __name__ == "__main__":
    main()
