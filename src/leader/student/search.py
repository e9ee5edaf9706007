"""Distillation weights chosen on validation (issue 19): distillation that does not hurt.

Fixed weights tuned on one cohort are not a method: the demo's alpha 0.5 and kd 2 helped
there and cost another real-format dataset up to 0.038 PRAUC. So, by default, a student
given teacher features trains once per ``alpha:kd`` candidate of ``distill_grid`` (no
distillation, ``0:0``, always among them), keeps the one with the best validation PRAUC
(ties go to the earlier candidate, so to less distillation) and records every candidate.
The paper's fixed values are one option away: ``choose_distillation: false``.

The run folder is the chosen candidate's, whole (model, config.yaml with the chosen
weights, metrics.json), plus ``search.json`` and ``search/<candidate>/`` for the others;
``metrics.json`` gains ``distillation_search``.

>>> choose_distillation(Path("data"), Path("runs/s"), StudentConfig(),
...                     Path("features.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from leader.io import write_json_atomic
from leader.logs import run_log
from leader.student.config import StudentConfig

RULE = "the best validation PRAUC (early-stopping score); ties to the earlier candidate"


def candidate_name(alpha: float, kd: float) -> str:
    return f"alpha{alpha:g}-kd{kd:g}"


def choose_distillation(
    dataset_dir: Path,
    out_dir: Path,
    config: StudentConfig,
    teacher_features: Path,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    plain_run: Path | None = None,
) -> Path:
    """Train every candidate (``plain_run``, a finished student without distillation of the
    same config and seed, stands for ``0:0``), copy the best into ``out_dir``; return it."""
    from leader.student.train import train_student

    out_dir = Path(out_dir)
    results: list[dict[str, Any]] = []
    with run_log("student", out_dir / "search", log, append=resume, filename="search.log") as say:
        for alpha, kd in config.candidates():
            folder = out_dir / "search" / candidate_name(alpha, kd)
            plain = alpha == 0 and kd == 0
            if plain and plain_run is not None and (Path(plain_run) / "metrics.json").exists():
                folder = Path(plain_run)
            elif not (folder / "metrics.json").exists():
                say(f"candidate alpha {alpha:g} kd {kd:g}: training")
                fixed = replace(config, alpha=alpha, kd=kd, choose_distillation=False)
                features = None if plain else teacher_features
                train_student(dataset_dir, folder, fixed, features, resume and folder.exists(),
                              log)  # fmt: skip
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            results.append(
                {
                    "alpha": alpha,
                    "kd": kd,
                    "best_val_prauc": metrics["best_val_prauc"],
                    "best_epoch": metrics["best_epoch"],
                    "run": str(folder),
                }
            )
            say(f"candidate alpha {alpha:g} kd {kd:g}: validation PRAUC "
                f"{metrics['best_val_prauc']:.4f} (epoch {metrics['best_epoch']})")  # fmt: skip
        best = max(results, key=lambda r: r["best_val_prauc"])  # first of equals wins
        say(f"chosen: alpha {best['alpha']:g} kd {best['kd']:g} ({RULE})")
    _adopt(Path(best["run"]), out_dir)
    search = {"rule": RULE, "chosen": {k: best[k] for k in ("alpha", "kd")},
              "candidates": results}  # fmt: skip
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics["distillation_search"] = search
    write_json_atomic(out_dir / "search.json", search)
    write_json_atomic(out_dir / "metrics.json", metrics)  # last: marks the run finished
    return out_dir


def _adopt(winner: Path, out_dir: Path) -> None:
    """The winner's files (not its checkpoint) into ``out_dir``; metrics.json last."""
    (out_dir / "metrics.json").unlink(missing_ok=True)
    for item in sorted(winner.iterdir(), key=lambda p: p.name == "metrics.json"):
        if item.is_file():
            shutil.copyfile(item, out_dir / item.name)
