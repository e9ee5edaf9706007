"""DDI-aware selection of the recommended drug set (the ``--ddi-safe`` safety layer).

LEADER (Liu et al., arXiv 2402.02803) recommends every drug whose probability reaches the
threshold. This optional layer removes drug-drug interactions (DDI) from that set with a
simple, explainable rule, applied greedily in probability order:

1. candidates are the drugs with ``prob >= threshold``, most probable first
   (ties: lower vocabulary index first);
2. a candidate is kept when it interacts with no drug kept so far;
3. a candidate that interacts with a kept drug is still kept when BOTH are "far above the
   threshold", i.e. both have ``prob >= far_above(threshold, margin)`` where
   ``far_above = threshold + margin * (1 - threshold)`` (``margin`` is the fraction of the
   head-room between the threshold and 1: 0 keeps every interacting pair, 1 drops every
   less probable partner). Kept drugs are at least as probable as the candidate, so the test
   reduces to ``prob[candidate] >= far_above``;
4. otherwise the candidate (the less probable drug of the pair) is dropped.

Both drugs kept in step 3 stay in the set; the warnings layer (``interacting_pairs``)
still reports them, so a clinician sees the interaction.

>>> import numpy as np
>>> prob = np.array([[0.9, 0.6, 0.2]])
>>> ddi = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
>>> ddi_safe_select(prob, ddi, threshold=0.5).astype(int).tolist()
[[1, 0, 0]]
>>> ddi_safe_select(prob, ddi, threshold=0.5, margin=0.1).astype(int).tolist()  # 0.55
[[1, 1, 0]]
"""

from __future__ import annotations

import numpy as np

DEFAULT_MARGIN = 0.5  # fraction of the head-room (1 - threshold) that counts as "far above"


def far_above(threshold: float, margin: float = DEFAULT_MARGIN) -> float:
    """The probability from which two interacting drugs are both kept."""
    return threshold + margin * (1.0 - threshold)


def _check(prob: np.ndarray, ddi: np.ndarray, threshold: float, margin: float) -> None:
    if prob.ndim != 2:
        raise ValueError(f"prob must be (samples, drugs); got shape {prob.shape}")
    if ddi.shape != (prob.shape[1], prob.shape[1]):
        raise ValueError(f"ddi must be ({prob.shape[1]}, {prob.shape[1]}); got {ddi.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1]; got {margin}")


def ddi_safe_select(
    prob: np.ndarray,
    ddi: np.ndarray,
    threshold: float,
    margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
    """Boolean recommended sets (samples, drugs) with interacting pairs thinned out.

    ``prob``: probabilities (N, M); ``ddi``: symmetric 0/1 (M, M) matrix (the diagonal is
    ignored); ``threshold``: the run's decision threshold; ``margin``: see the module doc.
    Always a subset of ``prob >= threshold``. Inputs are not modified.
    """
    prob = np.asarray(prob, dtype=np.float64)
    graph = np.asarray(ddi) > 0
    _check(prob, graph, threshold, margin)
    graph = graph | graph.T
    np.fill_diagonal(graph, False)
    high = far_above(threshold, margin)
    selected = prob >= threshold  # (N, M)
    out = np.zeros_like(selected)
    for row in range(prob.shape[0]):
        candidates = np.flatnonzero(selected[row])
        if candidates.size == 0:
            continue
        # Most probable first; stable sort on -prob keeps lower indices first on ties.
        order = candidates[np.argsort(-prob[row, candidates], kind="stable")]
        kept = np.zeros(prob.shape[1], dtype=bool)
        for drug in order:
            if not (graph[drug] & kept).any() or prob[row, drug] >= high:
                kept[drug] = True
        out[row] = kept
    return out


def interacting_pairs(selected: np.ndarray, ddi: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of one boolean set (M,) that interact in ``ddi``."""
    members = np.flatnonzero(np.asarray(selected) > 0)
    graph = np.asarray(ddi)[np.ix_(members, members)] > 0  # (K, K)
    first, second = np.nonzero(np.triu(graph | graph.T, k=1))
    return list(zip(members[first].tolist(), members[second].tolist(), strict=True))
