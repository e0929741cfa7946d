"""The audit as a chain of pure stages: contract -> normalise -> courses -> rules -> findings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime

import pandera.polars as pa
import polars as pl

from checks import outputs
from checks.inputs import IVIG_ORDER_ROWS, LAB_ROWS, PROCEDURE_ROWS
from pipeline.contract.rows import QUARANTINE_COLUMNS, check_labs, check_orders, check_procedures, date_layout_problem, lab_rows_used, quarantine_rows, with_identity
from pipeline.domain.courses import build_courses, regimen_table
from pipeline.domain.history import PRECEDENCE, ledger_rows
from pipeline.domain.identity import COURSE_PREFIX, lasting_course_ids, with_digest, with_finding_ids
from pipeline.domain.normalise import VERSION_COLUMNS, candidate_rows, classify_medications, expand_daily_doses, evidence_rows, immunoglobulin_rows, map_indications, split_orders
from pipeline.config.products import ProductDictionary
from pipeline.ingest.errors import ExtractError, parse_error_message
from pipeline.config.rulepack import RulePack
from pipeline.rules import AuditContext, evaluate_rules
from pipeline.rules.levers import lever_expr

log = logging.getLogger(__name__)

# Only the pass over whole extracts streams; the small in-memory frames after it are collected
# with the in-memory engine (polars 2.1's streaming engine can panic formatting strings of them).
IN_MEMORY = "in-memory"


@dataclass(frozen=True)
class Extracts:
    """The text rows one audit reads (labs and procedures optional).

    Each row carries its arrival (pipeline.history.ARRIVAL): stored history rows and tonight's
    rows audit together, and only tonight's rows are counted, quarantined and remembered. Rows
    without an arrival are one batch (`contract.with_identity`).
    """

    orders: pl.LazyFrame | None
    labs: pl.LazyFrame | None = None
    procedures: pl.LazyFrame | None = None

    def frames(self) -> dict[str, pl.LazyFrame | None]:
        """The extracts by name."""
        return {"orders": self.orders, "labs": self.labs, "procedures": self.procedures}


def tonight(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Only the rows of a frame that arrived in this run."""
    return frame.filter(pl.col("tonight"))


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
    """Orders after the contract and normalise stages (the versions in force), with tonight's row counts.

    `quarantine` holds tonight's rejected rows only (a stored row was quarantined by the run that
    brought it); `ledger` tonight's rows to remember (pipeline.history.ledger_rows); `versions`
    the state of every order version the audit saw (in_force, superseded or rejected).
    """

    ivig: pl.DataFrame
    evidence: pl.DataFrame
    unrecognised_ig: pl.DataFrame
    labs: pl.DataFrame | None
    procedures: pl.DataFrame | None
    quarantine: pl.DataFrame
    ledger: pl.DataFrame
    versions: pl.DataFrame


@dataclass(frozen=True)
class AuditResult(RowCounts):
    """The tables one run writes, and its row counts.

    `patients` are the patients whose orders, courses and findings these tables replace (every
    patient the audit judged, including those left with no course); `ledger` and `versions` are
    what the history ledger learns (pipeline.history).
    """

    orders: pl.DataFrame
    courses: pl.DataFrame
    findings: pl.DataFrame
    quarantine: pl.DataFrame
    patients: pl.DataFrame
    ledger: pl.DataFrame
    versions: pl.DataFrame


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
        if "raw" not in failed.columns:
            failed = failed.with_columns(raw=pl.lit("{}"))
        return kept, quarantine_rows(failed.lazy(), extract).collect(engine=IN_MEMORY)


def _empty_quarantine() -> pl.DataFrame:
    """An empty frame in the quarantine layout (without run_id)."""
    return pl.DataFrame(
        schema={
            "extract": pl.String, "source_file": pl.String, "source_row": pl.Int64, "order_id": pl.String,
            "patient_id": pl.String, "reason": pl.String, "raw": pl.String, "tonight": pl.Boolean,
        }
    )


def _collect_extract(queries: list[pl.LazyFrame], extract: str) -> list[pl.DataFrame]:
    """Collect queries that scan an extract (streaming); a file that cannot be parsed is an ExtractError."""
    try:
        # Rechunked: polars 2.1 can panic formatting strings of a multi-chunk frame the streaming
        # engine produced (seen with pl.format after filters); one chunk each avoids it.
        # No shared subplans: sharing the scan of an extract between queries (the kept rows and the
        # row count) caches every row of it in memory (4.1 GB on 10M rows); each query scans alone.
        frames = [query.collect(engine="streaming") for query in queries]
        return [frame.rechunk() for frame in frames]
    except pl.exceptions.ComputeError as exc:
        # Polars quotes the offending field (a patient's row): the line names the problem instead.
        raise ExtractError(f"cannot read the {extract} extract: {parse_error_message(exc)}") from None


#: The columns of an evidence row the rules read (the rest is left empty: an extract holds many).
EVIDENCE_COLUMNS = ("order_id", "patient_id", "medication", "start", "doses", "source_file", "source_row")


def select_relevant(extracts: Extracts, products: ProductDictionary, pack: RulePack) -> tuple[Extracts, int]:
    """The rows the audit reads, in memory, and the number of order rows read tonight.

    A pharmacy extract is mostly other medications: they are counted, not parsed. One streaming
    pass keeps the immunoglobulin rows (and rows with no medication, to quarantine them) and,
    narrowed to the columns rules read, the medications rules use as evidence, of every patient:
    evidence often comes before a patient's first IVIG order. Labs are kept for the tests the
    audit uses, procedures whole.
    """
    orders, count = (None, 0) if extracts.orders is None else _relevant_orders(extracts.orders, products, pack)

    def kept(frame: pl.LazyFrame | None, extract: str, keep: pl.Expr) -> pl.LazyFrame | None:
        return None if frame is None else _collect_extract([frame.filter(keep)], extract)[0].lazy()

    selected = Extracts(
        orders=None if orders is None else orders.lazy(),
        labs=kept(extracts.labs, "labs", lab_rows_used()),
        procedures=kept(extracts.procedures, "procedures", pl.lit(True)),
    )
    return selected, count


def _relevant_orders(text_rows: pl.LazyFrame, products: ProductDictionary, pack: RulePack) -> tuple[pl.DataFrame, int]:
    """The order rows the audit reads (one streaming pass), and the number of tonight's order rows."""
    schema = text_rows.collect_schema()
    ndc_column = "ndc" if "ndc" in schema.names() else None
    text = [c for c, dtype in schema.items() if dtype == pl.String]
    wide = [c for c in text if c not in EVIDENCE_COLUMNS]
    read = (
        text_rows.filter(candidate_rows(products, pack.evidence_patterns, ndc_column))
        .with_columns(is_ig=immunoglobulin_rows(products, ndc_column))
        .filter(pl.col("is_ig") | evidence_rows(pack.evidence_patterns))
        # A kept string would share, and keep in memory, the buffer of its whole batch (the pass
        # peaked at 1.7 GB on 10M rows): evidence columns are copied (`+ ""`), the other columns
        # of immunoglobulin rows kept as categories (copying those mostly-null columns held as
        # much again; see bench/README.md).
        .with_columns(pl.col(c) + "" for c in text if c not in wide)
        .with_columns(pl.when(pl.col("is_ig")).then(pl.col(c)).cast(pl.Categorical) for c in wide)
    )
    read_tonight = tonight(text_rows) if "tonight" in schema.names() else text_rows
    rows, count = _collect_extract([read, read_tonight.select(pl.len())], "orders")
    orders = rows.drop("is_ig").with_columns(pl.col(wide).cast(pl.String))

    return orders, int(count.item())


# ------------------------------------------------------------------------------------ versions
#: The key of an order's version: its text alone, which holds the order_id (contract.version_text),
#: so it tells (order_id, version) apart. A join or unique on both columns row-encoded a copy of every
#: version text (+90 MB in the audit of a 10M-row night); on one text column it hashes them in place.
VERSION_KEY = "version"


def _first_arrival_of_each_version(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per (order_id, version): its first arrival (a version re-sent later is the same version)."""
    return rows.sort("run_seq", "file_pos", "source_row").unique(VERSION_KEY, keep="first", maintain_order=True)


def versions_in_force(valid: pl.DataFrame, rejected: pl.DataFrame) -> pl.DataFrame:
    """The state of every version of every order_id the audit saw, and the version in force.

    valid     order_id, version, precedence (history.PRECEDENCE) and source_file of rows that passed every check
    rejected  the same of quarantined rows (with `reason`)
    Returns order_id, version, state (in_force | superseded | rejected), reason (rejected only), the
    precedence columns and source_file. The version in force is the latest valid one; a version that failed a
    check and is later than it is `rejected` (a correction that did not take); every other
    version is `superseded`.
    """
    keys = ["order_id", "version", *PRECEDENCE, "source_file"]
    good = _first_arrival_of_each_version(valid.select(keys))
    bad = _first_arrival_of_each_version(
        rejected.filter(pl.col("order_id").is_not_null()).select(*keys, "reason")
    ).join(good.select(VERSION_KEY), on=VERSION_KEY, how="anti")
    every = pl.concat(
        [good.with_columns(valid=pl.lit(True), reason=pl.lit(None, dtype=pl.String)), bad.with_columns(valid=pl.lit(False))],
        how="diagonal_relaxed",
    ).sort("order_id", *PRECEDENCE, nulls_last=False).with_row_index("position")
    # The row's place in the sorted frame stands for its place among its order's versions: a window
    # over a plain column is a grouped max, where one over `int_range(pl.len())` ran per order (1.5 s
    # on 200k orders).
    position = pl.col("position")
    in_force_at = pl.when(pl.col("valid")).then(position).max().over("order_id")
    return every.with_columns(
        state=pl.when(pl.col("valid") & (position == in_force_at))
        .then(pl.lit("in_force"))
        .when(~pl.col("valid") & (in_force_at.is_null() | (position > in_force_at)))
        .then(pl.lit("rejected"))
        .otherwise(pl.lit("superseded")),
    ).select(
        "order_id", "version", "state", pl.when(~pl.col("valid")).then(pl.col("reason")).alias("reason"),
        *PRECEDENCE, "source_file",
    )


def _in_force(frame: pl.DataFrame, versions: pl.DataFrame) -> pl.DataFrame:
    """The rows of a frame that are the version in force of their order (first arrival of it)."""
    current = versions.filter(pl.col("state") == "in_force").select(VERSION_KEY)
    return _first_arrival_of_each_version(frame.join(current, on=VERSION_KEY, how="semi"))


def rejected_corrections(versions: pl.DataFrame) -> pl.DataFrame:
    """Per order in force: what its later, rejected versions were and why (one line of text)."""
    in_force = versions.filter(pl.col("state") == "in_force").select("order_id")
    return (
        versions.filter(pl.col("state") == "rejected")
        .join(in_force, on="order_id", how="semi")
        .sort("order_id", *PRECEDENCE)
        .group_by("order_id", maintain_order=True)
        .agg(
            rejected_correction=pl.format(
                "a later version ({} row {}) was quarantined: {}", pl.col("source_file").str.replace(r"^.*/", ""),
                pl.col("source_row"), pl.col("reason"),
            ).str.join("; "),
        )
    )


def refuse_undeclared_date_layouts(source: Extracts, time_zone: str, max_share: float) -> None:
    """Stop with a one-line ExtractError when one of tonight's files has mostly dates in no accepted layout.

    Checked on the rows the audit reads (immunoglobulin orders, evidence, the labs and procedures of
    their patients): an extract whose dates are in an undeclared layout fails on all of them.
    """
    for name in ("orders", "labs", "procedures"):
        frame = getattr(source, name)
        if frame is None:
            continue
        arrived_tonight = tonight(frame) if "tonight" in frame.collect_schema().names() else frame
        problem = date_layout_problem(arrived_tonight, name, time_zone, max_share)
        if problem:
            raise ExtractError(problem)


def prepare(
    extracts: Extracts, products: ProductDictionary, pack: RulePack, rows_read: int | None = None
) -> PreparedOrders:
    """Contract and normalise: typed IVIG orders (the versions in force) with grams and indications,
    evidence, labs, procedures, tonight's rejects, and what the history ledger learns.

    Without `rows_read` the extracts are whole and `select_relevant` narrows them first; with it
    they are already narrowed (tonight's selected rows merged with stored history, pipeline.night)
    and `rows_read` is the count of tonight's order rows.
    """
    time_zone = pack.settings["site_timezone"]
    if rows_read is None:
        source, rows_read = select_relevant(extracts, products, pack)
        refuse_undeclared_date_layouts(source, time_zone, float(pack.settings["date_failure_share"]))
    else:  # the night selected and checked tonight's rows before it touched the database
        source = extracts
    # Materialised once: the version text (a JSON of every column, about 500 bytes a row) is read by the
    # checks and by the ledger; left lazy, each query encoded it again and the night held both copies.
    orders_text = with_identity(source.orders, "orders").collect(engine=IN_MEMORY).lazy()
    valid_orders, rejected_orders = check_orders(orders_text, time_zone, has_identity=True)
    # Materialise once: every query below starts from these two frames.
    valid_df, rejected_df = pl.collect_all([classify_medications(valid_orders, products), rejected_orders], engine=IN_MEMORY)
    rejected_orders = rejected_df.lazy()
    split = split_orders(valid_df.lazy())
    ivig_lazy = map_indications(split.ivig, pack)
    labs_text = with_identity(source.labs, "labs") if source.labs is not None else None
    procedures_text = with_identity(source.procedures, "procedures") if source.procedures is not None else None
    labs_lazy = rejected_labs = procedures_lazy = rejected_procedures = None
    if labs_text is not None:
        labs_lazy, rejected_labs = check_labs(labs_text, time_zone)
    if procedures_text is not None:
        procedures_lazy, rejected_procedures = check_procedures(procedures_text, time_zone)
    version_keys = ["order_id", "version", *PRECEDENCE, "source_file", "tonight"]
    queries = {
        "ivig": ivig_lazy,
        "evidence": split.evidence,
        "unrecognised_ig": split.unrecognised_ig.select(
            "order_id", "patient_id", "medication", "start", "source_file", *VERSION_COLUMNS, "source_row"
        ),
        "out_of_scope": split.out_of_scope.select(version_keys),
        "rejected_orders": rejected_orders,
        "rejected_ivig": split.quarantine,
        "ledger_orders": ledger_rows(tonight(orders_text), "orders", time_zone, has_version=True),
    }
    if labs_lazy is not None:
        queries |= {"labs": labs_lazy, "rejected_labs": rejected_labs}
    if procedures_lazy is not None:
        queries |= {"procedures": procedures_lazy, "rejected_procedures": rejected_procedures}
    collected = dict(zip(queries, pl.collect_all(list(queries.values()), engine=IN_MEMORY)))
    ivig_versions, ivig_contract_rejects = _contract_failures(collected["ivig"], IVIG_ORDER_ROWS, "orders")
    order_rejects = [collected["rejected_orders"], collected["rejected_ivig"], ivig_contract_rejects]
    quarantine_parts = list(order_rejects)
    labs = procedures = None
    ledger_parts = [collected["ledger_orders"]]
    if labs_lazy is not None:
        labs_checked, lab_rejects = _contract_failures(collected["labs"], LAB_ROWS, "labs")
        quarantine_parts += [collected["rejected_labs"], lab_rejects]
        labs = labs_checked.unique("version", keep="first", maintain_order=True)
        ledger_parts.append(_remembered(labs_text, "labs", [collected["rejected_labs"], lab_rejects], time_zone))
    if procedures_lazy is not None:
        procedures_checked, procedure_rejects = _contract_failures(collected["procedures"], PROCEDURE_ROWS, "procedures")
        quarantine_parts += [collected["rejected_procedures"], procedure_rejects]
        procedures = procedures_checked.unique("version", keep="first", maintain_order=True)
        ledger_parts.append(_remembered(procedures_text, "procedures", [collected["rejected_procedures"], procedure_rejects], time_zone))

    valid_versions = pl.concat(
        [frame.select(version_keys) for frame in (ivig_versions, collected["evidence"], collected["unrecognised_ig"], collected["out_of_scope"])],
        how="vertical_relaxed",
    )
    rejected_versions = pl.concat([q.select(*version_keys, "reason") for q in order_rejects if q.height], how="vertical_relaxed") \
        if any(q.height for q in order_rejects) else valid_versions.head(0).with_columns(reason=pl.lit(None, dtype=pl.String))
    versions = versions_in_force(valid_versions, rejected_versions)
    ivig = _in_force(ivig_versions, versions).join(rejected_corrections(versions), on="order_id", how="left")
    quarantine = pl.concat([q.select(*QUARANTINE_COLUMNS, "tonight") for q in quarantine_parts], how="vertical_relaxed")
    quarantine = quarantine.filter(pl.col("tonight")).drop("tonight")

    def tonight_rows(frame: pl.DataFrame) -> int:
        return frame.filter(pl.col("tonight")).height

    rows_ivig = tonight_rows(ivig_versions)
    rows_out_of_scope = tonight_rows(collected["out_of_scope"])
    rows_unrecognised_ig = tonight_rows(collected["unrecognised_ig"])
    rows_quarantined_orders = quarantine.filter(pl.col("extract") == "orders").height
    log.info("prepared orders: %d IVIG in force, %d quarantined tonight", ivig.height, quarantine.height)
    return PreparedOrders(
        ivig=ivig,
        evidence=_in_force(collected["evidence"], versions),
        unrecognised_ig=_in_force(collected["unrecognised_ig"], versions),
        labs=labs,
        procedures=procedures,
        quarantine=quarantine,
        ledger=pl.concat(ledger_parts, how="vertical_relaxed"),
        versions=versions,
        rows_read=rows_read,
        rows_out_of_scope=rows_out_of_scope,
        # Every other row of tonight's orders passed through (other medications: not audited).
        rows_passed_through=rows_read - rows_ivig - rows_out_of_scope - rows_unrecognised_ig - rows_quarantined_orders,
        rows_ivig=rows_ivig,
        rows_quarantined=quarantine.height,
        rows_unrecognised_ig=rows_unrecognised_ig,
        rows_quarantined_orders=rows_quarantined_orders,
    )


def _remembered(text_rows: pl.LazyFrame, extract: str, rejects: list[pl.DataFrame], time_zone: str) -> pl.DataFrame:
    """Tonight's lab or procedure rows to keep in the ledger: those not quarantined."""
    arrival = ["run_seq", "file_pos", "source_row"]
    bad = pl.concat([r.select(*arrival, "tonight") for r in rejects if r.height], how="vertical_relaxed") \
        if any(r.height for r in rejects) else None
    good = tonight(text_rows)
    if bad is not None:
        good = good.join(bad.lazy().filter(pl.col("tonight")).select(arrival), on=arrival, how="anti")
    return ledger_rows(good, extract, time_zone, has_version=True).collect(engine=IN_MEMORY)


def courses_with_regimen(
    ivig: pl.DataFrame, pack: RulePack, stored_courses: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Courses (with their regimen's targets and lasting ids) and the order -> course map.

    `stored_courses` (course_id, patient_id, order_ids) are the courses the database holds for
    the same patients: a course that continues one of them keeps its id (pipeline.identity).
    """
    dose_days = expand_daily_doses(ivig.lazy())
    courses, order_course = build_courses(dose_days, pack)
    codes = (
        dose_days.group_by("patient_id", "indication_group", "order_id")
        .agg(pl.col("indication_code").first())
        .join(order_course, on="order_id")
        .group_by("course_key")
        .agg(indication_codes=pl.col("indication_code").drop_nulls().unique().sort().str.join(", "))
    )
    regimens = regimen_table(pack).lazy().drop("indication_group", "phase")
    enriched = (
        courses.join(regimens, on="indication", how="left")
        .join(codes, on="course_key", how="left")
        .with_columns(indication_codes=pl.when(pl.col("indication_codes").str.len_chars() > 0).then(pl.col("indication_codes")))
    )
    courses_df, map_df = pl.collect_all([enriched, order_course], engine=IN_MEMORY)
    fresh = with_digest(courses_df.select("course_key"), pl.col("course_key"), COURSE_PREFIX, "fresh_id")
    courses_df = courses_df.join(fresh, on="course_key").drop("course_key").rename({"fresh_id": "course_key"})
    map_df = map_df.join(fresh, on="course_key").drop("course_key").rename({"fresh_id": "course_key"})
    ids = lasting_course_ids(courses_df.select("course_key", "patient_id", "start", "order_ids"), stored_courses)
    courses_df = courses_df.join(ids, on="course_key", how="left").drop("course_key")
    map_df = map_df.join(ids, on="course_key", how="left").drop("course_key")
    return courses_df, map_df


def judge(
    courses: pl.DataFrame,
    prepared: PreparedOrders,
    pack: RulePack,
    run_id: str,
    labs_through: datetime | None = None,
) -> pl.DataFrame:
    """All findings of the run (one row per rule x course or order).

    `labs_through`: the date the labs extract runs to, of every patient (a night judges only some
    patients; default: the newest of their labs, right for one run over all the extracts).
    """
    ctx = AuditContext(
        courses=courses.lazy(),
        orders=prepared.ivig.lazy(),
        evidence=prepared.evidence.lazy(),
        unrecognised_ig=prepared.unrecognised_ig.lazy(),
        labs=prepared.labs.lazy() if prepared.labs is not None else None,
        procedures=prepared.procedures.lazy() if prepared.procedures is not None else None,
        pack=pack,
        labs_through=labs_through,
    )
    findings = with_finding_ids(evaluate_rules(ctx, run_id).collect(engine=IN_MEMORY))
    return findings.select(list(outputs.FINDINGS.columns)).sort("patient_id", "course_id", "rule_id", nulls_last=True)


def audited_patients(prepared: PreparedOrders) -> pl.DataFrame:
    """The patients this audit judged: every patient with a row among its orders (in force or not).

    Their stored orders, courses and findings are replaced by this audit's: a patient whose IVIG
    order was superseded by a non-IVIG version is judged to have no course any more.
    """
    parts = [prepared.ivig.select("patient_id"), prepared.unrecognised_ig.select("patient_id"),
             prepared.evidence.select("patient_id"), prepared.ledger.filter(pl.col("extract") == "orders").select("patient_id")]
    return pl.concat(parts, how="vertical_relaxed").drop_nulls().unique().sort("patient_id")


def output_tables(
    prepared: PreparedOrders, courses: pl.DataFrame, order_course: pl.DataFrame, findings: pl.DataFrame,
    pack: RulePack, run_id: str, patients: pl.DataFrame | None = None,
) -> AuditResult:
    """The run's tables in the stored layout, each checked against its Pandera contract.

    `patients` are the patients judged (default: every patient of the audit's orders).
    """
    # The audit's verdict on each course, as flagged (the database's views add the reviews' verdict):
    # appropriate unless a finding counts against it; grams avoidable, the largest claim of its lever findings.
    of_course = findings.filter(pl.col("course_id").is_not_null())
    inappropriate = of_course.filter(pl.col("counts_against_course")).select("course_id").unique()
    avoidable = (
        of_course.filter(lever_expr(pack.levers, pack.rules, pl.col("rule_id")).is_not_null())
        .group_by("course_id").agg(avoidable_g=pl.col("excess_g").max())
    )
    courses_out = (
        courses.join(avoidable, on="course_id", how="left")
        .with_columns(
            appropriate=~pl.col("course_id").is_in(inappropriate["course_id"].implode()),
            excess_g=pl.col("avoidable_g").fill_null(0.0),
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
        patients=audited_patients(prepared) if patients is None else patients,
        ledger=prepared.ledger,
        versions=prepared.versions,
        **prepared.counts(),
    )


def run_audit(
    extracts: Extracts, products: ProductDictionary, pack: RulePack, run_id: str,
    stored_courses: pl.DataFrame | None = None,
) -> AuditResult:
    """The whole audit over frames, without Prefect or IO."""
    prepared = prepare(extracts, products, pack)
    courses, order_course = courses_with_regimen(prepared.ivig, pack, stored_courses)
    findings = judge(courses, prepared, pack, run_id)
    return output_tables(prepared, courses, order_course, findings, pack, run_id)


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
    )


def combine(results: list[AuditResult], rows_read: int) -> AuditResult:
    """The shards' results as one run: tables stacked, counts added (`rows_read`: tonight's order rows of all shards)."""
    orders = pl.concat([r.orders for r in results])
    shared = orders.filter(pl.col("order_id").is_duplicated())["order_id"].n_unique()
    if shared:
        # No id in the message: it may reach Prefect's database and logs.
        raise ValueError(
            f"{shared} order_id(s) are in force for patients of different shards; "
            "audit without --shards so their versions are resolved together"
        )
    return AuditResult(
        orders=orders,
        courses=pl.concat([r.courses for r in results]),
        findings=pl.concat([r.findings for r in results]),
        quarantine=pl.concat([r.quarantine for r in results]),
        patients=pl.concat([r.patients for r in results]).unique().sort("patient_id"),
        ledger=pl.concat([r.ledger for r in results], how="vertical_relaxed"),
        versions=pl.concat([r.versions for r in results], how="vertical_relaxed"),
        **_combined_counts(results, rows_read),
    )


def _combined_counts(results: list[AuditResult], rows_read: int) -> dict[str, int]:
    """The shards' row counts added; every order row not accounted for by a shard passed through."""
    counts = {name: sum(r.counts()[name] for r in results) for name in results[0].counts()}
    counts["rows_read"] = rows_read
    counts["rows_passed_through"] = rows_read - sum(
        counts[name] for name in ("rows_ivig", "rows_out_of_scope", "rows_unrecognised_ig", "rows_quarantined_orders")
    )
    return counts
