"""LR and ECC: scikit-learn estimators over the current visit's multi-hot codes.

The two classical baselines of the GAMENet / SafeDrug / LEADER tables:

- **LR**: one L2-regularised logistic regression per drug (binary relevance) on the
  multi-hot diagnoses + procedures of the current visit.
- **ECC**: an ensemble of classifier chains (Read et al., "Classifier chains for
  multi-label classification", ECML PKDD 2009): ``chains`` scikit-learn
  ``ClassifierChain(LogisticRegression, order="random")`` with different random orders;
  each chain's logistic regression for drug ``j`` also sees the chain's 0/1 predictions for
  the drugs before ``j``; probabilities are averaged over the chains.

Both read only the current visit, so first-time patients are served like everyone else.

Deviations: a drug with a single class in the training split (never or always prescribed)
gets a constant model (probability 0 or 1) instead of an error from scikit-learn. Learned
coefficients are saved as safetensors (no pickle); ``predict_proba`` after loading computes
exactly what the fitted scikit-learn estimators compute (tested).

>>> model = ECC(ECCConfig(chains=10)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import ClassifierChain

from leader.baselines.base import (
    config_from_dict,
    read_config,
    read_vocab,
    training_samples,
    write_config,
    write_vocab,
)
from leader.baselines.features import current_visit_features
from leader.data.store import Sample, VisitDataset, Vocabulary

CONSTANT_LOGIT = 30.0  # intercept of a drug seen with one class only: probability ~0 or ~1


class SafeLogisticRegression(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """LogisticRegression that accepts a target with one class (a constant model)."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000, solver: str = "liblinear") -> None:
        self.C = C
        self.max_iter = max_iter
        self.solver = solver

    def fit(self, X: np.ndarray, y: np.ndarray) -> SafeLogisticRegression:
        y = np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        if np.unique(y).size < 2:
            self.coef_ = np.zeros((1, X.shape[1]))
            self.intercept_ = np.array(
                [CONSTANT_LOGIT if y.size and y[0] == 1 else -CONSTANT_LOGIT]
            )
            return self
        inner = LogisticRegression(C=self.C, max_iter=self.max_iter, solver=self.solver).fit(X, y)
        self.coef_, self.intercept_ = inner.coef_, inner.intercept_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = _sigmoid(self.decision_function(X))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass
class LRConfig:
    C: float = 1.0  # inverse L2 regularisation strength (scikit-learn's C)
    max_iter: int = 1000  # solver iterations per drug
    solver: str = "liblinear"  # scikit-learn solver; liblinear is ~20x faster than lbfgs here
    seed: int = 42  # unused (the solver is deterministic here); kept for a uniform interface


@dataclass
class ECCConfig:
    chains: int = 10  # classifier chains in the ensemble, each with its own random order
    C: float = 1.0  # inverse L2 regularisation strength of each logistic regression
    max_iter: int = 1000  # solver iterations per drug
    solver: str = "liblinear"  # scikit-learn solver of every logistic regression
    seed: int = 42  # seeds the chains' random orders


class _LinearBase:
    name: ClassVar[str]
    config_class: ClassVar[type[Any]]

    def __init__(self, config: Any | None = None) -> None:
        self.config = config or self.config_class()
        self.vocab_: Vocabulary

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self._tensors().values()))

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self._tensors(), str(out / "model.safetensors"))
        write_config(out, self.name, self.config, {})
        write_vocab(out, self.vocab_)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        config, _ = read_config(directory, cls.name)
        model = cls(config_from_dict(cls.config_class, config, f"{directory}/config.json"))
        model.vocab_ = read_vocab(directory)
        model._load_tensors(load_file(str(Path(directory) / "model.safetensors")))
        return model


class LR(_LinearBase):
    """Binary-relevance logistic regression, one per drug."""

    name: ClassVar[str] = "lr"
    config_class: ClassVar[type[Any]] = LRConfig

    def fit(
        self,
        dataset: VisitDataset,
        run_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Self:
        samples = training_samples(dataset, self.name)
        self.vocab_ = dataset.vocab
        X, Y = current_visit_features(dataset.vocab, samples), dataset.targets(samples)
        models = [
            SafeLogisticRegression(self.config.C, self.config.max_iter, self.config.solver).fit(
                X, Y[:, j]
            )
            for j in range(Y.shape[1])
        ]
        self.coef_ = np.stack([m.coef_[0] for m in models]).astype(np.float64)  # (drugs, F)
        self.intercept_ = np.array([m.intercept_[0] for m in models], dtype=np.float64)
        return self

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        X = current_visit_features(self.vocab_, samples)
        return _sigmoid(X @ self.coef_.T + self.intercept_)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def _load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]


class ECC(_LinearBase):
    """Ensemble of classifier chains with random orders (scikit-learn ClassifierChain)."""

    name: ClassVar[str] = "ecc"
    config_class: ClassVar[type[Any]] = ECCConfig

    def fit(
        self,
        dataset: VisitDataset,
        run_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Self:
        samples = training_samples(dataset, self.name)
        self.vocab_ = dataset.vocab
        X, Y = current_visit_features(dataset.vocab, samples), dataset.targets(samples)
        rng = np.random.default_rng(self.config.seed)
        self.chains_: list[ClassifierChain] = []
        for _ in range(self.config.chains):
            chain = ClassifierChain(
                SafeLogisticRegression(self.config.C, self.config.max_iter, self.config.solver),
                order="random",
                random_state=int(rng.integers(2**31 - 1)),
            )
            self.chains_.append(chain.fit(X, Y.astype(int)))
        # Saved form: per chain its order and, per position, the weights over
        # [features, predictions of the earlier drugs of the chain] (zero-padded).
        width = X.shape[1] + Y.shape[1]
        self.orders_ = np.stack([c.order_ for c in self.chains_]).astype(np.int64)
        self.coef_ = np.zeros((len(self.chains_), Y.shape[1], width))
        self.intercept_ = np.zeros((len(self.chains_), Y.shape[1]))
        for c, chain in enumerate(self.chains_):
            for position, estimator in enumerate(chain.estimators_):
                weights = estimator.coef_[0]
                self.coef_[c, position, : weights.size] = weights
                self.intercept_[c, position] = estimator.intercept_[0]
        self.features_ = X.shape[1]
        return self

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        X = current_visit_features(self.vocab_, samples)
        drugs = self.orders_.shape[1]
        total = np.zeros((len(samples), drugs))
        for order, coef, intercept in zip(self.orders_, self.coef_, self.intercept_, strict=True):
            chained = np.zeros((len(samples), drugs))  # 0/1 predictions along the chain
            for position in range(drugs):
                inputs = np.hstack([X, chained[:, :position]])
                decision = inputs @ coef[position, : inputs.shape[1]] + intercept[position]
                total[:, order[position]] += _sigmoid(decision)
                chained[:, position] = (decision > 0).astype(float)
        return total / len(self.orders_)

    def num_parameters(self) -> int:
        """Weights actually used (the saved coefficients are zero-padded per position)."""
        chains, drugs, width = self.coef_.shape
        features = width - drugs
        return int(chains * (drugs * (features + 1) + drugs * (drugs - 1) // 2))

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"orders": self.orders_, "coef": self.coef_, "intercept": self.intercept_}

    def _load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.orders_, self.coef_ = tensors["orders"], tensors["coef"]
        self.intercept_ = tensors["intercept"]
