"""MIMIC-III (v1.4, or its demo) -> :class:`RawCohort`.

Tables: ADMISSIONS, PATIENTS, DIAGNOSES_ICD, PROCEDURES_ICD, PRESCRIPTIONS and, for
names, D_ICD_DIAGNOSES / D_ICD_PROCEDURES (short titles, as LEADER's prompts use).
Column names in either case, ``.csv`` or ``.csv.gz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leader.data.codes import DrugMapper, read_icd_names
from leader.data.cohort import RawCohort
from leader.data.sources.common import (
    admission_visits,
    age_band,
    code_rows,
    parse_times,
    years_between,
)
from leader.data.tables import TableReader, find_table
from leader.errors import LeaderError

PROFILE_FIELDS: tuple[str, ...] = (
    "insurance",
    "language",
    "religion",
    "marital_status",
    "ethnicity",
)


def read_mimic3(data: Path, resources: Path, ndc_maps: Sequence[Path] = ()) -> RawCohort:
    counts: dict[str, Any] = {}
    funnel: list[dict[str, Any]] = []
    table = TableReader(data)
    inputs = table.inputs

    admissions = table(
        "ADMISSIONS",
        ["subject_id", "hadm_id", "admittime"],
        PROFILE_FIELDS,
        text=["subject_id", "hadm_id", "admittime", *PROFILE_FIELDS],
    )
    patients = table(
        "PATIENTS", ["subject_id", "gender", "dob"], text=["subject_id", "gender", "dob"]
    )
    visits = admission_visits(admissions, funnel, counts)

    diagnoses = table(
        "DIAGNOSES_ICD", ["hadm_id", "seq_num", "icd9_code"], text=["hadm_id", "icd9_code"]
    )
    procedures = table(
        "PROCEDURES_ICD", ["hadm_id", "seq_num", "icd9_code"], text=["hadm_id", "icd9_code"]
    )
    prescriptions = table("PRESCRIPTIONS", ["hadm_id", "ndc"], text=["hadm_id", "ndc"])
    mapper = DrugMapper.from_resources(resources, ndc_maps)
    inputs += [resources / "ndc2rxnorm_mapping.txt", resources / "rxcui2atc4.csv", *ndc_maps]

    codes = pd.concat(
        [
            code_rows(diagnoses, "hadm_id", "icd9_code", "diagnosis", counts, "seq_num"),
            code_rows(procedures, "hadm_id", "icd9_code", "procedure", counts, "seq_num"),
            medication_rows(prescriptions, mapper, counts),
        ],
        ignore_index=True,
    )
    names = {
        "diagnosis": _names(data, "D_ICD_DIAGNOSES", inputs),
        "procedure": _names(data, "D_ICD_PROCEDURES", inputs),
        "medication": {},
    }
    return RawCohort(
        source="mimic3",
        visits=visits,
        codes=codes,
        names=names,
        visit_profiles=_visit_profiles(admissions, patients),
        funnel=funnel,
        counts=counts,
        inputs=inputs,
        prescribed_visits=prescribed_admissions(prescriptions),
    )


def prescribed_admissions(prescriptions: pd.DataFrame) -> pd.Series:
    """Admission ids of the prescription rows with an NDC (not missing, not "0"), unmapped.

    What the paper's ">= 2 admissions in the prescriptions table" rule counts.
    """
    ndc = prescriptions["ndc"].astype("string").str.strip()
    usable = ndc.notna() & (ndc != "") & (ndc != "0")
    return prescriptions.loc[usable, "hadm_id"].astype("string").str.strip()


def medication_rows(
    prescriptions: pd.DataFrame, mapper: DrugMapper, counts: dict[str, Any]
) -> pd.DataFrame:
    """NDC -> ATC3 per prescription row; missing / "0" NDCs and unmapped rows counted."""
    ndc = prescriptions["ndc"].astype("string").str.strip()
    missing = ndc.isna() | (ndc == "") | (ndc == "0")
    counts["prescription_rows"] = int(len(ndc))
    counts["prescription_rows_without_ndc"] = int(missing.sum())
    atc3 = mapper.map_series(ndc[~missing])
    mapped = atc3.notna()
    with_ndc = int((~missing).sum())
    counts["prescription_rows_unmapped"] = int((~mapped).sum())
    counts["prescription_rows_mapped"] = int(mapped.sum())
    counts["mapped_share"] = round(float(mapped.sum()) / with_ndc, 4) if with_ndc else 0.0
    counts["mapped_share_of_all_rows"] = (
        round(float(mapped.sum()) / len(ndc), 4) if len(ndc) else 0.0
    )
    rows = pd.DataFrame(
        {"hadm_id": prescriptions.loc[atc3.index[mapped], "hadm_id"], "atc3": atc3[mapped]}
    )
    return code_rows(rows, "hadm_id", "atc3", "medication", counts)


def _names(data: Path, name: str, inputs: list[Path]) -> dict[str, str]:
    try:
        path = find_table(data, name)
    except LeaderError:
        return {}  # names are optional: codes then appear as themselves
    inputs.append(path)
    return read_icd_names(path)


def _visit_profiles(admissions: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    people = patients.drop_duplicates("subject_id")[["subject_id", "gender", "dob"]]
    merged = admissions.merge(people, on="subject_id", how="left")
    age = years_between(parse_times(merged["dob"]), parse_times(merged["admittime"]))
    profile = pd.DataFrame({"visit_id": merged["hadm_id"].astype("string").str.strip()})
    for field in PROFILE_FIELDS:
        if field in merged.columns:
            profile[field] = merged[field]
    profile["gender"] = merged["gender"]
    profile["age_band"] = [age_band(None if pd.isna(a) else float(a)) for a in age]
    return profile.drop_duplicates("visit_id")
