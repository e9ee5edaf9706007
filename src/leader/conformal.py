"""Drug sets with a guaranteed miss rate: conformal risk control (issue 21, item 3).

Angelopoulos, Bates, Fisch, Lei and Schuster, "Conformal Risk Control" (2022; ICLR 2024).
The set of a visit at threshold t is every drug whose score is >= t. Its loss is the
fraction of the visit's prescribed drugs the set misses, ``|T \\ C_t| / |T|`` (0 for a
visit without drugs): bounded by B = 1 and non-increasing as t falls. On n calibration
visits with empirical risk R_hat(t), the threshold is

    t_hat = max { t : n / (n + 1) * R_hat(t) + B / (n + 1) <= alpha }

(the largest threshold, i.e. the smallest sets). Then for a new visit exchangeable with the
calibration visits, E[miss fraction] <= alpha, the expectation taken over the calibration
set and the new visit together. With n < 1/alpha - 1 no threshold qualifies and the set is
every drug (t_hat = 0: nothing is missed).

R_hat only changes at the scores of prescribed drugs, so :class:`RiskCurve` keeps just
those (distinct, ascending) and R_hat there: a summary from which t_hat follows for any
alpha, saved beside the model so serving needs no data (thinned to ``MAX_POINTS``
breakpoints on large calibration sets, which can only make the sets larger). Scores are
the model's own probabilities (not the calibrated ones): the calibration map is fitted on the same
validation visits, and a score that had seen their labels would make them no longer
exchangeable with a new visit.

Written here rather than with MAPIE 1.x (``MultiLabelClassificationController(
predict_function, risk="recall", method="crc")`` controls this very loss as 1 - recall):
MAPIE searches thresholds on a grid (``np.arange(0, 1, 0.01)`` by default), fixes the
alphas when it calibrates and refuses visits without drugs; this module takes a trained
model's score matrix, searches the exact breakpoints and answers any alpha later.

>>> import numpy as np
>>> scores = np.array([[0.9, 0.4, 0.1], [0.8, 0.3, 0.6]])
>>> truth = np.array([[1, 1, 0], [1, 0, 1]])
>>> curve = risk_curve(scores, truth)
>>> curve.scores.tolist(), curve.risk.tolist()      # R_hat when t is each of these
([0.4, 0.6, 0.8, 0.9], [0.0, 0.25, 0.5, 0.75])
>>> crc_threshold(scores, truth, alpha=0.5)         # (2/3) R + 1/3 <= 0.5 -> R <= 0.25
0.6
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BOUND = 1.0  # the loss (a fraction) is at most 1
MAX_POINTS = 2000  # breakpoints kept in calibration.json (see RiskCurve.thinned)


def miss_fraction(sets: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per visit: prescribed drugs outside the set / prescribed drugs (0 without any)."""
    chosen = np.asarray(sets, dtype=bool)
    wanted = np.asarray(truth) > 0.5
    total = wanted.sum(axis=1)
    missed = (wanted & ~chosen).sum(axis=1)
    return np.where(total > 0, missed / np.maximum(total, 1), 0.0)  # type: ignore[no-any-return]


@dataclass
class RiskCurve:
    """R_hat on a calibration set, at every threshold where it changes.

    ``scores``: the distinct scores of prescribed drugs, ascending; ``risk[k]``: the mean
    miss fraction of the sets {score >= scores[k]}. Below ``scores[0]`` the risk is 0; above
    the last, ``risk_above`` (every prescribed drug missed).
    """

    n: int  # calibration visits
    scores: np.ndarray  # (K,) ascending
    risk: np.ndarray  # (K,) non-decreasing
    risk_above: float

    def threshold(self, alpha: float, bound: float = BOUND) -> float:
        """t_hat for ``alpha`` (0 < alpha < 1): see the module docstring."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be strictly between 0 and 1 (got {alpha})")
        n = self.n
        # n/(n+1) R + B/(n+1) <= alpha  <=>  R <= ((n+1) alpha - B) / n
        if n == 0 or (n + 1) * alpha < bound:
            return 0.0  # too few visits for any threshold: the full set
        limit = ((n + 1) * alpha - bound) / n
        if self.risk_above <= limit + 1e-12:  # even the empty set qualifies
            top = float(self.scores[-1]) if len(self.scores) else 1.0
            return float(np.nextafter(max(top, 1.0), np.inf))
        ok = np.flatnonzero(self.risk <= limit + 1e-12)  # risk[0] = 0: never empty
        return float(self.scores[ok[-1]])

    def thinned(self, points: int = MAX_POINTS) -> RiskCurve:
        """At most ``points + 2`` breakpoints: for each of ``points`` evenly spaced risk
        levels, the last breakpoint at or under it. Any subset that keeps the first
        breakpoint is safe: t_hat can only come out lower (a larger set), never higher; here
        R_hat at it is lower than the exact one's by at most one level step plus 1/n."""
        if len(self.scores) <= points:
            return self
        grid = np.linspace(0.0, self.risk_above, points + 1)
        keep = np.unique(np.searchsorted(self.risk, grid, side="right") - 1)
        keep = np.unique(np.r_[0, keep[keep >= 0], len(self.scores) - 1])
        return RiskCurve(self.n, self.scores[keep], self.risk[keep], self.risk_above)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "conformal risk control (Angelopoulos et al. 2022), loss = miss fraction",
            "score": "the model's own probability",
            "n": self.n,
            "scores": self.scores.tolist(),
            "risk": self.risk.tolist(),
            "risk_above": self.risk_above,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RiskCurve:
        scores = np.asarray(raw["scores"], dtype=np.float64)
        risk = np.asarray(raw["risk"], dtype=np.float64)
        if scores.ndim != 1 or scores.shape != risk.shape:
            raise ValueError("conformal scores and risk must be equal-length lists")
        if np.any(np.diff(scores) <= 0) or np.any(np.diff(risk) < 0):
            raise ValueError("conformal scores must ascend and risk must not decrease")
        return cls(int(raw["n"]), scores, risk, float(raw["risk_above"]))


def risk_curve(scores: np.ndarray, truth: np.ndarray) -> RiskCurve:
    """The :class:`RiskCurve` of calibration visits: scores (n, drugs), labels (n, drugs)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth) > 0.5
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores and truth must both be (visits, drugs); {s.shape} vs {y.shape}")
    n = len(s)
    per_visit = y.sum(axis=1)
    rows, cols = np.nonzero(y)
    values = s[rows, cols]
    weights = 1.0 / per_visit[rows]  # each missed drug costs 1/|T| of its visit's loss
    order = np.argsort(values, kind="mergesort")
    values, weights = values[order], weights[order]
    distinct, first = np.unique(values, return_index=True)
    before = np.r_[0.0, np.cumsum(weights)][first]  # weight of scores strictly below
    return RiskCurve(n, distinct, before / max(n, 1), float(weights.sum() / max(n, 1)))


def crc_threshold(
    scores: np.ndarray, truth: np.ndarray, alpha: float, bound: float = BOUND
) -> float:
    """t_hat from calibration scores and labels (see :class:`RiskCurve`)."""
    return risk_curve(scores, truth).threshold(alpha, bound)


def set_summary(
    curve: RiskCurve, scores: np.ndarray, truth: np.ndarray, alpha: float
) -> dict[str, Any]:
    """On test visits: t_hat, the mean miss fraction (with its standard error), the mean
    set size and the share of visits whose set misses nothing."""
    t = curve.threshold(alpha)
    sets = np.asarray(scores) >= t
    miss = miss_fraction(sets, truth)
    n = len(miss)
    return {
        "threshold": t,
        "calibration_visits": curve.n,
        "test_visits": n,
        "miss_rate": float(miss.mean()) if n else None,
        "miss_rate_se": float(miss.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "set_size": float(sets.sum(axis=1).mean()) if n else None,
        "full_set": t <= 0.0,
    }
