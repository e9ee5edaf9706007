"""The one configuration system: loader, overrides, types, help, generated CLI flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leader import config
from leader.cli import app
from leader.config import Config, TrainConfig, nested, option
from leader.data.store import VisitDataset
from leader.errors import LeaderError
from leader.student.config import StudentConfig
from leader.teacher.config import TeacherConfig


@dataclass
class Inner(Config):
    lr: float = option(1e-3, "learning rate")
    steps: int = option(10, "steps")

    def check(self) -> list[str]:
        return [] if self.steps > 0 else ["steps must be > 0"]


@dataclass
class Outer(Config):
    name: str = option("x", "a name")
    flag: bool = option(False, "a switch")
    layers: list[str] = option(factory=lambda: ["a"], help="layer names")
    maybe: int | None = option(None, "optional number")
    inner: Inner = nested(Inner, "the inner section")


def test_file_then_values_then_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("outer:\n  name: file\n  inner: {lr: 0.5, steps: 3}\nother: 1\n")
    loaded = config.load(
        Outer, path, "outer", ["inner.steps=7", "flag=true"], {"name": "flag", "maybe": 4}
    )
    assert loaded == Outer("flag", True, ["a"], 4, Inner(0.5, 7))


def test_unknown_keys_wrong_types_and_checks_are_errors(tmp_path: Path) -> None:
    with pytest.raises(LeaderError, match=r"unknown key\(s\) nme for Outer"):
        config.from_dict(Outer, {"nme": "y"})
    with pytest.raises(LeaderError, match="inner: steps: expected an integer, got 'many'"):
        config.from_dict(Outer, {"inner": {"steps": "many"}})
    with pytest.raises(LeaderError, match="flag: expected true or false"):
        config.load(Outer, overrides=["flag=maybe"])
    with pytest.raises(LeaderError, match="inner: steps must be > 0"):
        config.load(Outer, overrides=["inner.steps=0"])
    with pytest.raises(LeaderError, match="expected key=value"):
        config.load(Outer, overrides=["steps"])
    with pytest.raises(LeaderError, match="config file not found"):
        config.load(Outer, tmp_path / "missing.yaml")


def test_numbers_are_coerced_where_safe() -> None:
    loaded = config.from_dict(Outer, {"inner": {"lr": 1, "steps": 4.0}, "maybe": None})
    assert loaded.inner.lr == 1.0 and isinstance(loaded.inner.lr, float)
    assert loaded.inner.steps == 4 and loaded.maybe is None
    assert config.from_dict(Inner, {"lr": "1e-4"}).lr == 1e-4  # YAML 1.1 reads 1e-4 as text


def test_replace_reaches_nested_fields() -> None:
    student = config.replace(StudentConfig(), seed=7, epochs=3, alpha=0.0, unrelated=1)
    assert student.train.seed == 7 and student.train.epochs == 3 and student.alpha == 0.0
    with pytest.raises(LeaderError, match="divisible"):
        config.replace(StudentConfig(), heads=5)


def test_describe_gives_every_field_with_its_help() -> None:
    rows = {name: (kind, default, help_) for name, kind, default, help_ in config.describe(Outer)}
    assert rows["inner.lr"] == ("float", 1e-3, "learning rate")
    assert rows["maybe"][0] == "int | None"
    for cls in (TeacherConfig, StudentConfig, TrainConfig):
        assert all(help_ for *_, help_ in config.describe(cls)), cls


def test_yaml_round_trip(tmp_path: Path) -> None:
    student = config.replace(StudentConfig(), lr=0.01, alpha=0.2)
    student.to_yaml(tmp_path / "s.yaml")
    assert StudentConfig.from_yaml(tmp_path / "s.yaml") == student


def test_config_show_prints_resolved_values_with_help(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["config", "show", "student", "--set", "train.lr=0.01"])
    assert result.exit_code == 0, result.output
    assert "train.lr: 0.01  # float. AdamW learning rate" in result.output
    assert "alpha: 0.4  # float." in result.output
    path = tmp_path / "t.yaml"
    path.write_text("teacher:\n  lora_r: 16\n")
    shown = runner.invoke(app, ["config", "show", "teacher", "--file", str(path)])
    assert "lora_r: 16  # int. LoRA rank" in shown.output
    assert "gamenet" in runner.invoke(app, ["config", "list"]).output


def test_every_field_has_a_flag() -> None:
    runner = CliRunner()
    teacher = runner.invoke(app, ["teacher", "train", "--help"], terminal_width=200).output
    for flag in ("--seed", "--lora-r", "--lora-targets", "--warmup-ratio", "--set"):
        assert flag in teacher, flag
    student = runner.invoke(app, ["student", "train", "--help"], terminal_width=200).output
    for flag in ("--alpha", "--epochs", "--threads", "--no-align", "--set"):
        assert flag in student, flag


def test_student_flags_and_set_reach_the_config(
    tmp_path: Path, tiny_dataset: VisitDataset
) -> None:
    dataset = tiny_dataset.path
    out = tmp_path / "run"
    args = ["student", "train", "--dataset", str(dataset), "--out", str(out), "--epochs", "1"]
    args += ["--dim", "16", "--heads", "2", "--ffn", "32", "--set", "train.batch_size=4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = StudentConfig.from_yaml(out / "config.yaml")
    assert saved.train.epochs == 1 and saved.train.batch_size == 4 and saved.dim == 16


def test_configs_and_the_cli_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, leader.cli, leader.student, leader.teacher;"
        "from leader.student import StudentConfig; from leader.teacher import TeacherConfig;"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
