"""The audit as a chain of pure stages: contract -> normalise -> courses -> rules -> findings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import pandera.polars as pa
import polars as pl

from checks import outputs
from checks.inputs import IVIG_ORDER_ROWS, LAB_ROWS, PROCEDURE_ROWS
from pipeline.contract import (
    QUARANTINE_COLUMNS,
    check_labs,
    check_orders,
    check_procedures,
    date_layout_problem,
    lab_rows_used,
)
from pipeline.courses import build_courses, regimen_table
from pipeline.history import merge_history, rows_to_remember, stored_text_rows
from pipeline.normalise import (
    ProductDictionary,
    candidate_rows,
    classify_medications,
    expand_daily_doses,
    evidence_rows,
    immunoglobulin_rows,
    map_indications,
    split_orders,
)
from pipeline.read import ExtractError
from pipeline.rulepack import RulePack
from pipeline.rules import AuditContext, evaluate_rules

log = logging.getLogger(__name__)

# Only the pass over whole extracts streams; the small in-memory frames after it are collected
# with the in-memory engine (polars 2.1's streaming engine can panic formatting strings of them).
IN_MEMORY = "in-memory"


@dataclass(frozen=True)
class Extracts:
    """The text rows of one run's extracts (labs and procedures optional).

    The rows may include stored history (see pipeline.history); `tonight_files` names the files
    read in this run, so the run's counts cover only them (None: every row is tonight's).
    """

    orders: pl.LazyFrame
    labs: pl.LazyFrame | None = None
    procedures: pl.LazyFrame | None = None
    tonight_files: frozenset[str] | None = None

    def tonight(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Only the rows of a frame that came from this run's files."""
        if self.tonight_files is None:
            return frame
        return frame.filter(pl.col("source_file").is_in(sorted(self.tonight_files)))


@dataclass(frozen=True)
class RowCounts:
    """Tonight's input rows by what the audit did with them.

    rows_read = rows_ivig + rows_passed_through + rows_out_of_scope + rows_unrecognised_ig
    + rows_quarantined_orders; rows_quarantined counts every extract (labs and procedures too).
    """

    rows_read: int
    rows_ivig: int
    rows_passed_through: int
    rows_out_of_scope: int
    rows_quarantined: int
    rows_unrecognised_ig: int
    rows_quarantined_orders: int

    def counts(self) -> dict[str, int]:
        """The counts alone, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(RowCounts)}


@dataclass(frozen=True)
class PreparedOrders(RowCounts):
    """Orders after the contract and normalise stages, with tonight's row counts."""

    ivig: pl.DataFrame
    evidence: pl.DataFrame
    unrecognised_ig: pl.DataFrame
    labs: pl.DataFrame | None
    procedures: pl.DataFrame | None
    quarantine: pl.DataFrame
    source: Extracts  # the text rows the audit read (relevant rows only), in memory


@dataclass(frozen=True)
class AuditResult(RowCounts):
    """The tables one run writes, and its row counts."""

    orders: pl.DataFrame
    courses: pl.DataFrame
    findings: pl.DataFrame
    quarantine: pl.DataFrame


def _contract_failures(df: pl.DataFrame, schema: pa.DataFrameSchema, extract: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate rows with Pandera (values too); rows that fail move to quarantine with the failed check."""
    try:
        return schema.validate(df, lazy=True), _empty_quarantine()
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases.filter(pl.col("index").is_not_null())
        if cases.is_empty():
            raise
        reasons = cases.group_by("index").agg(
            reason=pl.format("contract: {} failed {}", pl.col("column"), pl.col("check")).str.join("; ")
        )
        indexed = df.with_row_index("index").with_columns(pl.col("index").cast(cases.schema["index"]))
        failed = indexed.join(reasons, on="index", how="inner")
        kept = indexed.join(reasons, on="index", how="anti").drop("index")
        quarantined = failed.select(
            pl.lit(extract).alias("extract"),
            "source_file",
            "source_row",
            *[(pl.col(c) if c in df.columns else pl.lit(None, dtype=pl.String)).alias(c) for c in ("order_id", "patient_id")],
            "reason",
            (pl.col("raw") if "raw" in df.columns else pl.lit("{}")).alias("raw"),
        )
        return kept, quarantined


def _empty_quarantine() -> pl.DataFrame:
    """An empty frame in the quarantine layout (without run_id)."""
    return pl.DataFrame(
        schema={
            "extract": pl.String, "source_file": pl.String, "source_row": pl.Int64, "order_id": pl.String,
            "patient_id": pl.String, "reason": pl.String, "raw": pl.String,
        }
    )


def _collect_extract(queries: list[pl.LazyFrame], extract: str) -> list[pl.DataFrame]:
    """Collect queries that scan an extract (streaming); a file that cannot be parsed is an ExtractError."""
    try:
        # Rechunked: polars 2.1 can panic formatting strings of a multi-chunk frame the streaming
        # engine produced (seen with pl.format after filters); one chunk each avoids it.
        return [frame.rechunk() for frame in pl.collect_all(queries, engine="streaming")]
    except pl.exceptions.ComputeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExtractError(f"cannot read the {extract} extract: {first}") from None


#: The columns of an evidence row the rules read (the rest is left empty: an extract holds many).
EVIDENCE_COLUMNS = ("order_id", "patient_id", "medication", "start", "doses", "source_file", "source_row")


def select_relevant(extracts: Extracts, products: ProductDictionary, pack: RulePack) -> tuple[Extracts, int]:
    """The rows the audit reads, in memory, and the number of order rows read tonight.

    A pharmacy extract is mostly other medications: they are counted, not parsed. One streaming
    pass keeps the immunoglobulin rows (and rows with no medication, to quarantine) and, narrowed to
    the columns rules read, the medications rules use as evidence; evidence of patients without
    immunoglobulin is then dropped. Labs and procedures are kept for those patients only (labs for
    the tests the audit uses).
    """
    schema = extracts.orders.collect_schema()
    ndc_column = "ndc" if "ndc" in schema.names() else None
    text = [c for c, dtype in schema.items() if dtype == pl.String]
    wide = [c for c in text if c not in EVIDENCE_COLUMNS]
    read = (
        extracts.orders.filter(candidate_rows(products, pack.evidence_patterns, ndc_column))
        .with_columns(is_ig=immunoglobulin_rows(products, ndc_column))
        .filter(pl.col("is_ig") | evidence_rows(pack.evidence_patterns))
        # A kept string would share, and keep in memory, the buffer of its whole batch (the pass
        # peaked at 1.7 GB on 10M rows): evidence columns are copied (`+ ""`), the other columns
        # of immunoglobulin rows kept as categories (copying those mostly-null columns held as
        # much again; see bench/README.md).
        .with_columns(pl.col(c) + "" for c in text if c not in wide)
        .with_columns(pl.when(pl.col("is_ig")).then(pl.col(c)).cast(pl.Categorical) for c in wide)
    )
    rows, count = _collect_extract([read, extracts.tonight(extracts.orders).select(pl.len())], "orders")
    patients = rows.filter("is_ig").select(pl.col("patient_id").str.strip_chars()).drop_nulls().unique()
    of_patients = pl.col("patient_id").str.strip_chars().is_in(patients["patient_id"].implode())
    orders = rows.filter(pl.col("is_ig") | of_patients).drop("is_ig").with_columns(pl.col(wide).cast(pl.String))

    def kept(frame: pl.LazyFrame | None, extract: str, keep: pl.Expr) -> pl.LazyFrame | None:
        return None if frame is None else _collect_extract([frame.filter(of_patients & keep)], extract)[0].lazy()

    selected = Extracts(
        orders=orders.lazy(),
        labs=kept(extracts.labs, "labs", lab_rows_used()),
        procedures=kept(extracts.procedures, "procedures", pl.lit(True)),
        tonight_files=extracts.tonight_files,
    )
    return selected, int(count.item())


def refuse_undeclared_date_layouts(source: Extracts, time_zone: str, max_share: float) -> None:
    """Stop with a one-line ExtractError when one of tonight's files has mostly dates in no accepted layout.

    Checked on the rows the audit reads (immunoglobulin orders, evidence, the labs and procedures of
    their patients): an extract whose dates are in an undeclared layout fails on all of them.
    """
    for name in ("orders", "labs", "procedures"):
        frame = getattr(source, name)
        if frame is None:
            continue
        problem = date_layout_problem(source.tonight(frame), name, time_zone, max_share)
        if problem:
            raise ExtractError(problem)


def prepare(extracts: Extracts, products: ProductDictionary, pack: RulePack) -> PreparedOrders:
    """Contract and normalise: typed IVIG orders with grams and indications, evidence, labs, procedures, rejects."""
    source, rows_read = select_relevant(extracts, products, pack)
    time_zone = pack.settings["site_timezone"]
    refuse_undeclared_date_layouts(source, time_zone, float(pack.settings["date_failure_share"]))
    valid_orders, rejected_orders = check_orders(source.orders, time_zone)
    # Materialise once: every query below starts from these two frames.
    valid_df, rejected_df = pl.collect_all([classify_medications(valid_orders, products), rejected_orders], engine=IN_MEMORY)
    rejected_orders = rejected_df.lazy()
    split = split_orders(valid_df.lazy())
    ivig_lazy = map_indications(split.ivig, pack)
    labs_lazy = rejected_labs = procedures_lazy = rejected_procedures = None
    if source.labs is not None:
        labs_lazy, rejected_labs = check_labs(source.labs, time_zone)
    if source.procedures is not None:
        procedures_lazy, rejected_procedures = check_procedures(source.procedures, time_zone)
    queries = {
        "ivig": ivig_lazy,
        "evidence": split.evidence,
        "unrecognised_ig": split.unrecognised_ig.select("order_id", "patient_id", "medication", "start", "source_file"),
        "out_of_scope": source.tonight(split.out_of_scope).select(pl.len()),
        "rejected_orders": rejected_orders,
        "rejected_ivig": split.quarantine,
    }
    if labs_lazy is not None:
        queries |= {"labs": labs_lazy, "rejected_labs": rejected_labs}
    if procedures_lazy is not None:
        queries |= {"procedures": procedures_lazy, "rejected_procedures": rejected_procedures}
    collected = dict(zip(queries, pl.collect_all(list(queries.values()), engine=IN_MEMORY)))
    ivig, ivig_contract_rejects = _contract_failures(collected["ivig"], IVIG_ORDER_ROWS, "orders")
    quarantine_parts = [collected["rejected_orders"], collected["rejected_ivig"], ivig_contract_rejects]
    labs = procedures = None
    if labs_lazy is not None:
        labs, lab_rejects = _contract_failures(collected["labs"], LAB_ROWS, "labs")
        quarantine_parts += [collected["rejected_labs"], lab_rejects]
    if procedures_lazy is not None:
        procedures, procedure_rejects = _contract_failures(collected["procedures"], PROCEDURE_ROWS, "procedures")
        quarantine_parts += [collected["rejected_procedures"], procedure_rejects]
    quarantine = pl.concat([q.select(QUARANTINE_COLUMNS) for q in quarantine_parts], how="vertical")

    def tonight_rows(frame: pl.DataFrame) -> int:
        return source.tonight(frame.lazy()).select(pl.len()).collect(engine=IN_MEMORY).item()

    rows_ivig = tonight_rows(ivig)
    rows_out_of_scope = int(collected["out_of_scope"].item())
    rows_unrecognised_ig = tonight_rows(collected["unrecognised_ig"])
    rows_quarantined_orders = tonight_rows(quarantine.filter(pl.col("extract") == "orders"))
    log.info("prepared orders: %d IVIG, %d quarantined", ivig.height, quarantine.height)
    return PreparedOrders(
        ivig=ivig,
        evidence=collected["evidence"],
        unrecognised_ig=collected["unrecognised_ig"],
        labs=labs,
        procedures=procedures,
        quarantine=quarantine,
        source=source,
        rows_read=rows_read,
        rows_out_of_scope=rows_out_of_scope,
        # Every other row of tonight's orders passed through (other medications: not audited).
        rows_passed_through=rows_read - rows_ivig - rows_out_of_scope - rows_unrecognised_ig - rows_quarantined_orders,
        rows_ivig=rows_ivig,
        rows_quarantined=tonight_rows(quarantine),
        rows_unrecognised_ig=rows_unrecognised_ig,
        rows_quarantined_orders=rows_quarantined_orders,
    )


def courses_with_regimen(ivig: pl.DataFrame, pack: RulePack) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Courses (with their regimen's targets) and the order -> course map."""
    dose_days = expand_daily_doses(ivig.lazy())
    courses, order_course = build_courses(dose_days, pack)
    codes = (
        dose_days.group_by("patient_id", "indication_group", "order_id")
        .agg(pl.col("indication_code").first())
        .join(order_course, on="order_id")
        .group_by("course_id")
        .agg(indication_codes=pl.col("indication_code").drop_nulls().unique().sort().str.join(", "))
    )
    regimens = regimen_table(pack).lazy().drop("indication_group", "phase")
    enriched = (
        courses.join(regimens, on="indication", how="left")
        .join(codes, on="course_id", how="left")
        .with_columns(indication_codes=pl.when(pl.col("indication_codes").str.len_chars() > 0).then(pl.col("indication_codes")))
    )
    courses_df, map_df = pl.collect_all([enriched, order_course], engine=IN_MEMORY)
    return courses_df, map_df


def judge(
    courses: pl.DataFrame,
    prepared: PreparedOrders,
    pack: RulePack,
    run_id: str,
) -> pl.DataFrame:
    """All findings of the run (one row per rule x course or order)."""
    ctx = AuditContext(
        courses=courses.lazy(),
        orders=prepared.ivig.lazy(),
        evidence=prepared.evidence.lazy(),
        unrecognised_ig=prepared.unrecognised_ig.lazy(),
        labs=prepared.labs.lazy() if prepared.labs is not None else None,
        procedures=prepared.procedures.lazy() if prepared.procedures is not None else None,
        pack=pack,
    )
    return evaluate_rules(ctx, run_id).collect(engine=IN_MEMORY).sort("patient_id", "course_id", "rule_id", nulls_last=True)


def output_tables(
    prepared: PreparedOrders, courses: pl.DataFrame, order_course: pl.DataFrame, findings: pl.DataFrame, run_id: str
) -> AuditResult:
    """The run's tables in the stored layout, each checked against its Pandera contract."""
    serious = findings.filter(pl.col("severity") != "info", pl.col("course_id").is_not_null())
    per_course = serious.group_by("course_id").agg(excess_from_findings=pl.col("excess_g").max())
    courses_out = (
        courses.join(per_course, on="course_id", how="left")
        .with_columns(
            appropriate=pl.col("excess_from_findings").is_null(),
            excess_g=pl.col("excess_from_findings").fill_null(0.0),
        )
        .select(list(outputs.COURSES.columns))
    )
    orders_out = (
        prepared.ivig.join(order_course, on="order_id", how="left")
        .rename({"indication": "indication_text"})
        .with_columns(indication=pl.col("indication_group"))
        .select(list(outputs.ORDERS.columns))
    )
    quarantine_out = prepared.quarantine.with_columns(run_id=pl.lit(run_id)).select(list(outputs.QUARANTINE.columns))
    return AuditResult(
        orders=outputs.ORDERS.validate(orders_out),
        courses=outputs.COURSES.validate(courses_out),
        findings=outputs.FINDINGS.validate(findings),
        quarantine=outputs.QUARANTINE.validate(quarantine_out),
        **prepared.counts(),
    )


def with_history(
    new: dict[str, pl.LazyFrame], history: pl.DataFrame | None, tonight_files: frozenset[str]
) -> Extracts:
    """Tonight's extracts merged with the stored history (a new row replaces a stored one with the same key)."""
    merged: dict[str, pl.LazyFrame | None] = {}
    for name in ("orders", "labs", "procedures"):
        # A labs or procedures extract never given (tonight or before) stays absent: the rules
        # that need it are then not judged, rather than judged against an empty extract.
        has_stored = history is not None and not history.filter(pl.col("extract") == name).is_empty()
        stored = stored_text_rows(history, name) if has_stored else None
        tonight = new.get(name)
        merged[name] = stored if tonight is None else merge_history(tonight, stored, name)
    if merged["orders"] is None:
        raise ValueError("no orders extract to audit")
    return Extracts(
        orders=merged["orders"], labs=merged["labs"], procedures=merged["procedures"], tonight_files=tonight_files
    )


def remember(prepared: PreparedOrders) -> pl.DataFrame:
    """The source rows of IVIG patients to keep as history for the next runs (the rows the audit read)."""
    extracts = prepared.source
    patients = pl.concat(
        [prepared.ivig.select("patient_id"), prepared.unrecognised_ig.select("patient_id")]
    ).lazy().unique()
    quarantined = prepared.quarantine.lazy()
    parts = [
        rows_to_remember(frame, name, patients, quarantined)
        for name, frame in (("orders", extracts.orders), ("labs", extracts.labs), ("procedures", extracts.procedures))
        if frame is not None
    ]
    return pl.concat(pl.collect_all(parts, engine=IN_MEMORY), how="vertical")


def run_audit(extracts: Extracts, products: ProductDictionary, pack: RulePack, run_id: str) -> AuditResult:
    """The whole audit over frames, without Prefect or IO."""
    return run_audit_remembering(extracts, products, pack, run_id)[0]


def run_audit_remembering(
    extracts: Extracts, products: ProductDictionary, pack: RulePack, run_id: str
) -> tuple[AuditResult, pl.DataFrame]:
    """The whole audit over frames, and the source rows to keep as history."""
    prepared = prepare(extracts, products, pack)
    courses, order_course = courses_with_regimen(prepared.ivig, pack)
    findings = judge(courses, prepared, pack, run_id)
    return output_tables(prepared, courses, order_course, findings, run_id), remember(prepared)


def shard_of_patient(shards: int) -> pl.Expr:
    """The shard a row belongs to: a stable hash of its patient id (rows without one go to shard 0)."""
    patient = pl.col("patient_id").str.strip_chars()
    return pl.when(patient.is_null() | (patient == "")).then(0).otherwise(patient.hash(seed=20261128) % shards)


def shard(extracts: Extracts, index: int, shards: int) -> Extracts:
    """One shard of the extracts: every row of a set of patients (a patient is never split)."""
    keep = shard_of_patient(shards) == index
    return Extracts(
        orders=extracts.orders.filter(keep),
        labs=extracts.labs.filter(keep) if extracts.labs is not None else None,
        procedures=extracts.procedures.filter(keep) if extracts.procedures is not None else None,
        tonight_files=extracts.tonight_files,
    )


def combine(parts: list[tuple[AuditResult, pl.DataFrame]]) -> tuple[AuditResult, pl.DataFrame]:
    """The shards' results as one run: tables stacked, counts added."""
    results = [result for result, _ in parts]
    orders = pl.concat([r.orders for r in results])
    shared = orders.filter(pl.col("order_id").is_duplicated())["order_id"].n_unique()
    if shared:
        # No id in the message: it may reach Prefect's database and logs. Without shards the
        # duplicates are quarantined, ids and all, in the DuckDB quarantine table.
        raise ValueError(
            f"{shared} order_id(s) appear for more than one patient in different shards; "
            "audit without --shards so they are quarantined as duplicates (the quarantine table names them)"
        )
    return (
        AuditResult(
            orders=orders,
            courses=pl.concat([r.courses for r in results]),
            findings=pl.concat([r.findings for r in results]),
            quarantine=pl.concat([r.quarantine for r in results]),
            **{name: sum(r.counts()[name] for r in results) for name in results[0].counts()},
        ),
        pl.concat([remembered for _, remembered in parts]),
    )
