"""``leader evaluate``: the DESIGN.md metrics of a trained model, plus its efficiency.

Metrics on the test split at threshold 0.5 and at the threshold chosen on validation
(Jaccard), each for the whole test set, single-visit and multi-visit samples, with 10
rounds of a random 80% (mean and std); a DDI-safe row (``leader.safety``) at the chosen
threshold; and efficiency: parameters, single-patient latency and batch throughput on
this CPU. Works for student runs and saved baselines (``leader.baselines.registry``).

``evaluate_probabilities`` is the one scoring function of every model (``leader
benchmark`` uses it too). ``evaluate_folds``: patient-level K-fold cross-validation (issue
13): the run's model retrained on each fold with its own config, mean ± std over folds.

>>> report = evaluate_run(Path("runs/student"), Path("data/mimic3"))      # doctest: +SKIP
>>> report["results"]["at_validation"]["all"]["rounds"]["prauc"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leader.data.store import Sample, VisitDataset
from leader.errors import LeaderError
from leader.metrics import AVERAGES, METRICS, best_threshold, compute, evaluate_groups


def evaluate_probabilities(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    single_visit: Sequence[bool],
    ddi: np.ndarray | None,
    threshold: float,
    n_rounds: int = 10,
    seed: int = 0,
    threshold_rule: str = "validation",
    predicted: np.ndarray | None = None,
    patients: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Grouped metrics at 0.5 and at ``threshold``; a DDI-safe row when there are DDI pairs.

    ``threshold_rule`` says where ``threshold`` came from: "validation" (chosen there) or
    "fixed" (the paper's protocol: 0.3 for the student); the rows stay under
    ``at_validation`` either way. ``predicted``: the sets a decoder chose itself (LEAP,
    COGNet, MICRON); they replace the 0.5 rule (``set_rule`` "decoded", the default
    threshold None) while PRAUC ranks by ``y_prob``, the model's own probabilities.
    ``patients``: a patient id per sample, to average per patient first (``--average
    patient``; :func:`leader.metrics.compute`).
    """
    decoded = predicted is not None
    out: dict[str, Any] = {
        "thresholds": {"default": None if decoded else 0.5, "validation": float(threshold)},
        "threshold_rule": threshold_rule,
        "set_rule": "decoded" if decoded else "threshold",
        "average": "sample" if patients is None else "patient",
        "results": {
            "at_0.5": evaluate_groups(
                y_true, y_prob, single_visit, 0.5, ddi, n_rounds, seed, predicted, patients
            ),
            "at_validation": evaluate_groups(
                y_true, y_prob, single_visit, threshold, ddi, n_rounds, seed, None, patients
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
            "metrics": compute(
                y_true, y_prob, threshold, ddi, predicted=selected, patients=patients
            ),
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
    protocol: str = "default",
    average: str = "sample",
) -> dict[str, Any]:
    """Everything ``leader evaluate`` reports, as a JSON-ready dict.

    ``timing``: (single-patient calls for the latency, samples in the throughput batch).
    ``protocol``: "default" scores at the threshold chosen on validation, "paper"
    at the paper's fixed one (student 0.3, any other model 0.5; ``leader.protocol``).
    ``average``: "sample" or "patient" (:func:`leader.metrics.compute`). A model that
    decodes its own set (LEAP, COGNet, MICRON) is scored on that set instead of at 0.5.
    """
    from leader.baselines.base import scores_and_sets
    from leader.models import load, read_decision, read_header
    from leader.protocol import PAPER_STUDENT, PAPER_TEACHER_THRESHOLD, check

    check(protocol)
    check_average(average)
    name = read_header(run_dir).model_type
    model = load(run_dir)
    decision = read_decision(run_dir)
    dataset = VisitDataset.load(dataset_dir)
    config = getattr(model, "config", None)
    mode = getattr(config, "sample_mode", "") or dataset.default_sample_mode
    samples = dataset.samples(split, mode)  # type: ignore[arg-type]
    if not samples:
        raise LeaderError(f"{dataset_dir}: the {split} split has no samples to evaluate")
    fixed = protocol == "paper"
    val = dataset.samples("val", mode)  # type: ignore[arg-type]
    val_prob = np.asarray(model.predict_proba(val), dtype=np.float64) if val else None
    if fixed:  # the authors' fixed thresholds
        threshold = PAPER_STUDENT["threshold"] if name == "leader_s" else PAPER_TEACHER_THRESHOLD
    elif val_prob is not None:
        # The same rule for every model (a stored decision may hold a fixed 0.5).
        threshold = best_threshold(dataset.targets(val), val_prob)
    else:
        threshold = decision.threshold if decision is not None else 0.5
    y_true = dataset.targets(samples)
    y_prob, sets = scores_and_sets(model, samples)
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
            "fixed" if fixed else "validation",
            predicted=sets,
            patients=[s.patient_id for s in samples] if average == "patient" else None,
        ),
    }
    calibrated = _calibration(run_dir, dataset, val, val_prob, y_true, y_prob)
    if calibrated is not None:
        report["calibration"] = calibrated
    if efficiency:
        report["efficiency"] = measure_efficiency(model, samples, *timing)
        if name == "leader_s":
            student = model.model  # the nn.Module behind the registry's adapter
            report["efficiency"]["parameters_with_projector"] = student.num_parameters(
                inference=False
            )
    return report


def _calibration(
    run_dir: Path,
    dataset: VisitDataset,
    val: Sequence[Sample],
    val_prob: np.ndarray | None,
    y_true: np.ndarray,
    y_prob: np.ndarray,
) -> dict[str, Any] | None:
    """ECE/Brier before and after calibration and the conformal sets on the evaluated
    split: with the run's calibration.json, else one fitted on validation now (not saved)."""
    from leader.calibration import calibration_report, fit_calibration, read_calibration

    calibration = read_calibration(run_dir)
    source = "calibration.json"
    if calibration is None:
        if val_prob is None:
            return None
        groups = [s.patient_id for s in val]
        calibration = fit_calibration(dataset.targets(val), val_prob, groups)
        source = "fitted on validation by evaluate (no calibration.json beside the model)"
    return calibration_report(calibration, y_true, y_prob, source=source)


def check_average(average: str) -> str:
    """``--average``: sample or patient, or an error naming both."""
    if average not in AVERAGES:
        raise LeaderError(f"--average: {average!r} is not one of {', '.join(AVERAGES)}")
    return average


ROW_METRICS: tuple[str, ...] = ("prauc", "jaccard", "f1", "ddi_rate", "avg_med")


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of the rounds (mean ± std) per threshold and group."""
    spread = "folds" if "folds" in report else "rounds of 80%"
    lines = [
        f"{report['model']} on {report['split']} ({report['samples']} samples; "
        f"mean ± std over {spread})",
        f"{'threshold':<19}{'group':<14}{'n':>6}  " + "".join(f"{m:>17}" for m in ROW_METRICS),
    ]
    rule = report.get("threshold_rule", "validation")
    for key, label in (("at_0.5", "fixed"), ("at_validation", rule)):
        value = report["thresholds"]["default" if key == "at_0.5" else "validation"]
        if value is None:  # a decoder's own set
            label, value = "decoded set", float("nan")
        for group, result in report["results"][key].items():
            stats = result["rounds"] or result.get("folds")  # folds: mean ± std over folds
            if stats is None:
                continue
            cells = "".join(
                f"{stats[m]['mean']:>10.4f}±{stats[m]['std']:<6.4f}" for m in ROW_METRICS
            )
            shown = label if value != value else label + f" ({value:g})"  # nan: no threshold
            lines.append(f"{shown:<19}{group:<14}{result['samples']:>6}  {cells}")
    if "ddi_safe" in report:
        m = report["ddi_safe"]["metrics"]
        lines.append("DDI-safe selection: " + ", ".join(f"{k} {m[k]:.4f}" for k in ROW_METRICS))
    lines += calibration_lines(report.get("calibration"))
    eff = report.get("efficiency")
    if eff:
        lines.append(
            f"efficiency: {eff['parameters']} parameters, latency {eff['latency_ms']} ms "
            f"per patient, {eff['throughput_per_s']} patients/s batched "
            f"({eff['threads']} threads)"
        )
    return "\n".join(lines)


def calibration_lines(calibrated: dict[str, Any] | None) -> list[str]:
    """Plain-text lines: ECE/Brier before and after calibration, conformal sets per alpha."""
    if not calibrated:
        return []
    before, after = calibrated["test"]["before"], calibrated["test"]["after"]
    lines = [
        f"calibration: {calibrated['method']} ({calibrated['source']}); "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
        f"Brier {before['brier']:.5f} -> {after['brier']:.5f}"
    ]
    for row in calibrated.get("conformal", []):
        if row["miss_rate"] is None:
            continue
        lines.append(
            f"conformal set, miss rate <= {row['alpha']:g}: observed {row['miss_rate']:.4f} "
            f"± {row['miss_rate_se'] or 0:.4f} (SE), mean size {row['set_size']:.2f}, "
            f"threshold {row['threshold']:.4f} ({row['calibration_visits']} calibration visits)"
        )
    return lines


# ------------------------------------------------------------------ K-fold cross-validation


def fold_splits(dataset: VisitDataset, folds: int, seed: int = 42) -> list[dict[str, list[str]]]:
    """Patient-level K-fold splits: fold k tests on the k-th of K shuffled patient parts and
    trains on the others, a validation share carved from the training part.

    The validation share is the dataset's own val / (train + val) (0.1 when it has no
    validation split), at least one patient. Every patient is tested exactly once.
    """
    patients = sorted({p for split in dataset.splits.values() for p in split})
    if folds < 2:
        raise LeaderError(f"--folds must be at least 2 (got {folds}); 0 keeps the dataset's split")
    if folds > len(patients):
        raise LeaderError(f"--folds {folds}: the dataset has only {len(patients)} patients")
    train, val = len(dataset.splits.get("train", [])), len(dataset.splits.get("val", []))
    val_share = val / (train + val) if val else 0.1
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    parts = [order[k::folds] for k in range(folds)]
    out = []
    for k, test in enumerate(parts):
        rest = [p for j, part in enumerate(parts) if j != k for p in part]
        n_val = max(1, int(round(val_share * len(rest))))
        out.append(
            {"train": sorted(rest[n_val:]), "val": sorted(rest[:n_val]), "test": sorted(test)}
        )
    return out


def fold_dataset(dataset: VisitDataset, splits: dict[str, list[str]], folder: Path) -> VisitDataset:
    """The dataset with ``splits``, written to ``folder`` (models that read a directory)."""
    fold = dataclasses.replace(dataset, splits=splits, path=None)
    fold.manifest = {**dataset.manifest, "folds_of": str(dataset.path)}
    return VisitDataset.load(fold.save(folder))


def _retrain(run_dir: Path, data: VisitDataset, out: Path, seed: int) -> Any:
    """A fresh model of the run's type and config (``seed`` replaced) trained on ``data``."""
    from leader.config import replace
    from leader.models import load, read_header

    name = read_header(run_dir).model_type
    metrics_file = run_dir / "metrics.json"
    if name == "leader_s" and metrics_file.exists():
        if json.loads(metrics_file.read_text(encoding="utf-8")).get("distillation"):
            raise LeaderError(
                f"{run_dir}: this student was distilled from teacher features of the dataset's "
                "own split; K-fold would need a teacher per fold. Evaluate it without --folds, "
                "or a run trained with --alpha 0"
            )
    model = load(run_dir)
    fresh = type(model)(replace(model.config, seed=seed))
    fresh.fit(data, out, log=lambda _: None)
    return fresh


def evaluate_folds(
    run_dir: Path,
    dataset_dir: Path,
    folds: int,
    work_dir: Path,
    n_rounds: int = 10,
    seed: int = 42,
    average: str = "sample",
) -> dict[str, Any]:
    """K-fold cross-validation of a run's model: retrained on each fold with its config.

    Per fold: the threshold chosen on the fold's validation part, the metrics of the fold's
    test part at 0.5 and at that threshold (``evaluate_probabilities``). Summary: mean ± std
    over folds of each fold's whole-test-part metrics.
    """
    from leader.baselines.base import scores_and_sets
    from leader.models import read_header
    from leader.results import mean_std

    check_average(average)
    name = read_header(run_dir).model_type
    dataset = VisitDataset.load(dataset_dir)
    per_fold = []
    for k, splits in enumerate(fold_splits(dataset, folds, seed)):
        data = fold_dataset(dataset, splits, work_dir / f"fold{k}" / "data")
        fitted = _retrain(Path(run_dir), data, work_dir / f"fold{k}" / "model", seed)
        val, test = data.samples("val"), data.samples("test")
        threshold = best_threshold(data.targets(val), fitted.predict_proba(val))
        y_prob, sets = scores_and_sets(fitted, test)
        scored = evaluate_probabilities(
            data.targets(test), y_prob, [s.is_single_visit for s in test],
            data.ddi_matrix(), threshold, n_rounds, seed, predicted=sets,
            patients=[s.patient_id for s in test] if average == "patient" else None,
        )  # fmt: skip
        scored.pop("ddi_safe", None)
        per_fold.append({"fold": k, "test_patients": len(splits["test"]), **scored})
    results: dict[str, Any] = {}
    for rule in ("at_0.5", "at_validation"):
        results[rule] = {}
        for group in ("all", "single_visit", "multi_visit"):
            scored_folds = [f["results"][rule][group] for f in per_fold]
            with_samples = [g for g in scored_folds if g["metrics"] is not None]
            results[rule][group] = {
                "samples": sum(g["samples"] for g in scored_folds),
                "folds_with_samples": len(with_samples),
                "metrics": None,
                "rounds": None,
                "folds": {m: mean_std(g["metrics"][m] for g in with_samples) for m in METRICS}
                if with_samples
                else None,
            }
    thresholds = [f["thresholds"]["validation"] for f in per_fold]
    decoded = any(f.get("set_rule") == "decoded" for f in per_fold)
    return {
        "model": name,
        "run": str(run_dir),
        "dataset": str(dataset_dir),
        "split": f"{folds}-fold cross-validation by patient",
        "samples": results["at_0.5"]["all"]["samples"],
        "folds": folds,
        "thresholds": {
            "default": None if decoded else 0.5,
            "validation": float(np.mean(thresholds)),
        },
        "set_rule": "decoded" if decoded else "threshold",
        "average": average,
        "results": results,
        "per_fold": per_fold,
    }
