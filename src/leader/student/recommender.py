"""LEADER(S) behind the contract every registered model follows (``leader.baselines.base``).

``fit(dataset)`` runs :func:`leader.student.train.train_student` into a run folder (a
temporary one when none is given), so the student goes through the same
fit/save/load/predict path as every baseline and the registry can run it by name.

>>> model = StudentRecommender(StudentConfig()).fit(dataset, Path("runs/s"))  # doctest: +SKIP
>>> same = StudentRecommender.from_pretrained("runs/s")                     # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from leader.data.store import Sample, VisitDataset, Vocabulary
from leader.errors import LeaderError
from leader.student.model import LeaderStudent, StudentConfig

RUN_FILES = ("config.json", "model.safetensors", "vocab.json", "decision.json")


class StudentRecommender:
    name: ClassVar[str] = "leader_s"
    config_class: ClassVar[type[StudentConfig]] = StudentConfig

    def __init__(
        self, config: StudentConfig | None = None, teacher_features: Path | None = None
    ) -> None:
        self.config = config or StudentConfig()
        self.teacher_features = teacher_features
        self.model_: LeaderStudent | None = None
        self.run_dir_: Path | None = None

    def fit(
        self,
        dataset: VisitDataset,
        run_dir: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> Self:
        from leader.student.train import train_student

        if dataset.path is None:
            raise LeaderError("LEADER(S) trains from a dataset directory on disk (save it first)")
        target = Path(run_dir or tempfile.mkdtemp(prefix="leader_s."))
        train_student(dataset.path, target, self.config, self.teacher_features, log=log)
        self.model_ = LeaderStudent.from_pretrained(target)
        self.run_dir_ = target
        return self

    @property
    def model(self) -> LeaderStudent:
        if self.model_ is None:
            raise LeaderError("LEADER(S) is not fitted: call fit() or from_pretrained() first")
        return self.model_

    @property
    def vocab(self) -> Vocabulary:
        return self.model.vocab

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        return self.model.predict_proba(samples)

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def save_pretrained(self, directory: str | Path) -> Path:
        """The model files, and the run's decision, metrics and records when it has them."""
        target = Path(directory)
        source = self.run_dir_
        if source is not None and source.resolve() == target.resolve():
            return target
        self.model.save_pretrained(target)
        if source is not None:
            for name in ("decision.json", "metrics.json", "run.json", "README.md"):
                if (source / name).exists():
                    shutil.copy2(source / name, target / name)
        return target

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        model = LeaderStudent.from_pretrained(directory)
        loaded = cls(model.config)
        loaded.model_, loaded.run_dir_ = model, Path(directory)
        return loaded
