"""``leader.results``: pooled mean ± std, the paired permutation test, rows and writers."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from leader.results import (
    Row,
    compare_to_best,
    format_stat,
    markdown_rows,
    mean_std,
    paired_permutation_test,
    pooled,
    write_csv,
)


def test_pooled_std_over_seeds_and_rounds() -> None:
    values = [np.array([0.1, 0.3, 0.2]), np.array([0.5, 0.6, 0.7])]
    pooled_stat = pooled([{"mean": v.mean(), "std": v.std()} for v in values])
    assert pooled_stat is not None
    everything = np.concatenate(values)
    assert pooled_stat["mean"] == pytest.approx(everything.mean())
    assert pooled_stat["std"] == pytest.approx(everything.std())
    assert pooled([]) is None and mean_std([]) is None


def test_permutation_test_exact_matches_enumeration() -> None:
    a = np.array([0.9, 0.7, 0.65, 0.8, 0.3])
    b = np.array([0.6, 0.72, 0.5, 0.5, 0.31])
    diff = a - b
    flips = [abs(np.dot(s, diff)) >= abs(diff.sum()) - 1e-12
             for s in itertools.product((-1, 1), repeat=5)]  # fmt: skip
    assert paired_permutation_test(a, b) == pytest.approx(np.mean(flips))
    assert paired_permutation_test(a, a) == 1.0  # identical models: no evidence


def test_permutation_test_sampled_finds_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.8, size=200)
    better = base + 0.05 + rng.normal(0, 0.02, size=200)
    assert paired_permutation_test(better, base) < 0.001
    same = base + rng.normal(0, 0.02, size=200)  # noise only, no shift
    assert paired_permutation_test(same, base, seed=1) > 0.05
    best, p = compare_to_best({"a": base, "b": better})
    assert best == "b" and p["b"] is None and p["a"] is not None and p["a"] < 0.001


def test_rows_to_markdown_and_csv(tmp_path: Path) -> None:
    cells = {"prauc": {"mean": 0.71, "std": 0.02}, "jaccard": {"mean": 0.45, "std": 0.01}}
    rows = [
        Row("lr", "0.5", 0.5, "all", 10, cells, seeds=3, best=True, extra={"parameters": 1200}),
        Row("lr", "validation", 0.35, "all", 10, cells, seeds=3, best=True),
        Row("pop", "0.5", 0.5, "all", 10, cells, seeds=3, p_value=0.0004),
    ]
    lines = markdown_rows(rows, extra_columns=[("parameters", "parameters")])
    assert lines[0].startswith("| model | threshold | samples | seeds | PRAUC")
    assert "| **lr** | validation (0.35) | 10 | 3 | 0.7100 ± 0.0200 |" in lines[3]
    assert lines[2].endswith("| best | 1,200 |") and "< 0.001" in lines[4]
    assert format_stat(None) == "-"
    write_csv(tmp_path / "r.csv", rows, [{"model": "t", "status": "not run", "reason": "x"}])
    read = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["rule"] for r in read] == ["0.5", "validation", "0.5", ""]
    assert read[2]["p_prauc_vs_best"] == "0.0004" and read[3]["status"] == "not run"
