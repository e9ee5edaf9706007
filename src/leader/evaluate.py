"""``leader evaluate``: the DESIGN.md metrics of a trained model, plus its efficiency.

Metrics on the test split at threshold 0.5 and at the threshold chosen on validation
(Jaccard), each for the whole test set, single-visit and multi-visit samples, with 10
rounds of a random 80% (mean and std); a DDI-safe row (``leader.safety``) at the chosen
threshold; and efficiency: parameters, single-patient latency and batch throughput on
this CPU. Works for student runs and saved baselines (``leader.baselines.registry``).

>>> report = evaluate_run(Path("runs/student"), Path("data/mimic3"))      # doctest: +SKIP
>>> report["results"]["at_validation"]["all"]["rounds"]["prauc"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leader.data.store import Sample, VisitDataset
from leader.errors import LeaderError
from leader.metrics import best_threshold, compute, evaluate_groups


def evaluate_probabilities(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    single_visit: Sequence[bool],
    ddi: np.ndarray | None,
    threshold: float,
    n_rounds: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Grouped metrics at 0.5 and at ``threshold``; a DDI-safe row when there are DDI pairs."""
    out: dict[str, Any] = {
        "thresholds": {"default": 0.5, "validation": float(threshold)},
        "results": {
            "at_0.5": evaluate_groups(y_true, y_prob, single_visit, 0.5, ddi, n_rounds, seed),
            "at_validation": evaluate_groups(
                y_true, y_prob, single_visit, threshold, ddi, n_rounds, seed
            ),
        },
    }
    if ddi is not None and np.asarray(ddi).any() and len(y_true):
        try:
            from leader.safety import DEFAULT_MARGIN, ddi_safe_select
        except ImportError:  # the safety layer is optional
            return out
        selected = ddi_safe_select(y_prob, ddi, threshold)
        out["ddi_safe"] = {
            "threshold": float(threshold),
            "margin": DEFAULT_MARGIN,
            "metrics": compute(y_true, y_prob, threshold, ddi, predicted=selected),
        }
    return out


def measure_efficiency(
    model: Any, samples: Sequence[Sample], latency_calls: int = 50, min_batch: int = 2000
) -> dict[str, Any]:
    """Parameters, median single-patient latency (ms) and batch throughput (patients/s)."""
    import torch

    if not samples:
        return {}
    one = [samples[0]]
    model.predict_proba(one)  # warm-up
    times = []
    for i in range(latency_calls):
        sample = [samples[i % len(samples)]]
        start = time.perf_counter()
        model.predict_proba(sample)
        times.append(time.perf_counter() - start)
    repeats = max(1, -(-min_batch // len(samples)))
    batch = list(samples) * repeats
    model.predict_proba(batch[: min(len(batch), 256)])  # warm-up
    start = time.perf_counter()
    model.predict_proba(batch)
    seconds = time.perf_counter() - start
    parameters = model.num_parameters() if hasattr(model, "num_parameters") else None
    return {
        "parameters": parameters,
        "latency_ms": round(1000 * statistics.median(times), 3),
        "throughput_per_s": round(len(batch) / max(seconds, 1e-9), 1),
        "batch_samples": len(batch),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def evaluate_run(
    run_dir: Path,
    dataset_dir: Path,
    split: str = "test",
    efficiency: bool = True,
    n_rounds: int = 10,
    seed: int = 0,
    timing: tuple[int, int] = (50, 2000),
) -> dict[str, Any]:
    """Everything ``leader evaluate`` reports, as a JSON-ready dict.

    ``timing``: (single-patient calls for the latency, samples in the throughput batch).
    """
    from leader.models import load, read_decision, read_header

    name = read_header(run_dir).model_type
    model = load(run_dir)
    decision = read_decision(run_dir)
    dataset = VisitDataset.load(dataset_dir)
    config = getattr(model, "config", None)
    mode = getattr(config, "sample_mode", "") or dataset.default_sample_mode
    samples = dataset.samples(split, mode)  # type: ignore[arg-type]
    if not samples:
        raise LeaderError(f"{dataset_dir}: the {split} split has no samples to evaluate")
    threshold = decision.threshold if decision is not None else None
    if threshold is None:
        val = dataset.samples("val", mode)  # type: ignore[arg-type]
        threshold = best_threshold(dataset.targets(val), model.predict_proba(val)) if val else 0.5
    y_true = dataset.targets(samples)
    y_prob = np.asarray(model.predict_proba(samples), dtype=np.float64)
    report: dict[str, Any] = {
        "model": name,
        "run": str(run_dir),
        "dataset": str(dataset_dir),
        "split": split,
        "sample_mode": mode,
        "samples": len(samples),
        **evaluate_probabilities(
            y_true,
            y_prob,
            [s.is_single_visit for s in samples],
            dataset.ddi_matrix(),
            float(threshold),
            n_rounds,
            seed,
        ),
    }
    if efficiency:
        report["efficiency"] = measure_efficiency(model, samples, *timing)
        if name == "leader_s":
            student = model.model  # the nn.Module behind the registry's adapter
            report["efficiency"]["parameters_with_projector"] = student.num_parameters(
                inference=False
            )
    return report


ROW_METRICS: tuple[str, ...] = ("prauc", "jaccard", "f1", "ddi_rate", "avg_med")


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the rounds (mean ± std) per threshold and group."""
    lines = [
        f"{report['model']} on {report['split']} ({report['samples']} samples)",
        f"{'threshold':<12}{'group':<14}{'n':>6}  " + "".join(f"{m:>17}" for m in ROW_METRICS),
    ]
    for key, label in (("at_0.5", "0.5"), ("at_validation", "validation")):
        value = report["thresholds"]["default" if key == "at_0.5" else "validation"]
        for group, result in report["results"][key].items():
            if result["rounds"] is None:
                continue
            cells = "".join(
                f"{result['rounds'][m]['mean']:>10.4f}±{result['rounds'][m]['std']:<6.4f}"
                for m in ROW_METRICS
            )
            lines.append(f"{label + f' ({value:g})':<12}{group:<14}{result['samples']:>6}  {cells}")
    if "ddi_safe" in report:
        m = report["ddi_safe"]["metrics"]
        lines.append("DDI-safe selection: " + ", ".join(f"{k} {m[k]:.4f}" for k in ROW_METRICS))
    eff = report.get("efficiency")
    if eff:
        lines.append(
            f"efficiency: {eff['parameters']} parameters, latency {eff['latency_ms']} ms "
            f"per patient, {eff['throughput_per_s']} patients/s batched "
            f"({eff['threads']} threads)"
        )
    return "\n".join(lines)
