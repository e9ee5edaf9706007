"""OMOP CDM 5.3 / 5.4 -> :class:`RawCohort`, from files or a database.

Rules:

- A visit is a ``visit_occurrence_id`` named by a ``condition_occurrence``,
  ``procedure_occurrence`` or ``drug_exposure`` row; rows without one are counted and
  dropped. Its patient and time come from its ``visit_occurrence`` row
  (``visit_start_datetime``, else ``visit_start_date``); a visit without that row is dated
  by the earliest start of its events (counted) and belongs to its events' person.
- Codes are concept ids: ``condition_concept_id`` (diagnoses), ``procedure_concept_id``
  (procedures), ``drug_concept_id`` (medications); concept 0 (unmapped) rows are counted
  and dropped. Names are ``concept.concept_name``.
- ``drug_level``: ``concept`` keeps drug concepts; ``ingredient`` rolls each drug up to its
  RxNorm ingredient(s) and ``atc3`` to its ATC 3rd-level classes (the ATC code, e.g.
  ``N02B``, so ATC3 DDI pairs and molecules apply), both through ``concept_ancestor``;
  drugs with no such ancestor are counted and dropped.
- Profile from ``person``: gender, race and ethnicity (concept names, else the source
  values), and the age band at the visit (kept from the first kept visit).

>>> raw = read_omop(FileTables(Path("omop-csv")), drug_level="atc3")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from leader.data.cohort import RawCohort, isin
from leader.data.sources.common import age_bands, code_rows, dedupe_visits, years_between
from leader.data.sources.omop_tables import OmopTables, ids
from leader.data.store import KINDS
from leader.data.times import VisitTimes, date_or_datetime, parse_visit_times
from leader.errors import LeaderError

DRUG_LEVELS: tuple[str, ...] = ("concept", "ingredient", "atc3")
# kind -> (table, concept column, start datetime column, start date column)
EVENT_TABLES: dict[str, tuple[str, str, str, str]] = {
    "diagnosis": (
        "condition_occurrence",
        "condition_concept_id",
        "condition_start_datetime",
        "condition_start_date",
    ),
    "procedure": (
        "procedure_occurrence",
        "procedure_concept_id",
        "procedure_datetime",
        "procedure_date",
    ),
    "medication": (
        "drug_exposure",
        "drug_concept_id",
        "drug_exposure_start_datetime",
        "drug_exposure_start_date",
    ),
}
PROFILE_CONCEPTS: dict[str, str] = {  # profile field -> person column
    "gender": "gender",
    "race": "race",
    "ethnicity": "ethnicity",
}


def read_omop(tables: OmopTables, drug_level: str = "concept") -> RawCohort:
    if drug_level not in DRUG_LEVELS:
        raise LeaderError(
            f"--drug-level must be one of {', '.join(DRUG_LEVELS)}, got {drug_level!r}"
        )
    if drug_level != "concept":
        for name in ("concept_ancestor", "concept"):
            if not tables.has(name):
                raise LeaderError(
                    f"{tables.description}: --drug-level {drug_level} rolls drugs up through "
                    f"the vocabulary and needs the {name} table, which is missing; add it "
                    "(OMOP vocabulary download) or use --drug-level concept"
                )
    counts: dict[str, Any] = {}
    funnel: list[dict[str, Any]] = []
    events = {kind: _events(tables, kind, counts) for kind in KINDS}
    visits, time_kind = _visits(tables, events, counts)
    visits = dedupe_visits(visits, funnel, counts)

    parts = []
    for kind in KINDS:
        rows = events[kind]
        unmapped = rows["code"].isna() | (rows["code"] == "0")
        counts[f"{EVENT_TABLES[kind][0]}_rows_unmapped_concept"] = int(unmapped.sum())
        parts.append(rows[~unmapped])
    drug_names: dict[str, str] = {}
    if drug_level != "concept":
        parts[2], drug_names = _roll_up(tables, parts[2], drug_level, counts)
    codes = pd.concat(
        [
            code_rows(part, "visit_id", "code", kind, counts)
            for kind, part in zip(KINDS, parts, strict=True)
        ],
        ignore_index=True,
    )
    person = _person(tables)
    codes_of = {kind: distinct(codes.loc[codes["kind"] == kind, "code"]) for kind in KINDS}
    concept_ids = codes_of["diagnosis"] | codes_of["procedure"]
    if drug_level == "concept":
        concept_ids |= codes_of["medication"]
    for field in PROFILE_CONCEPTS:
        concept_ids |= distinct(person[f"{field}_concept_id"])
    concept_names = _concept_names(tables, concept_ids, counts)
    names = {
        kind: {c: concept_names[c] for c in codes_of[kind] if c in concept_names}
        for kind in KINDS
    }
    if drug_level != "concept":
        names["medication"] = drug_names
    return RawCohort(
        source="omop",
        visits=visits,
        codes=codes,
        names=names,
        visit_profiles=_visit_profiles(visits, person, concept_names, counts),
        funnel=funnel,
        counts=counts,
        inputs=list(tables.inputs),
        time_kind=time_kind,
    )


def distinct(values: pd.Series) -> set[str]:
    """The distinct non-missing values (unique first: iterating Arrow strings is slow)."""
    return {str(v) for v in values.dropna().unique()}


def _events(tables: OmopTables, kind: str, counts: dict[str, Any]) -> pd.DataFrame:
    """``person_id, visit_id, code, start_datetime, start_date`` of one event table."""
    name, concept, start_datetime, start_date = EVENT_TABLES[kind]
    frame = tables.read(
        name, ["person_id", "visit_occurrence_id", concept], [start_datetime, start_date]
    )
    rows = pd.DataFrame(
        {
            "person_id": ids(frame["person_id"]),
            "visit_id": ids(frame["visit_occurrence_id"]),
            "code": ids(frame[concept]),
            "start_datetime": frame.get(start_datetime, pd.Series(pd.NA, index=frame.index)),
            "start_date": frame.get(start_date, pd.Series(pd.NA, index=frame.index)),
        }
    )
    no_visit = rows["visit_id"].isna()
    counts[f"{name}_rows"] = int(len(rows))
    counts[f"{name}_rows_without_visit"] = int(no_visit.sum())
    return rows[~no_visit].reset_index(drop=True)


def _visits(
    tables: OmopTables, events: dict[str, pd.DataFrame], counts: dict[str, Any]
) -> tuple[pd.DataFrame, str]:
    named = pd.concat([e[["visit_id", "person_id"]] for e in events.values()], ignore_index=True)
    named = named.drop_duplicates("visit_id", keep="first")
    if tables.has("visit_occurrence"):
        occurrence = tables.read(
            "visit_occurrence",
            ["visit_occurrence_id", "person_id"],
            ["visit_start_datetime", "visit_start_date"],
        )
        occurrence = occurrence.assign(
            visit_id=ids(occurrence["visit_occurrence_id"]),
            person_id=ids(occurrence["person_id"]),
        ).drop_duplicates("visit_id", keep="first")
        with_events = isin(occurrence["visit_id"], named["visit_id"])
        counts["visit_occurrence_rows"] = int(len(occurrence))
        counts["visit_occurrence_rows_without_events"] = int((~with_events).sum())
        occurrence = occurrence[with_events]
    else:
        counts["visit_occurrence_table"] = "missing: every visit dated by its events"
        occurrence = pd.DataFrame({"visit_id": pd.Series(dtype="string")})
    where = f"{tables.description}: visit_occurrence"
    start = _start(occurrence, "visit_start_datetime", "visit_start_date", where)
    dated = pd.DataFrame(
        {
            "patient_id": occurrence.get("person_id", pd.Series(dtype="string")),
            "visit_id": occurrence["visit_id"],
            "time": start.values,
        }
    )
    without_row = named[~isin(named["visit_id"], occurrence["visit_id"])]
    counts["visits_without_visit_occurrence_row"] = int(len(without_row))
    from_events = _earliest_event(events, distinct(without_row["visit_id"]), tables.description)
    undated = pd.DataFrame(
        {
            "patient_id": without_row["person_id"].values,
            "visit_id": without_row["visit_id"].values,
            "time": pd.to_datetime(
                from_events.values.reindex(without_row["visit_id"].astype(str)).values
            ),
        }
    )
    counts["visits_dated_from_events"] = int(undated["time"].notna().sum())
    person_of = dated.set_index("visit_id")["patient_id"]
    named_person = named.set_index("visit_id")["person_id"]
    common = named_person.index.intersection(person_of.index)
    counts["visits_whose_events_name_another_person"] = int(
        (named_person[common] != person_of[common]).fillna(False).sum()
    )
    visits = pd.concat([dated, undated], ignore_index=True)
    visits["time"] = pd.to_datetime(visits["time"])
    return visits, date_or_datetime(visits["time"])


def _start(frame: pd.DataFrame, datetime_column: str, date_column: str, where: str) -> VisitTimes:
    """The datetime where given, else the date; both parsed by :mod:`leader.data.times`."""
    empty = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns]")
    times, kind = empty, "date"
    if date_column in frame.columns:
        dates = parse_visit_times(frame[date_column], f"{where}.{date_column}")
        _no_numbers(dates, f"{where}.{date_column}")
        times = dates.values
        kind = dates.kind
    if datetime_column in frame.columns:
        stamps = parse_visit_times(frame[datetime_column], f"{where}.{datetime_column}")
        _no_numbers(stamps, f"{where}.{datetime_column}")
        if stamps.values.notna().any():
            times = stamps.values.fillna(times)
            kind = "datetime" if "datetime" in (stamps.kind, kind) else "date"
    return VisitTimes(times, kind)


def _no_numbers(times: VisitTimes, where: str) -> None:
    if times.kind == "number":
        raise LeaderError(f"{where}: holds numbers, not dates; OMOP dates look like 2020-01-31")


def _earliest_event(
    events: dict[str, pd.DataFrame], visit_ids: set[str], description: str
) -> VisitTimes:
    if not visit_ids:
        return VisitTimes(pd.Series(dtype="datetime64[ns]"), "date")
    starts, kinds = [], set()
    for kind, rows in events.items():
        of_visits = rows[isin(rows["visit_id"], visit_ids)]
        table, _, start_datetime, start_date = EVENT_TABLES[kind]
        frame = of_visits.rename(
            columns={"start_datetime": start_datetime, "start_date": start_date}
        )
        start = _start(frame, start_datetime, start_date, f"{description}: {table}")
        kinds.add(start.kind)
        starts.append(pd.DataFrame({"visit_id": of_visits["visit_id"], "time": start.values}))
    earliest = pd.concat(starts, ignore_index=True).groupby("visit_id")["time"].min()
    return VisitTimes(earliest, "datetime" if "datetime" in kinds else "date")


def _roll_up(
    tables: OmopTables, drugs: pd.DataFrame, level: str, counts: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Drug rows -> one row per (row, ingredient or ATC3 class) through concept_ancestor."""
    drug_ids = distinct(drugs["code"])
    ancestry = tables.read(
        "concept_ancestor",
        ["ancestor_concept_id", "descendant_concept_id"],
        where=("descendant_concept_id", drug_ids),
    )
    pairs = pd.DataFrame(
        {
            "ancestor": ids(ancestry["ancestor_concept_id"]),
            "descendant": ids(ancestry["descendant_concept_id"]),
        }
    )
    itself = pd.DataFrame({"ancestor": sorted(drug_ids), "descendant": sorted(drug_ids)})
    pairs = pd.concat([pairs, itself.astype("string")], ignore_index=True).drop_duplicates()
    concepts = tables.read(
        "concept",
        ["concept_id", "concept_name", "vocabulary_id", "concept_class_id", "concept_code"],
        where=("concept_id", distinct(pairs["ancestor"])),
    )
    concepts = concepts.assign(concept_id=ids(concepts["concept_id"]))
    vocabulary = concepts["vocabulary_id"].astype("string").str.strip()
    concept_class = concepts["concept_class_id"].astype("string").str.strip().str.lower()
    if level == "ingredient":
        targets = concepts[(concept_class == "ingredient").fillna(False)]
        target_code = targets["concept_id"]
    else:
        targets = concepts[((vocabulary == "ATC") & (concept_class == "atc 3rd")).fillna(False)]
        target_code = targets["concept_code"].astype("string").str.strip()
    targets = pd.DataFrame(
        {
            "ancestor": targets["concept_id"].values,
            "target": target_code.values,
            "name": targets["concept_name"].astype("string").values,
        }
    )
    links = pairs.merge(targets, on="ancestor").drop_duplicates(["descendant", "target"])
    numbered = drugs.reset_index(drop=True).assign(row=lambda f: range(len(f)))
    rolled = numbered.merge(
        links[["descendant", "target"]], left_on="code", right_on="descendant", how="inner"
    )
    per_row = rolled["row"].value_counts()
    counts[f"drug_exposure_rows_without_{level}"] = int(len(numbered) - len(per_row))
    counts[f"drug_concepts_without_{level}"] = int(len(drug_ids - distinct(links["descendant"])))
    counts[f"drug_exposure_rows_with_several_{level}"] = int((per_row > 1).sum())
    rolled = rolled.sort_values("row", kind="stable").assign(code=lambda f: f["target"])
    names = dict(zip(targets["target"].astype(str), targets["name"].astype(str), strict=True))
    return rolled[["person_id", "visit_id", "code"]].reset_index(drop=True), names


def _concept_names(
    tables: OmopTables, concept_ids: set[str], counts: dict[str, Any]
) -> dict[str, str]:
    concept_ids = {c for c in concept_ids if c and c != "0"}
    if not tables.has("concept"):
        counts["concept_table"] = "missing: codes stay concept ids, without names"
        return {}
    concepts = tables.read(
        "concept", ["concept_id", "concept_name"], where=("concept_id", concept_ids)
    )
    named = pd.DataFrame(
        {
            "id": ids(concepts["concept_id"]),
            "name": concepts["concept_name"].astype("string").str.strip(),
        }
    ).dropna()
    counts["concepts_without_name"] = int(len(concept_ids - distinct(named["id"])))
    return dict(zip(named["id"].astype(str), named["name"].astype(str), strict=True))


def _person(tables: OmopTables) -> pd.DataFrame:
    fields = [f"{f}_concept_id" for f in PROFILE_CONCEPTS]
    sources = [f"{f}_source_value" for f in PROFILE_CONCEPTS]
    frame = tables.read(
        "person",
        ["person_id", "year_of_birth"],
        [*fields, "month_of_birth", "day_of_birth", "birth_datetime", *sources],
    )
    person = pd.DataFrame({"person_id": ids(frame["person_id"])})
    for column in fields:
        person[column] = ids(frame[column]) if column in frame.columns else pd.NA
    for column in sources:
        person[column] = (
            frame[column].astype("string").str.strip() if column in frame.columns else pd.NA
        )
    year = pd.to_numeric(frame["year_of_birth"], errors="coerce")
    absent = pd.Series(pd.NA, index=frame.index, dtype="Float64")
    month = pd.to_numeric(frame.get("month_of_birth", absent), errors="coerce")
    day = pd.to_numeric(frame.get("day_of_birth", absent), errors="coerce")
    built = pd.to_datetime(
        pd.DataFrame({"year": year, "month": month.fillna(1), "day": day.fillna(1)}),
        errors="coerce",
    )
    if "birth_datetime" in frame.columns:
        given = parse_visit_times(frame["birth_datetime"], "person.birth_datetime")
        if given.kind != "number":
            built = given.values.fillna(built)
    person["birth"] = built.values
    return person.dropna(subset=["person_id"]).drop_duplicates("person_id")


def _visit_profiles(
    visits: pd.DataFrame,
    person: pd.DataFrame,
    concept_names: dict[str, str],
    counts: dict[str, Any],
) -> pd.DataFrame:
    merged = visits.merge(person, left_on="patient_id", right_on="person_id", how="left")
    counts["visits_without_person_row"] = int(merged["person_id"].isna().sum())
    profile = pd.DataFrame({"visit_id": merged["visit_id"]})
    for field in PROFILE_CONCEPTS:
        concept = merged[f"{field}_concept_id"].astype("string")
        named = concept.map(concept_names).astype("string")
        named = named.mask(concept == "0")
        profile[field] = named.fillna(merged[f"{field}_source_value"].astype("string"))
    age = years_between(pd.to_datetime(merged["birth"]), pd.to_datetime(merged["time"]))
    profile["age_band"] = age_bands(age).values
    return profile.drop_duplicates("visit_id")
