"""Where every row of an orders extract went: the counts must add up to the rows read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl


# ------------------------------------------------------------------------------------ accounting
@dataclass(frozen=True)
class OrderAccounting:
    """Where every row of an orders extract went: the counts must add up to the rows read.

    ivig             IVIG rows audited (one row may be an order of several daily doses)
    passed_through   other medications, kept as evidence (aspirin, ...), not audited
    out_of_scope     immunoglobulins that are not IVIG (subcutaneous, hyperimmune globulins)
    unrecognised_ig  names that look like an immunoglobulin but match no product (data-quality finding)
    quarantined      rows rejected with file, row and reason (orders extract only)
    """

    rows_read: int
    ivig: int
    passed_through: int
    out_of_scope: int
    unrecognised_ig: int
    quarantined: int

    @property
    def accounted(self) -> int:
        """Rows that went somewhere."""
        return self.ivig + self.passed_through + self.out_of_scope + self.unrecognised_ig + self.quarantined

    @property
    def unaccounted(self) -> int:
        """Rows read minus rows accounted for (0 when nothing was lost or counted twice)."""
        return self.rows_read - self.accounted

    @property
    def balanced(self) -> bool:
        """Whether rows_read == ivig + passed_through + out_of_scope + unrecognised_ig + quarantined."""
        return self.unaccounted == 0

    def check(self) -> "OrderAccounting":
        """Raise AssertionError with the numbers when rows were lost or counted twice; return self."""
        if not self.balanced:
            raise AssertionError(f"orders not accounted for: {self.describe()}")
        return self

    def describe(self) -> str:
        """One line with every count (no patient data)."""
        return (
            f"read {self.rows_read} = IVIG {self.ivig} + passed through {self.passed_through} + out of scope "
            f"{self.out_of_scope} + unrecognised Ig {self.unrecognised_ig} + quarantined {self.quarantined}"
            + ("" if self.balanced else f" (difference {self.unaccounted})")
        )


def _height(value: Any) -> int:
    """A count from an int or the height of a frame."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return int(value.height)


def accounting(
    rows_read: int,
    *,
    ivig: Any,
    passed_through: Any,
    out_of_scope: Any,
    unrecognised_ig: Any,
    quarantine: Any,
) -> OrderAccounting:
    """The order accounting from counts or frames (pure; frames count their rows).

    `quarantine` may be the run's whole quarantine frame: only rows of the orders extract count.
    """
    if quarantine is not None and not isinstance(quarantine, int) and "extract" in quarantine.columns:
        quarantine = quarantine.filter(pl.col("extract") == "orders")
    return OrderAccounting(
        rows_read=int(rows_read),
        ivig=_height(ivig),
        passed_through=_height(passed_through),
        out_of_scope=_height(out_of_scope),
        unrecognised_ig=_height(unrecognised_ig),
        quarantined=_height(quarantine),
    )


def accounting_of(result: Any) -> OrderAccounting:
    """The order accounting of tonight's rows of a `PreparedOrders` or an `AuditResult` (pipeline.audit)."""
    return accounting(
        result.rows_read,
        ivig=result.rows_ivig,
        passed_through=result.rows_passed_through,
        out_of_scope=result.rows_out_of_scope,
        unrecognised_ig=result.rows_unrecognised_ig,
        quarantine=result.rows_quarantined_orders,
    )
