"""Property-based tests (hypothesis) of the normalisers and of course building.

Settings: the cheap expression properties check a batch of values per example; the audit properties
run the whole `run_audit` per example, so they get fewer examples. `IVIG_PROPERTY_SCALE=10` multiplies
every budget for a deeper run (e.g. nightly CI); the default keeps the file under ~20 s on 2 cores.
"""

from __future__ import annotations

import math
import os
import string
from datetime import datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pipeline.contract.parse import ISO_DATETIME_LAYOUTS, UNIT_SPELLINGS, canonical_unit, parse_bool, parse_datetime, parse_number, parse_sex
from pipeline.domain.normalise import grams_per_dose, matched_product
from tests.builders import audit, ivig_order, pack, products, site_time_zone

SCALE = max(1, int(os.environ.get("IVIG_PROPERTY_SCALE", "1")))
CHEAP = settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AUDIT = settings(max_examples=20 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text a cell could hold, control characters and astral-plane characters included (no surrogates:
# they cannot be in UTF-8 text).
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def evaluate(expr: pl.Expr, values: list, dtype=pl.String) -> list:
    return pl.DataFrame({"x": values}, schema={"x": dtype}).select(expr.alias("out"))["out"].to_list()


def scrambled_case(text: str, data) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips))


# ------------------------------------------------------------------------------- parse_number


@CHEAP
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=30))
def test_parse_number_reads_back_every_finite_float(values):
    assert evaluate(parse_number("x"), [repr(v) for v in values]) == values


@CHEAP
@given(st.lists(st.integers(min_value=-(10**15), max_value=10**15), min_size=1, max_size=30), st.sampled_from(["", "  ", "\t"]))
def test_parse_number_removes_thousands_separators(values, pad):
    texts = [f"{pad}{v:,}{pad}" for v in values]
    assert evaluate(parse_number("x"), texts) == [float(v) for v in values]


@CHEAP
@given(st.lists(ANY_TEXT, min_size=1, max_size=30))
def test_parse_number_never_crashes_and_never_guesses_a_decimal_comma(texts):
    out = evaluate(parse_number("x"), texts)
    for text, value in zip(texts, out):
        assert value is None or isinstance(value, float)
        stripped = text.strip()
        if "," in stripped and not any(ch.isdigit() for ch in stripped.replace(",", "")):
            continue
        if stripped.count(",") == 1 and stripped.replace(",", "").isdigit() and len(stripped.split(",")[1]) != 3:
            assert value is None, (text, value)  # '1,5' is not guessed


# ----------------------------------------------------------------------------- parse_datetime

ROUND_TRIP_FORMATS = [f.replace("%.f", "") for f in ISO_DATETIME_LAYOUTS] + ["%Y-%m-%d"]


@CHEAP
@given(
    st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.sampled_from(ROUND_TRIP_FORMATS),
)
def test_parse_datetime_reads_back_every_accepted_layout(moment, fmt):
    moment = moment.replace(microsecond=0)
    if "%S" not in fmt:
        moment = moment.replace(second=0)
    if "%H" not in fmt:
        moment = moment.replace(hour=0, minute=0, second=0)
    text = moment.strftime(fmt)
    assert evaluate(parse_datetime("x", site_time_zone()), [text]) == [moment]


@CHEAP
@given(st.lists(st.one_of(ANY_TEXT, st.from_regex(r"-?\d{1,6}-\d{1,2}-\d{1,2}( \d{1,2}:\d{1,2}(:\d{1,2})?)?", fullmatch=True)),
                min_size=1, max_size=30))
def test_parse_datetime_never_crashes_and_stays_in_representable_years(texts):
    for value in evaluate(parse_datetime("x", site_time_zone()), texts):
        assert value is None or (isinstance(value, datetime) and 1 <= value.year <= 9999)


# ------------------------------------------------------------------------ units, sex, booleans

CANONICAL_UNITS = {"g", "mg", "ml", "g/kg"}


@CHEAP
@given(st.sampled_from(sorted(UNIT_SPELLINGS)), st.data())
def test_canonical_unit_ignores_case_and_spaces(spelling, data):
    spaced = "".join(c + data.draw(st.sampled_from(["", "", " ", "\t"])) for c in scrambled_case(spelling, data))
    assert evaluate(canonical_unit("x"), [f" {spaced} "]) == [UNIT_SPELLINGS[spelling]]


@CHEAP
@given(st.lists(ANY_TEXT, min_size=1, max_size=30))
def test_canonical_unit_of_any_text_is_a_canonical_unit_or_null(texts):
    for text, unit in zip(texts, evaluate(canonical_unit("x"), texts)):
        assert unit is None or unit in CANONICAL_UNITS
        if unit is not None:
            assert "".join(text.split()).lower() in UNIT_SPELLINGS


@CHEAP
@given(st.sampled_from(["m", "male", "man", "f", "female", "woman"]), st.data())
def test_parse_sex_known_words_in_any_case(word, data):
    text = data.draw(st.sampled_from(["", " ", "\t"])) + scrambled_case(word, data) + data.draw(st.sampled_from(["", " "]))
    assert evaluate(parse_sex("x"), [text]) == ["M" if word in ("m", "male", "man") else "F"]


@CHEAP
@given(st.sampled_from(["true", "t", "yes", "y", "1", "false", "f", "no", "n", "0"]), st.data())
def test_parse_bool_known_words_in_any_case(word, data):
    text = " " + scrambled_case(word, data) + " "
    assert evaluate(parse_bool("x"), [text]) == [word in ("true", "t", "yes", "y", "1")]


@CHEAP
@given(st.lists(ANY_TEXT, min_size=1, max_size=30))
def test_parse_sex_and_bool_of_any_text_never_crash(texts):
    assert set(evaluate(parse_sex("x"), texts)) <= {"M", "F", None}
    assert set(evaluate(parse_bool("x"), texts)) <= {True, False, None}


# ------------------------------------------------------------------------------ grams per dose

POSITIVE = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@CHEAP
@given(POSITIVE, st.floats(min_value=0.01, max_value=0.3), st.floats(min_value=0.3, max_value=350))
def test_grams_per_dose_conversions_agree(grams, concentration, weight):
    """The same amount written in g, mg, mL (of a product of that strength) and g/kg is the same grams."""
    rows = pl.DataFrame(
        {
            "dose": [grams, grams * 1000.0, grams / concentration, grams / weight],
            "dose_unit": ["g", "mg", "ml", "g/kg"],
            "concentration_g_per_ml": [concentration] * 4,
            "weight_kg": [weight] * 4,
        }
    )
    out = rows.select(grams_per_dose().alias("g"))["g"].to_list()
    for value in out:
        assert math.isclose(value, grams, rel_tol=1e-9)


@CHEAP
@given(POSITIVE, st.sampled_from(["ml", "g/kg", "vials", None]))
def test_grams_per_dose_is_unknown_without_its_factor(dose, unit):
    rows = pl.DataFrame(
        {"dose": [dose], "dose_unit": [unit], "concentration_g_per_ml": [None], "weight_kg": [None]},
        schema={"dose": pl.Float64, "dose_unit": pl.String, "concentration_g_per_ml": pl.Float64, "weight_kg": pl.Float64},
    )
    assert rows.select(grams_per_dose().alias("g"))["g"].to_list() == [None]


@CHEAP
@given(st.lists(st.one_of(ANY_TEXT, st.text(string.printable, max_size=200)), min_size=1, max_size=30))
def test_matched_product_of_any_name_is_a_dictionary_product_or_null(names):
    known = {p["name"] for p in products().products}
    frame = pl.DataFrame({"medication": names, "ndc": names})
    out = frame.select(
        matched_product(products()).alias("by_name"), matched_product(products(), "ndc").alias("by_ndc")
    )
    assert set(out["by_name"].to_list()) <= known | {None}
    assert set(out["by_ndc"].to_list()) <= known | {None}


# ----------------------------------------------------------------------------- course building

INDICATIONS = ["GBS", "ITP", "CIDP", "CIDP maintenance", "myasthenia gravis crisis", "sarcoid neuropathy", None]
BASE_DAY = datetime(2026, 1, 1, 8, 0)

order_spec = st.fixed_dictionaries(
    {
        "patient": st.sampled_from(["PA", "PB", "PC"]),
        "indication": st.sampled_from(INDICATIONS),
        "day": st.integers(min_value=0, max_value=150),
        "hour": st.integers(min_value=0, max_value=23),
        "doses": st.integers(min_value=1, max_value=5),
        "grams": st.floats(min_value=0.5, max_value=150, allow_nan=False).map(lambda g: round(g, 1)),
        "unit": st.sampled_from(["g", "mg", "g/kg"]),
    }
)


def as_row(i: int, spec: dict) -> dict:
    dose = {"g": spec["grams"], "mg": spec["grams"] * 1000, "g/kg": round(spec["grams"] / 70, 6)}[spec["unit"]]
    start = BASE_DAY + timedelta(days=spec["day"], hours=spec["hour"])
    return ivig_order(
        f"O{i}", spec["patient"], dose=repr(dose), dose_unit=spec["unit"], doses=str(spec["doses"]),
        start=start.strftime("%Y-%m-%d %H:%M:%S"), indication=spec["indication"], indication_code=None,
        weight_kg="70",
    )


@AUDIT
@given(st.lists(order_spec, min_size=1, max_size=25))
def test_courses_conserve_grams_and_partition_orders(specs):
    rows = [as_row(i, s) for i, s in enumerate(specs)]
    result = audit(rows)
    gap = int(pack().settings["course_gap_days"])
    orders, courses = result.orders, result.courses
    # Every order is audited (the generator makes only valid orders) and belongs to exactly one course.
    assert orders.height == len(rows) and result.quarantine.height == 0
    assert orders["course_id"].null_count() == 0
    assert set(orders["course_id"].to_list()) == set(courses["course_id"].to_list())
    assert courses["course_id"].is_unique().all()
    listed = [oid for ids in courses["order_ids"].to_list() for oid in ids.split(", ")]
    assert sorted(listed) == sorted(orders["order_id"].to_list())  # each order in one course's list, once
    # Grams are conserved from orders to courses.
    assert math.isclose(orders["total_g"].sum(), courses["total_g"].sum(), rel_tol=1e-9)
    assert orders["doses"].sum() == courses["doses"].sum()
    per_course = orders.group_by("course_id").agg(pl.col("total_g").sum()).join(
        courses.select("course_id", pl.col("total_g").alias("course_g")), on="course_id"
    )
    for g, course_g in per_course.select("total_g", "course_g").iter_rows():
        assert math.isclose(g, course_g, rel_tol=1e-9)
    # Courses of one patient and indication group: numbered by start, never overlapping, separated by
    # more than the course gap (from the last dose day of one to the first dose day of the next).
    for _, group in courses.sort("start").group_by(["patient_id", "indication_group"], maintain_order=True):
        assert group["course_number"].to_list() == list(range(1, group.height + 1))
        ends, starts = group["end"].to_list(), group["start"].to_list()
        for previous_end, next_start in zip(ends, starts[1:]):
            assert (next_start.date() - previous_end.date()).days > gap
        for start, end in zip(starts, ends):
            assert start <= end


@settings(AUDIT, max_examples=10 * SCALE)
@given(st.lists(order_spec, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_courses_do_not_depend_on_row_order(specs, rng):
    rows = [as_row(i, s) for i, s in enumerate(specs)]
    shuffled = rows[:]
    rng.shuffle(shuffled)
    assume(len(rows) > 1)
    cols = ["course_id", "course_number", "start", "end", "doses", "total_g", "order_ids"]
    first = audit(rows).courses.select(cols).sort("course_id")
    second = audit(shuffled).courses.select(cols).sort("course_id")
    assert first.equals(second)
