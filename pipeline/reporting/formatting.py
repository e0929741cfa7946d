"""How the report writes its numbers, dates and ids (one definition, used by charts, HTML and Markdown)."""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Any

from markupsafe import Markup


def number(value: Any) -> float:
    """A float from an aggregate that may be None or NaN."""
    if value is None:
        return 0.0
    value = float(value)
    return 0.0 if math.isnan(value) else value


def fmt_int(value: Any) -> str:
    """1234 -> '1,234'; None -> '-'."""
    return "-" if value is None else f"{int(value):,}"


def fmt_grams(value: Any) -> str:
    """Grams to one decimal ('.0' dropped), whole grams from 1,000: 10.5 -> '10.5 g', 1234.5 -> '1,234 g'; None -> '-'."""
    if value is None:
        return "-"
    value = float(value)
    if abs(value) >= 1000:  # 41,414 g: a tenth of a gram is noise at this size
        return f"{value:,.0f} g"
    text = f"{value:,.1f}"
    return (text[:-2] if text.endswith(".0") else text) + " g"


def fmt_pct(value: Any) -> str:
    """66.666 -> '67%'; None -> '-'."""
    return "-" if value is None else f"{float(value):.0f}%"


def fmt_money(value: Any, currency: str = "US$") -> str:
    """12345.6 -> 'US$12,346'."""
    return "-" if value is None else f"{currency}{float(value):,.0f}"


def plural(n: int, noun: str) -> str:
    """'1 course', '3 courses'."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def fmt_date(value: Any) -> str:
    """A date or datetime as YYYY-MM-DD (other values as text)."""
    if value is None:
        return "-"
    if isinstance(value, (datetime, date)):
        return value.strftime("%Y-%m-%d")
    return str(value)


def fmt_datetime(value: Any) -> str:
    """A datetime as YYYY-MM-DD HH:MM (other values as text)."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return fmt_date(value)


def breakable(value: Any) -> Markup:
    """Escaped text with optional line breaks after '.', '_' and '|' (long rule and course ids)."""
    text = str(Markup.escape("" if value is None else value))
    return Markup(re.sub(r"([._|])", r"\1<wbr>", text))
