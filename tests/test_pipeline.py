"""`leader run`: the step cache, --from, the report folder; one slow end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_dataset
from leader.errors import LeaderError
from leader.pipeline import load_config, run_pipeline

FAST_TRAIN = {"epochs": 1, "batch_size": 4, "patience": 5}
FAST_STUDENT = {"dim": 16, "heads": 2, "ffn": 32, "train": FAST_TRAIN}


def _write_config(path: Path, data: dict[str, object], **student: object) -> Path:
    config = {
        "name": "test",
        "data": data,
        "teacher": None,
        "student": {**FAST_STUDENT, "train": {**FAST_TRAIN, **student}},
        "evaluate": {"rounds": 2, "efficiency": False},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _reused(root: Path) -> dict[str, bool]:
    steps = json.loads((root / "run.json").read_text())["steps"]
    return {name: record["reused"] for name, record in steps.items()}


def test_step_cache_reuses_and_redoes_what_changed(tmp_path: Path) -> None:
    dataset = make_tiny_dataset().save(tmp_path / "tiny")
    out = tmp_path / "out"
    config_file = _write_config(tmp_path / "run.yaml", {"source": "dataset", "path": "tiny"})
    logs: list[str] = []
    run_pipeline(load_config(config_file), out=out, log=logs.append)
    first = _reused(out)
    assert list(first) == [
        "prepare",
        "student_no_distill",
        "student",
        "popularity",
        "evaluate",
        "report",
    ]
    assert not any(first.values())
    report = (out / "report" / "report.md").read_text()
    assert "| LEADER(S) (all) |" in report and "| Popularity (multi-visit) |" in report
    assert "LEADER(S) w/o distillation" in report
    for plot in ("training_curves.png", "metrics.png", "jaccard_ddi.png"):
        assert (out / "report" / plot).stat().st_size > 1000
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["summary"]) == {"student", "student_no_distill", "popularity"}
    marker = (out / "student" / "step.json").stat().st_mtime_ns

    run_pipeline(load_config(config_file), out=out, log=logs.append)
    assert all(_reused(out).values())
    assert (out / "student" / "step.json").stat().st_mtime_ns == marker

    # a changed student value redoes the students and what reads them, nothing else
    _write_config(config_file, {"source": "dataset", "path": "tiny"}, epochs=2)
    run_pipeline(load_config(config_file), out=out, log=logs.append)
    assert _reused(out) == {
        "prepare": True,
        "student": False,
        "student_no_distill": False,
        "popularity": True,
        "evaluate": False,
        "report": False,
    }
    assert len(json.loads((out / "student" / "run" / "metrics.json").read_text())["history"]) == 2

    # --from evaluate redoes evaluate and report only
    run_pipeline(load_config(config_file), out=out, from_step="evaluate", log=logs.append)
    assert [k for k, v in _reused(out).items() if not v] == ["evaluate", "report"]

    # touching an input file of the prepare step redoes everything
    (dataset / "stats.json").write_text((dataset / "stats.json").read_text() + " ")
    run_pipeline(load_config(config_file), out=out, log=logs.append)
    assert not any(_reused(out).values())


def test_config_errors_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"source": "dataset", "path": "x"}, "studnt": {}}))
    with pytest.raises(LeaderError, match="studnt"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"data": {"source": "nowhere"}}))
    with pytest.raises(LeaderError, match="data.source"):
        load_config(bad)
    bad.write_text(
        yaml.safe_dump({"data": {"source": "dataset", "path": "x"}, "student": {"alpah": 1}})
    )
    with pytest.raises(LeaderError, match="alpah"):
        load_config(bad)
    make_tiny_dataset().save(tmp_path / "tiny")
    good = _write_config(tmp_path / "good.yaml", {"source": "dataset", "path": "tiny"})
    with pytest.raises(LeaderError, match="--from"):
        run_pipeline(load_config(good), out=tmp_path / "o", from_step="nope", log=lambda _: None)


def test_packaged_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADER_DATA", "/data")
    monkeypatch.setenv("MIMIC3", "/mimic3")
    monkeypatch.setenv("MIMIC4", "/mimic4")
    monkeypatch.setenv("TEACHER_7B", "/llama")
    from leader.pipeline import demo_config

    demo = demo_config()
    assert demo.data["source"] == "synthetic" and demo.teacher is not None
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("demo", "mimic3-demo", "mimic3-paper", "mimic4-paper"):
        path = root / f"{name}.yaml"
        config = load_config(path)
        assert config.data["source"] in ("synthetic", "events", "mimic3", "mimic4"), path


@pytest.mark.slow
def test_leader_run_end_to_end_with_a_tiny_teacher(tmp_path: Path) -> None:
    """Synthetic cohort -> events -> tiny random Llama teacher -> students -> report."""
    from leader.data.prepare import prepare_events
    from leader.data.synthetic import generate, write
    from leader.teacher.prompts import PromptBuilder
    from leader.teacher.testing import make_tiny_backbone

    raw = write(generate(80, seed=3), tmp_path / "raw")
    probe = prepare_events(
        raw / "events.csv", tmp_path / "probe", profiles=raw / "profiles.csv", ddi=raw / "ddi.csv"
    )
    texts = PromptBuilder(probe.vocab).build_all(probe.samples(None, "all"))
    backbone = make_tiny_backbone(tmp_path / "tiny-llama", texts)
    config = {
        "name": "e2e",
        "data": {
            "source": "events",
            "events": "raw/events.csv",
            "profiles": "raw/profiles.csv",
            "ddi": "raw/ddi.csv",
        },
        "teacher": {
            "model": str(backbone),
            "max_steps": 6,
            "batch_size": 8,
            "eval_every": 3,
            "max_tokens": 256,
            "precision": "fp32",
            "lora_r": 0,  # the demo's teacher: frozen backbone, cached, label attention
            "pooling": "labels",
            "label_width": 8,
            "head_init": "prior",
        },
        "workers": 2,
        "predict": {"batch_size": 32},
        "student": {
            **FAST_STUDENT,
            "distill_grid": ["0.5:2"],
            "train": {**FAST_TRAIN, "epochs": 3},
        },
        "evaluate": {
            "rounds": 3,
            "efficiency": True,
            "teacher_samples": 2,
            "latency_calls": 5,
            "throughput_samples": 200,
        },
    }
    config_file = tmp_path / "e2e.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "leader", "run", "--config", str(config_file), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["summary"]) == {
        "teacher",
        "student",
        "student_no_distill",
        "student_self",
        "student_prior",
        "student_noise",
        "popularity",
    }
    plain_run = out / "student_no_distill" / "run"
    for step, features in (("self", "self"), ("prior", "prior"), ("noise", "noise")):
        run = out / f"student_{step}" / "run"
        search = json.loads((run / "search.json").read_text())
        # the search tried no distillation (the plain student itself) and alpha 0.5, kd 2
        assert [(c["alpha"], c["kd"]) for c in search["candidates"]] == [(0, 0), (0.5, 2)]
        assert search["candidates"][0]["run"] == str(plain_run)
        tried = json.loads((run / "search" / "alpha0.5-kd2" / "metrics.json").read_text())
        assert tried["teacher_features"].endswith(f"{features}.safetensors")
        chosen = max(search["candidates"], key=lambda c: c["best_val_prauc"])
        assert search["chosen"] == {"alpha": chosen["alpha"], "kd": chosen["kd"]}
    assert (out / "teacher" / "features.safetensors").exists()  # from the cache
    assert (out / "student_self" / "self.safetensors").exists()
    student = json.loads((out / "student" / "run" / "metrics.json").read_text())
    assert student["distillation_search"]["candidates"][1]["alpha"] == 0.5
    plain = json.loads((out / "student_no_distill" / "run" / "metrics.json").read_text())
    assert not plain["distillation"]
    assert (out / "report" / "speed.png").exists()
    report = (out / "report" / "report.md").read_text()
    assert "| LEADER(T) (all) |" in report and "as many patients per second" in report
    assert "(control) (all) |" in report and "over distilling the student into itself" in report
    assert "## Distillation weights chosen on validation" in report
    assert results["summary"]["student"]["efficiency"]["throughput_per_s"] > 0


def test_input_paths_from_environment_follow_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leader.pipeline import _input_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEADER_DATA", "shared/data")
    base = tmp_path / "configs"
    assert _input_path("${LEADER_DATA}/x.csv", base, "w") == str(tmp_path / "shared/data/x.csv")
    assert _input_path("data/x.csv", base, "w") == str(base / "data/x.csv")
    monkeypatch.delenv("LEADER_DATA")
    with pytest.raises(LeaderError, match="not set"):
        _input_path("${LEADER_DATA}/x.csv", base, "w")


def test_students_in_parallel_processes_match_a_sequential_run(tmp_path: Path) -> None:
    """``workers: 2`` trains the students two at a time, each in its own process: the same
    models, records in step order, and reuse as before."""
    make_tiny_dataset().save(tmp_path / "tiny")
    config_file = _write_config(tmp_path / "run.yaml", {"source": "dataset", "path": "tiny"})
    sequential = run_pipeline(load_config(config_file), out=tmp_path / "seq", log=print)
    raw = yaml.safe_load(config_file.read_text()) | {"workers": 2}
    config_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    logs: list[str] = []
    parallel = run_pipeline(load_config(config_file), out=tmp_path / "par", log=logs.append)
    assert any("2 at a time" in line for line in logs)
    assert list(_reused(parallel)) == list(_reused(sequential))
    for step in ("student", "student_no_distill"):
        a, b = (
            json.loads((root / step / "run" / "metrics.json").read_text())
            for root in (sequential, parallel)
        )
        losses = [[row["loss"], row["val"]] for row in a["history"]]
        assert losses == [pytest.approx([r["loss"], r["val"]], rel=1e-4) for r in b["history"]]
    run_pipeline(load_config(config_file), out=parallel, log=logs.append)
    assert all(_reused(parallel).values())


def test_worker_jobs_wait_for_the_jobs_they_read() -> None:
    from leader.workers import run_in_processes

    assert run_in_processes(pow, [(2, 3), (3, 2), (2, 2)], 2, after=[[], [0], [0, 1]]) == [8, 9, 4]
    with pytest.raises(ValueError, match="never run"):
        run_in_processes(pow, [(2, 3), (3, 2)], 2, after=[[1], [0]])
