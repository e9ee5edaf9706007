"""MIMIC-IV v2.x ``hosp/`` module -> :class:`RawCohort` (``data``: the release or ``hosp/``).

Tables: admissions, patients, diagnoses_icd, procedures_icd (``icd_code, icd_version``),
prescriptions (``ndc``), d_icd_diagnoses / d_icd_procedures (long titles). ICD-9 and
ICD-10 never merge: codes are stored as ``icd9:<code>`` and ``icd10:<code>`` (the
authors' code mixed the two versions). Age from ``anchor_age`` / ``anchor_year``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leader.data.codes import DrugMapper
from leader.data.cohort import RawCohort
from leader.data.sources.common import (
    admission_visits,
    age_band,
    code_rows,
    parse_times,
)
from leader.data.sources.mimic3 import medication_rows, prescribed_admissions
from leader.data.tables import TableReader, find_table, read_table
from leader.errors import LeaderError

PROFILE_FIELDS: tuple[str, ...] = (
    "insurance",
    "language",
    "admission_type",
    "marital_status",
    "race",
)


def versioned(codes: pd.Series, versions: pd.Series) -> pd.Series:
    """``icd9:4019`` / ``icd10:I10``: one namespace per ICD version."""
    version = versions.astype("string").str.strip()
    return ("icd" + version + ":" + codes.astype("string").str.strip()).astype("string")


def hosp_folder(data: Path) -> Path:
    """``data`` itself when it holds the tables, else its ``hosp/`` (the release folder)."""
    if not data.is_dir():
        raise LeaderError(f"{data}: folder not found")
    try:
        find_table(data, "admissions")
        return data
    except LeaderError:
        pass
    for child in sorted(data.iterdir()):
        if child.is_dir() and child.name.lower() == "hosp":
            return child
    raise LeaderError(
        f"{data}: table admissions not found; give the MIMIC-IV release folder "
        "(the one holding hosp/) or its hosp/ folder"
    )


def read_mimic4(
    data: Path,
    resources: Path,
    ndc_maps: Sequence[Path] = (),
    patient_fraction: float = 1.0,
    seed: int = 42,
) -> RawCohort:
    counts: dict[str, Any] = {}
    funnel: list[dict[str, Any]] = []
    data = hosp_folder(data)
    table = TableReader(data)
    inputs = table.inputs

    admissions = table(
        "admissions",
        ["subject_id", "hadm_id", "admittime"],
        PROFILE_FIELDS,
        text=["subject_id", "hadm_id", "admittime", *PROFILE_FIELDS],
    )
    if not 0 < patient_fraction <= 1:
        raise LeaderError(f"--patient-fraction must be in (0, 1], got {patient_fraction}")
    if patient_fraction < 1:
        # The paper's MIMIC-IV cohort: a random share of patients (15%, seed 42).
        people = np.sort(admissions["subject_id"].dropna().unique().astype(str))
        rng = np.random.default_rng(seed)
        chosen = set(
            rng.choice(people, size=max(1, int(len(people) * patient_fraction)), replace=False)
        )
        admissions = admissions[admissions["subject_id"].isin(chosen)]
        counts["patient_fraction"] = patient_fraction
    patients = table(
        "patients",
        ["subject_id", "gender", "anchor_age", "anchor_year"],
        text=["subject_id", "gender"],
    )
    visits = admission_visits(admissions, funnel, counts)

    parts = []
    for name, kind in (("diagnoses_icd", "diagnosis"), ("procedures_icd", "procedure")):
        rows = table(
            name,
            ["hadm_id", "seq_num", "icd_code", "icd_version"],
            text=["hadm_id", "icd_code", "icd_version"],
        )
        rows["code"] = versioned(rows["icd_code"], rows["icd_version"])
        parts.append(code_rows(rows, "hadm_id", "code", kind, counts, "seq_num"))
    prescriptions = table("prescriptions", ["hadm_id", "ndc"], text=["hadm_id", "ndc"])
    mapper = DrugMapper.from_resources(resources, ndc_maps)
    inputs += [resources / "ndc2rxnorm_mapping.txt", resources / "rxcui2atc4.csv", *ndc_maps]
    parts.append(medication_rows(prescriptions, mapper, counts))

    names = {
        "diagnosis": _names(data, "d_icd_diagnoses", inputs),
        "procedure": _names(data, "d_icd_procedures", inputs),
        "medication": {},
    }
    return RawCohort(
        source="mimic4",
        visits=visits,
        codes=pd.concat(parts, ignore_index=True),
        names=names,
        visit_profiles=_visit_profiles(admissions, patients),
        funnel=funnel,
        counts=counts,
        inputs=inputs,
        prescribed_visits=prescribed_admissions(prescriptions),
    )


def _names(data: Path, name: str, inputs: list[Path]) -> dict[str, str]:
    try:
        path = find_table(data, name)
    except LeaderError:
        return {}
    inputs.append(path)
    frame = read_table(
        path,
        ["icd_code", "icd_version", "long_title"],
        text=["icd_code", "icd_version", "long_title"],
    ).dropna()
    keys = versioned(frame["icd_code"], frame["icd_version"])
    return dict(zip(keys, frame["long_title"], strict=True))


def _visit_profiles(admissions: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    people = patients.drop_duplicates("subject_id")
    merged = admissions.merge(people, on="subject_id", how="left")
    admit_year = parse_times(merged["admittime"]).dt.year
    anchor_age = pd.to_numeric(merged["anchor_age"], errors="coerce")
    anchor_year = pd.to_numeric(merged["anchor_year"], errors="coerce")
    age = anchor_age + (admit_year - anchor_year)
    profile = pd.DataFrame({"visit_id": merged["hadm_id"].astype("string").str.strip()})
    for field in PROFILE_FIELDS:
        if field in merged.columns:
            profile[field] = merged[field]
    profile["gender"] = merged["gender"]
    profile["age_band"] = [age_band(None if pd.isna(a) else float(a)) for a in age]
    return profile.drop_duplicates("visit_id")
