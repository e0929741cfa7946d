"""`ivig-audit dose` and `ivig-audit measure`: the pharmacist's dose calculator and the comparable measure."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli import EXIT_BAD_INPUT, EXIT_FAILURE, _fail, app
from pipeline.rulepack import RulePackError
from pipeline.store import StoreError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _number(value: str | None, what: str, unit: str = "") -> float | None:
    """A number from the command line, or a one-line error (typer's own would be a multi-line box)."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        _fail(f"{what} must be a number{f' in {unit}' if unit else ''}, not '{value}'", EXIT_BAD_INPUT)
    if number != number or number in (float("inf"), float("-inf")):
        _fail(f"{what} must be a finite number, not '{value}'", EXIT_BAD_INPUT)
    return number


def _date(value: str, what: str) -> date:
    """A YYYY-MM-DD date from the command line, or a one-line error."""
    try:
        if not _DATE.match(value.strip()):
            raise ValueError
        return date.fromisoformat(value.strip())
    except ValueError:
        _fail(f"{what} must be a date as YYYY-MM-DD, not '{value}'", EXIT_BAD_INPUT)
        raise  # unreachable: _fail exits


def _sex(value: str | None) -> str | None:
    if value is None:
        return None
    sex = {"m": "M", "male": "M", "f": "F", "female": "F"}.get(value.strip().lower())
    if sex is None:
        _fail(f"--sex must be M or F, not '{value}'", EXIT_BAD_INPUT)
    return sex


@app.command()
def dose(
    indication: Annotated[str, typer.Option(help="Indication as text (GBS, CIDP maintenance, MG crisis, ITP, Kawasaki, MS) or an ICD-10 code (G61.0).")],
    weight: Annotated[str, typer.Option(metavar="KG", help="Actual body weight in kg.")],
    height: Annotated[Optional[str], typer.Option(metavar="CM", help="Height in cm (needed for ideal and adjusted weight).")] = None,
    sex: Annotated[Optional[str], typer.Option(metavar="M|F", help="Sex for the ideal-body-weight formula: M or F.")] = None,
    age: Annotated[Optional[str], typer.Option(metavar="YEARS", help="Age in years (under 18: actual weight is used).")] = None,
    product: Annotated[Optional[str], typer.Option(help="Product name for a vial plan (Privigen, Gamunex-C, Octagam 10%, ...).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Dosing-weight policy profile: default, ontario, ibw, discretionary.")] = None,
    pregnant: Annotated[bool, typer.Option("--pregnant", help="The patient is pregnant.")] = False,
    pre_pregnancy_weight: Annotated[Optional[str], typer.Option(metavar="KG", help="Pre-pregnancy weight in kg (used instead of the actual weight when --pregnant).")] = None,
    phase: Annotated[Optional[str], typer.Option(metavar="first|later", help="CIDP and MG: 'first' (induction/crisis, the default) or 'later' (maintenance).")] = None,
    days: Annotated[Optional[str], typer.Option(metavar="N", help="Days to give the course over, within the regimen (default: the regimen's longest).")] = None,
    g_per_kg: Annotated[Optional[str], typer.Option(metavar="G/KG", help="Course target in g/kg within a regimen range (default: the top of the range).")] = None,
    rules: Annotated[Optional[Path], typer.Option(help="Site rule-pack TOML overriding the shipped defaults.")] = None,
    products: Annotated[Optional[Path], typer.Option(help="Site product dictionary TOML (replaces the shipped one).")] = None,
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
    from pipeline.dose import DoseError, DoseRequest, calculate_dose, format_dose
    from pipeline.normalise import load_products
    from pipeline.rulepack import load_rule_pack

    request_days = _number(days, "--days")
    if request_days is not None and request_days != int(request_days):
        _fail(f"--days must be a whole number of days, not '{days}'", EXIT_BAD_INPUT)
    if phase is not None and phase.strip().lower() not in ("first", "later"):
        _fail(f"--phase must be 'first' (induction/crisis) or 'later' (maintenance), not '{phase}'", EXIT_BAD_INPUT)
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
    try:
        pack = load_rule_pack(rules, profile)
    except RulePackError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    try:
        dictionary = load_products(products)
    except FileNotFoundError:
        _fail(f"product dictionary not found: {products}", EXIT_BAD_INPUT)
    except (ValueError, KeyError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        _fail(f"product dictionary {products} cannot be used: {exc}", EXIT_BAD_INPUT)
    try:
        result = calculate_dose(request, pack, dictionary)
    except DoseError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    typer.echo(json.dumps(result, indent=2) if as_json else format_dose(result))


@app.command()
def measure(
    from_: Annotated[str, typer.Option("--from", metavar="YYYY-MM-DD", help="First day of the period (courses starting on or after it).")],
    to: Annotated[str, typer.Option("--to", metavar="YYYY-MM-DD", help="Last day of the period (inclusive).")],
    out: Annotated[Path, typer.Option(help="File to write the MeasureReport JSON to ('-' for the screen).")],
    db: Annotated[Path, typer.Option(help="DuckDB database written by `ivig-audit run` (read only).")] = Path("ivig_audit.duckdb"),
) -> None:
    """Write IVIG appropriateness for a period as a FHIR R4 MeasureReport (JSON) others can compare.

    Denominator: IVIG courses that started in the period; numerator: courses the audit judged
    appropriate; score: their proportion. Stratified by indication and by finding category; grams
    used and grams avoidable as two further groups. Counts only: no patient identifiers.

    Example: ivig-audit measure --db ivig_audit.duckdb --from 2026-01-01 --to 2026-03-31 --out q1.json
    """
    from pipeline.measure import build_measure_report, rule_packs_of
    from pipeline.store import read_tables

    start, end = _date(from_, "--from"), _date(to, "--to")
    if end < start:
        _fail(f"--to {end} is before --from {start}", EXIT_BAD_INPUT)
    if not db.exists():
        _fail(f"database not found: {db}", EXIT_BAD_INPUT)
    try:
        tables = read_tables(db, ("runs", "courses", "findings"))
    except StoreError as exc:
        _fail(str(exc), EXIT_FAILURE)
    report = build_measure_report(
        tables["courses"],
        tables["findings"],
        start,
        end,
        generated_at=datetime.now(timezone.utc),
        rule_packs=rule_packs_of(tables["courses"], tables["runs"], start, end),
    )
    text = json.dumps(report, indent=2)
    if str(out) == "-":
        typer.echo(text)
        return
    try:
        out.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_FAILURE)
    group = report["group"][0]
    counts = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
    score = group.get("measureScore", {}).get("value")
    typer.echo(
        f"wrote {out}: {counts['denominator']} courses started {start} to {end}, {counts['numerator']} appropriate"
        + (f" ({score:.1%})" if score is not None else "")
    )
