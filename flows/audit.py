"""The nightly audit as a Prefect flow: thin tasks around the pure stages in `pipeline/`.

Tasks that carry patient rows never cache or persist results (NO_CACHE, persist_result=False),
and the logs and artifacts carry counts only: patient data stays in DuckDB and the reports. Every task
and the flow raise only data-free `StageFailure`s (flows/prefect_runtime.py): no exception message,
which may quote an id or a value, reaches Prefect's database, logs or result storage.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.prefect_runtime import data_free_errors, flow_errors, is_io_failure
from pipeline import audit as stages
from pipeline.normalise import ProductDictionary, load_products
from pipeline.read import ExtractError, SourceFile, content_sha256, discover, scan_extract
from pipeline.report import ReportOptions, aggregate_table, build_report, headline_markdown
from pipeline.rulepack import RulePack, load_rule_pack
from pipeline.store import RunRecord, StoreError, audited_inputs, read_source_rows, read_tables, write_run

PATIENT_ROWS = dict(cache_policy=NO_CACHE, persist_result=False)


@dataclass(frozen=True)
class AuditSummary:
    """What a run did, in counts (safe to log: no patient data)."""

    run_id: str
    db: str
    report_files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_quarantined: int = 0
    rows_ivig: int = 0
    rows_passed_through: int = 0
    rows_out_of_scope: int = 0
    rows_unrecognised_ig: int = 0
    rows_quarantined_orders: int = 0
    courses: int = 0
    findings: int = 0
    findings_by_severity: dict[str, int] = field(default_factory=dict)
    findings_by_category: dict[str, int] = field(default_factory=dict)
    skipped_files: int = 0
    nothing_new: bool = False
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def new_run_id(now: datetime) -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@task(name="load rule pack and dictionaries")
@data_free_errors
def load_configuration(rules: str | None, profile: str | None, products: str | None) -> tuple[RulePack, ProductDictionary]:
    """The effective rule pack (with profile) and the product dictionary."""
    return load_rule_pack(Path(rules) if rules else None, profile), load_products(Path(products) if products else None)


def _retry_on_io(task, task_run, state) -> bool:
    """Retry only input/output failures (a locked database, a file still being copied), never bad data."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - only an input/output failure is worth a retry
        return is_io_failure(exc)
    return False


@task(name="read extract", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io, **PATIENT_ROWS)
@data_free_errors
def read_extract(paths: list[str], extract: str, mapping: str | None = None):
    """One extract's files as a lazy frame of canonical text columns, with their content hashes."""
    # Rows are parsed once, in the audit's streaming pass (a broken file is an ExtractError there).
    lf, sources = scan_extract([Path(p) for p in paths], extract, mapping=mapping, validate_rows=False)
    get_run_logger().info("%s extract: %d file(s)", extract, len(sources))
    return lf, sources


@task(name="contract and normalise", **PATIENT_ROWS)
@data_free_errors
def prepare(extracts: stages.Extracts, products: ProductDictionary, pack: RulePack) -> stages.PreparedOrders:
    """Typed, checked IVIG orders with grams and indications; evidence; quarantine."""
    prepared = stages.prepare(extracts, products, pack)
    get_run_logger().info(
        "rows read %d: IVIG %d, other medications %d, out of scope %d, quarantined %d",
        prepared.rows_read, prepared.ivig.height, prepared.rows_passed_through,
        prepared.rows_out_of_scope, prepared.quarantine.height,
    )
    return prepared


@task(name="build courses", **PATIENT_ROWS)
@data_free_errors
def build_courses(prepared: stages.PreparedOrders, pack: RulePack):
    """Courses with dosing weight and regimen, and the order -> course map."""
    courses, order_course = stages.courses_with_regimen(prepared.ivig, pack)
    get_run_logger().info("courses built: %d", courses.height)
    return courses, order_course


@task(name="apply rules", **PATIENT_ROWS)
@data_free_errors
def apply_rules(courses, prepared: stages.PreparedOrders, pack: RulePack, run_id: str):
    """Every rule of the pack over the courses: the findings."""
    findings = stages.judge(courses, prepared, pack, run_id)
    get_run_logger().info("findings: %d", findings.height)
    return findings


@task(name="audit shard", **PATIENT_ROWS)
@data_free_errors
def audit_shard(extracts: stages.Extracts, products: ProductDictionary, pack: RulePack, run_id: str, index: int, shards: int):
    """The whole audit of one shard of patients (runs on a Dask worker when the flow uses Dask)."""
    return stages.run_audit_remembering(stages.shard(extracts, index, shards), products, pack, run_id)


@task(name="write database", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_on_io, **PATIENT_ROWS)
@data_free_errors
def store(db: str, run: RunRecord, result: stages.AuditResult, source_rows) -> None:
    """Write the run to DuckDB in one transaction (the whole history was re-audited)."""
    write_run(
        Path(db), run, result.orders, result.courses, result.findings, result.quarantine,
        source_rows=source_rows, replace_all=True,
    )
    get_run_logger().info("database written: run %s", run.run_id)


@task(name="write report", retries=1, retry_delay_seconds=[5], retry_condition_fn=_retry_on_io, **PATIENT_ROWS)
@data_free_errors
def report(db: str, report_dir: str, options: ReportOptions) -> list[str]:
    """The manager summary (HTML, Markdown, worklist) from what the database holds, and its artifacts."""
    paths, data = build_report(read_tables(Path(db)), Path(report_dir), options)
    # Artifacts hold counts and grams only: no patient or course identifier leaves the database.
    create_markdown_artifact(key="ivig-audit-report-headline", markdown=headline_markdown(data), description="Headline")
    create_table_artifact(key="ivig-audit-by-indication", table=aggregate_table(data), description="By indication")
    return [str(p) for p in paths]


def _counts(frame, column: str) -> dict[str, int]:
    """Row counts per value of one column."""
    counts = frame.group_by(column).len()
    return dict(zip(counts[column].to_list(), counts["len"].to_list()))


def _headline_markdown(summary: AuditSummary) -> str:
    """The run headline as Markdown (counts only, no patient identifiers)."""
    lines = [
        f"# IVIG audit run {summary.run_id}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows read | {summary.rows_read} |",
        f"| IVIG order rows audited | {summary.rows_ivig} |",
        f"| other medications (passed through) | {summary.rows_passed_through} |",
        f"| immunoglobulins out of scope | {summary.rows_out_of_scope} |",
        f"| unrecognised immunoglobulin (data-quality findings) | {summary.rows_unrecognised_ig} |",
        f"| order rows quarantined | {summary.rows_quarantined_orders} |",
        f"| rows quarantined (all extracts) | {summary.rows_quarantined} |",
        f"| courses | {summary.courses} |",
        f"| findings | {summary.findings} |",
    ]
    lines += [f"| findings {sev} | {n} |" for sev, n in sorted(summary.findings_by_severity.items())]
    return "\n".join(lines)


@task(name="find new input files")
@data_free_errors
def find_new_inputs(inputs: dict[str, list[str]], db: str, force: bool) -> tuple[dict[str, list[str]], list[dict]]:
    """The input files per extract whose content was not audited before (all of them with force).

    A file of a size no audited input had is new without hashing it first: its hash is then
    computed in the background while the audit parses it.
    """
    done, sizes = (set(), set()) if force else audited_inputs(Path(db))
    new: dict[str, list[str]] = {}
    skipped: list[dict] = []
    for extract, paths in inputs.items():
        for path in discover([Path(p) for p in paths]):
            size = path.stat().st_size
            if sizes is None or size in sizes:
                digest = content_sha256(path)
                if digest in done:
                    skipped.append({"extract": extract, "path": str(path), "sha256": digest, "bytes": size})
                    continue
            new.setdefault(extract, []).append(str(path))
    get_run_logger().info("input files: %d new, %d already audited", sum(map(len, new.values())), len(skipped))
    return new, skipped


@task(name="load history", **PATIENT_ROWS)
@data_free_errors
def load_history(db: str):
    """The stored source rows of IVIG patients (None for a new database)."""
    history = read_source_rows(Path(db))
    get_run_logger().info("history rows: %d", 0 if history is None else history.height)
    return history


@flow(name="ivig-audit", persist_result=False, log_prints=False)
@flow_errors
def audit_flow(
    orders: list[str],
    labs: str | None = None,
    procedures: str | None = None,
    db: str = "ivig_audit.duckdb",
    rules: str | None = None,
    profile: str | None = None,
    products: str | None = None,
    report_dir: str | None = "reports",
    cost_per_gram: float = 80.0,
    force: bool = False,
    shards: int = 1,
    mapping: str | None = None,
) -> AuditSummary:
    """Audit the new extracts together with the stored history into the database; write the summary."""
    started = datetime.now(timezone.utc)
    run_id = new_run_id(started)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    pack, product_dictionary = load_configuration(rules, profile, products)
    inputs = {"orders": list(orders)} | ({"labs": [labs]} if labs else {}) | ({"procedures": [procedures]} if procedures else {})
    new_inputs, skipped = find_new_inputs(inputs, db, force)
    if not new_inputs:
        get_run_logger().info("nothing new to audit: every input file was audited before (use --force)")
        return AuditSummary(run_id=run_id, db=db, skipped_files=len(skipped), nothing_new=True)
    # One read task per file, run concurrently (hashing and header checks); scanning stays lazy.
    futures = {
        name: [read_extract.submit([path], name, mapping) for path in paths] for name, paths in new_inputs.items()
    }
    history = load_history(db)
    read = {name: [future.result() for future in files] for name, files in futures.items()}
    lap("read")
    sources: list[SourceFile] = [s for files in read.values() for _, found in files for s in found]
    try:
        extracts = stages.with_history(
            {name: pl.concat([frame for frame, _ in files], how="vertical") for name, files in read.items()},
            history,
            frozenset(s.path for s in sources),
        )
    except ValueError as exc:
        raise ExtractError(str(exc)) from None
    if shards > 1:
        # Patients are independent: each shard is audited whole on its own worker; the database
        # write stays one final step.
        parts = [audit_shard.submit(extracts, product_dictionary, pack, run_id, i, shards) for i in range(shards)]
        try:
            result, source_rows = stages.combine([part.result() for part in parts])
        except ValueError as exc:
            raise ExtractError(str(exc)) from None
        lap("audit_shards")
    else:
        prepared = prepare(extracts, product_dictionary, pack)
        lap("contract_normalise")
        courses, order_course = build_courses(prepared, pack)
        lap("courses")
        findings = apply_rules(courses, prepared, pack, run_id)
        lap("rules")
        result = stages.output_tables(prepared, courses, order_course, findings, run_id)
        source_rows = stages.remember(prepared)
        lap("outputs")
    run = RunRecord(
        run_id=run_id,
        started_at=started,
        finished_at=datetime.now(timezone.utc),
        status="succeeded",
        profile=pack.profile_name,
        rule_pack_version=pack.version,
        rule_pack_hash=pack.config_hash,
        inputs=[s.record() for s in sources],
        **result.counts(),
        courses=result.courses.height,
        findings=result.findings.height,
        timings=timings,
        skipped_inputs=skipped,
        cost_per_gram=cost_per_gram,
    )
    store(db, run, result, source_rows)
    lap("store")
    report_files = report(db, report_dir, ReportOptions(cost_per_gram=cost_per_gram)) if report_dir else []
    lap("report")
    summary = AuditSummary(
        run_id=run_id,
        db=db,
        report_files=report_files,
        **result.counts(),
        courses=run.courses,
        findings=run.findings,
        findings_by_severity=_counts(result.findings, "severity"),
        findings_by_category=_counts(result.findings, "category"),
        skipped_files=len(skipped),
        seconds=(datetime.now(timezone.utc) - started).total_seconds(),
        timings=timings,
    )
    create_markdown_artifact(key="ivig-audit-headline", markdown=_headline_markdown(summary), description="Counts only")
    return summary
