"""`leader prepare eicu`: the rules on tables written with eICU-CRD v2.0's real columns."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data.prepare import prepare_eicu
from leader.data.store import VisitDataset
from leader.errors import LeaderError


def _write(path: Path, frame: pd.DataFrame) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_csv(path, index=False)


def eicu_tables(root: Path, treatments: bool = True) -> Path:
    """Patient 002-1: three unit stays listed out of order; 002-2: one (age "> 89");
    002-3: one stay without a treatment; a patient row without uniquepid."""
    root.mkdir(parents=True, exist_ok=True)
    patient = pd.DataFrame(
        {
            "patientunitstayid": [103, 101, 201, 102, 301, 401],
            "patienthealthsystemstayid": [11, 10, 20, 10, 30, 40],
            "gender": ["Female", "Female", "Male", "Female", "Male", "Female"],
            "age": ["67", "66", "> 89", "66", "", "50"],
            "ethnicity": ["Caucasian", "Caucasian", "African American", "Caucasian", "", "Asian"],
            "hospitalid": [73, 73, 73, 73, 73, 73],
            "unittype": ["Med-Surg ICU", "MICU", "CCU-CTICU", "MICU", "SICU", "MICU"],
            "hospitaldischargeyear": [2015, 2014, 2014, 2014, 2015, 2014],
            "unitvisitnumber": [1, 1, 1, 2, 1, 1],
            "uniquepid": ["002-1", "002-1", "002-2", "002-1", "002-3", ""],
        }
    )
    diagnosis = pd.DataFrame(
        {
            "diagnosisid": [1, 2, 3, 4, 5, 6, 7, 8],
            "patientunitstayid": [101, 101, 102, 102, 103, 201, 301, 401],
            "activeupondischarge": ["True"] * 8,
            "diagnosisoffset": [10, 20, 5, 6, 7, 8, 9, 10],
            "diagnosisstring": [
                "pulmonary|respiratory failure|acute respiratory failure",
                "renal|disorder of kidney|acute renal failure",
                "cardiovascular|ventricular disorders|congestive heart failure",
                "pulmonary|respiratory failure|acute respiratory failure",
                "pulmonary|respiratory failure|acute respiratory failure|due to sepsis",
                "cardiovascular|s/p CABG",
                "infectious diseases|sepsis",
                "infectious diseases|sepsis",
            ],
            "icd9code": [
                "518.81, J96.00",
                "",
                "428.0, I50.9",
                "J96.00",
                "518.81, J96.00",
                "V45.81, Z95.1",
                "038.9, A41.9",
                "038.9, A41.9",
            ],
            "diagnosispriority": [
                "Primary",
                "Major",
                "Primary",
                "Other",
                "Primary",
                "Primary",
                "Primary",
                "Primary",
            ],
        }
    )
    treatment = pd.DataFrame(
        {
            "treatmentid": [1, 2, 3, 4, 5],
            "patientunitstayid": [101, 101, 102, 103, 201],
            "treatmentoffset": [1, 2, 3, 4, 5],
            "treatmentstring": [
                "pulmonary|ventilation and oxygenation|mechanical ventilation",
                "renal|dialysis|hemodialysis",
                "cardiovascular|shock|vasopressors|norepinephrine > 0.1 micrograms/kg/min",
                "pulmonary|ventilation and oxygenation|mechanical ventilation",
                "cardiovascular|non-operative procedures|diagnostic ultrasound of heart",
            ],
            "activeupondischarge": ["False"] * 5,
        }
    )
    if not treatments:
        treatment = treatment.iloc[0:0]
    medication = pd.DataFrame(
        {
            "medicationid": [1, 2, 3, 4, 5, 6, 7, 8],
            "patientunitstayid": [101, 101, 102, 102, 103, 201, 301, 401],
            "drugorderoffset": [1, 2, 3, 4, 5, 6, 7, 8],
            "drugstartoffset": [1, 2, 3, 4, 5, 6, 7, 8],
            "drugivadmixture": ["No"] * 8,
            "drugordercancelled": ["No", "Yes", "No", "No", "No", "No", "No", "No"],
            "drugname": [
                "SODIUM CHLORIDE 0.9%",
                "MORPHINE SULFATE",
                "ONDANSETRON HCL",
                "HEPARIN SODIUM",
                "SODIUM CHLORIDE 0.9%",
                "ondansetron hcl",
                "SODIUM CHLORIDE 0.9%",
                "SODIUM CHLORIDE 0.9%",
            ],
            "drughiclseqno": ["8255", "1694", "6055", "", "8255", "6055", "8255", "8255"],
            "dosage": ["1000 ml"] * 8,
            "routeadmin": ["IV"] * 8,
            "frequency": ["Q6H"] * 8,
            "loadingdose": [""] * 8,
            "prn": ["No"] * 8,
            "drugstopoffset": [10] * 8,
            "gtc": [0] * 8,
        }
    )
    # File names in any case, plain and gzipped, as users unpack the release.
    _write(root / "patient.csv.gz", patient)
    _write(root / "DIAGNOSIS.csv", diagnosis)
    _write(root / "Treatment.csv", treatment)
    _write(root / "medication.csv.gz", medication)
    return root


def test_eicu_rules(tmp_path: Path) -> None:
    data = eicu_tables(tmp_path / "eicu")
    ds = prepare_eicu(data, tmp_path / "out", split=(1.0, 0.0, 0.0))
    visits = ds.visits.set_index("visit_id")
    # Unit stays ordered by discharge year, health-system stay, unit visit number.
    assert visits.loc[["101", "102", "103"], "time"].tolist() == [0, 1, 2]
    assert visits.loc["201", "time"] == 0
    assert sorted(ds.visits["patient_id"].unique()) == ["002-1", "002-2"]
    assert "301" not in visits.index  # no treatment
    assert visits.loc["101", "diagnoses"] == ["518.81"]  # the empty icd9code row dropped
    assert visits.loc["102", "diagnoses"] == ["428.0"]  # ICD-10-only row dropped
    assert visits.loc["201", "diagnoses"] == ["V45.81"]
    assert visits.loc["101", "medications"] == ["HICL8255"]  # morphine order cancelled
    assert visits.loc["102", "medications"] == ["HICL6055"]  # heparin row has no HICL
    assert visits.loc["101", "procedures"][1] == "renal|dialysis|hemodialysis"
    # Names: the most frequent diagnosisstring / drugname per code.
    assert ds.vocab.name("diagnosis", "518.81") == (
        "pulmonary|respiratory failure|acute respiratory failure"
    )
    assert ds.vocab.name("medication", "HICL6055") in ("ONDANSETRON HCL", "ondansetron hcl")
    assert ds.vocab.name("medication", "HICL8255") == "SODIUM CHLORIDE 0.9%"
    # Profile from the first kept stay: 101 (MICU, 66), and 201 (> 89).
    assert ds.profile_of("002-1") == {
        "gender": "Female",
        "ethnicity": "Caucasian",
        "unit_type": "MICU",
        "age_band": "60-69",
    }
    assert ds.profile_of("002-2")["age_band"] == "90+"
    stats = ds.stats
    assert stats["visit_time_kind"] == "number" and ds.manifest["visit_time_kind"] == "number"
    assert stats["patient_rows_without_uniquepid_or_stay"] == 1
    assert stats["diagnosis_rows_without_icd9code"] == 1
    assert stats["diagnosis_rows_first_code_not_icd9"] == 1
    assert stats["medication_rows_cancelled"] == 1
    assert stats["medication_rows_without_hicl"] == 1
    rules = {step["rule"]: step for step in stats["funnel"]}
    assert rules["visits read"]["visits"] == 5
    assert rules["visit has no procedure (after top-k)"]["visits_removed"] == 1
    # Stored as numbers, read back the same.
    again = VisitDataset.load(tmp_path / "out")
    assert again.visits["time"].dtype.kind == "i"
    assert [v.visit_id for v in again.patient_visits("002-1")] == ["101", "102", "103"]


def test_eicu_drug_map_to_atc3(tmp_path: Path) -> None:
    data = eicu_tables(tmp_path / "eicu")
    drug_map = tmp_path / "map.csv"
    # By HICL for 8255; by name (any case and spacing) for ondansetron; morphine unused.
    pd.DataFrame(
        {
            "hicl": ["8255", "", "1694"],
            "drugname": ["", "Ondansetron  HCL", "MORPHINE SULFATE"],
            "atc3": ["B05B", "A04AA01", "N02A"],
        }
    ).to_csv(drug_map, index=False)
    ddi = tmp_path / "ddi.csv"
    pd.DataFrame({"atc3_a": ["B05B"], "atc3_b": ["A04A"]}).to_csv(ddi, index=False)
    ds = prepare_eicu(data, tmp_path / "out", drug_map=drug_map, ddi=ddi)
    visits = ds.visits.set_index("visit_id")
    assert visits.loc["101", "medications"] == ["B05B"]
    assert visits.loc["102", "medications"] == ["A04A"]
    assert ds.ddi_pairs == [("A04A", "B05B")]
    assert ds.stats["medication_rows_unmapped"] == 0
    assert ds.stats["mapped_share"] == 1.0


def test_eicu_empty_cohort_names_the_rule_and_prints_the_funnel(tmp_path: Path) -> None:
    data = eicu_tables(tmp_path / "eicu", treatments=False)
    with pytest.raises(LeaderError) as error:
        prepare_eicu(data, tmp_path / "out")
    message = str(error.value)
    assert "the rule 'visit has no procedure (after top-k)' removed every remaining visit" in (
        message
    )
    assert "visits read: 5 visits, 3 patients" in message
    assert "visit has no diagnosis (after top-k): -0 visits" in message
    assert "medication (after top-k)" not in message  # the funnel stops at the rule


def test_eicu_cli_and_stats(tmp_path: Path) -> None:
    data = eicu_tables(tmp_path / "eicu")
    runner = CliRunner()
    result = runner.invoke(
        app, ["prepare", "eicu", "--data", str(data), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["stats", str(tmp_path / "out")])
    assert result.exit_code == 0 and "visit_time_kind" in result.output
    assert "number" in result.output


def test_eicu_missing_column_is_named(tmp_path: Path) -> None:
    data = eicu_tables(tmp_path / "eicu")
    frame = pd.read_csv(data / "medication.csv.gz").drop(columns="drugordercancelled")
    _write(data / "medication.csv.gz", frame)
    with pytest.raises(LeaderError, match="medication.csv.gz: column 'drugordercancelled'"):
        prepare_eicu(data, tmp_path / "out")


def test_rows_of_unknown_stays_are_counted(tmp_path: Path) -> None:
    data = eicu_tables(tmp_path / "eicu")
    frame = pd.read_csv(data / "Treatment.csv")
    extra = {"treatmentid": 9, "patientunitstayid": 999, "treatmentstring": "renal|dialysis"}
    frame = pd.concat([frame, pd.DataFrame([extra])], ignore_index=True)  # no such stay
    frame.to_csv(data / "Treatment.csv", index=False)
    ds = prepare_eicu(data, tmp_path / "out")
    assert ds.stats["procedure_rows_outside_read_visits"] == 1
    assert ds.stats["diagnosis_rows_outside_read_visits"] == 1  # stay 401 has no uniquepid
