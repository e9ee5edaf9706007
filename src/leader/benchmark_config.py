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
    threads: int = option(
        1,
        "torch CPU threads of every model (0 = torch's default); 1 is the student's rule, "
        "fastest for these small models on a few shared cores",
    )
    workers: int = option(
        1,
        "models trained at once, each in its own process (as the pipeline's students); "
        "2 on 2 cores with threads 1",
    )
    average: str = option(
        "sample",
        "metrics averaged per 'sample' (every test sample counts once; LEADER's code, one "
        "sample per patient) or per 'patient' (each patient's samples first: the "
        "GAMENet/SafeDrug line); the same under one sample per patient",
    )
    model_options: list[str] = option(
        factory=list,
        help="MODEL.FIELD=VALUE, a model's config field for this run, e.g. retain.form=paper "
        "or safedrug.ddi_weight=paper (the paper variants; the defaults are the released "
        "code's)",
    )
    resume: bool = option(False, "reuse runs/.../result.json from an earlier run")

    def check(self) -> list[str]:
        problems = []
        if self.workers < 1:
            problems.append(f"workers must be >= 1 (got {self.workers})")
        if self.average not in ("sample", "patient"):
            problems.append(f"average must be 'sample' or 'patient' (got {self.average!r})")
        return problems
