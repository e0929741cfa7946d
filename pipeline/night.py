"""One night of the audit, step by step: the only definition of what a run does.

    configuration -> (writer lock) -> new input files -> read -> tonight's rows -> history of the
    patients they touch -> audit (contract, normalise, courses, rules) -> one database write
    -> (lock released) -> report (when the data changed or the report is missing or stale)

`run_night` calls each step through a `Steps` runner: `DirectSteps` calls it in this process
(tests, the benchmark, replay); `flows.audit` passes a runner that makes each step a Prefect task.
Whatever runs it, the night is the same, and so is its result: a night audits what its rows can
change (the patients they touch, from the courses they can reach on) together with what the
history ledger holds for it (pipeline.history, warehouse.read_history), so any split of the same
extracts into nights ends where one run over all of them does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from pipeline import audit as stages
from pipeline import warehouse
from pipeline.warehouse import HistoryReach
from pipeline.domain.history import (
    arrived, empty_text_rows, merged, retention_days, stored_text_rows, tonight_touches,
)
from pipeline.contract.parse import parse_datetime
from pipeline.config.products import ProductDictionary, load_products
from pipeline.domain.normalise import immunoglobulin_rows
from pipeline.ingest import tables as readers
from pipeline.ingest.errors import ExtractError
from pipeline.ingest.files import SourceFile, content_sha256, discover
from pipeline.config.reference import reference_tables
from pipeline.config.rulepack import RulePack, load_rule_pack
from pipeline.rules import evidence_windows, follow_up_windows, order_reach_days

log = logging.getLogger(__name__)

EXTRACTS = ("orders", "labs", "procedures")

#: Name of the file in a report folder that says which database state the report shows.
REPORT_STAMP = ".ivig-audit-report.json"


class Steps(Protocol):
    """Runs the steps of a night (in this process, or as Prefect tasks)."""

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step and return its result."""

    def map(self, name: str, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
        """Run one step for each argument tuple (concurrently where the runner can) and return the results in order."""


class DirectSteps:
    """Steps called in this process, one after the other."""

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step and return its result."""
        return fn(*args)

    def map(self, name: str, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
        """Run one step per argument tuple, in order."""
        return [fn(*args) for args in calls]


@dataclass(frozen=True)
class NightRequest:
    """What a night is asked to do (paths as given on the command line)."""

    db: Path
    inputs: dict[str, list[Path]]
    rules: Path | None = None
    profile: str | None = None
    products: Path | None = None
    mapping: str | None = None
    report_dir: Path | None = None
    cost_per_gram: float | None = None  # None: the rule pack's [costs]
    force: bool = False
    shards: int = 1
    lock_timeout_seconds: float = 600.0

    @classmethod
    def of(
        cls, orders: str | list[str] | None = None, labs: str | list[str] | None = None,
        procedures: str | list[str] | None = None, db: str = "ivig_audit.duckdb", rules: str | None = None,
        profile: str | None = None, products: str | None = None, report_dir: str | None = "reports",
        cost_per_gram: float | None = None, force: bool = False, shards: int = 1, mapping: str | None = None,
        lock_timeout_seconds: float = 600.0,
    ) -> NightRequest:
        """A request from the parameters of the flow and the command line (paths as text; each input one path or several)."""
        def paths(value: str | list[str] | None) -> list[Path]:
            return [] if value is None else [Path(p) for p in ([value] if isinstance(value, str) else value)]

        inputs = {name: found for name, found in (("orders", paths(orders)), ("labs", paths(labs)), ("procedures", paths(procedures))) if found}
        return cls(
            db=Path(db), inputs=inputs, rules=Path(rules) if rules else None, profile=profile,
            products=Path(products) if products else None, mapping=mapping,
            report_dir=Path(report_dir) if report_dir else None, cost_per_gram=cost_per_gram, force=force,
            shards=shards, lock_timeout_seconds=lock_timeout_seconds,
        )


@dataclass(frozen=True)
class WrittenReport:
    """The report files, and its headline and by-indication tables (counts and grams only: no identifiers)."""

    paths: list[str]
    headline_markdown: str
    by_indication: list[dict[str, Any]]


@dataclass(frozen=True)
class NightSummary:
    """What a night did, in counts (safe to log: no patient data)."""

    run_id: str
    db: str
    status: str
    audit_scope: str
    rows: dict[str, int] = field(default_factory=dict)
    courses: int = 0
    findings: int = 0
    findings_by_severity: dict[str, int] = field(default_factory=dict)
    findings_by_category: dict[str, int] = field(default_factory=dict)
    patients_audited: int = 0
    skipped_files: int = 0
    reaudit_reason: str | None = None
    report: WrittenReport | None = None
    report_status: str = "not_requested"
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def report_files(self) -> list[str]:
        """The report files written (none when no report was written)."""
        return self.report.paths if self.report else []

    @property
    def nothing_new(self) -> bool:
        """True when every input was audited before and the configuration did not change."""
        return self.status == "nothing_new"


def new_run_id(now: datetime) -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def load_configuration(rules: Path | None, profile: str | None, products: Path | None) -> tuple[RulePack, ProductDictionary]:
    """The effective rule pack (with profile) and the product dictionary."""
    return load_rule_pack(rules, profile), load_products(products)


def find_new_inputs(
    inputs: dict[str, list[Path]], db: Path, force: bool
) -> tuple[dict[str, list[Path]], list[dict[str, Any]]]:
    """The input files per extract to read tonight, and those skipped (with why).

    A path given twice (or a file inside two given folders) is read once; a file whose content a
    stored run audited is skipped (unless `force`), and so is a second file of the same content
    tonight. A file of a size no audited input had is new without hashing it first: its hash is
    computed in the background while the audit parses it.
    """
    done, sizes = (set(), set()) if force else warehouse.audited_inputs(db)
    new: dict[str, list[Path]] = {}
    skipped: list[dict[str, Any]] = []
    seen_content: dict[str, str] = {}
    for extract, paths in input_files(inputs).items():
        for path in paths:
            size = path.stat().st_size
            if sizes is None or size in sizes or any(s == size for s in _sizes_of(seen_content)):
                digest = content_sha256(path)
                if digest in done or digest in seen_content:
                    why = "audited before" if digest in done else f"same content as {seen_content[digest]}"
                    skipped.append({"extract": extract, "path": str(path), "sha256": digest, "bytes": size, "why": why})
                    continue
                seen_content[digest] = str(path)
            new.setdefault(extract, []).append(path)
    return new, skipped


def input_files(inputs: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The files of each extract given (folders expanded), each file once (a path given twice is read once)."""
    seen: set[Path] = set()
    files: dict[str, list[Path]] = {}
    for extract, paths in inputs.items():
        for path in discover(paths):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                files.setdefault(extract, []).append(path)
    return files


def _sizes_of(seen_content: dict[str, str]) -> list[int]:
    """Sizes of tonight's files already hashed (a second file of the same content must be hashed too)."""
    return [Path(p).stat().st_size for p in seen_content.values()]


def read_extract(paths: list[Path], extract: str, mapping: str | None) -> tuple[pl.LazyFrame, list[SourceFile]]:
    """One extract's files as a lazy frame of canonical text columns, with their content hashes.

    The rows are not parsed here: they are parsed once, by the pass that selects tonight's rows
    (`select_new_rows`), which names the file a broken row is in. (Parsing each file whole here too
    cost one more parse of every file: 1.2 s of a 3.5 s night of 1M rows.)
    """
    return readers.scan_extract(paths, extract, mapping=mapping, validate_rows=False)


def _named_parse_error(read: dict[str, tuple[pl.LazyFrame, list[SourceFile]]]) -> None:
    """Raise the one-line error of the first file whose rows cannot be parsed, naming it (after the pass failed)."""
    for path, (frame, _) in read.items():
        readers.refuse_unparseable_rows(frame, Path(path))


def tonight_frames(
    read: dict[str, list[tuple[pl.LazyFrame, list[SourceFile]]]]
) -> tuple[dict[str, pl.LazyFrame], list[SourceFile], dict[str, int]]:
    """Tonight's rows per extract, the files they came from (in arrival order) and each file's position in it."""
    sources = [s for extract in EXTRACTS for _, found in read.get(extract, []) for s in found]
    positions = {s.path: i for i, s in enumerate(sources)}
    frames = {extract: pl.concat([frame for frame, _ in files], how="vertical") for extract, files in read.items()}
    return frames, sources, positions


def select_new_rows(
    new: dict[str, list[Path]], read: dict[str, tuple[pl.LazyFrame, list[SourceFile]]], products: ProductDictionary, pack: RulePack
) -> tuple[stages.Extracts, int, list[SourceFile]]:
    """Tonight's rows the audit reads (in memory, with their arrival), the number of order rows read
    tonight and the files they came from; a file whose dates are mostly in an undeclared layout stops
    the night here (before the database is touched).

    The arrival is added to the rows kept, after the pass over the extract: added before it, the
    pass held twice the memory (1.0 GB against 0.5 GB on 10M rows).
    """
    tonight_read = {e: [read[str(p)] for p in paths] for e, paths in new.items()}
    frames, sources, positions = tonight_frames(tonight_read)
    try:
        kept, rows_read = stages.select_relevant(
            stages.Extracts(frames.get("orders"), frames.get("labs"), frames.get("procedures")), products, pack
        )
    except ExtractError:
        # The pass over every file failed on a row: say which file (each is parsed alone, on this path only).
        _named_parse_error({str(p): read[str(p)] for paths in new.values() for p in paths})
        raise
    selected = stages.Extracts(
        *(None if frame is None else arrived(frame, PROVISIONAL_SEQ, positions) for frame in kept.frames().values())
    )
    stages.refuse_undeclared_date_layouts(selected, pack.settings["site_timezone"], float(pack.settings["date_failure_share"]))
    return selected, rows_read, sources


#: The run sequence number tonight's rows carry until the writer lock says which run this is.
PROVISIONAL_SEQ = -1


def _arrived_as(selected: stages.Extracts, run_seq: int) -> stages.Extracts:
    """Tonight's selected rows with this run's sequence number."""
    return stages.Extracts(
        *(None if f is None else f.with_columns(run_seq=pl.lit(run_seq, dtype=pl.Int64)) for f in selected.frames().values())
    )


@dataclass(frozen=True)
class TonightKeys:
    """Who and what tonight's rows touch, for choosing what of the history a night judges (warehouse.read_history)."""

    patients: pl.Series  # of any extract
    order_ids: pl.Series
    immunoglobulin: pl.Series  # patients with an immunoglobulin row tonight
    touches: pl.DataFrame  # every row's patient, kind and dates (history.tonight_touches)


def tonight_keys(selected: stages.Extracts, products: ProductDictionary, time_zone: str) -> TonightKeys:
    """Tonight's patients (any extract), order ids, immunoglobulin patients, and where each row touches a history."""
    collected = {name: frame.collect() for name, frame in selected.frames().items() if frame is not None}
    touches = tonight_touches(collected, time_zone)
    patients = touches["patient_id"].unique().sort()
    orders = collected.get("orders")
    if orders is None or orders.is_empty():
        empty = pl.Series("x", [], dtype=pl.String)
        return TonightKeys(patients, empty.alias("order_id"), empty.alias("patient_id"), touches)
    ndc = "ndc" if "ndc" in orders.columns else None
    ids = orders.select(pl.col("order_id").str.strip_chars()).drop_nulls().unique()["order_id"]
    ig = orders.filter(immunoglobulin_rows(products, ndc)).select(pl.col("patient_id").str.strip_chars()).drop_nulls().unique()["patient_id"]
    return TonightKeys(patients, ids, ig, touches)


def audit_tonight(
    selected: stages.Extracts,
    rows_read: int,
    history: warehouse.History,
    products: ProductDictionary,
    pack: RulePack,
    run_id: str,
) -> stages.AuditResult:
    """Tonight's rows audited together with the stored history of the patients they touch."""
    def with_stored(extract: str) -> pl.LazyFrame | None:
        has = not history.ledger.filter(pl.col("extract") == extract).is_empty()
        rows = merged(selected.frames()[extract], stored_text_rows(history.ledger, extract) if has else None)
        # An extract given on some night is there for every patient, empty for one with no row of it.
        return empty_text_rows(extract) if rows is None and (extract in history.extracts_given or extract == "orders") else rows

    extracts = stages.Extracts(orders=with_stored("orders"), labs=with_stored("labs"), procedures=with_stored("procedures"))
    prepared = stages.prepare(extracts, products, pack, rows_read)
    courses, order_course = stages.courses_with_regimen(prepared.ivig, pack, history.courses)
    findings = stages.judge(courses, prepared, pack, run_id, history.labs_through)
    judged = _with_judged_from(history.patients)
    patients = pl.concat([judged, _with_judged_from(stages.audited_patients(prepared).join(judged, on="patient_id", how="anti"))])
    courses, findings = judged_part(courses, findings, patients)
    return stages.output_tables(prepared, courses, order_course, findings, pack, run_id, patients.sort("patient_id"))


def _with_judged_from(patients: pl.DataFrame) -> pl.DataFrame:
    """Patients with the time their judged courses start from (null, every course, unless the history says otherwise)."""
    if "judged_from" in patients.columns:
        return patients.select("patient_id", pl.col("judged_from").cast(pl.Datetime("us")))
    return patients.select("patient_id", judged_from=pl.lit(None, dtype=pl.Datetime("us")))


def judged_part(courses: pl.DataFrame, findings: pl.DataFrame, patients: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The courses a night judged (ending at or after their patient's `judged_from`; all when null) and their
    findings, with every finding of no course: the rest was built only to number and name the courses the
    same way, and read without the evidence no rule of a judged course reaches (warehouse.read_history)."""
    kept = courses.join(patients, on="patient_id", how="left").filter(
        pl.col("judged_from").is_null() | (pl.col("end") >= pl.col("judged_from"))
    ).drop("judged_from")
    of_kept = pl.col("course_id").is_null() | pl.col("course_id").is_in(kept["course_id"].implode())
    return kept, findings.filter(of_kept)


def commit(db: Path, run: warehouse.RunRecord, result: stages.AuditResult, pack: RulePack) -> None:
    """Write the night in one transaction: what the ledger learned, the judged patients' tables, the run."""
    warehouse.write_run(
        db, run, result.orders, result.courses, result.findings, result.quarantine,
        patients=result.patients, ledger=result.ledger, versions=result.versions,
        retention=retention_days(pack), grace_days=int(pack.settings["late_arrival_days"]),
        reference=reference_tables(pack),
    )


def report_is_current(db: Path, report_dir: Path) -> bool:
    """Whether the report folder holds a complete report of the database's latest audited state."""
    stamp = report_dir / REPORT_STAMP
    if not stamp.is_file() or not all((report_dir / name).is_file() for name in ("index.html", "summary.md", "worklist.csv")):
        return False
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _report_state(db)


def _report_state(db: Path) -> dict[str, Any]:
    """What a report shows: the database and its latest audit."""
    return {"db": str(Path(db).resolve()), "audit_seq": warehouse.latest_audit_seq(db)}


def write_report(db: Path, report_dir: Path, cost_per_gram: float | None, costs: Any = None) -> WrittenReport:
    """The manager summary from what the database holds, then the stamp saying which state it shows.

    `cost_per_gram` None: the run's rule pack's `[costs]` (`costs`), with its source and currency.
    """
    from pipeline.reporting import ReportOptions, aggregate_table, build_report_from_database, headline_markdown

    options = (ReportOptions(cost_per_gram=costs.cost_per_gram, cost_source=costs.source, currency=costs.currency)
               if cost_per_gram is None and costs is not None else ReportOptions(cost_per_gram=cost_per_gram))
    paths, data = build_report_from_database(db, report_dir, options)
    (report_dir / REPORT_STAMP).write_text(json.dumps(_report_state(db)), encoding="utf-8")
    return WrittenReport([str(p) for p in paths], headline_markdown(data), aggregate_table(data))


def run_night(request: NightRequest, steps: Steps | None = None, run_id: str | None = None) -> NightSummary:
    """Audit tonight's new inputs with the stored history of the patients they touch (see module doc)."""
    steps = steps or DirectSteps()
    started = datetime.now(timezone.utc)
    run_id = run_id or new_run_id(started)
    db = Path(request.db)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    pack, products = steps("load rule pack and dictionaries", load_configuration, request.rules, request.profile, request.products)
    # The new inputs are read (headers, and every row of a small file) before the database is
    # written or locked: a bad extract stops the night with its one line and leaves nothing behind.
    files = steps("find input files", input_files, request.inputs)
    unread, _ = steps("find new input files", find_new_inputs, files, db, request.force)
    calls = [([path], extract, request.mapping) for extract in EXTRACTS for path in unread.get(extract, [])]
    read_files = dict(zip((str(args[0][0]) for args in calls), steps.map("read extract", read_extract, calls)))
    lap("read")
    tonight = steps("select tonight's rows", select_new_rows, unread, read_files, products, pack) if unread else None
    lap("select")
    with warehouse.writer_lock(db, request.lock_timeout_seconds):
        lap("wait_for_lock")
        steps("upgrade database", warehouse.upgrade_database, db)
        state = steps("read database state", warehouse.read_night_state, db)
        # Again under the lock: a run that finished meanwhile may have audited some of the files.
        new, skipped = steps("find new input files", find_new_inputs, files, db, request.force)
        if new != unread:
            missing = {str(p): read_extract([p], e, request.mapping) for e, paths in new.items() for p in paths if str(p) not in read_files}
            tonight = steps("select tonight's rows", select_new_rows, new, read_files | missing, products, pack) if new else None
        reason = _reaudit_reason(state, pack, products)
        base = dict(
            run_id=run_id, started_at=started, profile=pack.profile_name, rule_pack_version=pack.version,
            rule_pack_hash=pack.config_hash, products_hash=products.config_hash, skipped_inputs=skipped,
            cost_per_gram=request.cost_per_gram if request.cost_per_gram is not None else pack.costs.cost_per_gram,
            seq=state.last_seq + 1,
            report_status=None if request.report_dir is not None else "not_requested",
        )
        if not new and reason is None:
            run = warehouse.RunRecord(
                **base, finished_at=datetime.now(timezone.utc), status="nothing_new", inputs=[], rows_read=0,
                rows_quarantined=0, rows_ivig=0, rows_passed_through=0, rows_out_of_scope=0, courses=0, findings=0,
                audit_scope="none", timings=timings,
            )
            steps("record run", warehouse.write_run_record, db, run)
            summary = NightSummary(run_id=run_id, db=str(db), status="nothing_new", audit_scope="none", skipped_files=len(skipped))
        else:
            selected, rows_read, sources = tonight if tonight is not None else (stages.Extracts(None), 0, [])
            # Tonight's rows take this run's sequence number (the arrival they are versions by).
            selected = _arrived_as(selected, state.last_seq + 1)
            keys = tonight_keys(selected, products, pack.settings["site_timezone"])
            given = state.extracts_given | set(new)
            if state.has_history and set(new) - state.extracts_given and reason is None:
                kinds = " and ".join(sorted(set(new) - state.extracts_given))
                reason = f"the first {kinds} extract: rules that read it now judge every patient"
            labs_through = _labs_through(state.labs_through, selected, pack.settings["site_timezone"])
            ended = _follow_ups_due(state.labs_through, labs_through, pack)
            history = dataclasses.replace(
                steps("load history", warehouse.read_history, db, keys.patients, keys.order_ids, keys.immunoglobulin,
                      reason is not None, ended, HistoryReach(keys.touches, evidence_windows(pack), order_reach_days(pack))),
                extracts_given=frozenset(given), labs_through=labs_through,
            )
            lap("history")
            result = _audit(steps, selected, rows_read, history, products, pack, run_id, request.shards)
            lap("audit")
            run = warehouse.RunRecord(
                **base, finished_at=datetime.now(timezone.utc), status="succeeded",
                inputs=[s.record() for s in sources], **result.counts(), courses=result.courses.height,
                findings=result.findings.height, audit_scope="full" if reason else "incremental",
                patients_audited=_judged(result), reaudit_reason=reason, timings=timings,
            )
            steps("write database", commit, db, run, result, pack)
            lap("store")
            summary = NightSummary(
                run_id=run_id, db=str(db), status="succeeded", audit_scope=run.audit_scope, rows=result.counts(),
                courses=result.courses.height, findings=result.findings.height,
                findings_by_severity=_counts(result.findings, "severity"),
                findings_by_category=_counts(result.findings, "category"),
                patients_audited=run.patients_audited, skipped_files=len(skipped), reaudit_reason=reason,
            )
            # Released before the report reads the database (the frames of a 10M-row night: ~300 MB).
            del tonight, selected, history, result
    report, report_status = None, "not_requested"
    if request.report_dir is not None:
        report_dir = Path(request.report_dir)
        if summary.nothing_new and report_is_current(db, report_dir):
            report_status = "up_to_date"
        else:
            try:
                report = steps("write report", write_report, db, report_dir, request.cost_per_gram, pack.costs)
                report_status = "written"
            except BaseException:
                _record_report_status(db, run_id, "failed")
                raise
        _record_report_status(db, run_id, report_status)
    lap("report")
    return NightSummary(
        **{**summary.__dict__, "report": report, "report_status": report_status, "timings": timings,
           "seconds": (datetime.now(timezone.utc) - started).total_seconds()}
    )


def _audit(steps: Steps, selected, rows_read, history, products, pack, run_id, shards: int) -> stages.AuditResult:
    """The audit of tonight's rows with their history, whole or in shards of patients."""
    if shards <= 1:
        return steps("audit", audit_tonight, selected, rows_read, history, products, pack, run_id)
    # Patients are independent: each shard is audited whole on its own worker; the write stays one step.
    calls = [(stages.shard(selected, i, shards), 0, _shard_history(history, i, shards), products, pack, run_id) for i in range(shards)]
    parts = steps.map("audit shard", audit_tonight, calls)
    try:
        return stages.combine(parts, rows_read)
    except ValueError as exc:
        raise ExtractError(str(exc)) from None


def _labs_through(stored: datetime | None, selected: stages.Extracts, time_zone: str) -> datetime | None:
    """The date the labs extract runs to after tonight: its newest result, stored or tonight's."""
    if selected.labs is None:
        return stored
    tonight = selected.labs.select(parse_datetime("collected_at", time_zone).max()).collect().item()
    return max((d for d in (stored, tonight) if d is not None), default=None)


def _follow_ups_due(before: datetime | None, after: datetime | None, pack: RulePack) -> list[tuple[datetime, datetime]]:
    """The ranges of course ends whose follow-up window tonight's labs carried the data past (rules.FOLLOW_UP).

    A rule judges a window of w days after a course once the labs run past its end + w: a night
    moving the date the labs run to from `before` to `after` brings due the courses that ended in
    [before - w, after - w] (both ends kept: a superset), one range per window length.
    """
    if after is None or (before is not None and after <= before):
        return []
    return [
        (before - timedelta(days=days) if before is not None else datetime.min, after - timedelta(days=days))
        for days in follow_up_windows(pack)
    ]


def _judged(result: stages.AuditResult) -> int:
    """How many patients the night judged: those with IVIG orders, courses or findings after it."""
    frames = [result.orders.select("patient_id"), result.courses.select("patient_id"), result.findings.select("patient_id")]
    return pl.concat(frames).unique().height


def _shard_history(history: warehouse.History, index: int, shards: int) -> warehouse.History:
    """The part of the stored history of one shard's patients."""
    keep = stages.shard_of_patient(shards) == index
    return dataclasses.replace(
        history, ledger=history.ledger.filter(keep), courses=history.courses.filter(keep), patients=history.patients.filter(keep)
    )


def _reaudit_reason(state: warehouse.NightState, pack: RulePack, products: ProductDictionary) -> str | None:
    """Why every patient must be judged again tonight (None: only those tonight's rows touch)."""
    if state.rule_pack_hash is None:
        return None
    changed = []
    if state.rule_pack_hash != pack.config_hash:
        changed.append(f"the rule pack or profile changed (now {pack.version}, profile {pack.profile_name})")
    if state.products_hash is not None and state.products_hash != products.config_hash:
        changed.append("the product dictionary changed")
    return "; ".join(changed) or None


def _record_report_status(db: Path, run_id: str, status: str) -> None:
    """Record what happened to the run's report; a failure to record it is logged, never raised over the report's own error."""
    try:
        warehouse.set_report_status(db, run_id, status)
    except (warehouse.StoreError, OSError) as exc:
        log.warning("could not record the report status of run %s: %s", run_id, exc)


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    """Row counts per value of one column."""
    counts = frame.group_by(column).len()
    return dict(zip(counts[column].to_list(), counts["len"].to_list()))
