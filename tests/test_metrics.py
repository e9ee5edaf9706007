"""Metrics pinned against hand computation and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from leader import metrics


def test_hand_computed_case() -> None:
    y_true = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    y_prob = np.array([[0.9, 0.4, 0.6, 0.1], [0.1, 0.2, 0.3, 0.4]])
    m = metrics.compute(y_true, y_prob, threshold=0.5)
    # Row 1: P={0,2}, T={0,1}: J=1/3, p=1/2, r=1/2, f1=1/2. Row 2: P={}, T={2}: all 0.
    assert m["jaccard"] == pytest.approx(1 / 6)
    assert m["precision"] == pytest.approx(0.25)
    assert m["recall"] == pytest.approx(0.25)
    assert m["f1"] == pytest.approx(0.25)
    assert m["avg_med"] == pytest.approx(1.0)
    ap1 = average_precision_score(y_true[0], y_prob[0])
    ap2 = average_precision_score(y_true[1], y_prob[1])
    assert m["prauc"] == pytest.approx((ap1 + ap2) / 2)


def test_prauc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y_true = (rng.random((50, 30)) < 0.2).astype(int)
    y_true[:, 0] = 1
    y_prob = np.round(rng.random((50, 30)), 1)  # many ties
    ours = metrics.compute(y_true, y_prob)["prauc"]
    theirs = np.mean([average_precision_score(t, p) for t, p in zip(y_true, y_prob, strict=True)])
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_ddi_rate_pools_pairs() -> None:
    ddi = np.zeros((4, 4), dtype=int)
    ddi[0, 1] = ddi[1, 0] = 1
    prob = np.array([[0.9, 0.9, 0.9, 0.0], [0.9, 0.0, 0.0, 0.9], [0.9, 0.0, 0.0, 0.0]])
    truth = np.ones_like(prob)
    # Pairs: row 1 has 3 (one interacting), row 2 has 1, row 3 none -> 1/4.
    assert metrics.compute(truth, prob, ddi=ddi)["ddi_rate"] == pytest.approx(0.25)
    assert metrics.compute(truth, np.zeros_like(prob), ddi=ddi)["ddi_rate"] == 0.0


def test_inputs_are_not_modified_and_shapes_checked() -> None:
    y_true = np.array([[1, 0, 1]])
    y_prob = np.array([[0.2, 0.7, 0.9]])
    before = (y_true.copy(), y_prob.copy())
    metrics.compute(y_true, y_prob, ddi=np.eye(3))
    np.testing.assert_array_equal(y_true, before[0])
    np.testing.assert_array_equal(y_prob, before[1])
    with pytest.raises(ValueError, match="samples, drugs"):
        metrics.compute(y_true, y_prob[:, :2])


def test_empty_union_and_predicted_override() -> None:
    m = metrics.compute(np.zeros((1, 3)), np.zeros((1, 3)))
    assert m["jaccard"] == 0.0 and m["f1"] == 0.0 and m["prauc"] == 0.0
    truth = np.array([[1, 1, 0]])
    prob = np.array([[0.9, 0.8, 0.1]])
    override = metrics.compute(truth, prob, predicted=np.array([[1, 0, 0]]))
    assert override["jaccard"] == pytest.approx(0.5) and override["prauc"] == pytest.approx(1.0)


def test_rounds_and_groups() -> None:
    rng = np.random.default_rng(1)
    y_true = (rng.random((40, 10)) < 0.3).astype(int)
    y_prob = rng.random((40, 10))
    r = metrics.rounds(y_true, y_prob, n_rounds=10, seed=3)
    assert r == metrics.rounds(y_true, y_prob, n_rounds=10, seed=3)
    whole = metrics.compute(y_true, y_prob)
    assert abs(r["jaccard"]["mean"] - whole["jaccard"]) < 0.05 and r["jaccard"]["std"] > 0
    single = np.arange(40) < 15
    groups = metrics.evaluate_groups(y_true, y_prob, single)
    assert groups["single_visit"]["samples"] == 15 and groups["multi_visit"]["samples"] == 25
    expected = metrics.compute(y_true[single], y_prob[single])
    assert groups["single_visit"]["metrics"] == expected
    none_single = metrics.evaluate_groups(y_true, y_prob, np.zeros(40, dtype=bool))
    assert none_single["single_visit"]["metrics"] is None


def test_best_threshold_prefers_separating_cut() -> None:
    truth = np.array([[1, 1, 0, 0]] * 5)
    prob = np.array([[0.35, 0.4, 0.2, 0.1]] * 5)
    assert metrics.best_threshold(truth, prob) == pytest.approx(0.25)


def test_per_sample_prauc_averages_to_prauc() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.random((20, 6)) < 0.4
    y_prob = rng.random((20, 6))
    values = metrics.per_sample_prauc(y_true, y_prob)
    assert values.shape == (20,)
    assert values.mean() == pytest.approx(metrics.compute(y_true, y_prob)["prauc"])
    assert metrics.per_sample_prauc([[1, 0]], [[0.9, 0.1]])[0] == 1.0
