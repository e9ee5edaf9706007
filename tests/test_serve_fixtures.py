"""A real trained student run, shared by the recommend / serve / browser tests, and the
`leader serve` process the hostile and OpenAPI tests run on it.

Test modules wrap these functions in fixtures. The run is trained once per test session
(a few seconds on the tiny dataset) and cached here, so every module shares it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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
    return _zero_threshold(factory, "eager", trained_run(factory))


def _zero_threshold(factory: pytest.TempPathFactory, key: str, run: Path) -> Path:
    if key not in _RUNS:
        copy = factory.mktemp(key) / "run"
        shutil.copytree(run, copy)
        decision = json.loads((copy / "decision.json").read_text())
        decision["threshold"] = 0.0
        (copy / "decision.json").write_text(json.dumps(decision))
        _RUNS[key] = copy
    return _RUNS[key]


# The tiny dataset with real code systems (ICD-9-CM, ATC level 3), for FHIR and CDS Hooks
# tests whose resources carry real codings. Same visits, splits and DDI pairs.
REAL_CODES = {
    "d1": "4019",  # essential hypertension, unspecified
    "d2": "25000",  # diabetes mellitus type 2
    "d3": "5849",  # acute kidney failure
    "d4": "4280",  # congestive heart failure
    "d5": "42731",  # atrial fibrillation
    "x1": "3893",  # venous catheterization
    "x2": "9604",  # insertion of endotracheal tube
    "x3": "3995",  # hemodialysis
    "m1": "C07A",  # beta blocking agents
    "m2": "A10A",  # insulins and analogues
    "m3": "B01A",  # antithrombotic agents
    "m4": "C03C",  # high-ceiling diuretics
    "m5": "N02B",  # other analgesics and antipyretics
}


def real_coded_run(factory: pytest.TempPathFactory) -> Path:
    """:func:`trained_run` on the tiny dataset recoded by :data:`REAL_CODES` (DDI pairs
    C07A-C03C and A10A-N02B)."""
    if "real" not in _RUNS:
        from leader.config import TrainConfig
        from leader.data.store import Vocabulary
        from leader.student import StudentConfig, train_student

        torch.set_num_threads(1)
        tiny = make_tiny_dataset()
        visits = tiny.visits.copy()
        for column in ("diagnoses", "procedures", "medications"):
            visits[column] = visits[column].map(lambda codes: [REAL_CODES[c] for c in codes])
        tiny.visits = visits
        tiny.vocab = Vocabulary(
            codes={k: [REAL_CODES[c] for c in v] for k, v in tiny.vocab.codes.items()},
            names={
                k: {REAL_CODES[c]: name for c, name in v.items()}
                for k, v in tiny.vocab.names.items()
            },
        )
        tiny.ddi_pairs = [(REAL_CODES[a], REAL_CODES[b]) for a, b in tiny.ddi_pairs]
        root = factory.mktemp("real")
        dataset = tiny.save(root / "tiny")
        train = TrainConfig(epochs=3, batch_size=4, patience=3)
        config = StudentConfig(dim=16, heads=2, ffn=32, hidden=16, train=train)
        _RUNS["real"] = train_student(dataset, root / "run", config)
    return _RUNS["real"]


def real_coded_eager(factory: pytest.TempPathFactory) -> Path:
    """:func:`real_coded_run` with threshold 0: every drug recommended, both pairs interact."""
    return _zero_threshold(factory, "real-eager", real_coded_run(factory))



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@dataclass
class Server:
    """A running `leader serve` process."""

    base: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    idle_rss_kb: int

    def access_log(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(x) for x in lines if x.startswith('{"time"')]


def start_server(run: Path, log: Path, *extra: str, token: str | None) -> Server:
    """``leader serve`` on ``run`` in a subprocess on a free loopback port, once healthy; its
    output (the JSON access log) goes to ``log``. The caller terminates ``server.process``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LEADER_TOKEN"}
    if token:
        env["LEADER_TOKEN"] = token
    command = [sys.executable, "-m", "leader", "serve", "--run", str(run), "--port", str(port)]
    handle = log.open("wb")
    process = subprocess.Popen([*command, *extra], env=env, stdout=handle, stderr=handle)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return Server(base, port, process, log, memory_kb(process.pid)["VmRSS"])
