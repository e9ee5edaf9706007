"""Generic event table -> :class:`RawCohort` (a hospital's own data, Synthea or FHIR exports).

One row per code occurrence: ``patient_id, visit_id, visit_time, kind, code`` and an
optional ``name``; ``kind`` is ``diagnosis``, ``procedure`` or ``medication``. Visits are
ordered by ``visit_time`` (a date, a datetime with or without a zone, or a number: see
:mod:`leader.data.times`), then ``visit_id``. Codes are used as given (no drug mapping).
An optional profile table holds ``patient_id`` plus any columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from leader.data.cohort import RawCohort
from leader.data.sources.common import code_rows, dedupe_visits
from leader.data.store import KINDS
from leader.data.tables import read_table, table_columns
from leader.data.times import parse_visit_times
from leader.errors import LeaderError

REQUIRED: list[str] = ["patient_id", "visit_id", "visit_time", "kind", "code"]


def read_events(events: Path, profiles: Path | None = None) -> RawCohort:
    if not events.exists():
        raise LeaderError(f"{events}: event table not found")
    frame = read_table(events, REQUIRED, ["name"], text=[*REQUIRED, "name"])
    counts: dict[str, Any] = {"event_rows": len(frame)}
    funnel: list[dict[str, Any]] = []
    frame["kind"] = frame["kind"].str.strip().str.lower()
    frame["visit_id"] = frame["visit_id"].str.strip()
    frame["patient_id"] = frame["patient_id"].str.strip()
    unknown_kind = ~frame["kind"].isin(KINDS)
    counts["event_rows_unknown_kind"] = int(unknown_kind.sum())
    if unknown_kind.any():
        examples = sorted(frame.loc[unknown_kind, "kind"].dropna().unique().tolist())[:5]
        counts["unknown_kinds"] = examples
    no_visit = frame["visit_id"].isna() | frame["patient_id"].isna()
    counts["event_rows_without_visit_or_patient"] = int(no_visit.sum())
    frame = frame[~unknown_kind & ~no_visit]

    first = frame.drop_duplicates("visit_id", keep="first")
    conflicting = frame.groupby("visit_id")["patient_id"].nunique()
    counts["visits_with_several_patients"] = int((conflicting > 1).sum())
    times = parse_visit_times(first["visit_time"], f"{events}: column visit_time")
    counts["visit_times_converted_to_utc"] = times.converted_from_zone
    visits = pd.DataFrame(
        {"patient_id": first["patient_id"], "visit_id": first["visit_id"], "time": times.values}
    )
    visits = dedupe_visits(visits, funnel, counts)

    parts = [
        code_rows(frame[frame["kind"] == kind], "visit_id", "code", kind, counts) for kind in KINDS
    ]
    names: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    if "name" in frame.columns:
        named = frame.dropna(subset=["name"])
        named = named[named["name"].str.strip() != ""].drop_duplicates(["kind", "code"])
        for kind, code, name in zip(named["kind"], named["code"], named["name"], strict=True):
            names[kind][str(code).strip()] = str(name).strip()
    inputs = [events]
    patient_profiles = None
    if profiles is not None:
        if not profiles.exists():
            raise LeaderError(f"{profiles}: profile table not found")
        columns = table_columns(profiles)
        others = [c for c in columns if c.lower() != "patient_id"]
        patient_profiles = read_table(profiles, ["patient_id"], others, text=columns)
        patient_profiles["patient_id"] = patient_profiles["patient_id"].str.strip()
        patient_profiles = patient_profiles.drop_duplicates("patient_id")
        inputs.append(profiles)
    return RawCohort(
        source="events",
        visits=visits,
        codes=pd.concat(parts, ignore_index=True),
        names=names,
        patient_profiles=patient_profiles,
        funnel=funnel,
        counts=counts,
        inputs=inputs,
        time_kind=times.kind,
    )
