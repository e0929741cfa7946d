"""`ivig-audit dose`, `measure`, `replay`, `diff` and `scenarios`: the pharmacist's dose calculator,
the comparable measure, and what a rule-pack or policy change would do before it goes live."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_app import (
    DEFAULT_DB,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    DbOption,
    ProductsOption,
    ProfileOption,
    RulesOption,
    app,
    configuration,
    fail,
    require_database,
)

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _number(value: str | None, what: str, unit: str = "") -> float | None:
    """A number from the command line, or a one-line error (typer's own would be a multi-line box)."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        fail(f"{what} must be a number{f' in {unit}' if unit else ''}, not '{value}'", EXIT_BAD_INPUT)
    if number != number or number in (float("inf"), float("-inf")):
        fail(f"{what} must be a finite number, not '{value}'", EXIT_BAD_INPUT)
    return number


def _date(value: str, what: str) -> date:
    """A YYYY-MM-DD date from the command line, or a one-line error."""
    try:
        if not _DATE.match(value.strip()):
            raise ValueError
        return date.fromisoformat(value.strip())
    except ValueError:
        fail(f"{what} must be a date as YYYY-MM-DD, not '{value}'", EXIT_BAD_INPUT)
        raise  # unreachable: fail exits


def _sex(value: str | None) -> str | None:
    if value is None:
        return None
    sex = {"m": "M", "male": "M", "f": "F", "female": "F"}.get(value.strip().lower())
    if sex is None:
        fail(f"--sex must be M or F, not '{value}'", EXIT_BAD_INPUT)
    return sex


@app.command()
def dose(
    indication: Annotated[str, typer.Option(help="Indication as text (GBS, CIDP maintenance, MG crisis, ITP, Kawasaki, MS) or an ICD-10 code (G61.0).")],
    weight: Annotated[str, typer.Option(metavar="KG", help="Actual body weight in kg.")],
    height: Annotated[Optional[str], typer.Option(metavar="CM", help="Height in cm (needed for ideal and adjusted weight).")] = None,
    sex: Annotated[Optional[str], typer.Option(metavar="M|F", help="Sex for the ideal-body-weight formula: M or F.")] = None,
    age: Annotated[Optional[str], typer.Option(metavar="YEARS", help="Age in years (under 18: actual weight is used).")] = None,
    product: Annotated[Optional[str], typer.Option(help="Product name for a vial plan (Privigen, Gamunex-C, Octagam 10%, ...).")] = None,
    profile: ProfileOption = None,
    pregnant: Annotated[bool, typer.Option("--pregnant", help="The patient is pregnant.")] = False,
    pre_pregnancy_weight: Annotated[Optional[str], typer.Option(metavar="KG", help="Pre-pregnancy weight in kg (used instead of the actual weight when --pregnant).")] = None,
    phase: Annotated[Optional[str], typer.Option(metavar="first|later", help="CIDP and MG: 'first' (induction/crisis, the default) or 'later' (maintenance).")] = None,
    days: Annotated[Optional[str], typer.Option(metavar="N", help="Days to give the course over, within the regimen (default: the regimen's longest).")] = None,
    g_per_kg: Annotated[Optional[str], typer.Option(metavar="G/KG", help="Course target in g/kg within a regimen range (default: the top of the range).")] = None,
    rules: RulesOption = None,
    products: ProductsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Calculate the IVIG course the audit would accept for one patient.

    Shows ideal body weight (Devine), adjusted weight, BMI, which weight the dose is based on and
    why, the regimen (g/kg per day x days, course total), the band the audit accepts (target
    +/-10%), the course rounded to 5 g or to whole vials, the grams saved against dosing on actual
    weight, and with --product the fewest vials for the course and for each day.

    Example: ivig-audit dose --indication GBS --weight 100 --height 175 --sex M --product Privigen

    Exit status: 0 calculated (or the indication is not routine, which is explained); 2 bad input
    (an unrecognised indication, a number out of range, days outside the regimen).
    """
    from pipeline.tools.dose import DoseError, DoseRequest, calculate_dose, format_dose

    request_days = _number(days, "--days")
    if request_days is not None and request_days != int(request_days):
        fail(f"--days must be a whole number of days, not '{days}'", EXIT_BAD_INPUT)
    if phase is not None and phase.strip().lower() not in ("first", "later"):
        fail(f"--phase must be 'first' (induction/crisis) or 'later' (maintenance), not '{phase}'", EXIT_BAD_INPUT)
    request = DoseRequest(
        indication=indication,
        weight_kg=_number(weight, "--weight", "kg"),
        height_cm=_number(height, "--height", "cm"),
        sex=_sex(sex),
        age_years=_number(age, "--age", "years"),
        pregnant=pregnant,
        pre_pregnancy_weight_kg=_number(pre_pregnancy_weight, "--pre-pregnancy-weight", "kg"),
        product=product,
        phase=phase.strip().lower() if phase else None,
        days=None if request_days is None else int(request_days),
        g_per_kg=_number(g_per_kg, "--g-per-kg", "g/kg"),
    )
    pack, dictionary = configuration(rules, profile, products)
    try:
        result = calculate_dose(request, pack, dictionary)
    except DoseError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    typer.echo(json.dumps(result, indent=2) if as_json else format_dose(result))


@app.command()
def measure(
    from_: Annotated[str, typer.Option("--from", metavar="YYYY-MM-DD", help="First day of the period (courses starting on or after it).")],
    to: Annotated[str, typer.Option("--to", metavar="YYYY-MM-DD", help="Last day of the period (inclusive).")],
    out: Annotated[Path, typer.Option(help="File to write the MeasureReport JSON to ('-' for the screen).")],
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write IVIG appropriateness for a period as a FHIR R4 MeasureReport (JSON) others can compare.

    Denominator: IVIG courses that started in the period; numerator: courses the audit judged
    appropriate (as flagged, and after review); score: their proportion. Stratified by indication and by finding category; grams
    used and grams avoidable as two further groups. Counts only: no patient identifiers.

    Example: ivig-audit measure --db ivig_audit.duckdb --from 2026-01-01 --to 2026-03-31 --out q1.json
    """
    from pipeline.tools.measure import build_measure_report
    from pipeline.warehouse import StoreError, connect_read_only, measure_summaries

    start, end = _date(from_, "--from"), _date(to, "--to")
    if end < start:
        fail(f"--to {end} is before --from {start}", EXIT_BAD_INPUT)
    require_database(db)
    try:
        con = connect_read_only(db)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILURE)
    try:
        summaries = measure_summaries(con, start, end)
    finally:
        con.close()
    report = build_measure_report(summaries, start, end, generated_at=datetime.now(timezone.utc))
    text = json.dumps(report, indent=2)
    if str(out) == "-":
        typer.echo(text)
        return
    try:
        out.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_FAILURE)
    flagged, reviewed = (
        ({p["code"]["coding"][0]["code"]: p["count"] for p in g["population"]}, g.get("measureScore", {}).get("value"))
        for g in report["group"][:2]
    )
    typer.echo(
        f"wrote {out}: {flagged[0]['denominator']} courses started {start} to {end}, {flagged[0]['numerator']} appropriate"
        + (f" ({flagged[1]:.1%})" if flagged[1] is not None else "")
        + f" as flagged, {reviewed[0]['numerator']} after review"
    )


# --------------------------------------------------------------------------------------------
# Replay and diff (issue 9): scenarios never touch the live findings or their review states.
# --------------------------------------------------------------------------------------------

@app.command()
def replay(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The past run whose history to re-audit (runs.run_id).")],
    rules: Annotated[Optional[Path], typer.Option(help="Site rule-pack TOML to try (merged over the shipped defaults).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Policy profile to try: default, ontario, ibw, discretionary.")] = None,
    db: DbOption = DEFAULT_DB,
    name: Annotated[Optional[str], typer.Option(help="A name for the scenario (default: describes the replay).")] = None,
    products: Annotated[Optional[Path], typer.Option(help="Site product dictionary TOML (default: the shipped one).")] = None,
) -> None:
    """Re-audit everything the history held at a past run under another rule pack or profile, into a scenario.

    The history ledger keeps every row a rule may read (docs/history.md): the replay audits the
    rows that had arrived by that run, without reading the input files again. The result is
    stored as a scenario (tables scenarios, scenario_findings, scenario_courses); the live
    findings, courses and review states are not touched. Compare with `ivig-audit diff RUN_ID SCENARIO_ID`.

    Example: ivig-audit replay 20261128T021500Z-3f2a1c --profile ibw --name "NHS IBW policy"

    Exit status: 0 stored; 2 bad input (unknown run, a run that audited nothing, bad rule pack or
    profile); 3 database failure (locked, unreadable).
    """
    import duckdb

    from pipeline.ingest.errors import ExtractError
    from pipeline.tools.replay import (
        default_scenario_name,
        is_scenario_id,
        new_scenario_id,
        replay_audit,
    )
    from pipeline.warehouse import (
        ScenarioRecord,
        StoreError,
        read_ledger_as_of,
        read_run,
        write_scenario,
    )

    require_database(db)
    if is_scenario_id(run_id):
        fail(f"'{run_id}' is a scenario id; replay takes a run id (see `ivig-audit scenarios`)", EXIT_BAD_INPUT)
    pack, dictionary = configuration(rules, profile, products)
    try:
        run = read_run(db, run_id)
        if run is None:
            fail(f"no run with id '{run_id}' in {db}", EXIT_BAD_INPUT)
        ledger, courses = read_ledger_as_of(db, run_id)
    except (StoreError, duckdb.Error) as exc:
        fail(_db_message(exc), EXIT_FAILURE)
    if ledger.filter(ledger["extract"] == "orders").is_empty():
        fail(f"the history held no orders at run {run_id}: nothing to replay", EXIT_BAD_INPUT)

    created = datetime.now(timezone.utc)
    scenario_id = new_scenario_id(created)
    try:
        result = replay_audit(ledger, courses, dictionary, pack, scenario_id)
    except ExtractError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - one line, no row content (it may hold patient data)
        fail(f"the replay of run {run_id} failed ({type(exc).__name__}); the live tables were not touched", EXIT_FAILURE)
    record = ScenarioRecord(
        scenario_id=scenario_id,
        name=name or default_scenario_name(run_id, pack.profile_name, str(rules) if rules else None),
        base_run_id=run_id,
        created_at=created,
        profile=pack.profile_name,
        rule_pack_version=pack.version,
        rule_pack_hash=pack.config_hash,
        rules_file=str(rules) if rules else None,
        courses=result.courses.height,
        findings=result.findings.height,
        history_only=True,
    )
    try:
        write_scenario(db, record, result.findings, result.courses)
    except (StoreError, duckdb.Error) as exc:
        fail(_db_message(exc), EXIT_FAILURE)
    severities = result.findings.group_by("severity").len()
    counts = dict(zip(severities["severity"].to_list(), severities["len"].to_list()))
    typer.echo(
        f"scenario {scenario_id} ({record.name}): run {run_id} replayed under rule pack {pack.version}, "
        f"profile {pack.profile_name}"
        f"{' (the same rule configuration as the run)' if pack.config_hash == run['rule_pack_hash'] else ''}"
        f": {record.courses} courses, {record.findings} findings "
        f"(critical {counts.get('critical', 0)}, warning {counts.get('warning', 0)}, info {counts.get('info', 0)}); "
        f"compare: ivig-audit diff {run_id} {scenario_id} --db {db}"
    )


def _db_message(exc: BaseException) -> str:
    """One line for a database failure (a StoreError is already one line)."""
    from pipeline.warehouse import StoreError

    if isinstance(exc, StoreError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"cannot read the database: {text[0] if text else type(exc).__name__}"


@app.command("diff")
def diff_command(
    a: Annotated[str, typer.Argument(metavar="A", help="Run id (20261128T021500Z-3f2a1c) or scenario id (scn-...): the before.")],
    b: Annotated[str, typer.Argument(metavar="B", help="Run id or scenario id: the after.")],
    db: DbOption = DEFAULT_DB,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List the findings added, removed and changed from A to B, with counts by rule.

    A and B are each a run id or a scenario id (scenario ids start with "scn-"). For a run, the
    findings present at that run are rebuilt from the live findings table: first seen at or before
    it and not resolved by then; their content (severity, expected, observed, grams) is the latest
    stored. "Changed" means the same finding_id with a different severity, expected, observed or
    excess_g.

    Example: ivig-audit diff 20261128T021500Z-3f2a1c scn-20261128T091500Z-4b1e0a

    Exit status: 0 compared (differences are not errors); 2 unknown id or missing database;
    3 database failure.
    """
    import duckdb

    from pipeline.tools.replay import (
        diff_findings,
        diff_to_json,
        format_diff,
        is_scenario_id,
    )
    from pipeline.warehouse import StoreError, read_run_findings, read_scenario_findings

    require_database(db)
    sides = []
    for ref in (a, b):
        try:
            sides.append(read_scenario_findings(db, ref) if is_scenario_id(ref) else read_run_findings(db, ref))
        except ValueError as exc:
            fail(f"{exc} in {db}", EXIT_BAD_INPUT)
        except (StoreError, duckdb.Error) as exc:
            fail(_db_message(exc), EXIT_FAILURE)
    result = diff_findings(*sides)
    typer.echo(diff_to_json(result, a, b) if as_json else format_diff(result, a, b))


@app.command()
def scenarios(
    db: DbOption = DEFAULT_DB,
) -> None:
    """List the stored scenarios (ivig-audit replay), oldest first."""
    import duckdb

    from pipeline.warehouse import StoreError, read_scenarios

    require_database(db)
    try:
        rows = read_scenarios(db)
    except (StoreError, duckdb.Error) as exc:
        fail(_db_message(exc), EXIT_FAILURE)
    if rows.is_empty():
        typer.echo("no scenarios: create one with `ivig-audit replay RUN_ID --profile NAME` or `--rules FILE`")
        return
    for r in rows.iter_rows(named=True):
        typer.echo(
            f"{r['scenario_id']}  run {r['base_run_id']}  pack {r['rule_pack_version']} profile {r['profile']}"
            f"{'  rules ' + r['rules_file'] if r['rules_file'] else ''}  {r['courses']} courses, {r['findings']} findings"
            f"  {r['name']}"
        )
