"""Delimited text tables: split fast, convert columns to typed arrays, name file and line on error.

Shared by the MovieLens and CSV readers. A table is read whole, split by a single separator
(or by the `csv` module when the text has quotes), and kept as string columns; numeric
conversion happens per column, and any failure is reported as `ValueError("<path>, line <n>:
...")` with the 1-based line number of the offending row.
"""

from __future__ import annotations

import csv
import errno
import gzip
import io
import operator
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import repeat

import numpy as np

_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def read_text(path: str | os.PathLike[str], encoding: str) -> str:
    """The whole file as text (gunzipped when the name ends in `.gz`), newlines normalised."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not valid {encoding} text") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


@dataclass
class Table:
    """String columns of a delimited file, with the 1-based source line of every row."""

    path: str
    header: list[str]
    columns: list[list[str]]
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)

    def error(self, row: int, message: str) -> ValueError:
        """A ValueError naming the file and the line of table row `row`."""
        return ValueError(f"{self.path}, line {int(self.lines[row])}: {message}")

    def ints(self, column: int, what: str) -> np.ndarray:
        """Column as int64; every field must be an integer."""
        fast = _fast_ints(self.columns[column])
        if fast is not None:
            return fast
        return self._convert(column, int, np.int64, f"{what} is not an integer")

    def floats(self, column: int, what: str, *, optional: bool = False) -> np.ndarray:
        """Column as float64. Empty fields become NaN if `optional`, else are an error."""
        tokens = self.columns[column]
        filled = [t or "nan" for t in tokens] if "" in tokens else tokens
        values = self._convert(column, float, np.float64, f"{what} is not a number", filled)
        bad = ~np.isfinite(values)
        if bad.any():
            empty = np.fromiter(map(operator.not_, tokens), dtype=bool, count=len(tokens))
            wrong = np.flatnonzero(bad & ~empty)
            if len(wrong):
                row = int(wrong[0])
                raise self.error(row, f"{what} is not a finite number: {tokens[row]!r}")
            if not optional:
                raise self.error(int(np.flatnonzero(empty)[0]), f"{what} is missing")
        return values

    def first_bad(self, column: int, ok: Callable[[str], bool]) -> int | None:
        """Index of the first row whose field fails `ok`, or None."""
        for row, token in enumerate(self.columns[column]):
            if not ok(token):
                return row
        return None

    def _convert(self, column: int, parse: Callable[[str], float], dtype: type,
                 message: str, tokens: list[str] | None = None) -> np.ndarray:
        tokens = self.columns[column] if tokens is None else tokens
        try:
            return np.fromiter(map(parse, tokens), dtype=dtype, count=len(tokens))
        except (ValueError, OverflowError):
            pass
        for row, token in enumerate(tokens):  # slow path, only to find the culprit
            try:
                dtype(parse(token))
            except (ValueError, OverflowError):
                raise self.error(row, f"{message}: {self.columns[column][row]!r}") from None
        raise AssertionError("unreachable: conversion failed but every field parses")


def _fast_ints(tokens: list[str]) -> np.ndarray | None:
    """numpy's C parser for the common all-plain-integers column; None if it declines."""
    if not tokens or "" in tokens:  # loadtxt would silently skip empty fields
        return None
    try:
        values = np.loadtxt(tokens, dtype=np.int64, delimiter="\x00", comments=None, ndmin=1)
    except ValueError:
        return None
    return values if values.shape == (len(tokens),) else None


def read_table(path: str | os.PathLike[str], separator: str, *, encoding: str = "utf-8",
               header: bool = False, num_fields: int | None = None,
               quoted: bool = False) -> Table:
    """Read a delimited file into string columns; blank lines are skipped.

    With `header`, the first non-blank line names the columns and fixes the field count;
    otherwise `num_fields` must be given. `quoted` allows CSV quoting (used only when the text
    contains a quote character; the plain split is much faster). Every row must have exactly
    the expected number of fields.
    """
    path = os.fspath(path)
    text = read_text(path, encoding)
    if quoted and '"' in text:
        return _table_with_csv(path, text, separator, header, num_fields)
    return _table_with_split(path, text, separator, header, num_fields)


def _table_with_split(path: str, text: str, separator: str, header: bool,
                      num_fields: int | None) -> Table:
    lines = text.split("\n")
    if lines[-1] == "":  # the final newline ends the last line; it does not start a new one
        lines.pop()
    numbers = np.arange(1, len(lines) + 1)
    names: list[str] = []
    if header:
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None:
            raise ValueError(f"{path}: empty file, expected a header line")
        names = [name.strip() for name in lines[first].split(separator)]
        lines, numbers = lines[first + 1:], numbers[first + 1:]
        num_fields = len(names)
    assert num_fields is not None, "num_fields is required without a header"
    counts = np.fromiter(map(str.count, lines, repeat(separator)), dtype=np.int64,
                         count=len(lines))
    wrong = np.flatnonzero(counts != num_fields - 1)
    if len(wrong):  # blank lines are skipped; any other line with a wrong count is an error
        blank = np.fromiter((not lines[i].strip() for i in wrong), dtype=bool, count=len(wrong))
        if not blank.all():
            row = int(wrong[~blank][0])
            raise ValueError(f"{path}, line {int(numbers[row])}: expected {num_fields} fields "
                             f"separated by {separator!r}, found {counts[row] + 1}")
        keep = np.ones(len(lines), dtype=bool)
        keep[wrong] = False
        lines = [lines[i] for i in np.flatnonzero(keep)]
        numbers = numbers[keep]
    tokens = separator.join(lines).split(separator) if lines else []
    columns = [tokens[j::num_fields] for j in range(num_fields)]
    return Table(path, names, columns, numbers)


def _table_with_csv(path: str, text: str, separator: str, header: bool,
                    num_fields: int | None) -> Table:
    reader = csv.reader(io.StringIO(text), delimiter=separator)
    rows: list[list[str]] = []
    numbers: list[int] = []
    names: list[str] = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header and not names:
                names = [name.strip() for name in row]
                num_fields = len(names)
                continue
            if len(row) != num_fields:
                raise ValueError(f"{path}, line {reader.line_num}: expected {num_fields} "
                                 f"fields separated by {separator!r}, found {len(row)}")
            rows.append(row)
            numbers.append(reader.line_num)
    except csv.Error as e:
        raise ValueError(f"{path}, line {reader.line_num}: {e}") from None
    if header and not names:
        raise ValueError(f"{path}: empty file, expected a header line")
    assert num_fields is not None, "num_fields is required without a header"
    columns = [[row[j] for row in rows] for j in range(num_fields)]
    return Table(path, names, columns, np.asarray(numbers, dtype=np.int64))


def normalise_name(name: str) -> str:
    """Header name for matching: lower case, without spaces, '_' and '-'."""
    return re.sub(r"[\s_\-]", "", name.lower())


def find_columns(table: Table, roles: dict[str, Iterable[str]],
                 required: Iterable[str]) -> dict[str, int]:
    """Map roles (e.g. 'user') to header columns by name, case and `_`/`-` insensitive.

    `roles[role]` lists accepted spellings (already normalised, e.g. 'userid'). A role in
    `required` that no column matches, or a role that two columns match, is an error.
    """
    found: dict[str, int] = {}
    for role, names in roles.items():
        accepted = set(names)
        hits = [j for j, name in enumerate(table.header) if normalise_name(name) in accepted]
        if len(hits) > 1:
            both = ", ".join(repr(table.header[j]) for j in hits)
            raise ValueError(f"{table.path}, line 1: columns {both} both look like {role!r}")
        if hits:
            found[role] = hits[0]
    missing = [role for role in required if role not in found]
    if missing:
        raise ValueError(f"{table.path}, line 1: no {' / '.join(missing)} column in header "
                         f"{table.header} (accepted names: "
                         + "; ".join(f"{r}: {', '.join(sorted(roles[r]))}" for r in missing)
                         + ")")
    return found


def is_canonical_int(token: str) -> bool:
    """True for integers written plainly ('12', '-3', '0'), so int -> str round-trips."""
    return _CANONICAL_INT.fullmatch(token) is not None


def external_ids(tokens: list[str], as_int: bool) -> np.ndarray:
    """Ids as an int64 array (when `as_int`) or an object array of str."""
    if as_int:
        return np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
    array = np.empty(len(tokens), dtype=object)
    array[:] = tokens
    return array


def parse_time(token: str) -> float:
    """Seconds since the epoch from a number or an ISO-8601 date/time (naive = UTC)."""
    try:
        return float(token)
    except ValueError:
        pass
    moment = datetime.fromisoformat(token.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def split_values(field: str, separator: str = "|") -> tuple[str, ...]:
    """'Action|Sci-Fi' -> ('Action', 'Sci-Fi'): stripped, no empties, no repeats, in order."""
    values = (v.strip() for v in field.split(separator))
    return tuple(dict.fromkeys(v for v in values if v))
