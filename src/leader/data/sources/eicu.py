"""eICU Collaborative Research Database v2.0 (or its demo) -> :class:`RawCohort`.

Tables (eICU-CRD v2.0 column names, any case, ``.csv`` or ``.csv.gz``):

- ``patient``: a visit is a unit stay (``patientunitstayid``) of a patient
  (``uniquepid``). eICU has offsets, not dates, so the visit time is the stay's order
  number within the patient (0, 1, 2, ...) by ``hospitaldischargeyear``,
  ``patienthealthsystemstayid``, ``unitvisitnumber`` (then the stay id; stays missing
  one of these sort last and are counted). Profile: gender, age band (``> 89`` is 90+,
  empty is unknown), ethnicity, unit type, taken at the stay.
- ``diagnosis``: the first code of ``icd9code`` (``"518.81, J96.00"``: ICD-9 first, then
  ICD-10); rows with no code, or whose first code is not ICD-9, are counted and dropped.
  Named by ``diagnosisstring`` (its most frequent string).
- ``treatment``: procedures; the code is ``treatmentstring`` itself.
- ``medication``: ``HICL<drughiclseqno>`` named by ``drugname``; orders with
  ``drugordercancelled`` = Yes and rows without a HICL are counted and dropped. With a
  drug map (``--drug-map``: columns ``atc3`` (or ``atc``, cut to 4 characters) and
  ``hicl`` and/or ``drugname``) drugs become ATC3 codes, matched by HICL first, then by
  name (case and spaces ignored); unmapped rows are counted and dropped.

>>> raw = read_eicu(Path("eicu-crd-demo"))                   # doctest: +SKIP
>>> raw.time_kind
'number'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from leader.data.cohort import RawCohort
from leader.data.sources.common import (
    age_bands,
    code_rows,
    dedupe_visits,
    most_frequent_names,
)
from leader.data.tables import TableReader, read_table
from leader.errors import LeaderError

ORDER_FIELDS: tuple[str, ...] = (
    "hospitaldischargeyear",
    "patienthealthsystemstayid",
    "unitvisitnumber",
)
PROFILE_FIELDS: dict[str, str] = {  # eICU column -> profile field
    "gender": "gender",
    "ethnicity": "ethnicity",
    "unittype": "unit_type",
}
# ICD-9-CM: 3 digits (leading zeros sometimes lost), V + 2 digits, E + 3 digits.
ICD9 = r"(?:\d{1,3}|V\d{2})(?:\.\d{1,2})?|E\d{3}(?:\.\d)?"


def read_eicu(data: Path, drug_map: Path | None = None) -> RawCohort:
    counts: dict[str, Any] = {}
    funnel: list[dict[str, Any]] = []
    table = TableReader(data)
    patient = table(
        "patient",
        ["patientunitstayid", "uniquepid", *ORDER_FIELDS],
        ["age", *PROFILE_FIELDS],
        text=["patientunitstayid", "uniquepid", *ORDER_FIELDS, "age", *PROFILE_FIELDS],
    )
    visits = _unit_stays(patient, funnel, counts)
    diagnosis = table(
        "diagnosis",
        ["patientunitstayid", "icd9code"],
        ["diagnosisstring"],
        text=["patientunitstayid", "icd9code", "diagnosisstring"],
    )
    treatment = table(
        "treatment",
        ["patientunitstayid", "treatmentstring"],
        text=["patientunitstayid", "treatmentstring"],
    )
    medication = table(
        "medication",
        ["patientunitstayid", "drughiclseqno", "drugordercancelled"],
        ["drugname"],
        text=["patientunitstayid", "drughiclseqno", "drugordercancelled", "drugname"],
    )
    diagnoses, diagnosis_names = _diagnoses(diagnosis, counts)
    drugs, drug_names = _medications(medication, drug_map, counts, table.inputs)
    return RawCohort(
        source="eicu",
        visits=visits,
        codes=pd.concat(
            [
                diagnoses,
                code_rows(treatment, "patientunitstayid", "treatmentstring", "procedure", counts),
                drugs,
            ],
            ignore_index=True,
        ),
        names={"diagnosis": diagnosis_names, "procedure": {}, "medication": drug_names},
        visit_profiles=_profiles(patient),
        funnel=funnel,
        counts=counts,
        inputs=table.inputs,
        time_kind="number",
    )


def _unit_stays(
    patient: pd.DataFrame, funnel: list[dict[str, Any]], counts: dict[str, Any]
) -> pd.DataFrame:
    """One visit per unit stay; time = order number of the stay within its patient."""
    stays = pd.DataFrame(
        {
            "patient_id": patient["uniquepid"].str.strip(),
            "visit_id": patient["patientunitstayid"].str.strip(),
            **{f: pd.to_numeric(patient[f], errors="coerce") for f in ORDER_FIELDS},
        }
    )
    no_ids = stays["patient_id"].isna() | stays["visit_id"].isna()
    no_ids |= (stays["patient_id"] == "") | (stays["visit_id"] == "")
    counts["patient_rows"] = int(len(stays))
    counts["patient_rows_without_uniquepid_or_stay"] = int(no_ids.sum())
    stays = stays[~no_ids]
    duplicated = stays.duplicated("visit_id", keep="first")
    counts["unit_stay_rows_duplicate"] = int(duplicated.sum())
    stays = stays[~duplicated]
    counts["unit_stays_missing_order_fields"] = int(
        stays[list(ORDER_FIELDS)].isna().any(axis=1).sum()
    )
    stays = stays.assign(stay_number=pd.to_numeric(stays["visit_id"], errors="coerce"))
    stays = stays.sort_values(
        ["patient_id", *ORDER_FIELDS, "stay_number", "visit_id"],
        kind="stable",
        na_position="last",
    )
    stays["time"] = stays.groupby("patient_id", sort=False).cumcount().astype("Int64")
    return dedupe_visits(stays[["patient_id", "visit_id", "time"]], funnel, counts)


def _diagnoses(
    diagnosis: pd.DataFrame, counts: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, str]]:
    first = diagnosis["icd9code"].str.split(",", n=1).str[0].str.strip()
    has_code = first.notna() & (first != "")
    icd9 = has_code & first.str.fullmatch(ICD9).fillna(False).astype(bool)
    counts["diagnosis_rows_read"] = int(len(diagnosis))
    counts["diagnosis_rows_without_icd9code"] = int((~has_code).sum())
    counts["diagnosis_rows_first_code_not_icd9"] = int((has_code & ~icd9).sum())
    kept = diagnosis[icd9].assign(code=first[icd9])
    rows = code_rows(kept, "patientunitstayid", "code", "diagnosis", counts)
    names = (
        most_frequent_names(kept["code"], kept["diagnosisstring"])
        if "diagnosisstring" in kept.columns
        else {}
    )
    return rows, names


def _medications(
    medication: pd.DataFrame, drug_map: Path | None, counts: dict[str, Any], inputs: list[Path]
) -> tuple[pd.DataFrame, dict[str, str]]:
    cancelled = medication["drugordercancelled"].str.strip().str.lower() == "yes"
    cancelled = cancelled.fillna(False).astype(bool)
    hicl = pd.to_numeric(medication["drughiclseqno"], errors="coerce")
    no_hicl = hicl.isna() & ~cancelled
    counts["medication_rows_read"] = int(len(medication))
    counts["medication_rows_cancelled"] = int(cancelled.sum())
    counts["medication_rows_without_hicl"] = int(no_hicl.sum())
    orders = medication[~cancelled & ~no_hicl].copy()
    orders["hicl"] = hicl[orders.index].astype("int64").astype(str)
    orders["code"] = "HICL" + orders["hicl"]
    names = (
        most_frequent_names(orders["code"], orders["drugname"])
        if "drugname" in orders.columns
        else {}
    )
    if drug_map is not None:
        orders["code"] = _map_drugs(orders, drug_map, counts)
        inputs.append(drug_map)
        names = {}  # ATC3 names come from --atc-names
        orders = orders[orders["code"].notna()]
    rows = code_rows(orders, "patientunitstayid", "code", "medication", counts)
    return rows, names


def _map_drugs(orders: pd.DataFrame, path: Path, counts: dict[str, Any]) -> pd.Series:
    """HICL (first) or drug name -> ATC3; unmapped rows become missing and are counted."""
    if not path.exists():
        raise LeaderError(f"{path}: drug map not found")
    table = read_table(path, [], ["hicl", "drugname", "atc3", "atc"], text=["hicl", "drugname"])
    atc_column = "atc3" if "atc3" in table.columns else "atc" if "atc" in table.columns else None
    keys = [c for c in ("hicl", "drugname") if c in table.columns]
    if atc_column is None or not keys:
        raise LeaderError(
            f"{path}: a drug map needs a column atc3 (or atc) and a column hicl and/or "
            f"drugname (found: {', '.join(table.columns) or 'nothing'})"
        )
    atc3 = table[atc_column].astype("string").str.strip().str.upper().str[:4]
    mapped = pd.Series(pd.NA, index=orders.index, dtype="string")
    if "hicl" in table.columns:
        hicl = pd.to_numeric(table["hicl"], errors="coerce")
        by_hicl = pd.Series(atc3.values, index=hicl.astype("Int64").astype("string"))
        by_hicl = by_hicl[by_hicl.index.notna() & by_hicl.notna()]
        by_hicl = by_hicl[~by_hicl.index.duplicated(keep="first")]
        mapped = orders["hicl"].map(by_hicl).astype("string")
    if "drugname" in table.columns and "drugname" in orders.columns:
        key = table["drugname"].astype("string").str.strip().str.lower().str.split().str.join(" ")
        by_name = pd.Series(atc3.values, index=key)
        by_name = by_name[by_name.index.notna() & by_name.notna()]
        by_name = by_name[~by_name.index.duplicated(keep="first")]
        names = orders["drugname"].str.strip().str.lower().str.split().str.join(" ")
        mapped = mapped.fillna(names.map(by_name).astype("string"))
    mapped = mapped.mask(mapped == "")
    counts["medication_rows_unmapped"] = int(mapped.isna().sum())
    counts["medication_rows_mapped"] = int(mapped.notna().sum())
    counts["mapped_share"] = round(float(mapped.notna().mean()), 4) if len(mapped) else 0.0
    return mapped


def _profiles(patient: pd.DataFrame) -> pd.DataFrame:
    profile = pd.DataFrame({"visit_id": patient["patientunitstayid"].str.strip()})
    for column, field in PROFILE_FIELDS.items():
        if column in patient.columns:
            profile[field] = patient[column]
    if "age" in patient.columns:
        age = patient["age"].str.strip().str.replace(r"^>\s*89$", "90", regex=True)
        profile["age_band"] = age_bands(age).values
    return profile.dropna(subset=["visit_id"]).drop_duplicates("visit_id")
