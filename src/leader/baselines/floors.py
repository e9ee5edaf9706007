"""Two floors every comparison table needs: popularity and previous visit.

Neither learns from diagnoses. A model that does not beat them on a cohort has learnt
nothing useful there.

- **popularity**: recommends the ``k`` drugs most often prescribed in the training split,
  ``k`` = the mean number of drugs per training visit (rounded, at least 1). Scores rank all
  drugs by training frequency (for PRAUC); the ``>= 0.5`` set is exactly those ``k`` drugs.
- **previous visit**: repeats the medications of the patient's last earlier visit. Drugs of
  that visit score ``0.5 + 0.5 * frequency`` and the others ``0.5 * frequency``, so the
  ``>= 0.5`` set is the previous visit's medications and ties are broken by popularity.
  First-time patients (no earlier visit) get the popularity floor.

>>> model = PreviousVisit().fit(dataset)          # doctest: +SKIP
>>> model.predict_proba(dataset.samples("test"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from safetensors.numpy import load_file, save_file

from leader.baselines.base import (
    config_from_dict,
    drug_frequency,
    read_config,
    read_vocab,
    training_samples,
    write_config,
    write_vocab,
)
from leader.data.store import Sample, VisitDataset, Vocabulary


@dataclass
class FloorConfig:
    seed: int = 42  # unused (the floors are deterministic); kept for a uniform interface


class Popularity:
    """The k most frequent training drugs for everyone."""

    name: ClassVar[str] = "popularity"
    config_class: ClassVar[type[Any]] = FloorConfig

    def __init__(self, config: FloorConfig | None = None) -> None:
        self.config = config or FloorConfig()

    def fit(
        self,
        dataset: VisitDataset,
        run_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Self:
        samples = training_samples(dataset, self.name)
        self.vocab_: Vocabulary = dataset.vocab
        self.frequency_ = drug_frequency(dataset, samples).astype(np.float32)
        mean_size = float(dataset.targets(samples).sum(axis=1).mean())
        self.k_ = max(1, int(round(mean_size)))
        return self

    def _popular_scores(self) -> np.ndarray:
        scores = 0.5 * self.frequency_
        top = np.argsort(-self.frequency_, kind="stable")[: self.k_]
        scores[top] += 0.5
        return scores

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        return np.tile(self._popular_scores(), (len(samples), 1))

    def num_parameters(self) -> int:
        return 0

    def save_pretrained(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"frequency": self.frequency_}, str(out / "model.safetensors"))
        write_config(out, self.name, self.config, {"k": self.k_})
        write_vocab(out, self.vocab_)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        config, meta = read_config(directory, cls.name)
        model = cls(config_from_dict(FloorConfig, config, f"{directory}/config.json"))
        model.vocab_ = read_vocab(directory)
        model.frequency_ = load_file(str(Path(directory) / "model.safetensors"))["frequency"]
        model.k_ = int(meta["k"])
        return model


class PreviousVisit(Popularity):
    """The last earlier visit's medications; popularity for first-time patients."""

    name: ClassVar[str] = "previous_visit"

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        out = np.zeros((len(samples), len(self.frequency_)), dtype=np.float32)
        popular = self._popular_scores()
        for row, sample in enumerate(samples):
            if not sample.history:
                out[row] = popular
                continue
            out[row] = 0.5 * self.frequency_
            out[row, self.vocab_.encode("medication", sample.history[-1].medications)] += 0.5
        return out
