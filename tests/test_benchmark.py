"""``leader benchmark``: the results folder, failures reported, LEADER(T) from a file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from leader.benchmark import BenchmarkConfig, _pooled, resolve_models, run_benchmark
from leader.data.store import VisitDataset
from leader.errors import LeaderError


def test_results_folder_with_a_failing_model(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    config = BenchmarkConfig(
        models=["popularity,previous_visit,lr,retain,safedrug"], seeds=2, epochs=2, threads=1
    )
    table = run_benchmark(tiny_dataset.path, out, config, log=lambda _: None)
    for name in ("results.md", "results.csv", "results.json", "prauc.png", "jaccard_ddi.png"):
        assert (out / name).stat().st_size > 0, name
    # SafeDrug has no --smiles: reported as failed with the reason, the others still ran.
    assert table["safedrug"]["status"] == "failed"
    assert "--smiles" in table["safedrug"]["reason"]
    assert all(table[n]["status"] == "ok" for n in ("popularity", "previous_visit", "lr", "retain"))
    markdown = (out / "results.md").read_text()
    assert "## Failed" in markdown and "safedrug" in markdown
    for title in ("All test samples", "Single-visit", "Multi-visit"):
        assert title in markdown
    rows = list(csv.DictReader((out / "results.csv").open()))
    ok_rows = [r for r in rows if r["status"] == "ok"]
    assert {(r["model"], r["group"]) for r in ok_rows} >= {
        ("retain", "all"),
        ("retain", "single_visit"),
        ("retain", "multi_visit"),
    }
    assert int(next(r for r in ok_rows if r["group"] == "all")["samples"]) == 2
    assert table["retain"]["seeds"] == [42, 43]
    assert table["retain"]["parameters"] > 0 and table["retain"]["patients_per_second"] > 0
    # Previous visit on p2:v5 repeats v4 (m4, m5) against truth {m4}: Jaccard 0.5.
    multi = table["previous_visit"]["groups"]["multi_visit"]
    assert multi["jaccard"]["mean"] == pytest.approx(0.5) and multi["samples"] == 1
    saved = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in saved["runs"]} == {
        "popularity",
        "previous_visit",
        "lr",
        "retain",
        "safedrug",
    }
    # Resume reuses finished runs (same numbers, nothing retrained).
    again = run_benchmark(
        tiny_dataset.path,
        out,
        BenchmarkConfig(models=["retain"], seeds=2, epochs=2, resume=True),
        log=lambda _: None,
    )
    assert again["retain"]["groups"]["all"] == table["retain"]["groups"]["all"]


def test_teacher_scored_from_features_file(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    samples = tiny_dataset.samples(None)
    features = tmp_path / "teacher.safetensors"
    metadata = {
        "sample_ids": json.dumps([s.sample_id for s in samples]),
        "splits": json.dumps(["x"] * len(samples)),
    }
    save_file({"probabilities": tiny_dataset.targets(samples)}, str(features), metadata)
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(features), seeds=3)
    table = run_benchmark(tiny_dataset.path, tmp_path / "b", config, log=lambda _: None)
    assert table["leader_t"]["status"] == "ok"
    assert table["leader_t"]["seeds"] == [42]  # a file has no seed to vary
    assert table["leader_t"]["patients_per_second"] is None  # nothing ran: not measured
    assert table["leader_t"]["groups"]["all"]["prauc"]["mean"] == pytest.approx(1.0)
    # Columns follow the file's medication_codes: reversed codes, reversed columns.
    codes = tiny_dataset.vocab.codes["medication"]
    reversed_file = tmp_path / "reversed.safetensors"
    save_file(
        {"probabilities": tiny_dataset.targets(samples)[:, ::-1].copy()},
        str(reversed_file),
        {**metadata, "medication_codes": json.dumps(codes[::-1])},
    )
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(reversed_file))
    table = run_benchmark(tiny_dataset.path, tmp_path / "r", config, log=lambda _: None)
    assert table["leader_t"]["groups"]["all"]["prauc"]["mean"] == pytest.approx(1.0)
    # A file without the test samples: failed, naming what is missing.
    partial = tmp_path / "partial.safetensors"
    save_file(
        {"probabilities": tiny_dataset.targets(samples[:2])},
        str(partial),
        {"sample_ids": json.dumps([s.sample_id for s in samples[:2]])},
    )
    config = BenchmarkConfig(models=["leader_t"], teacher_features=str(partial))
    table = run_benchmark(tiny_dataset.path, tmp_path / "c", config, log=lambda _: None)
    assert table["leader_t"]["status"] == "failed"
    assert "2 of 2 test samples have no teacher row" in table["leader_t"]["reason"]


def test_student_runs_in_the_benchmark(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    pytest.importorskip("leader.student")
    config = BenchmarkConfig(models=["leader_s"], seeds=1, epochs=1, threads=1)
    table = run_benchmark(tiny_dataset.path, tmp_path / "s", config, log=lambda _: None)
    assert table["leader_s"]["status"] == "ok", table["leader_s"]
    run = tmp_path / "s" / "runs" / "leader_s" / "seed42" / "model"
    # Evaluating the saved run gives the same numbers as training it.
    config = BenchmarkConfig(models=["leader_s"], student_run=str(run))
    again = run_benchmark(tiny_dataset.path, tmp_path / "t", config, log=lambda _: None)
    assert again["leader_s"]["groups"]["all"] == table["leader_s"]["groups"]["all"]


def test_pooled_std_over_seeds_and_rounds() -> None:
    values = [np.array([0.1, 0.3, 0.2]), np.array([0.5, 0.6, 0.7])]
    runs = [
        {"groups": {"all": {"rounds": {"prauc": {"mean": v.mean(), "std": v.std()}}}}}
        for v in values
    ]
    pooled = _pooled(runs, "all", "prauc")
    assert pooled is not None
    everything = np.concatenate(values)
    assert pooled["mean"] == pytest.approx(everything.mean())
    assert pooled["std"] == pytest.approx(everything.std())


def test_model_names() -> None:
    assert resolve_models(["LR, retain", "lr"]) == ["lr", "retain"]
    assert "leader_s" in resolve_models(["all"]) and "molerec" in resolve_models(["all"])
    with pytest.raises(LeaderError, match="unknown model 'gpt'"):
        resolve_models(["gpt"])


def test_cli(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.cli import app

    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--dataset",
            str(tiny_dataset.path),
            "--models",
            "popularity",
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "popularity seed 42: PRAUC" in result.output
    assert (tmp_path / "cli" / "results.md").exists()
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
