"""The contract every baseline follows, and the small helpers they share for saving.

A recommender is built from a typed dataclass config, learns from a dataset directory and
scores samples::

    model = Popularity(FloorConfig()).fit(dataset)          # returns self
    probabilities = model.predict_proba(samples)           # (samples, drugs) in [0, 1]
    model.save_pretrained("runs/popularity")    # config.json, *.safetensors, vocab.json
    same = Popularity.from_pretrained("runs/popularity")

Probabilities are thresholded by the caller (0.5 by default, DESIGN.md), except for the
models that choose their set themselves (LEAP's and COGNet's decoders, MICRON's set update):
those return their own probabilities from ``predict_proba`` and their set from
``predict_with_sets`` (:func:`scores_and_sets`), as their authors score them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import numpy as np

from leader.data.store import Sample, VisitDataset, Vocabulary, write_json_atomic
from leader.errors import LeaderError
from leader.models import read_header, write_header


@runtime_checkable
class Recommender(Protocol):
    """What ``leader benchmark`` needs from a model."""

    name: ClassVar[str]
    config: Any  # the model's typed config (a dataclass)

    def fit(
        self,
        dataset: VisitDataset,
        run_dir: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> Self: ...

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray: ...

    def save_pretrained(self, directory: str | Path) -> Path: ...

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self: ...

    def num_parameters(self) -> int: ...


ConfigT = TypeVar("ConfigT")


def config_from_dict(cls: type[ConfigT], data: dict[str, Any], source: str) -> ConfigT:
    """Build a dataclass config (the one loader: unknown keys and wrong types are errors)."""
    from leader.config import from_dict

    return from_dict(cls, data, source)


def write_config(directory: Path, name: str, config: Any, meta: dict[str, Any]) -> None:
    """The saved-model header every model writes (:mod:`leader.models`)."""
    write_header(directory, name, config, meta)


def read_config(directory: str | Path, expected: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, meta dict) of a saved model; checks it is the expected model."""
    header = read_header(directory, expected)
    return header.config, header.meta


def write_vocab(directory: Path, vocab: Vocabulary) -> None:
    write_json_atomic(directory / "vocab.json", vocab.to_json())


def read_vocab(directory: str | Path) -> Vocabulary:
    path = Path(directory) / "vocab.json"
    if not path.exists():
        raise LeaderError(f"{path}: missing; the model folder is incomplete, save it again")
    return Vocabulary.from_json(json.loads(path.read_text(encoding="utf-8")))


def training_samples(dataset: VisitDataset, name: str) -> list[Sample]:
    samples = dataset.samples("train")
    if not samples:
        raise LeaderError(f"{name}: the dataset's train split has no samples; check splits.json")
    return samples


def drug_frequency(dataset: VisitDataset, samples: Sequence[Sample]) -> np.ndarray:
    """Share of training samples that received each drug, shape (drugs,)."""
    return dataset.targets(samples).mean(axis=0) if samples else np.zeros(0, np.float32)


def scores_and_sets(model: Any, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray | None]:
    """A model's probabilities (samples, drugs) and, for a model that decodes its own set
    (``predict_with_sets``), that set as booleans; None: the set is a threshold's."""
    method = getattr(model, "predict_with_sets", None)
    if method is None:
        return np.asarray(model.predict_proba(samples), dtype=np.float64), None
    scores, sets = method(samples)
    return np.asarray(scores, dtype=np.float64), None if sets is None else np.asarray(sets)
