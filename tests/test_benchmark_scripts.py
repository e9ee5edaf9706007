"""benchmarks/teacher_curve.py end to end on a tiny backbone: every control row is made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_dataset
from leader.teacher.prompts import PromptBuilder, PromptConfig
from leader.teacher.testing import make_tiny_backbone

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_teacher_curve_trains_every_control(tmp_path: Path) -> None:
    dataset = make_tiny_dataset()
    data = dataset.save(tmp_path / "tiny")
    samples = dataset.samples(None, "all")
    texts = PromptBuilder(dataset.vocab).build_all(samples)
    texts += PromptBuilder(dataset.vocab, PromptConfig(code_names=False)).build_all(samples)
    backbone = make_tiny_backbone(tmp_path / "tiny-llama", texts)
    teacher = {
        "model": str(backbone), "lora_r": 0, "pooling": "labels", "label_width": 8,
        "head_init": "prior", "max_steps": 4, "eval_every": 2, "batch_size": 4,
        "precision": "fp32", "max_tokens": 256,
    }  # fmt: skip
    student = {
        "dim": 16, "heads": 2, "ffn": 32, "distill_grid": ["0.5:2"],
        "train": {"epochs": 2, "batch_size": 4, "patience": 5},
    }  # fmt: skip
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher), encoding="utf-8")
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"student": student}), encoding="utf-8")
    out = tmp_path / "curve"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "teacher_curve.py"), "--dataset", str(data),
        "--out", str(out), "--teacher", f"t={tmp_path / 'teacher.yaml'}",
        "--student-config", str(tmp_path / "student.yaml"), "--seeds", "42", "43",
        "--no-pretraining", "1", "2", "--no-words", "1", "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "curve.json").read_text())
    students = result["students"]
    assert result["reference"] == "LEADER(S) from t"
    for row in (
        "LEADER(S) without distillation",
        "LEADER(S) from t",
        "control: self-distillation (the plain student of the same seed as teacher)",
        "control: prior soft labels, t's mean state",
        "control: noise of t's shape, prior soft labels",
        "LEADER(S) from the no pretraining teacher",
        "LEADER(S) from the no words teacher",
    ):
        assert row in students, row
    assert students["LEADER(S) from t"]["runs"] == 2
    assert "paired" in students["LEADER(S) without distillation"]
    assert students["LEADER(S) from the no words teacher"]["runs"] == 1
    assert set(result["teacher_rows"]) == {
        "LEADER(T) t", "LEADER(T) t, no pretraining (control)", "LEADER(T) t, no words (control)",
    }  # fmt: skip
    assert result["teacher_rows"]["LEADER(T) t, no pretraining (control)"]["runs"] == 2
    nopre = json.loads((out / "teachers" / "t-nopre-seed1" / "run" / "teacher.json").read_text())
    assert nopre["config"]["backbone_init"] == "random" and nopre["config"]["seed"] == 1
    assert "minus LEADER(S), paired" in (out / "curve.md").read_text()
