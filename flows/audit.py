"""The nightly audit as a Prefect flow: `pipeline.night.run_night` with each step a Prefect task.

Tasks that carry patient rows never cache or persist results (NO_CACHE, persist_result=False),
and the logs and artifacts carry counts only: patient data stays in DuckDB and the reports. Every task
and the flow raise only data-free `StageFailure`s (flows/prefect_runtime.py): no exception message,
which may quote an id or a value, reaches Prefect's database, logs or result storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.prefect_runtime import data_free_errors, flow_errors, is_io_failure
from pipeline.night import NightRequest, NightSummary, run_night

PATIENT_ROWS = dict(cache_policy=NO_CACHE, persist_result=False)


def _retry_on_io(task, task_run, state) -> bool:
    """Retry only input/output failures (a locked database, a file still being copied), never bad data."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - only an input/output failure is worth a retry
        return is_io_failure(exc)
    return False


#: Prefect options of the steps that may meet a passing input/output failure.
IO_RETRIES: dict[str, dict[str, Any]] = {
    "read extract": dict(retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_on_io),
    "write database": dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_on_io),
    "write report": dict(retries=1, retry_delay_seconds=[5], retry_condition_fn=_retry_on_io),
}


class PrefectSteps:
    """Each step of the night as a Prefect task (mapped steps are submitted and run concurrently)."""

    def _task(self, name: str, fn: Callable[..., Any]):
        return task(data_free_errors(fn), name=name, **PATIENT_ROWS, **IO_RETRIES.get(name, {}))

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step as a task and return its result."""
        return self._task(name, fn)(*args)

    def map(self, name: str, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
        """Submit one task per argument tuple and wait for them all, in order."""
        step = self._task(name, fn)
        futures = [step.submit(*args) for args in calls]
        return [future.result() for future in futures]


def _headline_markdown(summary: NightSummary) -> str:
    """The run headline as Markdown (counts only, no patient identifiers)."""
    rows = summary.rows
    lines = [
        f"# IVIG audit run {summary.run_id} ({summary.status}, {summary.audit_scope})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows read | {rows.get('rows_read', 0)} |",
        f"| IVIG order rows audited | {rows.get('rows_ivig', 0)} |",
        f"| other medications (passed through) | {rows.get('rows_passed_through', 0)} |",
        f"| immunoglobulins out of scope | {rows.get('rows_out_of_scope', 0)} |",
        f"| unrecognised immunoglobulin (data-quality findings) | {rows.get('rows_unrecognised_ig', 0)} |",
        f"| order rows quarantined | {rows.get('rows_quarantined_orders', 0)} |",
        f"| rows quarantined (all extracts) | {rows.get('rows_quarantined', 0)} |",
        f"| patients judged | {summary.patients_audited} |",
        f"| courses of those patients | {summary.courses} |",
        f"| findings of those patients | {summary.findings} |",
    ]
    lines += [f"| findings {sev} | {n} |" for sev, n in sorted(summary.findings_by_severity.items())]
    return "\n".join(lines)


@flow(name="ivig-audit", persist_result=False, log_prints=False)
@flow_errors
def audit_flow(
    orders: list[str] | None = None,
    labs: str | list[str] | None = None,
    procedures: str | list[str] | None = None,
    db: str = "ivig_audit.duckdb",
    rules: str | None = None,
    profile: str | None = None,
    products: str | None = None,
    report_dir: str | None = "reports",
    cost_per_gram: float | None = None,
    force: bool = False,
    shards: int = 1,
    mapping: str | None = None,
    lock_timeout_seconds: float = 600.0,
) -> NightSummary:
    """Audit the new extracts together with the stored history into the database; write the summary."""
    request = NightRequest.of(
        orders=orders, labs=labs, procedures=procedures, db=db, rules=rules, profile=profile, products=products,
        report_dir=report_dir, cost_per_gram=cost_per_gram, force=force, shards=shards, mapping=mapping,
        lock_timeout_seconds=lock_timeout_seconds,
    )
    summary = run_night(request, PrefectSteps())
    logger = get_run_logger()
    if summary.nothing_new:
        logger.info("nothing new to audit: %d input file(s) were audited before (use --force)", summary.skipped_files)
    else:
        logger.info("run %s: %d patients judged, %d findings", summary.run_id, summary.patients_audited, summary.findings)
    # Artifacts hold counts and grams only: no patient or course identifier leaves the database.
    create_markdown_artifact(key="ivig-audit-headline", markdown=_headline_markdown(summary), description="Counts only")
    if summary.report is not None:
        create_markdown_artifact(key="ivig-audit-report-headline", markdown=summary.report.headline_markdown, description="Headline")
        create_table_artifact(key="ivig-audit-by-indication", table=summary.report.by_indication, description="By indication")
    return summary
