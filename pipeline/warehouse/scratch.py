"""An in-memory database of the catalog's shape holding frames given in memory (tests, tools that hold frames)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Mapping

import duckdb
import polars as pl

from checks import tables as catalog
from pipeline.warehouse.base import _q
from pipeline.warehouse.schema import bring_up_to_date


#: What a scratch row holds in a not-null column the frame lacks, by type (text: 'scratch').
_STAMP = {"BOOLEAN": False, "BIGINT": 0, "INTEGER": 0, "DOUBLE": 0.0, "TIMESTAMP": datetime(1970, 1, 1)}
_DTYPES = {"BOOLEAN": pl.Boolean, "BIGINT": pl.Int64, "INTEGER": pl.Int32, "DOUBLE": pl.Float64, "TIMESTAMP": pl.Datetime("us")}


def scratch_database(tables: Mapping[str, pl.DataFrame], path: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A new database (in memory, or a new file at `path`) with the schema, views and macros, holding the given tables' rows.

    Columns a frame lacks take their defaults, or NULL; the writer's own not-null columns (a run id, a
    hash) that a frame of the audit's contract does not carry are stamped 'scratch' (false, 0). Columns
    the catalog does not know are ignored: the views read the frames as they would read a database the
    audit wrote.
    """
    con = duckdb.connect(":memory:" if path is None else str(path))
    con.execute("BEGIN")
    bring_up_to_date(con, Path(path or ":memory:"))
    known = catalog.tables()
    for name, frame in tables.items():
        if name not in known or not isinstance(frame, pl.DataFrame) or frame.height == 0:
            continue
        stamped = [pl.lit(_STAMP.get(c.type, "scratch")).cast(_DTYPES.get(c.type, pl.String)).alias(c.name)
                   for c in known[name].columns
                   if c.name not in frame.columns and not c.nullable and c.default is None]
        incoming = frame.with_columns(stamped)
        cols = ", ".join(_q(c.name) for c in known[name].columns if c.name in incoming.columns)
        con.register("incoming_scratch", incoming)
        con.execute(f"INSERT INTO {_q(name)} ({cols}) SELECT {cols} FROM incoming_scratch")
        con.unregister("incoming_scratch")
    con.execute("COMMIT")
    return con
