"""A small OMOP CDM 5.4 instance: the real tables and columns, a handful of rows.

Persons 1 (two visits: 100 with a start datetime, 101 with only a date), 2 (visit 200),
3 (visit 300 named by events but without a visit_occurrence row; visit 400 without
events). Rows without a visit and concept-0 rows are there to be counted. Drugs roll up
through ``concept_ancestor``: metformin tablets -> metformin -> A10B (and A10BA, an ATC
4th level that must not be taken), lisinopril tablets -> lisinopril -> C09A, aspirin (an
ingredient) -> B01A and N02B, concept 999999 -> nothing.
"""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import pandas as pd


def omop_frames() -> dict[str, pd.DataFrame]:
    person = pd.DataFrame(
        {
            "person_id": [1, 2, 3],
            "gender_concept_id": [8532, 8507, 8532],
            "year_of_birth": [1950, 1980, 2000],
            "month_of_birth": [3, None, 1],
            "day_of_birth": [15, None, 1],
            "birth_datetime": ["1950-03-15 00:00:00", None, None],
            "race_concept_id": [8527, 0, 8527],
            "ethnicity_concept_id": [38003564, 38003564, 38003564],
            "location_id": [None, None, None],
            "provider_id": [None, None, None],
            "care_site_id": [None, None, None],
            "person_source_value": ["a", "b", "c"],
            "gender_source_value": ["F", "M", "F"],
            "gender_source_concept_id": [0, 0, 0],
            "race_source_value": ["white", "Other", "white"],
            "race_source_concept_id": [0, 0, 0],
            "ethnicity_source_value": ["nonhispanic", "nonhispanic", "nonhispanic"],
            "ethnicity_source_concept_id": [0, 0, 0],
        }
    ).astype({"month_of_birth": "Int64", "day_of_birth": "Int64"})
    visit_occurrence = pd.DataFrame(
        {
            "visit_occurrence_id": [100, 101, 200, 400],
            "person_id": [1, 1, 2, 3],
            "visit_concept_id": [9201, 9201, 9201, 9202],
            "visit_start_date": ["2020-01-10", "2021-06-01", "2019-05-05", "2023-01-01"],
            "visit_start_datetime": ["2020-01-10 08:00:00", None, "2019-05-05 10:00:00", None],
            "visit_end_date": ["2020-01-12", "2021-06-03", "2019-05-06", "2023-01-01"],
            "visit_end_datetime": [None, None, None, None],
            "visit_type_concept_id": [32817, 32817, 32817, 32817],
            "provider_id": [None, None, None, None],
            "care_site_id": [None, None, None, None],
            "visit_source_value": ["v100", "v101", "v200", "v400"],
            "visit_source_concept_id": [0, 0, 0, 0],
            "admitted_from_concept_id": [0, 0, 0, 0],
            "admitted_from_source_value": [None, None, None, None],
            "discharged_to_concept_id": [0, 0, 0, 0],
            "discharged_to_source_value": [None, None, None, None],
            "preceding_visit_occurrence_id": [None, 100, None, None],
        }
    )
    condition_occurrence = pd.DataFrame(
        {
            "condition_occurrence_id": [1, 2, 3, 4, 5, 6, 7],
            "person_id": [1, 1, 1, 1, 2, 3, 1],
            "condition_concept_id": [201826, 320128, 201826, 0, 320128, 4329847, 320128],
            "condition_start_date": [
                "2020-01-10",
                "2020-01-10",
                "2021-06-01",
                "2021-06-01",
                "2019-05-05",
                "2022-03-03",
                "2020-02-02",
            ],
            "condition_start_datetime": [None] * 7,
            "condition_end_date": [None] * 7,
            "condition_end_datetime": [None] * 7,
            "condition_type_concept_id": [32817] * 7,
            "condition_status_concept_id": [0] * 7,
            "stop_reason": [None] * 7,
            "provider_id": [None] * 7,
            "visit_occurrence_id": [100, 100, 101, 101, 200, 300, None],
            "visit_detail_id": [None] * 7,
            "condition_source_value": ["E11.9", "I10", "E11.9", "X", "I10", "I21.9", "I10"],
            "condition_source_concept_id": [0] * 7,
            "condition_status_source_value": [None] * 7,
        }
    ).astype({"visit_occurrence_id": "Int64"})
    procedure_occurrence = pd.DataFrame(
        {
            "procedure_occurrence_id": [1, 2, 3, 4],
            "person_id": [1, 1, 2, 3],
            "procedure_concept_id": [4230911, 4230911, 2108115, 4336464],
            "procedure_date": ["2020-01-10", "2021-06-01", "2019-05-05", "2022-03-02"],
            "procedure_datetime": [None, None, None, "2022-03-02 23:30:00"],
            "procedure_end_date": [None] * 4,
            "procedure_end_datetime": [None] * 4,
            "procedure_type_concept_id": [32817] * 4,
            "modifier_concept_id": [0] * 4,
            "quantity": [1] * 4,
            "provider_id": [None] * 4,
            "visit_occurrence_id": [100, 101, 200, 300],
            "visit_detail_id": [None] * 4,
            "procedure_source_value": ["p1", "p1", "p2", "p3"],
            "procedure_source_concept_id": [0] * 4,
            "modifier_source_value": [None] * 4,
        }
    )
    drug_exposure = pd.DataFrame(
        {
            "drug_exposure_id": [1, 2, 3, 4, 5, 6, 7, 8],
            "person_id": [1, 1, 1, 1, 2, 2, 3, 3],
            "drug_concept_id": [
                40163924,
                19078461,
                40163924,
                0,
                19078461,
                1112807,
                40163924,
                999999,
            ],
            "drug_exposure_start_date": [
                "2020-01-10",
                "2020-01-10",
                "2021-06-01",
                "2021-06-01",
                "2019-05-05",
                "2019-05-05",
                "2022-03-04",
                "2022-03-04",
            ],
            "drug_exposure_start_datetime": [None] * 8,
            "drug_exposure_end_date": ["2020-01-12"] * 8,
            "drug_exposure_end_datetime": [None] * 8,
            "verbatim_end_date": [None] * 8,
            "drug_type_concept_id": [32817] * 8,
            "stop_reason": [None] * 8,
            "refills": [0] * 8,
            "quantity": [30] * 8,
            "days_supply": [30] * 8,
            "sig": [None] * 8,
            "route_concept_id": [4132161] * 8,
            "lot_number": [None] * 8,
            "provider_id": [None] * 8,
            "visit_occurrence_id": [100, 100, 101, 101, 200, 200, 300, 300],
            "visit_detail_id": [None] * 8,
            "drug_source_value": [
                "860975",
                "314076",
                "860975",
                "x",
                "314076",
                "1191",
                "860975",
                "y",
            ],
            "drug_source_concept_id": [0] * 8,
            "route_source_value": ["oral"] * 8,
            "dose_unit_source_value": [None] * 8,
        }
    )
    concepts = [
        (8507, "MALE", "Gender", "Gender", "Gender", "S", "M"),
        (8532, "FEMALE", "Gender", "Gender", "Gender", "S", "F"),
        (8527, "White", "Race", "Race", "Race", "S", "5"),
        (
            38003564,
            "Not Hispanic or Latino",
            "Ethnicity",
            "Ethnicity",
            "Ethnicity",
            "S",
            "Not Hispanic",
        ),
        (
            201826,
            "Type 2 diabetes mellitus",
            "Condition",
            "SNOMED",
            "Clinical Finding",
            "S",
            "44054006",
        ),
        (
            320128,
            'Essential hypertension "primary"',
            "Condition",
            "SNOMED",
            "Clinical Finding",
            "S",
            "59621000",
        ),
        (
            4329847,
            "Myocardial infarction",
            "Condition",
            "SNOMED",
            "Clinical Finding",
            "S",
            "22298006",
        ),
        (4230911, "Insertion of catheter", "Procedure", "SNOMED", "Procedure", "S", "45211000"),
        (2108115, "Electrocardiogram", "Procedure", "CPT4", "CPT4", "S", "93000"),
        (
            4336464,
            "Coronary artery bypass graft",
            "Procedure",
            "SNOMED",
            "Procedure",
            "S",
            "232717009",
        ),
        (
            40163924,
            "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
            "Drug",
            "RxNorm",
            "Clinical Drug",
            "S",
            "860975",
        ),
        (
            19078461,
            "lisinopril 10 MG Oral Tablet",
            "Drug",
            "RxNorm",
            "Clinical Drug",
            "S",
            "314076",
        ),
        (1503297, "metformin", "Drug", "RxNorm", "Ingredient", "S", "6809"),
        (1308216, "lisinopril", "Drug", "RxNorm", "Ingredient", "S", "29046"),
        (1112807, "aspirin", "Drug", "RxNorm", "Ingredient", "S", "1191"),
        (
            21600712,
            "BLOOD GLUCOSE LOWERING DRUGS, EXCL. INSULINS",
            "Drug",
            "ATC",
            "ATC 3rd",
            "C",
            "A10B",
        ),
        (21600713, "Biguanides", "Drug", "ATC", "ATC 4th", "C", "A10BA"),
        (21600711, "DRUGS USED IN DIABETES", "Drug", "ATC", "ATC 2nd", "C", "A10"),
        (21601783, "ACE INHIBITORS, PLAIN", "Drug", "ATC", "ATC 3rd", "C", "C09A"),
        (21600960, "ANTITHROMBOTIC AGENTS", "Drug", "ATC", "ATC 3rd", "C", "B01A"),
        (21604253, "OTHER ANALGESICS AND ANTIPYRETICS", "Drug", "ATC", "ATC 3rd", "C", "N02B"),
    ]
    concept = pd.DataFrame(
        concepts,
        columns=[
            "concept_id",
            "concept_name",
            "domain_id",
            "vocabulary_id",
            "concept_class_id",
            "standard_concept",
            "concept_code",
        ],
    ).assign(valid_start_date="19700101", valid_end_date="20991231", invalid_reason=None)
    links = [
        (1503297, 1503297, 0),
        (1503297, 40163924, 1),
        (21600713, 40163924, 2),
        (21600713, 1503297, 1),
        (21600712, 40163924, 3),
        (21600712, 1503297, 2),
        (21600711, 40163924, 4),
        (1308216, 1308216, 0),
        (1308216, 19078461, 1),
        (21601783, 19078461, 3),
        (21601783, 1308216, 2),
        (1112807, 1112807, 0),
        (21600960, 1112807, 2),
        (21604253, 1112807, 2),
    ]
    concept_ancestor = pd.DataFrame(
        [(a, d, n, n) for a, d, n in links],
        columns=[
            "ancestor_concept_id",
            "descendant_concept_id",
            "min_levels_of_separation",
            "max_levels_of_separation",
        ],
    )
    return {
        "person": person,
        "visit_occurrence": visit_occurrence,
        "condition_occurrence": condition_occurrence,
        "procedure_occurrence": procedure_occurrence,
        "drug_exposure": drug_exposure,
        "concept": concept,
        "concept_ancestor": concept_ancestor,
    }


def write_files(root: Path, frames: dict[str, pd.DataFrame] | None = None) -> Path:
    """As exported: CDM tables as CSV (one gzipped, one upper-case), the vocabulary
    as Athena ships it (CONCEPT.csv, tab-separated, unquoted)."""
    frames = omop_frames() if frames is None else frames
    root.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if name in ("concept", "concept_ancestor"):
            frame.to_csv(root / f"{name.upper()}.csv", sep="\t", index=False, quoting=3)
        elif name == "drug_exposure":
            with gzip.open(root / f"{name}.csv.gz", "wt", encoding="utf-8") as handle:
                frame.to_csv(handle, index=False)
        elif name == "person":
            frame.to_csv(root / "PERSON.csv", index=False)
        else:
            frame.to_csv(root / f"{name}.csv", index=False)
    return root


def typed(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Dates as dates and datetimes as timestamps, as a database holds them."""
    out = {}
    for name, frame in frames.items():
        frame = frame.copy()
        for column in frame.columns:
            if column.endswith("_datetime"):
                frame[column] = pd.to_datetime(frame[column])
            elif column.endswith("_date") and name not in ("concept",):
                frame[column] = pd.to_datetime(frame[column]).dt.date
        out[name] = frame
    return out


def write_sqlite(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        for name, frame in omop_frames().items():
            frame.to_sql(name, connection, index=False)
    return f"sqlite:///{path}"
