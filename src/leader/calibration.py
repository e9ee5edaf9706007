"""Calibrated probabilities: does a probability of 0.7 mean 70 %? (issue 21, item 2)

A model's drug probabilities are recalibrated by a map fitted on the **validation split**
and kept beside the model in ``calibration.json`` (with the conformal risk curve of
:mod:`leader.conformal`). Candidates, all from scikit-learn or closed form:

- ``none``: the model's own probabilities;
- ``temperature``: one temperature T for every drug, ``sigmoid(logit(p) / T)``
  (Guo et al., 2017), T minimising the validation log-loss;
- ``platt``: per drug ``sigmoid(a * logit(p) + b)`` (Platt, 1999; scikit-learn
  ``LogisticRegression``), one shared (a, b) for drugs with fewer than ``MIN_CLASS``
  validation visits with or without them;
- ``isotonic``: per drug a monotone step map (``IsotonicRegression``), shared likewise.

**The rule.** Each candidate is fitted on 4/5 of the validation patients and scored on the
other 1/5 (5 folds by patient), by the Brier score over every (visit, drug). The simplest
candidate whose mean out-of-fold Brier score is within one standard error of the best one's
wins (the "one-standard-error rule"; the standard error of the per-fold difference to the
best): on a small validation split the fold-to-fold noise is large, and a per-drug map
must then beat the simpler ones by more than that noise. The Brier score is proper and
bounded (the log-loss of an isotonic map's 0/1 steps can be infinite); out-of-fold,
because scored on its own data isotonic always wins by memorising. The winner is refitted
on all of the validation split.

Metrics (pure functions over flattened (visit, drug) pairs): ``ece`` (15 equal-width
bins, weighted by count), ``brier`` (``sklearn.metrics.brier_score_loss``) and
``reliability`` (``sklearn.calibration.calibration_curve``).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> truth = rng.random((400, 3)) < 0.3
>>> raw = np.clip(np.where(truth, 0.9, 0.6) + rng.normal(0, 0.05, truth.shape), 0, 1)
>>> fitted = fit_calibration(truth, raw, groups=[str(i) for i in range(400)])
>>> fitted.method != "none", brier(truth, fitted.apply(raw)) < brier(truth, raw)
(True, True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from leader.errors import LeaderError

CALIBRATION = "calibration.json"
FORMAT_VERSION = 1
METHODS: tuple[str, ...] = ("none", "temperature", "platt", "isotonic")  # simplest first
FOLDS = 5  # cross-fitting folds (by patient) of the selection rule
MIN_CLASS = 5  # a drug gets its own Platt/isotonic map with >= this many visits each way
ECE_BINS = 15
DIAGRAM_BINS = 10
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit


def _logit(prob: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)  # type: ignore[no-any-return]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- metrics
def _flat(truth: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = (np.asarray(truth) > 0.5).ravel().astype(np.float64)
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"truth and prob differ in size: {y.shape} vs {p.shape}")
    return y, p


def ece(truth: Any, prob: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error over every (visit, drug): sum_b n_b/N |mean y - mean p|."""
    y, p = _flat(truth, prob)
    if not y.size:
        return 0.0
    p = np.clip(p, 0.0, 1.0)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)  # equal-width, 1.0 in the last
    gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, p, bins))
    return float(gap.sum() / y.size)


def brier(truth: Any, prob: Any) -> float:
    """Mean squared error of the probabilities over every (visit, drug)."""
    from sklearn.metrics import brier_score_loss

    y, p = _flat(truth, prob)
    return float(brier_score_loss(y, np.clip(p, 0.0, 1.0))) if y.size else 0.0


def reliability(truth: Any, prob: Any, bins: int = DIAGRAM_BINS) -> dict[str, list[float]]:
    """The reliability diagram's points: per non-empty equal-width bin, the mean
    probability, the observed frequency and the number of (visit, drug) pairs."""
    from sklearn.calibration import calibration_curve

    y, p = _flat(truth, prob)
    if not y.size or y.min() == y.max():  # calibration_curve needs both classes
        return {"prob_pred": [], "prob_true": [], "count": []}
    p = np.clip(p, 0.0, 1.0)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    # The bins of calibration_curve(strategy="uniform"): inner edges, searchsorted left.
    inner = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    count = np.bincount(np.searchsorted(inner, p), minlength=bins)
    return {
        "prob_pred": [round(float(v), 6) for v in prob_pred],
        "prob_true": [round(float(v), 6) for v in prob_true],
        "count": [int(c) for c in count if c],
    }


# ----------------------------------------------------------------------------- maps
@dataclass
class Calibrator:
    """A fitted map from a model's probabilities (N, drugs) to calibrated ones."""

    method: str = "none"
    temperature: float = 1.0  # temperature
    slopes: list[float] = field(default_factory=list)  # platt: per drug a
    intercepts: list[float] = field(default_factory=list)  # platt: per drug b
    steps: list[tuple[list[float], list[float]]] = field(default_factory=list)  # isotonic x, y
    own_maps: int = 0  # drugs with their own map (the rest share one)

    def apply(self, prob: np.ndarray) -> np.ndarray:
        p = np.asarray(prob, dtype=np.float64)
        if self.method == "none":
            return p
        if self.method == "temperature":
            return _sigmoid(_logit(p) / self.temperature)
        self._check_width(p)
        if self.method == "platt":
            slopes, intercepts = self._platt_arrays
            return _sigmoid(_logit(p) * slopes + intercepts)
        out = np.empty_like(p)  # isotonic, clipped outside the fitted range as scikit-learn
        for j, (x, y) in enumerate(self.steps):
            out[:, j] = np.interp(p[:, j], x, y)
        return out

    @cached_property
    def _platt_arrays(self) -> tuple[np.ndarray, np.ndarray]:  # built once: serving is hot
        return np.asarray(self.slopes), np.asarray(self.intercepts)

    def _check_width(self, p: np.ndarray) -> None:
        width = len(self.slopes) if self.method == "platt" else len(self.steps)
        if p.ndim != 2 or p.shape[1] != width:
            raise ValueError(f"{self.method} calibration is for {width} drugs; got {p.shape}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "own_maps": self.own_maps}
        if self.method == "temperature":
            out["temperature"] = self.temperature
        elif self.method == "platt":
            out.update(slopes=self.slopes, intercepts=self.intercepts)
        elif self.method == "isotonic":
            out["steps"] = [{"x": x, "y": y} for x, y in self.steps]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Calibrator:
        method = str(raw.get("method", "none"))
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r} (known: {METHODS})")
        steps = [
            ([float(v) for v in s["x"]], [float(v) for v in s["y"]]) for s in raw.get("steps", [])
        ]
        if any(len(x) != len(y) or not x for x, y in steps):
            raise ValueError("isotonic steps need equal, non-empty x and y")
        made = cls(
            method,
            float(raw.get("temperature", 1.0)),
            [float(v) for v in raw.get("slopes", [])],
            [float(v) for v in raw.get("intercepts", [])],
            steps,
            int(raw.get("own_maps", 0)),
        )
        if made.method == "temperature" and not made.temperature > 0:
            raise ValueError("temperature must be positive")
        if made.method == "platt" and len(made.slopes) != len(made.intercepts):
            raise ValueError("platt slopes and intercepts differ in length")
        return made


def fit_temperature(truth: np.ndarray, prob: np.ndarray) -> Calibrator:
    """One temperature minimising the mean log-loss (bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    y, z = _flat(truth, _logit(prob))

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # BCE with logits

    best = minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded")
    return Calibrator("temperature", temperature=float(np.exp(best.x)))


def _per_drug(truth: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    y = np.asarray(truth) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    positives = y.sum(axis=0)
    own = [bool(min(k, len(y) - k) >= MIN_CLASS) for k in positives]
    return y, p, own


def fit_platt(truth: np.ndarray, prob: np.ndarray) -> Calibrator:
    from sklearn.linear_model import LogisticRegression

    y, p, own = _per_drug(truth, prob)
    z = _logit(p)

    def fit(x: np.ndarray, target: np.ndarray) -> tuple[float, float]:
        if target.min() == target.max():  # one class only: keep the model's probabilities
            return 1.0, 0.0
        model = LogisticRegression(C=1.0).fit(x.reshape(-1, 1), target)
        return float(model.coef_[0, 0]), float(model.intercept_[0])

    shared = fit(z.ravel(), y.ravel())
    pairs = [fit(z[:, j], y[:, j]) if own[j] else shared for j in range(p.shape[1])]
    return Calibrator(
        "platt",
        slopes=[a for a, _ in pairs],
        intercepts=[b for _, b in pairs],
        own_maps=sum(own),
    )


def fit_isotonic(truth: np.ndarray, prob: np.ndarray) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    y, p, own = _per_drug(truth, prob)

    def fit(x: np.ndarray, target: np.ndarray) -> tuple[list[float], list[float]]:
        if target.min() == target.max():
            return [0.0, 1.0], [0.0, 1.0]  # identity
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        model.fit(x, target.astype(np.float64))
        return model.X_thresholds_.tolist(), model.y_thresholds_.tolist()

    shared = fit(p.ravel(), y.ravel())
    steps = [fit(p[:, j], y[:, j]) if own[j] else shared for j in range(p.shape[1])]
    return Calibrator("isotonic", steps=steps, own_maps=sum(own))


FITTERS = {
    "none": lambda truth, prob: Calibrator("none"),
    "temperature": fit_temperature,
    "platt": fit_platt,
    "isotonic": fit_isotonic,
}


def patient_folds(groups: Sequence[str], folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number per row; rows of one patient share a fold."""
    patients = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[i]: k % folds for k, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def select_method(
    truth: np.ndarray, prob: np.ndarray, groups: Sequence[str], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per method: its out-of-fold Brier score (``brier``, folds by patient) and ``se``, the
    standard error over folds of its per-fold difference to the best method."""
    folds = min(FOLDS, len(set(groups)))
    fold = patient_folds(groups, folds, seed)
    y = np.asarray(truth) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    overall, per_fold = {}, {}
    for method in METHODS:
        out = np.empty_like(p)
        for k in range(folds):
            held = fold == k
            out[held] = FITTERS[method](y[~held], p[~held]).apply(p[held])
        overall[method] = brier(y, out)
        per_fold[method] = np.array([brier(y[fold == k], out[fold == k]) for k in range(folds)])
    best = min(METHODS, key=overall.__getitem__)
    return {
        m: {
            "brier": overall[m],
            "se": float(np.std(per_fold[m] - per_fold[best], ddof=1) / np.sqrt(folds)),
        }
        for m in METHODS
    }


def one_se_choice(selection: Mapping[str, Mapping[str, float]]) -> str:
    """The simplest method within one standard error of the best (see the module doc)."""
    best = min(selection[m]["brier"] for m in METHODS)
    return next(m for m in METHODS if selection[m]["brier"] <= best + selection[m]["se"])


@dataclass
class Calibration:
    """What ``calibration.json`` holds: the chosen map, how it was chosen, and the
    conformal risk curve (:class:`leader.conformal.RiskCurve`) of the same split."""

    calibrator: Calibrator
    selection: dict[str, dict[str, float]] = field(default_factory=dict)  # select_method
    visits: int = 0
    patients: int = 0
    split: str = "val"
    conformal: Any = None  # leader.conformal.RiskCurve | None

    @property
    def method(self) -> str:
        return self.calibrator.method

    def apply(self, prob: np.ndarray) -> np.ndarray:
        return self.calibrator.apply(prob)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "fitted_on": {"split": self.split, "visits": self.visits, "patients": self.patients},
            "selection": {
                "rule": f"simplest within one SE of the lowest out-of-fold Brier score, "
                f"{FOLDS} folds by patient",
                "methods": self.selection,
            },
            "calibrator": self.calibrator.to_json(),
            # thinned on disk: a threshold read back can only be lower (a larger set)
            "conformal": None if self.conformal is None else self.conformal.thinned().to_json(),
        }


def fit_calibration(
    truth: np.ndarray,
    prob: np.ndarray,
    groups: Sequence[str],
    seed: int = 0,
    split: str = "val",
) -> Calibration:
    """Choose a method by :func:`select_method` and refit it on all rows; add the
    conformal risk curve of the model's own probabilities. ``groups``: patient per row."""
    from leader.conformal import risk_curve

    y = np.asarray(truth) > 0.5
    p = np.asarray(prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"truth and prob must both be (visits, drugs); {y.shape} vs {p.shape}")
    if len(groups) != len(y):
        raise ValueError(f"{len(groups)} groups for {len(y)} rows")
    patients = len(set(groups))
    if patients >= 2:
        selection = select_method(y, p, groups, seed)
        method = one_se_choice(selection)
    else:  # nothing to cross-fit on: keep the model's probabilities
        selection, method = {}, "none"
    calibrator = FITTERS[method](y, p) if len(y) else Calibrator("none")
    curve = risk_curve(p, y) if len(y) else None
    return Calibration(calibrator, selection, len(y), patients, split, curve)


# ----------------------------------------------------------------------------- files
def write_calibration(directory: str | os.PathLike[str], calibration: Calibration) -> Path:
    from leader.io import write_json_atomic

    path = Path(directory) / CALIBRATION
    write_json_atomic(path, calibration.to_json())
    return path


def read_calibration(directory: str | os.PathLike[str]) -> Calibration | None:
    """The folder's calibration, or None when it has none (runs saved before issue 21)."""
    from leader.conformal import RiskCurve

    path = Path(directory) / CALIBRATION
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = int(raw.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(f"format_version {version} is newer than this leader reads")
        fitted = raw.get("fitted_on", {})
        conformal = raw.get("conformal")
        return Calibration(
            Calibrator.from_json(raw["calibrator"]),
            {
                str(k): {"brier": float(v["brier"]), "se": float(v["se"])}
                for k, v in raw.get("selection", {}).get("methods", {}).items()
            },
            int(fitted.get("visits", 0)),
            int(fitted.get("patients", 0)),
            str(fitted.get("split", "val")),
            None if conformal is None else RiskCurve.from_json(conformal),
        )
    except (
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as exc:
        raise LeaderError(
            f"{path}: not a valid calibration file ({exc}); refit it with `leader calibrate`"
        ) from exc


def calibrate_dataset_split(
    model: Any, dataset: Any, split: str = "val", mode: str | None = None
) -> Calibration:
    """Fit a :class:`Calibration` for ``model`` on a dataset split (``val`` by default)."""
    samples = dataset.samples(split, mode or dataset.default_sample_mode)
    if not samples:
        raise LeaderError(f"{dataset.path}: the {split} split has no samples to calibrate on")
    prob = np.asarray(model.predict_proba(samples), dtype=np.float64)
    return fit_calibration(
        dataset.targets(samples), prob, [s.patient_id for s in samples], split=split
    )


# ----------------------------------------------------------------------------- reports
def calibration_report(
    calibration: Calibration,
    test_truth: np.ndarray,
    test_prob: np.ndarray,
    alphas: Sequence[float] = (0.05, 0.1, 0.2),
    source: str = "calibration.json",
) -> dict[str, Any]:
    """ECE and Brier before/after on test, reliability points, and the conformal sets'
    test miss rate and size at each alpha (JSON-ready)."""
    from leader.conformal import set_summary

    calibrated = calibration.apply(test_prob)
    out: dict[str, Any] = {
        "method": calibration.method,
        "source": source,
        "fitted_on": {"split": calibration.split, "visits": calibration.visits,
                      "patients": calibration.patients},
        "selection": calibration.selection,
        "test": {
            "before": {"ece": ece(test_truth, test_prob), "brier": brier(test_truth, test_prob)},
            "after": {"ece": ece(test_truth, calibrated), "brier": brier(test_truth, calibrated)},
        },
        "reliability": {
            "before": reliability(test_truth, test_prob),
            "after": reliability(test_truth, calibrated),
        },
    }  # fmt: skip
    if calibration.conformal is not None:
        out["conformal"] = [
            {"alpha": a, **set_summary(calibration.conformal, test_prob, test_truth, a)}
            for a in alphas
        ]
    return out


def plot_reliability(path: Path, curves: Mapping[str, Mapping[str, Any]]) -> bool:
    """One reliability diagram: per model (``curves`` name -> calibration_report
    ``reliability``), before (dashed) and after (solid). False without matplotlib."""
    from leader.optional import available

    if not available("matplotlib") or not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfect")
    for i, (name, curve) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for key, style in (("before", "--"), ("after", "-")):
            points = curve.get(key) or {}
            if points.get("prob_pred"):
                axes.plot(points["prob_pred"], points["prob_true"], style, marker="o",
                          markersize=3, color=color, label=f"{name} ({key})")  # fmt: skip
    axes.set_xlabel("predicted probability (test, 10 equal-width bins)")
    axes.set_ylabel("observed frequency")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def summarize(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean ± std over several :func:`calibration_report` results (seeds, folds):
    ECE and Brier before/after, the methods chosen, conformal miss rate and set size per
    alpha; the first report's reliability points for the diagram."""
    from leader.results import mean_std

    if not reports:
        return None
    out: dict[str, Any] = {
        "runs": len(reports),
        "methods": sorted({str(r["method"]) for r in reports}),
        "reliability": reports[0]["reliability"],
    }
    for when in ("before", "after"):
        for metric in ("ece", "brier"):
            out[f"{metric}_{when}"] = mean_std(r["test"][when][metric] for r in reports)
    alphas = [row["alpha"] for row in reports[0].get("conformal", [])]
    out["conformal"] = []
    for i, alpha in enumerate(alphas):
        rows = [r["conformal"][i] for r in reports if r["conformal"][i]["miss_rate"] is not None]
        out["conformal"].append(
            {
                "alpha": alpha,
                "miss_rate": mean_std(row["miss_rate"] for row in rows),
                "set_size": mean_std(row["set_size"] for row in rows),
                "calibration_visits": rows[0]["calibration_visits"] if rows else None,
            }
        )
    return out


def markdown_table(summaries: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Markdown lines: per model, ECE and Brier before -> after (test) and the conformal
    sets' test miss rate / mean size per alpha (mean ± std over runs)."""
    from leader.results import format_stat

    kept = {name: s for name, s in summaries.items() if s}
    if not kept:
        return []
    alphas = [row["alpha"] for row in next(iter(kept.values()))["conformal"]]
    head = ["model", "calibration", "ECE before", "ECE after", "Brier before", "Brier after"]
    head += [f"miss / size at alpha {a:g}" for a in alphas]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in kept.items():
        cells = [name, ", ".join(s["methods"])]
        cells += [format_stat(s[k]) for k in ("ece_before", "ece_after")]
        cells += [format_stat(s[k], 5) for k in ("brier_before", "brier_after")]
        for row in s["conformal"]:
            miss, size = row["miss_rate"], row["set_size"]
            cells.append("-" if miss is None else f"{miss['mean']:.3f} / {size['mean']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
