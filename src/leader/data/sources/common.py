"""Pieces every source reader shares: code tables with counted drops, dates, age bands."""

from __future__ import annotations

from typing import Any

import pandas as pd


def code_rows(
    frame: pd.DataFrame,
    visit_column: str,
    code_column: str,
    kind: str,
    counts: dict[str, Any],
    order_column: str | None = None,
) -> pd.DataFrame:
    """``visit_id, kind, code`` rows: empty codes and repeats dropped (and counted).

    Order within a visit: by ``order_column`` (e.g. ``seq_num``) when given, else file
    order; a code seen twice keeps its first place.
    """
    codes = frame[code_column].astype("string").str.strip()
    visit = frame[visit_column].astype("string").str.strip()
    rows = pd.DataFrame({"visit_id": visit, "code": codes})
    if order_column is not None:
        rows["order"] = pd.to_numeric(frame[order_column], errors="coerce")
    empty = rows["code"].isna() | (rows["code"] == "") | rows["visit_id"].isna()
    counts[f"{kind}_rows"] = int(len(rows))
    counts[f"{kind}_rows_empty_code"] = int(empty.sum())
    rows = rows[~empty]
    if order_column is not None:
        # Rows without a usable order number go last, in file order.
        rows = rows.sort_values(["visit_id", "order"], kind="stable", na_position="last")
        rows = rows.drop(columns="order")
    duplicated = rows.duplicated(["visit_id", "code"], keep="first")
    counts[f"{kind}_rows_duplicate"] = int(duplicated.sum())
    rows = rows[~duplicated].reset_index(drop=True)
    rows.insert(1, "kind", kind)
    return rows


def parse_times(values: pd.Series) -> pd.Series:
    """Datetimes; unparseable values become NaT (the caller counts them)."""
    text = values.astype("string").str.strip()
    return pd.to_datetime(text, errors="coerce", format="mixed")


def age_band(age: float | None) -> str:
    """Ten-year bands; 90+ covers MIMIC's shifted ages of very old patients."""
    if age is None or pd.isna(age) or age < 0:
        return "unknown"
    if age < 18:
        return "0-17"
    if age >= 90:
        return "90+"
    if age < 30:
        return "18-29"
    low = int(age // 10 * 10)
    return f"{low}-{low + 9}"


def years_between(start: pd.Series, end: pd.Series) -> pd.Series:
    """Whole years from ``start`` to ``end`` (calendar arithmetic, no overflow)."""
    years = end.dt.year - start.dt.year
    before_birthday = (end.dt.month < start.dt.month) | (
        (end.dt.month == start.dt.month) & (end.dt.day < start.dt.day)
    )
    return (years - before_birthday.astype("Int64")).astype("Float64")


def dedupe_visits(
    visits: pd.DataFrame, funnel: list[dict[str, Any]], counts: dict[str, Any]
) -> pd.DataFrame:
    """Drop repeated visit ids and visits with unparseable times, counting both."""
    duplicated = visits.duplicated("visit_id", keep="first")
    counts["visit_rows_duplicate"] = int(duplicated.sum())
    visits = visits[~duplicated]
    funnel.append(
        {
            "rule": "visits read",
            "visits": len(visits),
            "patients": int(visits["patient_id"].nunique()),
        }
    )
    bad_time = visits["time"].isna()
    funnel.append(
        {
            "rule": "visit time missing or unparseable",
            "visits_removed": int(bad_time.sum()),
            "patients_removed": int(
                visits["patient_id"].nunique() - visits.loc[~bad_time, "patient_id"].nunique()
            ),
            "visits": int((~bad_time).sum()),
            "patients": int(visits.loc[~bad_time, "patient_id"].nunique()),
        }
    )
    return visits[~bad_time].reset_index(drop=True)


def admission_visits(
    admissions: pd.DataFrame, funnel: list[dict[str, Any]], counts: dict[str, Any]
) -> pd.DataFrame:
    """MIMIC admissions (``subject_id, hadm_id, admittime``) -> clean visits."""
    visits = pd.DataFrame(
        {
            "patient_id": admissions["subject_id"].astype("string").str.strip(),
            "visit_id": admissions["hadm_id"].astype("string").str.strip(),
            "time": parse_times(admissions["admittime"]),
        }
    )
    return dedupe_visits(visits, funnel, counts)


def age_bands(ages: pd.Series) -> pd.Series:
    """:func:`age_band` for a whole column (no per-row Python)."""
    age = pd.to_numeric(ages, errors="coerce").astype("float64")
    low = (age // 10 * 10).fillna(0).astype("int64")
    bands = (low.astype(str) + "-" + (low + 9).astype(str)).astype(object)
    bands[age < 30] = "18-29"
    bands[age < 18] = "0-17"
    bands[age >= 90] = "90+"
    bands[age.isna() | (age < 0)] = "unknown"
    return bands


def most_frequent_names(codes: pd.Series, names: pd.Series) -> dict[str, str]:
    """Each code's most frequent non-empty name (ties: the name sorting first)."""
    pairs = pd.DataFrame(
        {"code": codes.astype("string").str.strip(), "name": names.astype("string").str.strip()}
    ).dropna()
    pairs = pairs[(pairs["code"] != "") & (pairs["name"] != "")]
    if pairs.empty:
        return {}
    counted = pairs.value_counts().rename("n").reset_index()
    counted = counted.sort_values(["code", "n", "name"], ascending=[True, False, True])
    first = counted.drop_duplicates("code", keep="first")
    return dict(zip(first["code"].astype(str), first["name"].astype(str), strict=True))


def funnel_step(
    funnel: list[dict[str, Any]], rule: str, before: pd.DataFrame, after: pd.DataFrame
) -> None:
    """Append a reader's rule to the funnel: what it removed, what is left."""
    funnel.append(
        {
            "rule": rule,
            "visits_removed": len(before) - len(after),
            "patients_removed": int(before["patient_id"].nunique() - after["patient_id"].nunique()),
            "visits": len(after),
            "patients": int(after["patient_id"].nunique()),
        }
    )
