"""Visit times of any kind: dates, datetimes with or without a zone, and numbers.

A source's visit-time column is classified as a whole (DESIGN.md, "Generic event input"):

- ``number``: every value is a number (an offset in minutes, an order number, ...); kept
  as numbers (int64 when all whole, else float64), so visits sort numerically;
- ``date``: calendar dates (no time of day), e.g. ``2022-07-20``;
- ``datetime``: dates with a time of day; a value with a zone (``Z``, ``+02:00``,
  ``-0500``) is converted to UTC and stored without the zone (naive UTC).

A column that mixes numbers with dates, or zoned with unzoned datetimes (whose zone is
unknown), is an error naming rows and values. Empty or unparseable values become missing
(NaT / NaN); the caller drops those visits and counts them in the funnel.

>>> parse_visit_times(pd.Series(["3", "1", ""]), "events.csv").kind
'number'
>>> str(parse_visit_times(pd.Series(["2022-07-20T07:13:55Z"]), "x").values[0])
'2022-07-20 07:13:55'
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from leader.errors import LeaderError

TIME_KINDS: tuple[str, ...] = ("date", "datetime", "number")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# A zone after a time of day: 'Z', 'UTC', '+02', '+0200', '+02:00' (and '-').
_ZONE_TAIL = r"(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$"
_ZONE = r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$"


@dataclass
class VisitTimes:
    values: pd.Series  # datetime64[ns] (naive, UTC when a zone was given), Int64 or float64
    kind: str  # one of TIME_KINDS ("datetime" for a column with no parseable value)
    converted_from_zone: int = 0  # values that carried a zone and were converted to UTC


def parse_visit_times(values: pd.Series, where: str) -> VisitTimes:
    """Classify and parse one column of visit times; ``where`` names it in errors.

    Rows are named by the series' index + 1 (the data row number of a file read whole).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        converted = int(values.notna().sum())
        naive = values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
        return VisitTimes(naive, date_or_datetime(naive), converted)
    if pd.api.types.is_datetime64_any_dtype(values):
        naive = values.astype("datetime64[ns]")
        return VisitTimes(naive, date_or_datetime(naive))
    if pd.api.types.is_bool_dtype(values):
        raise LeaderError(f"{where}: visit times are true/false values, not times or numbers")
    if pd.api.types.is_numeric_dtype(values):
        return VisitTimes(_numbers(pd.to_numeric(values, errors="coerce")), "number")
    if values.dtype == object and _holds_python_dates(values):
        return _from_python_dates(values, where)
    return _from_text(values.astype("string").str.strip(), where)


def _from_text(text: pd.Series, where: str) -> VisitTimes:
    present = text.notna() & (text != "")
    number_like = present & text.str.fullmatch(_NUMBER).fillna(False).astype(bool)
    numbers = pd.to_numeric(text.where(number_like), errors="coerce")
    is_number = numbers.notna()
    rest = present & ~is_number
    zoned = rest & _has_zone(text)
    naive = rest & ~zoned
    times = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    if naive.any():
        times[naive] = _to_datetime(text[naive], utc=False)
    if zoned.any():
        times[zoned] = _to_datetime(text[zoned], utc=True).dt.tz_localize(None)
    is_time = times.notna()
    if is_number.any() and is_time.any():
        raise LeaderError(
            f"{where}: visit times mix numbers ({_examples(text, is_number)}) and dates "
            f"({_examples(text, is_time)}); use one kind for the whole column "
            "(rows count data rows from 1)"
        )
    if (zoned & is_time).any() and (naive & is_time).any():
        raise LeaderError(
            f"{where}: visit times mix values with a time zone ({_examples(text, zoned)}) and "
            f"values without one ({_examples(text, naive & is_time)}), whose zone is unknown; "
            "give every value a zone (e.g. Z for UTC) or none"
        )
    if is_number.any():
        return VisitTimes(_numbers(numbers), "number")
    return VisitTimes(times, date_or_datetime(times), int((zoned & is_time).sum()))


def _has_zone(text: pd.Series) -> pd.Series:
    """Cheap tail test first; the full pattern only on the few candidates."""
    tail = text.str[-6:].str.contains(_ZONE_TAIL, regex=True).fillna(False).astype(bool)
    candidates = tail & text.str.contains(":", regex=False).fillna(False).astype(bool)
    found = pd.Series(False, index=text.index)
    if candidates.any():
        found[candidates] = text[candidates].str.contains(_ZONE, regex=True).astype(bool)
    return found


def _to_datetime(text: pd.Series, utc: bool) -> pd.Series:
    """ISO 8601 fast path; other layouts (``07/20/2022 10:00``) one by one, out of range = NaT."""
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc)
    failed = parsed.isna()
    if failed.any():
        parsed[failed] = pd.to_datetime(text[failed], format="mixed", errors="coerce", utc=utc)
    if utc:
        return parsed.dt.tz_convert("UTC")
    return parsed


def _holds_python_dates(values: pd.Series) -> bool:
    present = values.dropna()
    return len(present) > 0 and isinstance(present.iloc[0], dt.date)


def _from_python_dates(values: pd.Series, where: str) -> VisitTimes:
    """``datetime.date`` / ``datetime.datetime`` objects, as database drivers return them."""
    # isoformat() keeps a zone as '+00:00', so zoned and naive values stay distinguishable.
    text = values.map(lambda v: v.isoformat() if isinstance(v, dt.date) else v)
    return _from_text(text.astype("string").str.strip(), where)


def _numbers(numbers: pd.Series) -> pd.Series:
    """Int64 (nullable) when every value is whole, else float64; infinities are missing."""
    values = numbers.astype("float64")
    values = values.where(np.isfinite(values))
    present = values.dropna()
    if bool((present == np.round(present)).all()) and bool((present.abs() < 2**53).all()):
        return values.astype("Int64")
    return values


def date_or_datetime(times: pd.Series) -> str:
    """``date`` when every present time is a midnight, else ``datetime``."""
    present = times.dropna()
    if len(present) and bool((present == present.dt.normalize()).all()):
        return "date"
    return "datetime"


def _examples(text: pd.Series, mask: pd.Series, limit: int = 3) -> str:
    rows = text[mask].head(limit)
    return ", ".join(f"row {_row(i)}: {v!r}" for i, v in rows.items())


def _row(index: object) -> str:
    return str(index + 1) if isinstance(index, int | np.integer) else str(index)


def sortable(times: pd.Series, kind: str) -> pd.Series:
    """Times as stored in ``visits.parquet``: naive datetime64 or numbers."""
    if kind == "number":
        return pd.to_numeric(times, errors="coerce")
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        return times.dt.tz_convert("UTC").dt.tz_localize(None)
    return pd.to_datetime(times)
