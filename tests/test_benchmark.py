"""``leader benchmark``: one protocol for every model, folds, significance, molecules, checks."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from leader.benchmark import BenchmarkConfig, resolve_models, run_benchmark
from leader.data.store import VisitDataset
from leader.errors import LeaderError
from leader.evaluate import fold_splits

QUIET = {"log": lambda _: None}


def test_results_folder_two_rows_per_model_and_statuses(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    config = BenchmarkConfig(
        models=["popularity,previous_visit,lr,retain,safedrug,leader_t"],
        seeds=2,
        epochs=2,
        threads=1,
    )
    table = run_benchmark(tiny_dataset.path, out, config, **QUIET)
    for name in ("results.md", "results.csv", "results.json", "prauc.png", "jaccard_ddi.png"):
        assert (out / name).stat().st_size > 0, name
    # No molecules anywhere: SafeDrug is not run, saying how to give them; nor is LEADER(T).
    assert table["safedrug"]["status"] == "not_run"
    assert "--smiles" in table["safedrug"]["reason"]
    assert table["leader_t"]["status"] == "not_run"
    assert all(table[n]["status"] == "ok" for n in ("popularity", "previous_visit", "lr", "retain"))
    markdown = (out / "results.md").read_text()
    assert "## Not run" in markdown and "retain (form=code)" in markdown
    assert "no teacher features" in markdown
    assert "**Protocol.**" in markdown and "permutation test" in markdown
    for title in ("All test samples", "Single-visit", "Multi-visit"):
        assert title in markdown
    rows = list(csv.DictReader((out / "results.csv").open()))
    ok_rows = [r for r in rows if r["status"] == "ok"]
    # Every model twice per group: at 0.5 and at its validation threshold.
    retain = {(r["group"], r["rule"]) for r in ok_rows if r["model"] == "retain"}
    assert retain == {(g, rule) for g in ("all", "single_visit", "multi_visit")
                      for rule in ("0.5", "validation")}  # fmt: skip
    assert {r["status"] for r in rows} == {"ok", "not run"}
    assert {r["variant"] for r in ok_rows if r["model"] == "retain"} == {"form=code"}
    assert all(r["seeds"] == "2" for r in ok_rows)
    # The validation threshold is chosen on validation Jaccard (a grid value), per model.
    validation = [r for r in ok_rows if r["rule"] == "validation"]
    assert all(0.05 <= float(r["threshold"]) <= 0.95 for r in validation)
    # Exactly one best model per group; the others carry a p-value in [0, 1].
    for group in ("all", "single_visit", "multi_visit"):
        in_group = [r for r in ok_rows if r["group"] == group]
        assert len({r["model"] for r in in_group if r["best"] == "True"}) == 1
        assert all(0 <= float(r["p_prauc_vs_best"]) <= 1 for r in in_group if r["best"] == "False")
    assert table["retain"]["seeds"] == [42, 43]
    assert table["retain"]["parameters"] > 0 and table["retain"]["patients_per_second"] > 0
    # Previous visit on p2:v5 repeats v4 (m4, m5) against truth {m4}: Jaccard 0.5 at 0.5.
    multi = table["previous_visit"]["results"]["at_0.5"]["multi_visit"]
    assert multi["jaccard"]["mean"] == pytest.approx(0.5) and multi["samples"] == 1
    saved = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in saved["runs"]} == {
        "popularity", "previous_visit", "lr", "retain", "safedrug", "leader_t"
    }  # fmt: skip
    # Resume reuses finished runs (same numbers, nothing retrained).
    again = run_benchmark(
        tiny_dataset.path,
        out,
        BenchmarkConfig(models=["retain"], seeds=2, epochs=2, resume=True),
        **QUIET,
    )
    assert again["retain"]["results"] == table["retain"]["results"]


def _features(dataset: VisitDataset, path: Path, **meta: object) -> Path:
    samples = dataset.samples(None)
    split_of = {p: s for s, patients in dataset.splits.items() for p in patients}
    metadata = {
        "sample_ids": json.dumps([s.sample_id for s in samples]),
        "splits": json.dumps([split_of[s.patient_id] for s in samples]),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    save_file({"probabilities": dataset.targets(samples)}, str(path), metadata)
    return path


def test_teacher_scored_from_features_file(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    features = _features(tiny_dataset, tmp_path / "teacher.safetensors")
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(features), seeds=3)
    table = run_benchmark(tiny_dataset.path, tmp_path / "b", config, **QUIET)
    assert table["leader_t"]["status"] == "ok"
    assert table["leader_t"]["seeds"] == [42]  # a file has no seed to vary
    assert table["leader_t"]["patients_per_second"] is None  # nothing ran: not measured
    at_validation = table["leader_t"]["results"]["at_validation"]["all"]
    assert at_validation["prauc"]["mean"] == pytest.approx(1.0)
    assert at_validation["jaccard"]["mean"] == pytest.approx(1.0)  # perfect scores, any t
    # Columns follow the file's medication_codes: reversed codes, reversed columns.
    codes = tiny_dataset.vocab.codes["medication"]
    samples = tiny_dataset.samples(None)
    reversed_file = tmp_path / "reversed.safetensors"
    split_of = {p: s for s, patients in tiny_dataset.splits.items() for p in patients}
    save_file(
        {"probabilities": tiny_dataset.targets(samples)[:, ::-1].copy()},
        str(reversed_file),
        {
            "sample_ids": json.dumps([s.sample_id for s in samples]),
            "splits": json.dumps([split_of[s.patient_id] for s in samples]),
            "medication_codes": json.dumps(codes[::-1]),
        },
    )
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(reversed_file))
    table = run_benchmark(tiny_dataset.path, tmp_path / "r", config, **QUIET)
    assert table["leader_t"]["results"]["at_0.5"]["all"]["prauc"]["mean"] == pytest.approx(1.0)
    # A file without the test samples: failed, naming what is missing.
    partial = tmp_path / "partial.safetensors"
    save_file(
        {"probabilities": tiny_dataset.targets(samples[:2])},
        str(partial),
        {"sample_ids": json.dumps([s.sample_id for s in samples[:2]])},
    )
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(partial))
    table = run_benchmark(tiny_dataset.path, tmp_path / "c", config, **QUIET)
    assert table["leader_t"]["status"] == "failed"
    assert "2 of 2 test samples have no teacher row" in table["leader_t"]["reason"]


def test_teacher_features_of_another_split_or_vocabulary_are_refused(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    assert tiny_dataset.path is not None
    # Predicted when p2 (now test) was a training patient: the teacher has seen it.
    other = replace(tiny_dataset, splits={"train": ["p1", "p2", "p4", "p6"], "val": ["p5"],
                                          "test": ["p3"]}, path=None)  # fmt: skip
    leaky = _features(other, tmp_path / "leaky.safetensors")
    config = BenchmarkConfig(models=["popularity"], teacher_features=str(leaky))
    with pytest.raises(LeaderError, match="another split.*leaks test patients"):
        run_benchmark(tiny_dataset.path, tmp_path / "x", config, **QUIET)
    codes = tiny_dataset.vocab.codes["medication"]
    wrong = _features(tiny_dataset, tmp_path / "w.safetensors", medication_codes=[*codes[:4], "z"])
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(wrong))
    with pytest.raises(LeaderError, match="drug vocabulary .* differs.*1 codes not in the dataset"):
        run_benchmark(tiny_dataset.path, tmp_path / "y", config, **QUIET)


def test_student_runs_over_seeds_and_a_foreign_run_is_refused(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    pytest.importorskip("leader.student")
    config = BenchmarkConfig(models=["leader_s"], seeds=2, epochs=1, threads=1)
    table = run_benchmark(tiny_dataset.path, tmp_path / "s", config, **QUIET)
    assert table["leader_s"]["status"] == "ok", table["leader_s"]
    assert table["leader_s"]["seeds"] == [42, 43]  # as many seeds as the baselines
    run = tmp_path / "s" / "runs" / "leader_s" / "seed42" / "model"
    # Evaluating the saved run gives seed 42's numbers.
    config = BenchmarkConfig(models=["leader_s"], student_run=str(run))
    again = run_benchmark(tiny_dataset.path, tmp_path / "t", config, **QUIET)
    first = json.loads((run.parent / "result.json").read_text())
    assert again["leader_s"]["results"]["at_0.5"]["all"]["prauc"]["mean"] == pytest.approx(
        first["results"]["at_0.5"]["all"]["rounds"]["prauc"]["mean"]
    )
    # The same run against a dataset whose test patient p1 it trained on: refused.
    moved = replace(tiny_dataset, splits={"train": ["p2", "p3", "p4", "p6"], "val": ["p5"],
                                          "test": ["p1"]}, path=None)  # fmt: skip
    moved.save(tmp_path / "moved")
    with pytest.raises(LeaderError, match="test patients were in the run's training"):
        run_benchmark(tmp_path / "moved", tmp_path / "u", config, **QUIET)
    # ... and against another drug vocabulary.
    vocab = json.loads((run / "vocab.json").read_text())
    vocab["medication"]["codes"] = vocab["medication"]["codes"][::-1]
    (run / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(LeaderError, match="same codes in another order"):
        run_benchmark(tiny_dataset.path, tmp_path / "v", config, **QUIET)


def test_folds_test_every_patient_once(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    splits = fold_splits(tiny_dataset, 3)
    patients = sorted(p for s in tiny_dataset.splits.values() for p in s)
    assert sorted(p for fold in splits for p in fold["test"]) == patients
    for fold in splits:
        assert fold["val"] and not set(fold["val"]) & set(fold["train"])
        assert sorted(fold["train"] + fold["val"] + fold["test"]) == patients
    with pytest.raises(LeaderError, match="at least 2"):
        fold_splits(tiny_dataset, 1)
    config = BenchmarkConfig(models=["popularity,lr,leader_t"], seeds=2, folds=3, threads=1)
    table = run_benchmark(tiny_dataset.path, tmp_path / "f", config, **QUIET)
    entry = table["popularity"]
    assert entry["folds"] == [0, 1, 2]
    assert entry["results"]["at_0.5"]["all"]["samples"] == 9  # every visit tested once
    assert len(entry["per_sample"]["sample_ids"]) == 9
    # Cells: mean ± std over folds of each fold's whole test part (seeds averaged).
    runs = [json.loads(p.read_text()) for p in (tmp_path / "f" / "runs" / "popularity").glob(
        "fold*/seed42/result.json")]  # fmt: skip
    values = [r["results"]["at_0.5"]["all"]["metrics"]["jaccard"] for r in runs]
    cell = entry["results"]["at_0.5"]["all"]["jaccard"]
    assert cell["mean"] == pytest.approx(np.mean(values)) and cell["std"] == pytest.approx(
        np.std(values)
    )
    assert table["leader_t"]["status"] == "not_run"
    assert "3-fold cross-validation" in (tmp_path / "f" / "results.md").read_text()


def test_molecules_from_the_dataset_missing_ones_noted(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    pytest.importorskip("rdkit")
    # m5 has no molecule, m4 only an unparsable one.
    tiny_dataset.set_molecules(
        {"m1": ["CCO"], "m2": ["c1ccccc1O"], "m3": ["CC(=O)O"], "m4": ["not a smiles"]},
        "fixture",
    )
    assert VisitDataset.load(tiny_dataset.path).molecules["m1"] == ["CCO"]
    config = BenchmarkConfig(models=["safedrug"], seeds=1, epochs=1, threads=1)
    table = run_benchmark(tiny_dataset.path, tmp_path / "m", config, **QUIET)
    assert table["safedrug"]["status"] == "ok", table["safedrug"]
    markdown = (tmp_path / "m" / "results.md").read_text()
    assert "2 drugs have no parsable SMILES (m4, m5)" in markdown
    strict = replace(config, allow_missing_molecules=False)
    table = run_benchmark(tiny_dataset.path, tmp_path / "n", strict, **QUIET)
    assert table["safedrug"]["status"] == "failed" and "m4, m5" in table["safedrug"]["reason"]


@pytest.mark.slow
def test_demo_prepare_records_molecules_and_safedrug_runs(test_data: Path, tmp_path: Path) -> None:
    """The MIMIC-III demo: ATC3 drugs get the shipped SMILES at prepare; SafeDrug then runs
    without --smiles, its 4 drugs without a parsable molecule named in the notes."""
    pytest.importorskip("rdkit")
    from leader.cli import app

    resources = test_data / "resources"
    result = CliRunner().invoke(
        app,
        ["prepare", "mimic3", "--data", str(test_data / "mimic-iii-demo"),
         "--resources", str(resources), "--out", str(tmp_path / "demo"),
         "--ddi", str(resources / "ddi_atc3_pairs.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    dataset = VisitDataset.load(tmp_path / "demo")
    assert dataset.molecule_source == str(resources / "atc3_smiles.csv")
    assert len(dataset.molecules) == 106 and dataset.vocab.size("medication") == 110
    config = BenchmarkConfig(models=["safedrug"], seeds=1, epochs=1, threads=1)
    table = run_benchmark(tmp_path / "demo", tmp_path / "b", config, **QUIET)
    assert table["safedrug"]["status"] == "ok", table["safedrug"]
    assert "(B03A, B05A, D03B, L03A)" in (tmp_path / "b" / "results.md").read_text()


def test_model_names() -> None:
    assert resolve_models(["LR, retain", "lr"]) == ["lr", "retain"]
    assert "leader_s" in resolve_models(["all"]) and "molerec" in resolve_models(["all"])
    with pytest.raises(LeaderError, match="unknown model 'gpt'"):
        resolve_models(["gpt"])


def test_cli(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.cli import app

    result = CliRunner().invoke(
        app,
        ["benchmark", "--dataset", str(tiny_dataset.path), "--models", "popularity",
         "--seeds", "1", "--folds", "2", "--strict-molecules", "--out", str(tmp_path / "cli")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "popularity fold 1 seed 42: PRAUC" in result.output
    assert (tmp_path / "cli" / "results.md").exists()
    result = CliRunner().invoke(
        app,
        ["benchmark", "--dataset", str(tiny_dataset.path), "--models", "retain", "--seeds", "1",
         "--epochs", "1", "--average", "patient", "--model-options", "retain.form=paper",
         "--out", str(tmp_path / "cli2")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "cli2" / "results.md").read_text()
    assert "retain (form=paper)" in markdown and "averaged per patient first" in markdown
    result = CliRunner().invoke(
        app, ["benchmark", "--dataset", str(tiny_dataset.path), "--models", "nope"]
    )
    assert isinstance(result.exception, LeaderError)


def test_cli_baseline_train(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.baselines import load
    from leader.cli import app

    result = CliRunner().invoke(
        app,
        ["baseline", "train", "--model", "previous-visit", "--dataset", str(tiny_dataset.path),
         "--out", str(tmp_path / "pv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test: prauc" in result.output
    assert load(tmp_path / "pv").predict_proba(tiny_dataset.samples("test")).shape == (2, 5)


def test_cli_baseline_train_reads_the_datasets_molecules(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    pytest.importorskip("rdkit")
    from leader.cli import app

    tiny_dataset.set_molecules({d: ["CCO"] for d in ("m1", "m2", "m3", "m4", "m5")}, "fixture")
    result = CliRunner().invoke(
        app,
        ["baseline", "train", "--model", "safedrug", "--dataset", str(tiny_dataset.path),
         "--out", str(tmp_path / "sd"), "--epochs", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sd" / "molecules.csv").read_text().splitlines()[:2] == [
        "atc3,smiles", "m1,CCO"
    ]  # fmt: skip


def test_decoders_sets_epochs_times_and_variants_in_the_table(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    config = BenchmarkConfig(
        models=["leap,retain"], seeds=1, epochs=3, model_options=["retain.form=paper"]
    )
    table = run_benchmark(tiny_dataset.path, out, config, **QUIET)
    leap = json.loads((out / "runs" / "leap" / "seed42" / "result.json").read_text())
    assert leap["set_rule"] == "decoded" and leap["thresholds"]["default"] is None
    assert 1 <= leap["best_epoch"] <= leap["epochs_run"] <= leap["epoch_cap"] == 3
    assert leap["wall_seconds"] > 0 and leap["cpu_seconds"] > 0 and leap["average"] == "sample"
    assert leap["variant"] == "scores=mean_softmax"
    markdown = (out / "results.md").read_text()
    assert "| leap (scores=mean_softmax) | decoded set |" in markdown
    assert "retain (form=paper)" in markdown and "best epoch" in markdown and "CPU s" in markdown
    assert "reached their cap" in markdown and "the mean softmax" in markdown
    assert table["retain"]["epoch_cap"] == 3 and table["retain"]["set_rule"] == "threshold"
    # An older results folder (no epochs, times, set rule) still aggregates.
    for name in ("leap", "retain"):
        path = out / "runs" / name / "seed42" / "result.json"
        old = json.loads(path.read_text())
        for key in ("best_epoch", "epochs_run", "epoch_cap", "wall_seconds", "cpu_seconds",
                    "set_rule", "variant", "average"):  # fmt: skip
            old.pop(key)
        path.write_text(json.dumps(old))
    again = run_benchmark(
        tiny_dataset.path, out, BenchmarkConfig(models=["leap,retain"], seeds=1, resume=True),
        **QUIET,
    )  # fmt: skip
    assert again["leap"]["best_epoch"] is None and again["leap"]["results"]
    with pytest.raises(LeaderError, match="retain has no option 'shape'"):
        run_benchmark(tiny_dataset.path, out, BenchmarkConfig(model_options=["retain.shape=1"]))


def test_workers_run_models_in_processes_with_the_same_results(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    config = BenchmarkConfig(models=["popularity,lr,retain"], seeds=1, epochs=2)
    one = run_benchmark(tiny_dataset.path, tmp_path / "one", config, **QUIET)
    config.workers = 2
    two = run_benchmark(tiny_dataset.path, tmp_path / "two", config, **QUIET)
    for name in ("popularity", "lr", "retain"):
        assert two[name]["results"] == one[name]["results"], name
    assert list(two) == ["popularity", "lr", "retain"]  # the requested order, not the pool's
