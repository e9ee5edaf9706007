"""What every run folder records, so a reader can trust it later: ``run.json`` and a card.

``run.json`` (the same keys for teacher, student, baseline, benchmark and pipeline runs):
the command, the kind of run, the resolved config, the seed, the dataset (path, split sizes
and checksums of its files), the git revision of the *leader source* (never the user's own
repository), library versions and the device. ``README.md`` is a model card in the manner of
Hugging Face folders: what it is, the data, the metrics with their protocol, intended use,
"not medical advice", the licence.

>>> write_run_info(run_dir, "student", config, seed=42, dataset_dir=data_dir)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from leader.io import write_json_atomic, write_text_atomic

LIBRARIES = ("leader", "numpy", "pandas", "torch", "transformers", "peft", "accelerate")
DATASET_FILES = ("visits.parquet", "splits.json", "vocab.json", "ddi.json", "profiles.parquet")


def write_run_info(
    run_dir: str | os.PathLike[str],
    kind: str,
    config: Any,
    *,
    seed: int | None = None,
    dataset_dir: str | os.PathLike[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``run_dir/run.json`` and return what was written."""
    plain = dataclasses.asdict(config) if _is_instance(config) else config
    info: dict[str, Any] = {
        "kind": kind,
        "command": command_line(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": plain,
        "seed": seed,
        "dataset": dataset_record(Path(dataset_dir)) if dataset_dir is not None else None,
        "git_revision": git_revision(),
        "versions": versions(),
        "device": device(),
    }
    if extra:
        info.update(extra)
    write_json_atomic(Path(run_dir) / "run.json", info)
    return info


def command_line() -> list[str]:
    """The command that started this process (``leader ...`` as the user typed it)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("leader", "__main__.py"):
        argv[0] = "leader"
    return argv


def dataset_record(directory: Path) -> dict[str, Any]:
    """Path, patients per split and SHA-256 of the dataset's files (split included)."""
    record: dict[str, Any] = {"path": str(directory.resolve()), "sha256": {}}
    for name in DATASET_FILES:
        path = directory / name
        if path.is_file():
            record["sha256"][name] = file_sha256(path)
    splits = directory / "splits.json"
    if splits.is_file():
        try:
            data = json.loads(splits.read_text(encoding="utf-8"))
            record["split_patients"] = {k: len(v) for k, v in data.items()}
        except (json.JSONDecodeError, AttributeError, TypeError):
            record["split_patients"] = None
    return record


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def git_revision() -> str:
    """The commit of the leader source tree this code runs from (``+dirty`` with local
    changes), or ``"unknown (installed package)"`` when it does not run from a checkout
    of leader: an installed package inside a user's repository must not record the
    user's HEAD."""
    root = Path(__file__).resolve().parents[2]  # src/leader/runinfo.py -> the repository
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "leader"' not in pyproject.read_text("utf-8"):
        return "unknown (installed package)"
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != root:
            return "unknown (installed package)"
        head = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "src")
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=5, check=False
    )
    if done.returncode != 0:
        raise ValueError(done.stderr.strip())
    return done.stdout.strip()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device() -> dict[str, Any]:
    """The machine: OS, processor, CPU count, and the GPU when torch is loaded and sees one."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    return info


# ----------------------------------------------------------------------------- model card


def write_model_card(
    run_dir: str | os.PathLike[str],
    title: str,
    what: str,
    *,
    data: str,
    metrics: dict[str, float] | None = None,
    protocol: str = "",
) -> None:
    """``run_dir/README.md``: a short model card (Hugging Face style)."""
    lines = [f"# {title}", "", what, "", "## Data", "", data, ""]
    lines += ["## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
        lines += ["", protocol or "Protocol: see metrics.json.", ""]
    else:
        lines += ["No metrics recorded for this run.", ""]
    lines += [
        "## Intended use",
        "",
        "Research on medication recommendation: reproducing and extending LEADER "
        "(Liu et al., arXiv 2402.02803) and comparing recommenders. **Not medical advice and "
        "not a medical device**: never use it to make or change a prescription. A model is only "
        "as good as the cohort it was trained on; check it on your own population first.",
        "",
        "## Files",
        "",
        "`config.json` (model header), weights (safetensors), `vocab.json`, `decision.json` "
        "(threshold and DDI pairs, where present), `run.json` (command, resolved config, seed, "
        "dataset checksums, git revision, library versions, device), `metrics.json`.",
        "",
        "## Licence",
        "",
        "Written by leader (Apache-2.0). The weights derive from the training data: their use "
        "is bound by that data's licence (e.g. the PhysioNet credentialed-access agreement for "
        "MIMIC) and, for a teacher, by its backbone model's licence.",
        "",
    ]
    write_text_atomic(Path(run_dir) / "README.md", "\n".join(lines))


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)
