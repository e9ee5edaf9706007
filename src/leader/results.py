"""One results table for ``leader benchmark`` and the pipeline report (issues 9 and 13).

The table model: a :class:`Row` per model x decision rule (threshold 0.5, or the threshold
chosen on validation) x patient group, whose cells are mean ± std (:func:`format_stat`);
:func:`pooled` combines per-seed rounds statistics into one mean ± std over seeds x rounds;
:func:`paired_permutation_test` and :func:`compare_to_best` give each model's two-sided
p-value against the best model on per-sample PRAUC (a paired sign-flip permutation test:
under the null hypothesis that two models score a sample alike, the sign of each sample's
difference is a coin toss). Markdown and CSV writers share the same rows.

>>> format_stat({"mean": 0.71234, "std": 0.01}), format_stat(None)
('0.7123 ± 0.0100', '-')
>>> round(paired_permutation_test([0.9, 0.8, 0.7, 0.9], [0.5, 0.4, 0.3, 0.6]), 4)
0.125
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Stat = dict[str, float]  # {"mean": ..., "std": ...}

METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("prauc", "PRAUC"),
    ("jaccard", "Jaccard"),
    ("f1", "F1"),
    ("ddi_rate", "DDI rate"),
    ("avg_med", "#MED"),
)
GROUP_TITLES: dict[str, str] = {
    "all": "All test samples",
    "single_visit": "Single-visit (first-time) samples",
    "multi_visit": "Multi-visit samples",
}
# results key (leader.evaluate.evaluate_probabilities) -> the rule's name in a table
RULES: dict[str, str] = {"at_0.5": "0.5", "at_validation": "validation"}
PERMUTATIONS = 10_000


def mean_std(values: Iterable[float]) -> Stat | None:
    """Mean and population std (numpy's default, as the rounds protocol), None when empty."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return None
    return {"mean": float(array.mean()), "std": float(array.std())}


def pooled(stats: Sequence[Stat]) -> Stat | None:
    """Mean ± std over all values of several equal-sized groups, from each group's mean/std.

    Total variance = mean within-group variance + variance of the group means.
    """
    if not stats:
        return None
    means = np.array([s["mean"] for s in stats])
    stds = np.array([s["std"] for s in stats])
    return {"mean": float(means.mean()), "std": float(math.sqrt(np.mean(stds**2) + means.var()))}


def format_stat(stat: Mapping[str, float] | None, digits: int = 4) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def format_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def paired_permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> float:
    """Two-sided p-value of mean(a - b) != 0 with paired samples (sign-flip permutations).

    Exact (every sign pattern) when 2**n <= ``permutations``; otherwise ``permutations``
    random sign patterns, p = (hits + 1) / (permutations + 1). All-equal pairs give 1.0.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1:
        raise ValueError("paired_permutation_test takes two equal-length 1-d sequences")
    diff = diff[diff != 0]  # ties carry no sign
    n = diff.size
    if n == 0:
        return 1.0
    observed = abs(diff.sum()) - 1e-12  # tolerance: sums of equal magnitude count as hits
    if 2**n <= permutations:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # (2**n, n)
        return float(np.mean(np.abs(patterns @ diff) >= observed))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1000):  # chunks keep memory at 1000 x n
        signs = rng.choice((-1.0, 1.0), size=(min(1000, permutations - start), n))
        hits += int(np.sum(np.abs(signs @ diff) >= observed))
    return (hits + 1) / (permutations + 1)


def compare_to_best(
    per_sample: Mapping[str, np.ndarray], seed: int = 0
) -> tuple[str | None, dict[str, float | None]]:
    """The model with the highest mean per-sample score and every model's p against it.

    ``per_sample``: model -> scores over the same samples in the same order. The best
    model's own p is None.
    """
    scored = {name: np.asarray(v, dtype=np.float64) for name, v in per_sample.items() if len(v)}
    if not scored:
        return None, {}
    best = max(scored, key=lambda name: float(scored[name].mean()))
    return best, {
        name: None if name == best else paired_permutation_test(values, scored[best], seed=seed)
        for name, values in scored.items()
    }


@dataclass
class Row:
    """One line of a results table: a model under one decision rule on one patient group."""

    model: str
    rule: str  # "0.5" or "validation" (RULES)
    threshold: float | None  # the threshold used (mean over seeds for "validation")
    group: str  # GROUP_TITLES key
    samples: int
    cells: dict[str, Stat | None]  # metric -> mean ± std
    seeds: int | None = None
    p_value: float | None = None  # PRAUC against the group's best model (None: the best)
    best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # parameters, timings, ...
    variant: str = ""  # the model's set-up where it matters, e.g. "form=code"

    @property
    def rule_label(self) -> str:
        if self.threshold is None or self.rule == "0.5":
            return self.rule
        return f"{self.rule} ({self.threshold:.2f})"


def markdown_rows(
    rows: Sequence[Row],
    significance: bool = True,
    extra_columns: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """A Markdown table of ``rows`` (one group or several: the group is not a column); a
    seeds column when any row has a seed count."""
    seeds = any(row.seeds is not None for row in rows)
    head = ["model", "threshold", "samples", *(["seeds"] if seeds else [])]
    head += [label for _, label in METRIC_COLUMNS]
    if significance:
        head.append("p (PRAUC vs best)")
    head += [label for _, label in extra_columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        model = f"{row.model} ({row.variant})" if row.variant else row.model
        cells = [
            f"**{model}**" if row.best else model,
            row.rule_label,
            str(row.samples),
            *(["-" if row.seeds is None else str(row.seeds)] if seeds else []),
            *(format_stat(row.cells.get(m)) for m, _ in METRIC_COLUMNS),
        ]
        if significance:
            cells.append("best" if row.best else format_p(row.p_value))
        cells += [_plain(row.extra.get(key)) for key, _ in extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}"


def write_csv(
    path: Path,
    rows: Sequence[Row],
    others: Sequence[Mapping[str, str]] = (),
    extra_keys: Sequence[str] = (),
) -> None:
    """One CSV line per row (metrics as _mean/_std columns); ``others``: models without
    numbers (``model``, ``status``, ``reason``)."""
    from leader.metrics import METRICS

    columns = ["model", "variant", "status", "rule", "threshold", "group", "samples", "seeds"]
    for metric in METRICS:
        columns += [f"{metric}_mean", f"{metric}_std"]
    columns += ["p_prauc_vs_best", "best", *extra_keys, "reason"]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            line: dict[str, Any] = {
                "model": row.model,
                "variant": row.variant,
                "status": "ok",
                "rule": row.rule,
                "threshold": "" if row.threshold is None else row.threshold,
                "group": row.group,
                "samples": row.samples,
                "seeds": "" if row.seeds is None else row.seeds,
                "p_prauc_vs_best": "" if row.p_value is None else row.p_value,
                "best": row.best,
            }
            for metric in METRICS:
                stat = row.cells.get(metric)
                line[f"{metric}_mean"] = stat["mean"] if stat else ""
                line[f"{metric}_std"] = stat["std"] if stat else ""
            for key in extra_keys:
                value = row.extra.get(key)
                line[key] = "" if value is None else value
            writer.writerow(line)
        for other in others:
            writer.writerow({k: other.get(k, "") for k in ("model", "status", "reason")})
    tmp.replace(path)
