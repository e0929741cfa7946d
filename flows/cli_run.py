"""`ivig-audit run`, `rules` and `serve`: the nightly audit, the effective rule pack, the schedule."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_app import (
    DEFAULT_DB,
    EXIT_BAD_INPUT,
    EXIT_CRITICAL,
    EXIT_FAILURE,
    CostPerGramOption,
    MappingOption,
    ProductsOption,
    ProfileOption,
    RulesOption,
    app,
    configuration,
    default_sample_dir,
    fail,
)


def preflight(
    inputs: dict[str, list[Path]], rules: Path | None, profile: str | None,
    mapping: str | None = None, products: Path | None = None,
) -> None:
    """Check configuration and each input's shape (files, encoding, header) before Prefect starts.

    A mistake there fails fast with one line; the rows themselves are parsed once, by the flow's
    read stage, which reports a broken row with the same one-line message.
    """
    from pipeline.ingest.mappings import load_mapping
    from pipeline.ingest.tables import scan_extract

    configuration(rules, profile, products)
    profile_map = load_mapping(mapping) if mapping else None
    for extract, paths in inputs.items():
        scan_extract(paths, extract, mapping=profile_map, validate_rows=False)


@app.command()
def run(
    orders: Annotated[Optional[list[Path]], typer.Option("--orders", help="Orders extract: a CSV or Parquet file or a folder of them. Repeat for several.")] = None,
    labs: Annotated[Optional[list[Path]], typer.Option("--labs", help="Labs extract (creatinine, eGFR, CBC, IgA): a file or folder. Repeat for several.")] = None,
    procedures: Annotated[Optional[list[Path]], typer.Option("--procedures", help="Procedures extract (plasma exchange): a file or folder. Repeat for several.")] = None,
    db: Annotated[Path, typer.Option(help="DuckDB database to write.")] = DEFAULT_DB,
    rules: RulesOption = None,
    profile: ProfileOption = None,
    products: ProductsOption = None,
    mapping: MappingOption = None,
    report_dir: Annotated[Path, typer.Option(help="Folder for the HTML and Markdown summary.")] = Path("reports"),
    cost_per_gram: CostPerGramOption = None,
    fail_on_critical: Annotated[bool, typer.Option(help="Exit 1 when the database holds open critical findings nobody has reviewed yet (they are listed).")] = False,
    force: Annotated[bool, typer.Option(help="Audit input files again even if their content was audited before.")] = False,
    task_runner: Annotated[str, typer.Option(help="Where tasks run: 'threads' (this machine) or 'dask' (a Dask cluster).")] = "threads",
    dask_address: Annotated[Optional[str], typer.Option(help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: a local cluster).")] = None,
    shards: Annotated[int, typer.Option(min=1, help="Audit patients in this many independent shards (tasks); use with --task-runner dask.")] = 1,
    lock_timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for another run on the same database to finish.")] = 600.0,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run each step as a Prefect task (default). --no-prefect runs the same night in this process without Prefect: no server to wait for (without PREFECT_API_URL, Prefect starts a temporary one, 10-20 s); the run is recorded in the database, not in Prefect.")] = True,
) -> None:
    """Audit the extracts into the database and write the summary (no options: the shipped sample data).

    Orders, labs and procedures may each arrive on their own night (labs alone are evidence for
    the patients' courses). Without any input option the shipped sample data is audited.

    Exit status: 0 audited; 1 audited, and open critical findings nobody has reviewed remain (only
    with --fail-on-critical; also on a night with nothing new); 2 bad input (missing file, unreadable
    extract, missing column, bad rule pack); 3 failure.
    """
    from pipeline.ingest.errors import ExtractError

    inputs = {name: list(paths) for name, paths in (("orders", orders), ("labs", labs), ("procedures", procedures)) if paths}
    if not inputs:
        sample = default_sample_dir()
        inputs = {"orders": [sample / "orders"]} | {
            name: [sample / f"{name}.csv"] for name in ("labs", "procedures") if (sample / f"{name}.csv").exists()
        }
    try:
        preflight(inputs, rules, profile, mapping, products)
    except ExtractError as exc:
        fail(str(exc))
    if task_runner not in ("threads", "dask"):
        fail("--task-runner must be 'threads' or 'dask'")
    parameters = {
        "orders": [str(p) for p in inputs.get("orders", [])],
        "labs": [str(p) for p in inputs.get("labs", [])],
        "procedures": [str(p) for p in inputs.get("procedures", [])],
        "db": str(db),
        "rules": str(rules) if rules else None,
        "profile": profile,
        "products": str(products) if products else None,
        "report_dir": str(report_dir),
        "cost_per_gram": cost_per_gram,
        "force": force,
        "shards": shards,
        "mapping": mapping,
        "lock_timeout_seconds": lock_timeout,
    }
    if prefect:
        summary = _run_with_prefect(parameters, task_runner, dask_address)
    else:
        if task_runner == "dask":
            fail("--task-runner dask runs tasks through Prefect: drop --no-prefect")
        from pipeline.night import NightRequest, run_night

        summary = _reported_failures(lambda: run_night(NightRequest.of(**parameters)))
    _print_summary(summary, fail_on_critical, db)


def _run_with_prefect(parameters: dict, task_runner: str, dask_address: str | None):
    """The night as the Prefect flow (each step a task); its summary."""
    from flows.audit import audit_flow

    if task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=dask_address) if dask_address else DaskTaskRunner()
        audit_flow = audit_flow.with_options(task_runner=runner)
        parameters = parameters | {"shards": max(parameters["shards"], 2)}
    from flows.prefect_runtime import StageFailure, failure_detail, prepare_prefect_run

    prepare_prefect_run()
    try:
        return _reported_failures(lambda: audit_flow(**parameters))
    except StageFailure as exc:  # raised inside the flow: its message never went through Prefect
        fail(failure_detail(exc), exc.exit_status)


def _reported_failures(night):
    """Run the night; a bad input, a store or a file failure is the one-line error with its exit status."""
    from pipeline.config.rulepack import RulePackError
    from pipeline.ingest.errors import ExtractError
    from pipeline.warehouse import StoreError

    try:
        return night()
    except (ExtractError, RulePackError) as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    except OSError as exc:  # disk full or no permission writing the report (or an input vanished mid-run)
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"the run failed on a file operation: {exc.strerror or exc}{where}", EXIT_FAILURE)


def _print_summary(summary, fail_on_critical: bool, db: Path) -> None:
    """The run's one-line summary; exit 1 on critical findings when asked to."""
    report = {"written": ", ".join(summary.report_files), "up_to_date": "up to date"}.get(summary.report_status, "not written")
    if summary.nothing_new:
        typer.echo(
            f"nothing new to audit: all {summary.skipped_files} input file(s) were audited before "
            f"(database {summary.db}; run {summary.run_id} recorded); report {report}; use --force to audit them again"
        )
    else:
        severities = summary.findings_by_severity
        scope = f"every patient again ({summary.reaudit_reason})" if summary.audit_scope == "full" else "the patients tonight's rows touch"
        typer.echo(
            f"audited {summary.rows.get('rows_ivig', 0)} IVIG order rows; judged {summary.patients_audited} patients "
            f"({scope}): {summary.courses} courses, {summary.findings} findings (critical {severities.get('critical', 0)}, "
            f"warning {severities.get('warning', 0)}, info {severities.get('info', 0)}); "
            f"{summary.rows.get('rows_quarantined', 0)} rows quarantined; database {summary.db}; report {report}"
        )
    if fail_on_critical:
        _fail_on_open_criticals(db)


def _fail_on_open_criticals(db: Path) -> None:
    """Exit 1 naming the open critical findings nobody has reviewed yet, if the database holds any."""
    from pipeline.reporting.files import terminal_safe
    from pipeline.warehouse import StoreError, connect_read_only, open_critical_findings

    try:
        con = connect_read_only(db)
        try:
            open_criticals = open_critical_findings(con)
        finally:
            con.close()
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    if open_criticals.is_empty():
        return
    by_rule = open_criticals.group_by("rule_id", maintain_order=True).len()
    typer.echo(
        f"{open_criticals.height} open critical finding(s) not yet reviewed ("
        + ", ".join(f"{rule} {n}" for rule, n in by_rule.iter_rows())
        + f"); review them with `ivig-audit findings --severity critical --db {db}`:"
    )
    for finding_id, rule_id in open_criticals.select("finding_id", "rule_id").iter_rows():
        typer.echo(f"  {terminal_safe(finding_id)}  ({rule_id})")
    raise typer.Exit(EXIT_CRITICAL)


@app.command("rules")
def list_rules(
    rules: Annotated[Optional[Path], typer.Option(help="Site rule-pack TOML to merge over the defaults.")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Policy profile to show.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print the effective rule pack: every rule with its version, category, severity, source and parameters."""
    from pipeline.config.rulepack import RulePackError, load_rule_pack

    try:
        pack = load_rule_pack(rules, profile)
    except RulePackError as exc:
        fail(str(exc))
    if as_json:
        payload = {
            "version": pack.version,
            "effective_date": pack.effective_date,
            "profile": pack.profile_name,
            "profile_settings": pack.profile,
            "config_hash": pack.config_hash,
            "rules": [
                {"id": r.rule_id, "version": r.version, "effective_date": r.effective_date,
                 "category": r.category, "severity": r.severity,
                 "description": r.description, "source": r.source, "action": r.action, "params": r.params}
                for r in pack.rules.values()
            ],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"rule pack {pack.version} ({pack.effective_date}), profile '{pack.profile_name}', hash {pack.config_hash[:12]}")
    width = max(len(r) for r in pack.rules)
    for r in pack.rules.values():
        typer.echo(
            f"{r.rule_id:<{width}}  v{r.version:<4} from {r.effective_date}  {r.category:<21} {r.severity:<8} {r.description}"
        )
        typer.echo(f"    source: {r.source}")
        if r.params:
            typer.echo("    params: " + ", ".join(f"{key}={json.dumps(value)}" for key, value in r.params.items()))


@app.command()
def serve(
    orders: Annotated[Path, typer.Option(help="Inbox folder the nightly extracts land in.")] = Path("inbox"),
    labs: Annotated[Optional[Path], typer.Option(help="Labs extract path, read each night.")] = None,
    procedures: Annotated[Optional[Path], typer.Option(help="Procedures extract path, read each night.")] = None,
    db: Annotated[Path, typer.Option(help="DuckDB database to write.")] = DEFAULT_DB,
    report_dir: Annotated[Path, typer.Option(help="Folder for the summary.")] = Path("reports"),
    rules: RulesOption = None,
    profile: ProfileOption = None,
    products: ProductsOption = None,
    mapping: MappingOption = None,
    cost_per_gram: CostPerGramOption = None,
    cron: Annotated[str, typer.Option(help="Cron schedule of the nightly run.")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of the schedule (IANA name).")] = "UTC",
) -> None:
    """Serve the audit on a nightly schedule (needs a Prefect server: `prefect server start`).

    The site options (--rules, --profile, --products, --mapping, --cost-per-gram) are those of
    `ivig-audit run` and are checked before serving: a mistake is one line and exit 2, not a failed night.
    """
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            "serving on a schedule needs a Prefect server: start one with `prefect server start` "
            "(or `make server`) and set PREFECT_API_URL=http://127.0.0.1:4200/api; "
            "without a server, call `ivig-audit run` from cron or a systemd timer"
        )
    from pipeline.ingest.errors import ExtractError
    from pipeline.ingest.mappings import load_mapping

    configuration(rules, profile, products)
    try:
        if mapping:
            load_mapping(mapping)
    except ExtractError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    from prefect.schedules import Cron

    from flows.audit import audit_flow

    audit_flow.serve(
        name="nightly",
        schedules=[Cron(cron, timezone=timezone)],
        parameters={
            "orders": [str(orders.resolve())],
            "labs": str(labs.resolve()) if labs else None,
            "procedures": str(procedures.resolve()) if procedures else None,
            "db": str(db.resolve()),
            "report_dir": str(report_dir.resolve()),
            "rules": str(rules.resolve()) if rules else None,
            "profile": profile,
            "products": str(products.resolve()) if products else None,
            "mapping": str(Path(mapping).resolve()) if mapping and Path(mapping).exists() else mapping,
            "cost_per_gram": cost_per_gram,
        },
    )
