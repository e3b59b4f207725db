"""Derived item attribute families: the decade of a year, a year from a title or a date.

One owner for how a year becomes a `decade` value ("1995" -> "1990s"), so the MovieLens
readers and the CSV reader's `year` bucketing spell decades the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DECADE = "decade"
"""The attribute family derived from years."""

_YEAR_AT_END = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_YEAR_IN_DATE = re.compile(r"(?<!\d)(\d{4})(?!\d)")


def decade_of(year: int) -> str:
    """The decade value of a year: 1995 -> "1990s"."""
    return f"{year // 10 * 10}s"


def year_of_title(title: str) -> int | None:
    """The year in a trailing "(1995)" (or "(1995-1998)"), as MovieLens titles carry it."""
    match = _YEAR_AT_END.search(title)
    return int(match.group(1)) if match else None


def year_of_date(date: str) -> int | None:
    """The four-digit year in a date such as "01-Jan-1995" or "1995-01-01"; None if none."""
    match = _YEAR_IN_DATE.search(date)
    return int(match.group(1)) if match else None


def decades(years: Sequence[int | None]) -> list[tuple[str, ...]]:
    """Per item, `(decade,)` for a known year and `()` for an unknown one."""
    return [() if year is None else (decade_of(year),) for year in years]


def items_without(values: Sequence[tuple[str, ...]]) -> int:
    """How many items have no value of a family."""
    return sum(1 for v in values if not v)
