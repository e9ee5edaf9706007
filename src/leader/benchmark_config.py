"""BenchmarkConfig: every setting of ``leader benchmark`` (a light module: the CLI builds its
flags from these fields without importing the benchmark's dependencies).

>>> BenchmarkConfig().seeds
3
"""

from __future__ import annotations

from dataclasses import dataclass

from leader.config import Config, option


@dataclass
class BenchmarkConfig(Config):
    models: list[str] = option(
        factory=lambda: ["all"],
        help="comma-separated model names, or 'all': popularity, previous_visit, lr, ecc, "
        "retain, leap, gamenet, safedrug, micron, cognet, molerec, leader_s, leader_t",
    )
    seeds: int = option(3, "training seeds per model (42, 43, ...), LEADER(S) included")
    folds: int = option(0, "patient-level K-fold cross-validation (0 = the dataset's split)")
    epochs: int | None = option(None, "override every trained model's epoch limit")
    rounds: int = option(10, "evaluation rounds of a random 80% of the test samples")
    smiles: str | None = option(None, "atc3,smiles CSV (default: the dataset's molecules)")
    allow_missing_molecules: bool = option(
        True,
        "molecule models: drugs without SMILES go without their molecule part (said in the "
        "table's notes), or --strict-molecules: an error",
        flag="--allow-missing-molecules/--strict-molecules",
    )
    teacher_features: str | None = option(None, "LEADER(T) probabilities (+ hidden states)")
    student_run: str | None = option(None, "evaluate this LEADER(S) run instead of training")
    threads: int = option(0, "torch CPU threads (0 = torch's default)")
    resume: bool = option(False, "reuse runs/.../result.json from an earlier run")
