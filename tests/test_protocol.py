"""The paper's protocol (``leader.protocol``): every rule pinned on hand-written MIMIC tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data.prepare import prepare_mimic3
from leader.data.store import VisitDataset
from leader.errors import LeaderError
from leader.protocol import PAPER_STUDENT, cohort_defaults, paper_cohort

# NDC -> RXCUI -> ATC4 -> ATC3: 1 -> A01A, 2 -> B01A, 3 -> C07A (no SMILES), 9 unmapped.
NDC_TO_RXCUI = {"00000000001": "101", "00000000002": "102", "00000000003": "103", "9": "999"}


@pytest.fixture()
def resources(tmp_path: Path) -> Path:
    root = tmp_path / "resources"
    root.mkdir()
    (root / "ndc2rxnorm_mapping.txt").write_text(
        "{" + ", ".join(f"'{k}': u'{v}'" for k, v in NDC_TO_RXCUI.items()) + "}"
    )
    pd.DataFrame({"RXCUI": ["101", "102", "103"], "ATC4": ["A01AB", "B01AC", "C07AB"]}).to_csv(
        root / "rxcui2atc4.csv", index=False
    )
    # C07A has a row without a SMILES: it counts as having none.
    pd.DataFrame({"atc3": ["A01A", "A01A", "B01A", "C07A"], "smiles": ["C", "CC", "O", ""]}).to_csv(
        root / "atc3_smiles.csv", index=False
    )
    return root


def paper_tables(root: Path) -> Path:
    """Five patients, each showing one rule.

    1: admissions 10, 11 with drugs, diagnoses and procedures: two visits either way.
    2: admissions 20, 21 with drugs; 21 has no procedure: one visit after the join, kept.
    3: admissions 30, 31; only 30 has a prescription: dropped by the paper's rule.
    4: admissions 40, 41 with prescriptions; 41's NDC maps nowhere: counted before the
       mapping, so kept, with one visit.
    5: one admission: dropped by the paper's rule.
    Admission 11 prescribes C07A only besides A01A; admission 50 prescribes C07A alone.
    """
    root.mkdir(parents=True, exist_ok=True)
    admissions = ["10", "11", "20", "21", "30", "31", "40", "41", "50"]
    subjects = ["1", "1", "2", "2", "3", "3", "4", "4", "5"]
    pd.DataFrame(
        {
            "SUBJECT_ID": subjects,
            "HADM_ID": admissions,
            "ADMITTIME": [f"21{i:02d}-01-01 00:00:00" for i in range(len(admissions))],
            "INSURANCE": ["Private"] * 9,
            "LANGUAGE": ["ENGL"] * 9,
            "RELIGION": ["CATHOLIC"] * 9,
            "MARITAL_STATUS": ["MARRIED"] * 9,
            "ETHNICITY": ["WHITE"] * 9,
        }
    ).to_csv(root / "ADMISSIONS.csv", index=False)
    pd.DataFrame(
        {"SUBJECT_ID": list("12345"), "GENDER": list("FMFMF"), "DOB": ["2050-01-01"] * 5}
    ).to_csv(root / "PATIENTS.csv", index=False)
    pd.DataFrame({"HADM_ID": admissions, "SEQ_NUM": [1] * 9, "ICD9_CODE": ["4019"] * 9}).to_csv(
        root / "DIAGNOSES_ICD.csv", index=False
    )
    with_procedure = [a for a in admissions if a != "21"]
    pd.DataFrame(
        {
            "HADM_ID": with_procedure,
            "SEQ_NUM": [1] * len(with_procedure),
            "ICD9_CODE": ["3893"] * len(with_procedure),
        }
    ).to_csv(root / "PROCEDURES_ICD.csv", index=False)
    prescriptions = [
        ("10", "00000000001"),
        ("11", "00000000001"),
        ("11", "00000000003"),
        ("20", "00000000002"),
        ("21", "00000000001"),
        ("30", "00000000001"),
        ("31", "0"),  # NDC 0: not a prescription row that counts
        ("40", "00000000002"),
        ("41", "9"),  # maps nowhere, but the row counts (the rule runs before mapping)
        ("50", "00000000003"),
    ]
    pd.DataFrame(prescriptions, columns=["HADM_ID", "NDC"]).to_csv(
        root / "PRESCRIPTIONS.csv", index=False
    )
    return root


def test_default_protocol_keeps_every_patient_seven_fields_every_drug(
    tmp_path: Path, resources: Path
) -> None:
    ds = prepare_mimic3(paper_tables(tmp_path / "m3"), resources, tmp_path / "out")
    assert sorted(ds.visits["patient_id"].unique()) == ["1", "2", "3", "4", "5"]
    assert [c for c in ds.profiles.columns if c != "patient_id"] == [
        "insurance",
        "language",
        "religion",
        "marital_status",
        "ethnicity",
        "gender",
        "age_band",
    ]
    assert "C07A" in ds.vocab.codes["medication"]


def test_two_admissions_in_the_prescriptions_table_before_the_join(
    tmp_path: Path, resources: Path
) -> None:
    ds = prepare_mimic3(
        paper_tables(tmp_path / "m3"), resources, tmp_path / "out", min_prescribed_admissions=2
    )
    visits = ds.visits.groupby("patient_id")["visit_id"].apply(list).to_dict()
    # 3 (one admission with a usable NDC) and 5 (one admission) are gone; 2 and 4 kept
    # although the join leaves them one visit each.
    assert visits == {"1": ["10", "11"], "2": ["20"], "4": ["40"]}
    assert ds.stats["single_visit_patients"] == 2
    rule = next(s for s in ds.stats["funnel"] if "prescriptions table" in s["rule"])
    assert rule["patients_removed"] == 2 and rule["visits_removed"] == 3


def test_only_drugs_with_a_smiles_after_the_top_k_cut(tmp_path: Path, resources: Path) -> None:
    ds = prepare_mimic3(
        paper_tables(tmp_path / "m3"),
        resources,
        tmp_path / "out",
        require_smiles=str(resources / "atc3_smiles.csv"),
        top_med=2,
    )
    # Top 2 by visits: A01A (4), then B01A and C07A (2 each; B01A by code); C07A would be
    # third anyway, and has no SMILES: the vocabulary is A01A and B01A.
    assert ds.vocab.codes["medication"] == ["A01A", "B01A"]
    assert ds.stats["drugs_without_smiles"] == []
    ds = prepare_mimic3(
        paper_tables(tmp_path / "m3"),
        resources,
        tmp_path / "out2",
        require_smiles=str(resources / "atc3_smiles.csv"),
    )
    assert ds.stats["drugs_without_smiles"] == ["C07A"]
    assert "50" not in set(ds.visits["visit_id"])  # its only drug had no SMILES
    assert ds.visits.set_index("visit_id").loc["11", "medications"] == ["A01A"]
    assert any(p.endswith("atc3_smiles.csv") for p in ds.manifest["inputs"])


def test_five_profile_fields(tmp_path: Path, resources: Path) -> None:
    fields = paper_cohort("mimic3")["profile_fields"]
    ds = prepare_mimic3(
        paper_tables(tmp_path / "m3"), resources, tmp_path / "out", profile_fields=fields
    )
    assert [c for c in ds.profiles.columns if c != "patient_id"] == list(fields)
    with pytest.raises(LeaderError, match="profile field\\(s\\) height not given"):
        prepare_mimic3(
            paper_tables(tmp_path / "m3"), resources, tmp_path / "o3", profile_fields=("height",)
        )


def test_cli_protocol_paper_is_one_switch(tmp_path: Path, resources: Path) -> None:
    data = paper_tables(tmp_path / "m3")
    out = tmp_path / "paper"
    args = ["prepare", "mimic3", "--data", str(data), "--resources", str(resources)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--protocol", "paper"])
    assert result.exit_code == 0, result.output
    ds = VisitDataset.load(out)
    assert sorted(ds.visits["patient_id"].unique()) == ["1", "2", "4"]
    assert "gender" not in ds.profiles.columns and "age_band" not in ds.profiles.columns
    assert "C07A" not in ds.vocab.codes["medication"]
    assert ds.default_sample_mode == "last"
    # A flag given wins over the protocol.
    result = CliRunner().invoke(
        app,
        [*args, "--out", str(tmp_path / "p2"), "--protocol", "paper", "--samples", "all"],
    )
    assert result.exit_code == 0, result.output
    assert VisitDataset.load(tmp_path / "p2").default_sample_mode == "all"
    # Without a SMILES file in the resources: one error line naming what to do.
    (resources / "atc3_smiles.csv").unlink()
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p3"), "--protocol", "paper"])
    assert isinstance(result.exception, LeaderError)  # `leader` prints it as one line, exit 2
    assert "--require-smiles" in str(result.exception)
    with pytest.raises(LeaderError, match="unknown protocol"):
        cohort_defaults("papers", "mimic3", str(resources))


def test_paper_student_and_teacher_scoring(tmp_path: Path) -> None:
    from leader.pipeline import _config_from_dict

    raw = {"protocol": "paper", "data": {"source": "mimic3"}, "teacher": None}
    config = _config_from_dict(raw, "test.yaml")
    assert config.protocol == "paper"
    student = config.student
    assert (student.choose_threshold, student.threshold, student.standardize_teacher) == (
        False,
        0.3,
        False,
    )
    assert not student.choose_distillation  # the paper's fixed alpha
    assert PAPER_STUDENT["threshold"] == 0.3
    # An explicit student option wins over the protocol.
    raw["student"] = {"threshold": 0.4}
    config = _config_from_dict(raw, "test.yaml")
    assert config.student.threshold == 0.4
    with pytest.raises(LeaderError, match="protocol paper needs"):
        _config_from_dict({"protocol": "paper", "data": {"source": "synthetic"}}, "t.yaml")


def test_paper_configs_use_the_paper_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leader.pipeline import load_config

    for variable in ("MIMIC3", "MIMIC4", "LEADER_DATA", "TEACHER_7B"):
        monkeypatch.setenv(variable, str(tmp_path))
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("mimic3-paper.yaml", "mimic4-paper.yaml"):
        config = load_config(root / name)
        assert config.protocol == "paper", name
        assert (config.student.choose_threshold, config.student.threshold) == (False, 0.3)
        assert config.student.standardize_teacher is False


@pytest.mark.slow
def test_paper_pipeline_on_the_mimic3_demo(test_data: Path, tmp_path: Path) -> None:
    """prepare -> students -> popularity -> evaluate under protocol paper (no teacher)."""
    import json

    from leader.pipeline import _config_from_dict, run_pipeline

    resources = test_data / "resources"
    raw = {
        "protocol": "paper",
        "data": {
            "source": "mimic3",
            "data": str(test_data / "mimic-iii-demo"),
            "resources": str(resources),
            "ddi": str(resources / "ddi_atc3_pairs.csv"),
        },
        "teacher": None,
        "student": {"train": {"epochs": 3, "batch_size": 4}},
        "evaluate": {"rounds": 2, "efficiency": False},
    }
    root = run_pipeline(_config_from_dict(raw, "paper.yaml"), out=tmp_path / "run", log=print)
    stats = json.loads((root / "prepare" / "dataset" / "stats.json").read_text())
    assert stats["patients"] == 13 and stats["single_visit_patients"] == 2
    assert stats["drugs_without_smiles"] == ["B03A", "B05A", "D03B", "L03A"]
    student = json.loads((root / "evaluate" / "student.json").read_text())
    assert student["thresholds"]["validation"] == 0.3 and student["threshold_rule"] == "fixed"
    assert student["sample_mode"] == "last"
    popularity = json.loads((root / "evaluate" / "popularity.json").read_text())
    assert popularity["thresholds"]["validation"] == 0.5
