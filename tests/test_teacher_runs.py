"""Teacher runs as a user starts them: killed with SIGKILL and resumed; two processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leader.data.store import VisitDataset
from leader.teacher import LeaderTeacher, TeacherConfig, train_teacher
from leader.teacher.prompts import PromptBuilder
from leader.teacher.testing import make_tiny_backbone

ENV = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture()
def tiny_backbone(tmp_path: Path, tiny_dataset: VisitDataset) -> Path:
    texts = PromptBuilder(tiny_dataset.vocab).build_all(tiny_dataset.samples(None, "all"))
    return make_tiny_backbone(tmp_path / "tiny-llama", texts)


def _leader(*args: str) -> list[str]:
    return [sys.executable, "-m", "leader", *args]


def _checkpoint_step(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoint" / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def test_resume_after_kill_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    assert tiny_dataset.path is not None
    config = TeacherConfig(
        model=str(tiny_backbone),
        max_steps=60,
        batch_size=2,
        lr=5e-3,
        eval_every=20,
        checkpoint_every=3,
        patience=0,
        log_every=20,
        precision="fp32",
        threads=1,
    )
    config.to_yaml(tmp_path / "config.yaml")
    reference = train_teacher(tiny_dataset.path, tmp_path / "reference", config)

    run = tmp_path / "killed"
    process = subprocess.Popen(
        _leader("teacher", "train", "--dataset", str(tiny_dataset.path), "--out", str(run),
                "--config", str(tmp_path / "config.yaml")),
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _checkpoint_step(run) < 12 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _checkpoint_step(run)
    assert 12 <= killed_at < 60, f"not killed mid-run (checkpoint step {killed_at})"
    assert not (run / "teacher.json").exists()

    with pytest.raises(Exception, match="--resume"):
        train_teacher(tiny_dataset.path, run, config)
    train_teacher(tiny_dataset.path, run, config, resume=True)
    log = (run / "train.log").read_text()
    assert f"resumed from {run / 'checkpoint'} at step {killed_at}" in log

    done, expected = (json.loads((p / "metrics.json").read_text()) for p in (run, reference))
    assert done["steps"] == expected["steps"] == 60
    assert done["history"] == expected["history"]
    for name in ("head.safetensors", "adapter/adapter_model.safetensors"):
        got, want = load_file(run / name), load_file(reference / name)
        assert set(got) == set(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5)
    # resuming a finished run is a no-op
    train_teacher(tiny_dataset.path, run, config, resume=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_processes_write_one_artifact(
    tmp_path: Path, tiny_backbone: Path, tiny_dataset: VisitDataset
) -> None:
    assert tiny_dataset.path is not None
    accelerate = Path(sys.executable).parent / "accelerate"
    run = tmp_path / "run"
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "leader", "teacher", "train", "--dataset", str(tiny_dataset.path),
        "--out", str(run), "--model", str(tiny_backbone), "--max-steps", "4",
        "--batch-size", "2", "--precision", "fp32",
    ]  # fmt: skip
    env = ENV | {"CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 4
    log = (run / "train.log").read_text()
    assert "2 process(es)" in log and log.count("saved the teacher") == 1
    assert "global batch 4" in log
    teacher = LeaderTeacher.from_pretrained(run)
    probabilities = teacher.predict_proba(tiny_dataset.samples("test"))
    assert probabilities.shape == (2, 5)
    assert not (run / "checkpoint").exists()
