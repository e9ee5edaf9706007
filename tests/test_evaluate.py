"""`leader evaluate`: the keys of its report, thresholds, DDI-safe row, efficiency, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leader.config import replace
from leader.data.store import VisitDataset
from leader.evaluate import evaluate_probabilities, evaluate_run, format_table
from leader.student import StudentConfig, train_student

SMALL = {"epochs": 2, "batch_size": 4, "dim": 16, "heads": 2, "ffn": 32}


def test_evaluate_probabilities_thresholds_groups_and_ddi_safe_row() -> None:
    y_true = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]])
    y_prob = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.4], [0.6, 0.1, 0.3]])
    ddi = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    out = evaluate_probabilities(y_true, y_prob, [False, True, True], ddi, 0.35, n_rounds=3)
    assert out["thresholds"] == {"default": 0.5, "validation": 0.35}
    assert set(out["results"]) == {"at_0.5", "at_validation"}
    groups = out["results"]["at_validation"]
    assert {k: v["samples"] for k, v in groups.items()} == {
        "all": 3,
        "single_visit": 2,
        "multi_visit": 1,
    }
    # at 0.35 the second sample also gets drug 2: recall goes up
    assert groups["all"]["metrics"]["recall"] > out["results"]["at_0.5"]["all"]["metrics"]["recall"]
    # the DDI-safe row drops drug 1 (interacts with drug 0, less probable) from sample 0
    safe = out["ddi_safe"]["metrics"]
    assert safe["ddi_rate"] == 0.0 and groups["all"]["metrics"]["ddi_rate"] > 0
    assert safe["avg_med"] < groups["all"]["metrics"]["avg_med"]


def test_evaluate_run_report_keys(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    assert tiny_dataset.path is not None
    run = train_student(tiny_dataset.path, tmp_path / "run", replace(StudentConfig(), **SMALL))
    report = evaluate_run(run, tiny_dataset.path, n_rounds=3, timing=(5, 50))
    assert {"model", "run", "dataset", "split", "samples", "thresholds", "results"} <= set(report)
    assert report["model"] == "leader_s" and report["samples"] == 2
    assert (
        report["thresholds"]["validation"]
        == json.loads((run / "metrics.json").read_text())["threshold"]
    )
    for key in ("at_0.5", "at_validation"):
        rounds = report["results"][key]["all"]["rounds"]
        assert set(rounds) >= {"prauc", "jaccard", "f1", "ddi_rate", "avg_med"}
        assert set(rounds["prauc"]) == {"mean", "std"}
    efficiency = report["efficiency"]
    assert efficiency["parameters"] > 0 and efficiency["latency_ms"] > 0
    assert efficiency["throughput_per_s"] > 0
    assert "ddi_safe" in report
    assert "leader_s on test" in format_table(report)


def test_evaluate_cli_writes_json(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.cli import app

    assert tiny_dataset.path is not None
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "student",
            "train",
            "--dataset",
            str(tiny_dataset.path),
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--no-align",
        ],
    )
    assert result.exit_code == 0, result.output
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert "align: false" in config
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--run",
            str(tmp_path / "r"),
            "--dataset",
            str(tiny_dataset.path),
            "--no-efficiency",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert "efficiency" not in report and report["split"] == "test"
    # K-fold: the run's student retrained on each fold with its config (not distilled).
    result = runner.invoke(
        app,
        ["evaluate", "--run", str(tmp_path / "r"), "--dataset", str(tiny_dataset.path),
         "--folds", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "evaluation-folds.json").read_text())
    assert report["folds"] == 2 and len(report["per_fold"]) == 2
    assert report["results"]["at_validation"]["all"]["samples"] == 9
    assert "2-fold cross-validation" in result.output


def test_evaluate_folds_of_a_baseline(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.baselines.floors import Popularity
    from leader.evaluate import evaluate_folds

    assert tiny_dataset.path is not None
    Popularity().fit(tiny_dataset).save_pretrained(tmp_path / "pop")
    report = evaluate_folds(tmp_path / "pop", tiny_dataset.path, 3, tmp_path / "work", n_rounds=2)
    tested = [f["test_patients"] for f in report["per_fold"]]
    assert sum(tested) == 6 and len(tested) == 3  # every patient tested once
    folds = [f["results"]["at_0.5"]["all"]["metrics"]["prauc"] for f in report["per_fold"]]
    summary = report["results"]["at_0.5"]["all"]["folds"]["prauc"]
    assert summary["mean"] == pytest.approx(np.mean(folds))
    assert summary["std"] == pytest.approx(np.std(folds))
    table = format_table(report)
    assert table.startswith("popularity on 3-fold cross-validation by patient (9 samples;")
    assert len([line for line in table.splitlines() if "all" in line]) == 2  # 0.5, validation


def test_evaluate_folds_refuses_a_distilled_student(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    from leader.errors import LeaderError
    from leader.evaluate import evaluate_folds

    assert tiny_dataset.path is not None
    run = train_student(tiny_dataset.path, tmp_path / "run", replace(StudentConfig(), **SMALL))
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "distillation": True}))
    with pytest.raises(LeaderError, match="teacher per fold"):
        evaluate_folds(run, tiny_dataset.path, 2, tmp_path / "work")


def test_evaluate_a_saved_baseline(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.baselines.floors import Popularity

    assert tiny_dataset.path is not None
    Popularity().fit(tiny_dataset).save_pretrained(tmp_path / "pop")
    report = evaluate_run(tmp_path / "pop", tiny_dataset.path, efficiency=False, n_rounds=2)
    assert report["model"] == "popularity"
    assert 0.05 <= report["thresholds"]["validation"] <= 0.95


def test_evaluate_errors_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from leader.errors import LeaderError

    with pytest.raises(LeaderError, match="config.json"):
        evaluate_run(tmp_path, tmp_path)


def test_average_patient_means_each_patients_samples_first() -> None:
    """Patient a: two samples, Jaccard 1 and 1; patient b: one sample, Jaccard 0. Per sample:
    2/3; per patient (the authors'): (1 + 0) / 2. DDI rate and #MED stay pooled."""
    from leader.metrics import compute, rounds

    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    prob = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.9, 0.1, 0.1]])
    patients = ["a", "a", "b"]
    by_sample = compute(truth, prob)
    by_patient = compute(truth, prob, patients=patients)
    assert by_sample["jaccard"] == pytest.approx(2 / 3)
    assert by_patient["jaccard"] == pytest.approx(0.5)
    # PRAUC: a's samples 1 and 1; b's drug ties with another at 0.1: 1/3. Patients: (1 + 1/3) / 2
    assert by_patient["prauc"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert by_sample["prauc"] == pytest.approx((1.0 + 1.0 + 1 / 3) / 3)
    assert by_patient["avg_med"] == by_sample["avg_med"] == 1.0
    # Rounds draw patients: 80% of 2 patients is 2, so every round sees the whole set.
    drawn = rounds(truth, prob, n_rounds=3, patients=patients)
    assert drawn["jaccard"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.0)}
    report = evaluate_probabilities(
        truth, prob, [True, False, True], None, 0.5, 2, patients=patients
    )
    assert report["average"] == "patient"
    assert report["results"]["at_0.5"]["all"]["metrics"]["jaccard"] == pytest.approx(0.5)
    # single-visit group: a's first sample (Jaccard 1) and b's (Jaccard 0): 0.5 either way
    assert report["results"]["at_0.5"]["single_visit"]["metrics"]["jaccard"] == pytest.approx(0.5)


def test_a_decoders_own_set_replaces_the_05_rule() -> None:
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    prob = np.array([[0.2, 0.1, 0.3], [0.4, 0.1, 0.0]])  # nothing reaches 0.5
    sets = np.array([[True, False, True], [False, True, False]])
    report = evaluate_probabilities(truth, prob, [False, False], None, 0.25, 2, predicted=sets)
    assert report["set_rule"] == "decoded" and report["thresholds"]["default"] is None
    decoded = report["results"]["at_0.5"]["all"]["metrics"]
    assert decoded["jaccard"] == 1.0 and decoded["avg_med"] == 1.5
    # PRAUC still ranks the probabilities: sample 1: 1; sample 2's drug (0.1) behind 0.4: 1/2
    assert decoded["prauc"] == pytest.approx((1.0 + 1 / 2) / 2)
    # The validation row thresholds the probabilities (0.25): {2} and {0}.
    at_t = report["results"]["at_validation"]["all"]["metrics"]
    assert at_t["jaccard"] == pytest.approx((0.5 + 0.0) / 2)
    assert "decoded set" in format_table({"model": "m", "split": "test", "samples": 2, **report})


def test_evaluate_cli_average_patient(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.baselines.floors import Popularity
    from leader.cli import app

    Popularity().fit(tiny_dataset).save_pretrained(tmp_path / "pop")
    out = tmp_path / "e.json"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--run", str(tmp_path / "pop"), "--dataset", str(tiny_dataset.path),
         "--no-efficiency", "--average", "patient", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["average"] == "patient"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--run", str(tmp_path / "pop"), "--dataset", str(tiny_dataset.path),
         "--no-efficiency", "--average", "visit"],
    )  # fmt: skip
    assert result.exit_code != 0 and "--average" in str(result.exception)
