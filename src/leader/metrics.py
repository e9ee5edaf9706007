"""Medication-recommendation metrics, exactly as DESIGN.md defines them.

Pure functions: inputs are never modified, nothing is read from disk.

>>> import numpy as np
>>> y_true = np.array([[1, 0, 1, 0]])
>>> y_prob = np.array([[0.9, 0.2, 0.6, 0.7]])
>>> m = compute(y_true, y_prob)
>>> round(m["jaccard"], 4), round(m["precision"], 4), m["recall"], m["avg_med"]
(0.6667, 0.6667, 1.0, 3.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

METRICS: tuple[str, ...] = ("jaccard", "precision", "recall", "f1", "prauc", "ddi_rate", "avg_med")


def _as_arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true) > 0.5
    prob = np.asarray(y_prob, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != prob.shape:
        raise ValueError(
            f"y_true and y_prob must both be (samples, drugs); got {truth.shape} and {prob.shape}"
        )
    return truth, prob


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one ranking, with scikit-learn's semantics (ties grouped).

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, descending.
    A row without positives scores 0.
    """
    positives = int(truth.sum())
    if positives == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    hits = truth[order].astype(np.float64)
    # The last index of each group of tied scores is where a threshold "closes".
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1]
    tp = np.cumsum(hits)[ends]
    predicted = ends + 1.0
    precision = tp / predicted
    recall = tp / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def ddi_rate(predicted: np.ndarray, ddi: np.ndarray) -> float:
    """Interacting unordered pairs / all unordered pairs, pooled over every predicted set."""
    sets = np.asarray(predicted) > 0.5
    graph = (np.asarray(ddi) > 0).astype(np.float64)
    np.fill_diagonal(graph, 0.0)
    sizes = sets.sum(axis=1).astype(np.float64)
    all_pairs = float(np.sum(sizes * (sizes - 1) / 2))
    if all_pairs == 0:
        return 0.0
    as_float = sets.astype(np.float64)
    interacting = float(np.einsum("ij,jk,ik->", as_float, graph, as_float) / 2)
    return interacting / all_pairs


AVERAGES: tuple[str, ...] = ("sample", "patient")


def _average(values: np.ndarray, patients: Any | None) -> float:
    """Mean over samples, or (``patients``: one id per sample) the mean over patients of
    each patient's mean: the authors' averaging (GAMENet's line averages a patient's visits
    first)."""
    if patients is None:
        return float(values.sum() / max(len(values), 1))
    _, owner = np.unique(np.asarray(patients), return_inverse=True)
    sums = np.bincount(owner, weights=values)
    counts = np.bincount(owner)
    return float(np.mean(sums / counts)) if len(counts) else 0.0


def compute(
    y_true: Any,
    y_prob: Any,
    threshold: float = 0.5,
    ddi: Any | None = None,
    predicted: Any | None = None,
    patients: Any | None = None,
) -> dict[str, float]:
    """All metrics on one set of samples.

    ``y_true``: 0/1 array (samples, drugs); ``y_prob``: probabilities, same shape;
    ``ddi``: optional 0/1 (drugs, drugs) matrix, needed for ``ddi_rate`` (0.0 without it);
    ``predicted``: optional boolean sets overriding ``y_prob >= threshold`` (a decoder's own
    set, or a selection rule such as the DDI-safe layer); PRAUC still ranks by ``y_prob``.
    ``patients``: optional patient id per sample: Jaccard, precision, recall, F1 and PRAUC
    are then averaged per patient first, then over patients (the authors' averaging); the
    DDI rate and #MED stay pooled over all samples (visits), as theirs.
    """
    truth, prob = _as_arrays(y_true, y_prob)
    if predicted is None:
        predicted = prob >= threshold
    else:
        predicted = np.asarray(predicted) > 0.5
        if predicted.shape != truth.shape:
            raise ValueError(f"predicted must be {truth.shape}; got {predicted.shape}")
    intersection = (predicted & truth).sum(axis=1).astype(np.float64)
    n_pred = predicted.sum(axis=1).astype(np.float64)
    n_true = truth.sum(axis=1).astype(np.float64)
    union = n_pred + n_true - intersection
    jaccard = np.divide(intersection, union, out=np.zeros_like(union), where=union > 0)
    precision = np.divide(intersection, n_pred, out=np.zeros_like(n_pred), where=n_pred > 0)
    recall = np.divide(intersection, n_true, out=np.zeros_like(n_true), where=n_true > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    prauc = np.array([average_precision(t, p) for t, p in zip(truth, prob, strict=True)])
    if patients is not None and len(patients) != len(truth):
        raise ValueError(f"patients must have one id per sample; got {len(patients)}")
    n = max(len(truth), 1)
    return {
        "jaccard": _average(jaccard, patients),
        "precision": _average(precision, patients),
        "recall": _average(recall, patients),
        "f1": _average(f1, patients),
        "prauc": _average(prauc, patients),
        "ddi_rate": ddi_rate(predicted, ddi) if ddi is not None else 0.0,
        "avg_med": float(n_pred.sum() / n),
        "samples": float(len(truth)),
    }


def rounds(
    y_true: Any,
    y_prob: Any,
    threshold: float = 0.5,
    ddi: Any | None = None,
    n_rounds: int = 10,
    fraction: float = 0.8,
    seed: int = 0,
    predicted: Any | None = None,
    patients: Any | None = None,
) -> dict[str, dict[str, float]]:
    """The rounds protocol: ``n_rounds`` random ``fraction`` subsets without replacement.

    Returns ``{metric: {"mean": ..., "std": ...}}`` (population std, as numpy's default).
    With ``patients`` the rounds draw ``fraction`` of the patients (all their samples) and
    average per patient (:func:`compute`).
    """
    truth, prob = _as_arrays(y_true, y_prob)
    sets = None if predicted is None else np.asarray(predicted)
    owners = None if patients is None else np.asarray(patients)
    units = np.unique(owners) if owners is not None else np.arange(len(truth))
    rng = np.random.default_rng(seed)
    size = max(1, int(round(fraction * len(units)))) if len(units) else 0
    per_round: list[dict[str, float]] = []
    for _ in range(n_rounds):
        if size == 0:
            break
        drawn = rng.choice(len(units), size=size, replace=False)
        chosen = drawn if owners is None else np.flatnonzero(np.isin(owners, units[drawn]))
        per_round.append(
            compute(
                truth[chosen],
                prob[chosen],
                threshold,
                ddi,
                None if sets is None else sets[chosen],
                None if owners is None else owners[chosen],
            )
        )
    return {
        m: {
            "mean": float(np.mean([r[m] for r in per_round])) if per_round else 0.0,
            "std": float(np.std([r[m] for r in per_round])) if per_round else 0.0,
        }
        for m in METRICS
    }


def evaluate_groups(
    y_true: Any,
    y_prob: Any,
    single_visit: Any,
    threshold: float = 0.5,
    ddi: Any | None = None,
    n_rounds: int = 10,
    seed: int = 0,
    predicted: Any | None = None,
    patients: Any | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics for the whole set and for single-visit / multi-visit samples apart.

    ``single_visit``: boolean per sample, True when the sample has no earlier visit.
    Each group holds ``metrics`` (whole group) and ``rounds`` (mean/std), and ``samples``.
    ``predicted`` / ``patients``: as :func:`compute` (a decoder's sets; per-patient means).
    """
    truth, prob = _as_arrays(y_true, y_prob)
    single = np.asarray(single_visit, dtype=bool)
    if single.shape != (len(truth),):
        raise ValueError(f"single_visit must have one flag per sample; got {single.shape}")
    groups: Mapping[str, np.ndarray] = {
        "all": np.ones(len(truth), dtype=bool),
        "single_visit": single,
        "multi_visit": ~single,
    }
    out: dict[str, dict[str, Any]] = {}
    for name, mask in groups.items():
        if not mask.any():
            out[name] = {"samples": 0, "metrics": None, "rounds": None}
            continue
        sets = None if predicted is None else np.asarray(predicted)[mask]
        owners = None if patients is None else np.asarray(patients)[mask]
        out[name] = {
            "samples": int(mask.sum()),
            "metrics": compute(truth[mask], prob[mask], threshold, ddi, sets, owners),
            "rounds": rounds(
                truth[mask],
                prob[mask],
                threshold,
                ddi,
                n_rounds,
                seed=seed,
                predicted=sets,
                patients=owners,
            ),
        }
    return out


def best_threshold(
    y_true: Any, y_prob: Any, candidates: Any | None = None, metric: str = "jaccard"
) -> float:
    """The threshold maximising ``metric`` on (validation) data, from a grid of candidates."""
    grid = np.asarray(candidates if candidates is not None else np.arange(0.05, 0.96, 0.05))
    scores = [compute(y_true, y_prob, float(t))[metric] for t in grid]
    return float(round(grid[int(np.argmax(scores))], 4))


def per_sample_prauc(y_true: Any, y_prob: Any) -> np.ndarray:
    """Each sample's PRAUC (the values ``compute`` averages), for paired tests between models."""
    truth, prob = _as_arrays(y_true, y_prob)
    return np.array([average_precision(t, p) for t, p in zip(truth, prob, strict=True)])
