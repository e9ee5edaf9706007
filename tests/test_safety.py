"""The DDI-aware selection (safety layer) on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from leader.metrics import ddi_rate
from leader.safety import DEFAULT_MARGIN, ddi_safe_select, far_above, interacting_pairs


def _ddi(m: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    matrix = np.zeros((m, m), dtype=np.int8)
    for a, b in pairs:
        matrix[a, b] = matrix[b, a] = 1
    return matrix


def test_far_above_is_a_fraction_of_the_headroom() -> None:
    assert far_above(0.5, 0.5) == pytest.approx(0.75)
    assert far_above(0.3, 0.0) == pytest.approx(0.3)
    assert far_above(0.3, 1.0) == pytest.approx(1.0)
    assert 0.0 < DEFAULT_MARGIN < 1.0


def test_no_interaction_keeps_the_thresholded_set() -> None:
    prob = np.array([[0.9, 0.6, 0.4, 0.55], [0.1, 0.2, 0.3, 0.4]])
    out = ddi_safe_select(prob, _ddi(4, []), threshold=0.5)
    assert out.dtype == bool
    assert out.tolist() == (prob >= 0.5).tolist()


def test_less_probable_partner_is_dropped() -> None:
    prob = np.array([[0.6, 0.7, 0.2]])
    out = ddi_safe_select(prob, _ddi(3, [(0, 1)]), threshold=0.5)
    assert out.tolist() == [[False, True, False]]


def test_both_far_above_are_both_kept() -> None:
    prob = np.array([[0.8, 0.9, 0.6]])  # far_above(0.5, 0.5) = 0.75
    ddi = _ddi(3, [(0, 1), (1, 2)])
    out = ddi_safe_select(prob, ddi, threshold=0.5)
    # 1 (0.9) kept; 0 (0.8) interacts with 1 but both >= 0.75: kept; 2 (0.6) dropped.
    assert out.tolist() == [[True, True, False]]
    # margin 1: far_above = 1.0, nobody qualifies, only the most probable survives.
    assert ddi_safe_select(prob, ddi, 0.5, margin=1.0).tolist() == [[False, True, False]]
    # margin 0: every selected drug is "far above", the set is unchanged.
    assert ddi_safe_select(prob, ddi, 0.5, margin=0.0).tolist() == [[True, True, True]]


def test_greedy_uses_only_kept_drugs() -> None:
    # Chain 0-1-2: 0 kept, 1 dropped (interacts with 0), 2 interacts only with the
    # dropped 1, so it stays.
    prob = np.array([[0.7, 0.65, 0.6]])
    out = ddi_safe_select(prob, _ddi(3, [(0, 1), (1, 2)]), threshold=0.5)
    assert out.tolist() == [[True, False, True]]


def test_ties_prefer_the_lower_index_and_asymmetric_input_is_symmetrised() -> None:
    prob = np.array([[0.6, 0.6]])
    ddi = np.array([[0, 0], [1, 0]])  # only one triangle filled
    assert ddi_safe_select(prob, ddi, threshold=0.5).tolist() == [[True, False]]


def test_result_is_a_subset_lowers_ddi_and_leaves_inputs_alone() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((200, 12))
    ddi = _ddi(12, [(0, 1), (2, 3), (4, 5), (1, 7), (8, 11)])
    before = prob.copy()
    out = ddi_safe_select(prob, ddi, threshold=0.4)
    assert np.array_equal(prob, before)
    assert not (out & ~(prob >= 0.4)).any()
    assert ddi_rate(out, ddi) < ddi_rate(prob >= 0.4, ddi)
    strict = ddi_safe_select(prob, ddi, threshold=0.4, margin=1.0)
    assert ddi_rate(strict, ddi) == 0.0


def test_bad_shapes_and_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="ddi must be"):
        ddi_safe_select(np.zeros((2, 3)), np.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match="samples, drugs"):
        ddi_safe_select(np.zeros(3), np.zeros((3, 3)), 0.5)
    with pytest.raises(ValueError, match="margin"):
        ddi_safe_select(np.zeros((1, 2)), np.zeros((2, 2)), 0.5, margin=2.0)


def test_interacting_pairs() -> None:
    ddi = _ddi(4, [(0, 3), (1, 2), (2, 3)])
    assert interacting_pairs(np.array([1, 0, 1, 1]), ddi) == [(0, 3), (2, 3)]
    assert interacting_pairs(np.array([0, 1, 0, 0]), ddi) == []
