"""`leader prepare`: every rule of the recipe pinned on small hand-written tables."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data.ddi import twosides_pairs
from leader.data.prepare import prepare_events, prepare_mimic3, prepare_mimic4
from leader.data.store import VisitDataset
from leader.errors import LeaderError

# ----------------------------------------------------------------------------- fixtures


def _write(path: Path, frame: pd.DataFrame) -> None:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_csv(path, index=False)


@pytest.fixture()
def resources(tmp_path: Path) -> Path:
    root = tmp_path / "resources"
    root.mkdir()
    mapping = {
        "00000000001": "101",  # -> A01AB (first row) -> A01A
        "00000000002": "102",  # -> B01AC -> B01A
        "00000000003": "103",  # -> C07AB -> C07A
        "00000000004": "104",  # -> N02BE -> N02B
        "00000000005": "",  # unmapped by the chain; the extra map knows it
        "00000000006": "106",  # RXCUI without ATC: unmapped
    }
    (root / "ndc2rxnorm_mapping.txt").write_text(
        "{" + ", ".join(f"'{k}': u'{v}'" for k, v in mapping.items()) + "}"
    )
    pd.DataFrame(
        {
            "RXCUI": ["101", "101", "102", "103", "104"],
            "ATC4": ["A01AB", "Z99ZZ", "B01AC", "C07AB", "N02BE"],
        }
    ).to_csv(root / "rxcui2atc4.csv", index=False)
    pd.DataFrame({"NDC": ["00000000005"], "ATC4": ["A02BC"]}).to_csv(
        root / "extra.csv", index=False
    )
    pd.DataFrame({"atc3_a": ["A01A", "A01A", "X00X"], "atc3_b": ["B01A", "A01A", "A01A"]}).to_csv(
        root / "ddi.csv", index=False
    )
    pd.DataFrame(
        {"atc_code": ["A01A", "B01A"], "atc_name": ["STOMATOLOGICAL PREPARATIONS", "Heparins"]}
    ).to_csv(root / "atc.csv", index=False)
    return root


def mimic3_tables(root: Path, upper: bool = True) -> Path:
    """Patients 1 (two admissions, listed newest first), 2 (one), 3 (no procedure), 4."""
    root.mkdir(parents=True, exist_ok=True)

    def case(frame: pd.DataFrame) -> pd.DataFrame:
        frame.columns = [c.upper() if upper else c for c in frame.columns]
        return frame

    admissions = pd.DataFrame(
        {
            "row_id": [1, 2, 3, 4, 5],
            "subject_id": [1, 1, 2, 3, 4],
            "hadm_id": [11, 10, 20, 30, 40],
            "admittime": [
                "2100-06-01 10:00:00",
                "2100-01-01 10:00:00",
                "2101-01-01 00:00:00",
                "2102-01-01 00:00:00",
                "2103-01-01 00:00:00",
            ],
            "insurance": ["Private", "Medicare", "Medicaid", "Private", "Private"],
            "language": ["ENGL", "ENGL", None, "SPAN", "ENGL"],
            "religion": ["CATHOLIC", "CATHOLIC", "JEWISH", None, "OTHER"],
            "marital_status": ["MARRIED", "MARRIED", "SINGLE", None, "SINGLE"],
            "ethnicity": ["WHITE", "WHITE", "ASIAN", "WHITE", "BLACK"],
        }
    )
    _write(root / "ADMISSIONS.csv", case(admissions))
    patients = pd.DataFrame(
        {
            "subject_id": [1, 2, 3, 4],
            "gender": ["F", "M", "F", "M"],
            "dob": [
                "2040-03-01 00:00:00",
                "1801-01-01 00:00:00",
                "2050-01-01 00:00:00",
                "2070-01-01 00:00:00",
            ],
        }
    )
    _write(root / "PATIENTS.csv.gz", case(patients))
    diagnoses = pd.DataFrame(
        {
            "hadm_id": [10, 10, 10, 10, 11, 20, 20, 30, 40],
            "seq_num": [2, 1, 3, 4, 1, 1, 2, 1, 1],
            "icd9_code": ["4280", "4019", "4019", None, "25000", "4019", "0389", "4019", "9999"],
        }
    )
    _write(root / "DIAGNOSES_ICD.csv", case(diagnoses))
    procedures = pd.DataFrame(
        {
            "hadm_id": [10, 11, 20, 40],
            "seq_num": [1, 1, 1, 1],
            "icd9_code": ["3893", "3893", "9604", "3893"],
        }
    )
    _write(root / "PROCEDURES_ICD.csv", case(procedures))
    prescriptions = pd.DataFrame(
        {
            "hadm_id": [10, 10, 10, 10, 10, 11, 11, 20, 20, 30, 40],
            "ndc": [
                "00000000002",
                "00000000001",
                None,
                "0",
                "00000000002",
                "00000000003",
                "00000000005",
                "00000000001",
                "00000000006",
                "00000000004",
                "00000000004",
            ],
        }
    )
    _write(root / "PRESCRIPTIONS.csv", case(prescriptions))
    names = pd.DataFrame(
        {
            "icd9_code": ["4019", "4280"],
            "short_title": ["Hypertension NOS", "CHF NOS"],
            "long_title": ["Unspecified essential hypertension", "Congestive heart failure"],
        }
    )
    _write(root / "D_ICD_DIAGNOSES.csv", case(names))
    return root


# ----------------------------------------------------------------------------- MIMIC-III rules


def test_mimic3_rules(tmp_path: Path, resources: Path) -> None:
    data = mimic3_tables(tmp_path / "m3")
    ds = prepare_mimic3(
        data,
        resources,
        tmp_path / "out",
        ndc_maps=[resources / "extra.csv"],
        ddi=resources / "ddi.csv",
        atc_names=resources / "atc.csv",
        split=(1, 0, 0),
    )
    ds = VisitDataset.load(tmp_path / "out")
    visits = ds.visits.set_index("visit_id")
    # 1. visits ordered by admittime: hadm 10 (January) before 11 (June) for patient 1.
    assert ds.patient_visits("1")[0].visit_id == "10"
    # 2. de-duplicated, ordered by seq_num; the empty code is dropped and counted.
    assert visits.loc["10", "diagnoses"] == ["4019", "4280"]
    assert ds.stats["diagnosis_rows_empty_code"] == 1
    assert ds.stats["diagnosis_rows_duplicate"] == 1
    # 3. missing / "0" NDCs dropped; first ATC4 row of an RXCUI; ATC3 = 4 characters;
    #    the extra map serves NDC 5; NDC 6 does not map.
    assert visits.loc["10", "medications"] == ["B01A", "A01A"]
    assert visits.loc["11", "medications"] == ["C07A", "A02B"]
    assert ds.stats["prescription_rows_without_ndc"] == 2
    assert ds.stats["prescription_rows_unmapped"] == 1
    assert ds.stats["mapped_share"] == pytest.approx(8 / 9, abs=1e-4)
    # 5. hadm 30 has no procedure: removed, and the funnel says so.
    assert "30" not in visits.index
    rule = next(s for s in ds.stats["funnel"] if s["rule"].startswith("visit has no procedure"))
    assert rule["visits_removed"] == 1 and rule["patients_removed"] == 1
    assert ds.stats["patients"] == 3 and ds.stats["visits"] == 4
    # 8. profile from the first kept admission (hadm 10: Medicare), age bands, 90+ shift.
    assert ds.profile_of("1")["insurance"] == "Medicare"
    assert ds.profile_of("1")["age_band"] == "50-59"
    assert ds.profile_of("2")["age_band"] == "90+"
    assert ds.profile_of("2")["language"] == "unknown"
    # 9. DDI restricted to the vocabulary, self-pairs dropped.
    assert ds.ddi_pairs == [("A01A", "B01A")]
    # 10. names: ICD short titles, ATC names lower-cased when all capitals, else the code.
    assert ds.vocab.name("diagnosis", "4019") == "Hypertension NOS"
    assert ds.vocab.name("diagnosis", "25000") == "25000"
    assert ds.vocab.name("medication", "A01A") == "stomatological preparations"
    assert ds.vocab.name("medication", "B01A") == "Heparins"
    manifest_inputs = ds.manifest["inputs"]
    assert any(p.endswith("ADMISSIONS.csv") for p in manifest_inputs)


def test_mimic3_lower_case_columns_and_top_k_ties(tmp_path: Path, resources: Path) -> None:
    data = mimic3_tables(tmp_path / "m3", upper=False)
    ds = prepare_mimic3(data, resources, tmp_path / "out", top_diag=1, top_med=2)
    # 4. diagnosis 4019 is in 4 visits: the only one kept; drugs: A01A (2 visits) first,
    #    then a tie among B01A, C07A, A02B, N02B (1 visit each) broken by code: A02B.
    assert ds.vocab.codes["diagnosis"] == ["4019"]
    assert set(ds.vocab.codes["medication"]) <= {"A01A", "A02B"}
    assert ds.stats["top_k"]["medication"]["codes_kept"] == 2
    assert all(set(m) <= {"A01A", "A02B"} for m in ds.visits["medications"])


def test_min_visits_and_split(tmp_path: Path, resources: Path) -> None:
    data = mimic3_tables(tmp_path / "m3")
    ds = prepare_mimic3(data, resources, tmp_path / "out", min_visits=2)
    assert ds.stats["patients"] == 1 and ds.stats["visits"] == 2
    with pytest.raises(LeaderError, match="fewer than 3 kept visits"):
        prepare_mimic3(data, resources, tmp_path / "out2", min_visits=3)


def test_split_is_seeded_and_by_patient(tmp_path: Path) -> None:
    from leader.data.cohort import split_patients

    patients = [f"p{i:03d}" for i in range(100)]
    first = split_patients(patients, (0.8, 0.1, 0.1), seed=1)
    assert first == split_patients(list(reversed(patients)), (0.8, 0.1, 0.1), seed=1)
    assert [len(first[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(sum(first.values(), [])) == patients
    assert first != split_patients(patients, (0.8, 0.1, 0.1), seed=2)


# ----------------------------------------------------------------------------- bad input


def test_missing_column_exits_2_with_one_line(tmp_path: Path, resources: Path) -> None:
    data = mimic3_tables(tmp_path / "m3")
    frame = pd.read_csv(data / "PRESCRIPTIONS.csv").drop(columns="NDC")
    frame.to_csv(data / "PRESCRIPTIONS.csv", index=False)
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "mimic3",
            "--data",
            str(data),
            "--resources",
            str(resources),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2 or isinstance(result.exception, LeaderError)
    message = str(result.exception) if result.exception else result.output
    assert "PRESCRIPTIONS.csv: column 'ndc' missing (found: HADM_ID" in message


def test_cli_error_is_one_line(tmp_path: Path, resources: Path) -> None:
    import subprocess
    import sys

    data = mimic3_tables(tmp_path / "m3")
    (data / "PATIENTS.csv.gz").unlink()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "leader",
            "prepare",
            "mimic3",
            "--data",
            str(data),
            "--resources",
            str(resources),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "table PATIENTS not found" in run.stderr and "Traceback" not in run.stderr


def test_non_utf8_and_truncated_files(tmp_path: Path, resources: Path) -> None:
    data = mimic3_tables(tmp_path / "m3")
    raw = (data / "DIAGNOSES_ICD.csv").read_bytes()
    (data / "DIAGNOSES_ICD.csv").write_bytes(raw + "99,1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(LeaderError, match="DIAGNOSES_ICD.csv: cannot be read as CSV"):
        prepare_mimic3(data, resources, tmp_path / "out")
    data = mimic3_tables(tmp_path / "m3b")
    packed = (data / "PATIENTS.csv.gz").read_bytes()
    (data / "PATIENTS.csv.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(LeaderError, match="PATIENTS.csv.gz: cannot be read as CSV"):
        prepare_mimic3(data, resources, tmp_path / "out")


def test_unparseable_dates_are_counted(tmp_path: Path, resources: Path) -> None:
    data = mimic3_tables(tmp_path / "m3")
    frame = pd.read_csv(data / "ADMISSIONS.csv", dtype=str)
    frame.loc[frame["HADM_ID"] == "20", "ADMITTIME"] = "not a date"
    frame.to_csv(data / "ADMISSIONS.csv", index=False)
    ds = prepare_mimic3(data, resources, tmp_path / "out")
    step = next(s for s in ds.stats["funnel"] if "unparseable" in s["rule"])
    assert step["visits_removed"] == 1 and "20" not in set(ds.visits["visit_id"])


# ----------------------------------------------------------------------------- DDI recipe


def test_twosides_recipe_keeps_rarest_side_effects(tmp_path: Path) -> None:
    ddi = pd.DataFrame(
        {
            "STITCH 1": ["CID1", "CID1", "CID3", "CID1", "CID2"],
            "STITCH 2": ["CID2", "CID3", "CID4", "CID4", "CID3"],
            "Polypharmacy Side Effect": ["C1", "C1", "C1", "C2", "C3"],
            "Side Effect Name": ["common", "common", "common", "rare", "rarer"],
        }
    )
    ddi.to_csv(tmp_path / "drug-DDI.csv", index=False)
    (tmp_path / "drug-atc.csv").write_text(
        "CID1,A01AB01,B01AC06\nCID2,C07AB02\nCID3,N02BE01\nCID4,A01AD05\n"
    )
    pairs = twosides_pairs(tmp_path / "drug-DDI.csv", tmp_path / "drug-atc.csv", top=2)
    # "common" (3 pairs) is dropped; rare: CID1-CID4 -> (A01A,A01A) self-pair skipped,
    # (A01A,B01A); rarer: CID2-CID3 -> (C07A,N02B).
    assert pairs == [("A01A", "B01A"), ("C07A", "N02B")]


# ----------------------------------------------------------------------------- MIMIC-IV


def test_mimic4_keeps_icd9_and_icd10_apart(tmp_path: Path, resources: Path) -> None:
    root = tmp_path / "hosp"
    root.mkdir()
    _write(
        root / "admissions.csv.gz",
        pd.DataFrame(
            {
                "subject_id": [1, 1, 2],
                "hadm_id": [10, 11, 20],
                "admittime": ["2150-01-01 00:00:00", "2151-01-01 00:00:00", "2160-05-05 00:00:00"],
                "insurance": ["Medicare", "Medicare", "Other"],
                "language": ["ENGLISH", "ENGLISH", "?"],
                "marital_status": ["WIDOWED", "WIDOWED", None],
                "race": ["WHITE", "WHITE", "ASIAN"],
                "admission_type": ["URGENT", "EW EMER.", "ELECTIVE"],
            }
        ),
    )
    _write(
        root / "patients.csv.gz",
        pd.DataFrame(
            {
                "subject_id": [1, 2],
                "gender": ["F", "M"],
                "anchor_age": [70, 91],
                "anchor_year": [2150, 2160],
            }
        ),
    )
    _write(
        root / "diagnoses_icd.csv.gz",
        pd.DataFrame(
            {
                "subject_id": [1, 1, 1, 2],
                "hadm_id": [10, 10, 11, 20],
                "seq_num": [1, 2, 1, 1],
                # "4280" as ICD-9 (CHF) and, hypothetically, as ICD-10: never merged.
                "icd_code": ["4280", "I10", "4280", "4280"],
                "icd_version": [9, 10, 10, 9],
            }
        ),
    )
    _write(
        root / "procedures_icd.csv.gz",
        pd.DataFrame(
            {
                "subject_id": [1, 1, 2],
                "hadm_id": [10, 11, 20],
                "seq_num": [1, 1, 1],
                "icd_code": ["3893", "02HV33Z", "3893"],
                "icd_version": [9, 10, 9],
            }
        ),
    )
    _write(
        root / "prescriptions.csv.gz",
        pd.DataFrame(
            {
                "subject_id": [1, 1, 2, 2],
                "hadm_id": [10, 11, 20, 20],
                "ndc": ["00000000001", "00000000002", "00000000003", ""],
            }
        ),
    )
    _write(
        root / "d_icd_diagnoses.csv.gz",
        pd.DataFrame(
            {
                "icd_code": ["4280", "I10"],
                "icd_version": [9, 10],
                "long_title": ["Congestive heart failure, unspecified", "Essential hypertension"],
            }
        ),
    )
    ds = prepare_mimic4(root, resources, tmp_path / "out", split=(1, 0, 0))
    codes = ds.vocab.codes["diagnosis"]
    assert set(codes) == {"icd9:4280", "icd10:I10", "icd10:4280"}
    assert ds.vocab.name("diagnosis", "icd9:4280") == "Congestive heart failure, unspecified"
    assert ds.vocab.name("diagnosis", "icd10:4280") == "icd10:4280"
    assert ds.profile_of("1")["age_band"] == "70-79"
    assert ds.profile_of("2")["age_band"] == "90+"
    assert ds.profile_of("2")["marital_status"] == "unknown"
    assert ds.profile_of("1")["race"] == "WHITE"
    assert ds.stats["prescription_rows_without_ndc"] == 1
    # The release folder as downloaded (holding hosp/) works as well as hosp/ itself.
    (tmp_path / "mimic-iv-2.2").mkdir()
    root.rename(tmp_path / "mimic-iv-2.2" / "hosp")
    release = prepare_mimic4(
        tmp_path / "mimic-iv-2.2", resources, tmp_path / "out2", split=(1, 0, 0)
    )
    assert release.visits.drop(columns="time").equals(ds.visits.drop(columns="time"))
    with pytest.raises(LeaderError, match="give the MIMIC-IV release folder"):
        prepare_mimic4(tmp_path, resources, tmp_path / "out3")


# ----------------------------------------------------------------------------- generic events


def test_events_order_names_and_counted_drops(tmp_path: Path) -> None:
    events = pd.DataFrame(
        [
            ("a", "v2", "2020-02-01", "diagnosis", "D1", "Dx one"),
            ("a", "v2", "2020-02-01", "procedure", "P1", None),
            ("a", "v2", "2020-02-01", "medication", "M2", "Drug two"),
            ("a", "v1", "2020-01-01", "diagnosis", "D2", None),
            ("a", "v1", "2020-01-01", "procedure", "P1", None),
            ("a", "v1", "2020-01-01", "medication", "M1", None),
            ("a", "v1", "2020-01-01", "medication", "M1", None),  # duplicate row
            ("a", "v1", "2020-01-01", "lab", "L1", None),  # unknown kind
            ("b", "v3", "someday", "diagnosis", "D1", None),  # unparseable time
            ("b", "v4", "2021-01-01", "diagnosis", "D1", None),
            ("b", "v4", "2021-01-01", "procedure", "P2", None),
            ("b", "v4", "2021-01-01", "medication", "M1", None),
            ("b", "v4", "2021-01-01", "medication", "", None),  # empty code
        ],
        columns=["patient_id", "visit_id", "visit_time", "kind", "code", "name"],
    )
    events.to_parquet(tmp_path / "events.parquet")
    pd.DataFrame({"patient_id": ["a", "b"], "sex": ["F", None], "ward": ["ICU", "CCU"]}).to_csv(
        tmp_path / "profiles.csv", index=False
    )
    ds = prepare_events(
        tmp_path / "events.parquet",
        tmp_path / "out",
        profiles=tmp_path / "profiles.csv",
        split=(1, 0, 0),
    )
    assert [v.visit_id for v in ds.patient_visits("a")] == ["v1", "v2"]
    assert ds.vocab.name("diagnosis", "D1") == "Dx one"
    assert ds.vocab.name("medication", "M1") == "M1"
    assert ds.stats["event_rows_unknown_kind"] == 1
    assert ds.stats["medication_rows_duplicate"] == 1
    assert ds.stats["medication_rows_empty_code"] == 1
    assert next(s for s in ds.stats["funnel"] if "unparseable" in s["rule"])["visits_removed"] == 1
    assert ds.profile_of("b") == {"sex": "unknown", "ward": "CCU"}


# ----------------------------------------------------------------------------- the real demo


@pytest.mark.slow
def test_real_mimic3_demo(test_data: Path, tmp_path: Path) -> None:
    res = test_data / "resources"
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "mimic3",
            "--data",
            str(test_data / "mimic-iii-demo"),
            "--resources",
            str(res),
            "--ddi",
            str(res / "ddi_atc3_pairs.csv"),
            "--atc-names",
            str(res / "atc_names_who_2021-12-03.csv"),
            "--out",
            str(tmp_path / "m3"),
        ],
    )
    assert result.exit_code == 0, result.output
    stats = VisitDataset.load(tmp_path / "m3").stats
    assert stats["funnel"][0] == {"rule": "visits read", "visits": 129, "patients": 100}
    assert (stats["patients"], stats["visits"]) == (82, 107)
    assert (stats["single_visit_patients"], stats["multi_visit_patients"]) == (71, 11)
    assert (stats["diagnosis_codes"], stats["procedure_codes"], stats["medication_codes"]) == (
        523,
        157,
        110,
    )
    assert stats["mean_medications_per_visit"] == pytest.approx(18.9065, abs=1e-3)
    assert stats["prescription_rows"] == 10398
    assert stats["mapped_share"] == pytest.approx(0.8096, abs=1e-4)
    assert stats["ddi_pairs"] == 379
    assert sum(stats["split_patients"].values()) == 82
    assert "Funnel" in result.output and "patients" in result.output
