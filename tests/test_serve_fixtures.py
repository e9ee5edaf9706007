"""A real trained student run, shared by the recommend / serve / browser tests.

Test modules wrap these functions in fixtures. The run is trained once per test session
(a few seconds on the tiny dataset) and cached here, so every module shares it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_dataset

_RUNS: dict[str, Path] = {}


def trained_run(factory: pytest.TempPathFactory) -> Path:
    """A student run trained on the tiny dataset (5 drugs, DDI m1-m4 and m2-m5).

    The tiny dataset directory it was trained on is ``run.parent / "tiny"``.
    """
    if "run" not in _RUNS:
        from leader.config import TrainConfig
        from leader.student import StudentConfig, train_student

        torch.set_num_threads(1)
        root = factory.mktemp("student")
        dataset = make_tiny_dataset().save(root / "tiny")
        train = TrainConfig(epochs=3, batch_size=4, patience=3)
        config = StudentConfig(dim=16, heads=2, ffn=32, hidden=16, train=train)
        _RUNS["run"] = train_student(dataset, root / "run", config)
    return _RUNS["run"]


def eager_copy(factory: pytest.TempPathFactory) -> Path:
    """The same run with threshold 0: every drug is recommended, so both DDI pairs warn."""
    if "eager" not in _RUNS:
        copy = factory.mktemp("eager") / "run"
        shutil.copytree(trained_run(factory), copy)
        decision = json.loads((copy / "decision.json").read_text())
        decision["threshold"] = 0.0
        (copy / "decision.json").write_text(json.dumps(decision))
        _RUNS["eager"] = copy
    return _RUNS["eager"]
