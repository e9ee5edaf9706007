"""``leader benchmark``: every model on one dataset, one results folder.

For each model and seed: train on the train split (early stopping on val PRAUC), score the
test split, and evaluate with the DESIGN.md metrics on the whole test set, single-visit and
multi-visit samples (each on the full group and on 10 rounds of a random 80%). Results are
pooled over seeds and rounds: mean and std of all ``seeds x rounds`` values.

Models are the registry's baselines plus ``leader_s`` (the student, trained here, or loaded
from ``student_run``) and ``leader_t`` (the teacher, scored from an existing features file).
A model that fails is reported with its reason and the run goes on.

The folder: ``results.md`` / ``results.csv`` / ``results.json`` (tables), ``prauc.png``,
``jaccard_ddi.png``, ``benchmark.json`` (resolved options), ``runs/<model>/seed<k>/`` (saved
model, ``train.log``, ``result.json``). With ``resume=True`` finished runs are reused.

>>> run_benchmark("data/mimic3", "results/mimic3", BenchmarkConfig(models=["lr"]))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leader.config import replace
from leader.data.store import Sample, VisitDataset, write_json_atomic
from leader.errors import LeaderError
from leader.metrics import METRICS, best_threshold, evaluate_groups

GROUPS: tuple[str, ...] = ("all", "single_visit", "multi_visit")
GROUP_TITLES = {
    "all": "All test samples",
    "single_visit": "Single-visit (first-time) samples",
    "multi_visit": "Multi-visit samples",
}
LEADER_MODELS: tuple[str, ...] = ("leader_s", "leader_t")
TABLE_METRICS: tuple[str, ...] = ("prauc", "jaccard", "f1", "ddi_rate", "avg_med")


@dataclass
class BenchmarkConfig:
    models: list[str] = field(default_factory=lambda: ["all"])  # names, or "all"
    seeds: int = 3  # training seeds per model (42, 43, ...)
    epochs: int | None = None  # override every trained model's epoch limit
    threshold: float = 0.5  # decision threshold for every model
    tune_thresholds: bool = False  # pick each model's threshold on validation Jaccard instead
    rounds: int = 10  # evaluation rounds of a random 80% of the test samples
    smiles: str | None = None  # atc3_smiles.csv-format file for SafeDrug / MoleRec
    allow_missing_molecules: bool = False  # molecule models: drugs without SMILES get none
    teacher_features: str | None = None  # LEADER(T) probabilities (+ hidden for distillation)
    student_run: str | None = None  # evaluate this LEADER(S) run instead of training one
    threads: int = 0  # torch CPU threads (0 = torch's default)
    resume: bool = False  # reuse runs/<model>/seed<k>/result.json from an earlier run


def resolve_models(requested: Sequence[str]) -> list[str]:
    from leader.baselines.registry import MODELS

    known = [*MODELS, *LEADER_MODELS]
    names: list[str] = []
    for item in requested:
        for name in (n.strip().lower().replace("-", "_") for n in item.split(",")):
            if not name:
                continue
            if name == "all":
                names.extend(known)
            elif name in known:
                names.append(name)
            else:
                raise LeaderError(
                    f"--models: unknown model {name!r}; known: all, {', '.join(known)}"
                )
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------ one model run


@dataclass
class Scored:
    """A trained model's output on the test split."""

    probabilities: np.ndarray  # (test samples, drugs)
    threshold: float
    parameters: int | None
    train_seconds: float | None
    predict_seconds: float | None  # None when nothing ran (scores read from a file)


def _train_baseline(
    name: str,
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    run_dir: Path,
    log: Callable[[str], None],
) -> Scored:
    from leader.baselines.registry import create

    overrides: dict[str, Any] = {"seed": seed, "threads": config.threads}
    if config.epochs is not None:
        overrides["epochs"] = config.epochs
    if config.smiles is not None:
        overrides["smiles"] = config.smiles
    overrides["allow_missing_molecules"] = config.allow_missing_molecules
    model = create(name, **overrides)
    started = time.perf_counter()
    model.fit(dataset, log=log)  # type: ignore[call-arg]
    train_seconds = time.perf_counter() - started
    model.save_pretrained(run_dir / "model")
    test = dataset.samples("test")
    started = time.perf_counter()
    probabilities = model.predict_proba(test)
    predict_seconds = time.perf_counter() - started
    threshold = config.threshold
    if config.tune_thresholds and dataset.samples("val"):
        val = dataset.samples("val")
        threshold = best_threshold(dataset.targets(val), model.predict_proba(val))
    return Scored(probabilities, threshold, model.num_parameters(), train_seconds, predict_seconds)


def _student(
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    run_dir: Path,
    log: Callable[[str], None],
) -> Scored:
    try:
        from leader.models import load_deployed
        from leader.student import StudentConfig, train_student
    except ImportError as exc:
        raise LeaderError(
            f"LEADER(S) not available: leader.student cannot be imported ({exc})"
        ) from exc
    train_seconds: float | None = None
    if config.student_run:
        source = Path(config.student_run)
    else:
        if dataset.path is None:
            raise LeaderError("LEADER(S) needs a dataset directory on disk")
        changes: dict[str, Any] = {"seed": seed, "threads": config.threads}
        if config.epochs is not None:
            changes["epochs"] = config.epochs
        student_config = replace(
            StudentConfig(), choose_threshold=config.tune_thresholds, **changes
        )
        features = Path(config.teacher_features) if config.teacher_features else None
        started = time.perf_counter()
        source = train_student(dataset.path, run_dir / "model", student_config, features, log=log)
        train_seconds = time.perf_counter() - started
    model = load_deployed(source)
    test = dataset.samples("test")
    started = time.perf_counter()
    probabilities = model.predict_proba(test)
    predict_seconds = time.perf_counter() - started
    threshold = float(model.threshold) if config.tune_thresholds else config.threshold
    return Scored(probabilities, threshold, model.num_parameters(), train_seconds, predict_seconds)


def read_teacher_probabilities(
    path: Path, samples: Sequence[Sample], drug_codes: Sequence[str] | None = None
) -> np.ndarray:
    """Rows of the teacher features file's ``probabilities`` for ``samples``, in order.

    With ``drug_codes`` and a ``medication_codes`` metadata entry, columns are put in
    ``drug_codes`` order (an error when the two vocabularies differ).
    """
    from leader.teacher.features import read_features

    tensors, metadata = read_features(path, require=("probabilities",))
    probabilities, ids = tensors["probabilities"], list(metadata["sample_ids"])
    row = {sample_id: i for i, sample_id in enumerate(ids)}
    missing = [s.sample_id for s in samples if s.sample_id not in row]
    if missing:
        raise LeaderError(
            f"{path}: {len(missing)} of {len(samples)} test samples have no teacher row "
            f"(first: {', '.join(missing[:5])}); run `leader teacher predict` on the test split"
        )
    probabilities = probabilities[[row[s.sample_id] for s in samples]].astype(np.float64)
    if drug_codes is not None and "medication_codes" in metadata:
        file_codes = list(metadata["medication_codes"])
        if sorted(file_codes) != sorted(drug_codes):
            raise LeaderError(
                f"{path}: its medication_codes differ from the dataset's drug vocabulary "
                f"({len(file_codes)} vs {len(drug_codes)} codes); predict with a teacher trained "
                "on this dataset"
            )
        column = {code: i for i, code in enumerate(file_codes)}
        probabilities = probabilities[:, [column[c] for c in drug_codes]]
    return probabilities


def _teacher(dataset: VisitDataset, config: BenchmarkConfig) -> Scored:
    if not config.teacher_features:
        raise LeaderError("LEADER(T) needs --teacher-features FILE (from `leader teacher predict`)")
    path = Path(config.teacher_features)
    test = dataset.samples("test")
    codes = dataset.vocab.codes["medication"]
    probabilities = read_teacher_probabilities(path, test, codes)
    drugs = len(codes)
    if probabilities.shape[1] != drugs:
        raise LeaderError(f"{path}: {probabilities.shape[1]} drug columns, dataset has {drugs}")
    threshold = config.threshold
    if config.tune_thresholds:
        val = dataset.samples("val")
        try:
            val_probabilities = read_teacher_probabilities(path, val, codes)
            threshold = best_threshold(dataset.targets(val), val_probabilities)
        except LeaderError:
            pass  # no validation rows in the file: keep the fixed threshold
    # Scored from a file: the teacher's training and inference costs are not measured here.
    return Scored(probabilities, threshold, None, None, None)


def run_one(
    name: str,
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Train/score/evaluate one model with one seed; never raises for a model's failure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = (run_dir / "train.log").open("w", encoding="utf-8")

    def log(message: str) -> None:
        log_file.write(message + "\n")
        log_file.flush()

    try:
        if name == "leader_s":
            scored = _student(seed, dataset, config, run_dir, log)
        elif name == "leader_t":
            scored = _teacher(dataset, config)
        else:
            scored = _train_baseline(name, seed, dataset, config, run_dir, log)
        test = dataset.samples("test")
        groups = evaluate_groups(
            dataset.targets(test),
            scored.probabilities,
            [s.is_single_visit for s in test],
            scored.threshold,
            dataset.ddi_matrix(),
            n_rounds=config.rounds,
            seed=seed,
        )
        result: dict[str, Any] = {
            "model": name,
            "seed": seed,
            "status": "ok",
            "threshold": scored.threshold,
            "parameters": scored.parameters,
            "train_seconds": scored.train_seconds,
            "predict_seconds": scored.predict_seconds,
            "patients_per_second": len(test) / scored.predict_seconds
            if scored.predict_seconds
            else None,
            "groups": groups,
        }
    except Exception as exc:  # a failing model is reported, the benchmark goes on
        log(traceback.format_exc())
        reason = str(exc) if isinstance(exc, LeaderError) else f"{type(exc).__name__}: {exc}"
        result = {"model": name, "seed": seed, "status": "failed", "reason": reason}
    finally:
        log_file.close()
    write_json_atomic(run_dir / "result.json", result)
    return result


# ------------------------------------------------------------------------ aggregation


def _pooled(runs: list[dict[str, Any]], group: str, metric: str) -> dict[str, float] | None:
    """Mean and std over all seeds x rounds values, from each seed's round mean and std."""
    stats = [r["groups"][group]["rounds"] for r in runs if r["groups"][group]["rounds"]]
    if not stats:
        return None
    means = np.array([s[metric]["mean"] for s in stats])
    stds = np.array([s[metric]["std"] for s in stats])
    # Equal rounds per seed: total variance = mean within-seed variance + variance of means.
    return {"mean": float(means.mean()), "std": float(math.sqrt(np.mean(stds**2) + means.var()))}


def _mean_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def aggregate(results: list[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in models:
        runs = [r for r in results if r["model"] == name]
        ok = [r for r in runs if r["status"] == "ok"]
        if not ok:
            reasons = sorted({r.get("reason", "") for r in runs})
            table[name] = {"status": "failed", "reason": "; ".join(reasons) or "not run"}
            continue
        entry: dict[str, Any] = {
            "status": "ok",
            "seeds": [r["seed"] for r in ok],
            "failed_seeds": [r["seed"] for r in runs if r["status"] != "ok"],
            "threshold": _mean_of(ok, "threshold"),
            "parameters": ok[0]["parameters"],
            "train_seconds": _mean_of(ok, "train_seconds"),
            "patients_per_second": _mean_of(ok, "patients_per_second"),
            "groups": {},
        }
        for group in GROUPS:
            samples = ok[0]["groups"][group]["samples"]
            entry["groups"][group] = {
                "samples": samples,
                **({m: _pooled(ok, group, m) for m in METRICS} if samples else {}),
            }
        table[name] = entry
    return table


# ------------------------------------------------------------------------ writing


def _cell(value: dict[str, float] | None) -> str:
    return "-" if value is None else f"{value['mean']:.4f} ± {value['std']:.4f}"


def _number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def write_markdown(path: Path, table: dict[str, Any], header: str) -> None:
    lines = [header, ""]
    for group in GROUPS:
        lines += [f"## {GROUP_TITLES[group]}", ""]
        lines.append(
            "| model | samples | "
            + " | ".join(TABLE_METRICS)
            + " | parameters | train s | patients/s |"
        )
        lines.append("|---" * (len(TABLE_METRICS) + 5) + "|")
        for name, entry in table.items():
            if entry["status"] != "ok":
                continue
            g = entry["groups"][group]
            cells = [_cell(g.get(m)) for m in TABLE_METRICS]
            lines.append(
                f"| {name} | {g['samples']} | "
                + " | ".join(cells)
                + f" | {_number(entry['parameters'])} | {_number(entry['train_seconds'])}"
                + f" | {_number(entry['patients_per_second'], 0)} |"
            )
        lines.append("")
    failed = {n: e for n, e in table.items() if e["status"] != "ok"}
    if failed:
        lines += ["## Failed", ""]
        lines += [f"- **{name}**: {entry['reason']}" for name, entry in failed.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_csv(path: Path, table: dict[str, Any]) -> None:
    import csv

    columns = ["model", "status", "group", "samples"]
    for metric in METRICS:
        columns += [f"{metric}_mean", f"{metric}_std"]
    columns += ["threshold", "parameters", "train_seconds", "patients_per_second", "reason"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for name, entry in table.items():
            if entry["status"] != "ok":
                writer.writerow({"model": name, "status": "failed", "reason": entry["reason"]})
                continue
            for group in GROUPS:
                g = entry["groups"][group]
                row: dict[str, Any] = {
                    "model": name,
                    "status": "ok",
                    "group": group,
                    "samples": g["samples"],
                }
                for metric in METRICS:
                    value = g.get(metric)
                    row[f"{metric}_mean"] = value["mean"] if value else ""
                    row[f"{metric}_std"] = value["std"] if value else ""
                for key in ("threshold", "parameters", "train_seconds", "patients_per_second"):
                    row[key] = entry[key] if entry[key] is not None else ""
                writer.writerow(row)


def write_plots(out: Path, table: dict[str, Any]) -> None:
    from leader.optional import available

    if not available("matplotlib"):  # leader[plots] not installed: tables only
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {n: e for n, e in table.items() if e["status"] == "ok" and e["groups"]["all"]["samples"]}
    names = list(ok)
    prauc = [ok[n]["groups"]["all"]["prauc"] for n in names]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.5))
    axes.bar(names, [p["mean"] for p in prauc], yerr=[p["std"] for p in prauc], capsize=3)
    axes.set_ylabel("PRAUC (test, mean ± std)")
    axes.set_ylim(0, 1)
    axes.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(out / "prauc.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(5, 4))
    for name in names:
        jaccard, ddi = ok[name]["groups"]["all"]["jaccard"], ok[name]["groups"]["all"]["ddi_rate"]
        axes.errorbar(
            ddi["mean"], jaccard["mean"], xerr=ddi["std"], yerr=jaccard["std"], fmt="o", capsize=2
        )
        axes.annotate(
            name,
            (ddi["mean"], jaccard["mean"]),
            fontsize=8,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axes.set_xlabel("DDI rate (lower is safer)")
    axes.set_ylabel("Jaccard")
    figure.tight_layout()
    figure.savefig(out / "jaccard_ddi.png", dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------------ entry point


def run_benchmark(
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: BenchmarkConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every requested model x seed, write the results folder, return the table."""
    if config.seeds < 1:
        raise LeaderError("--seeds must be at least 1")
    dataset = VisitDataset.load(dataset_dir)
    if not dataset.samples("test"):
        raise LeaderError(f"{dataset_dir}: the test split has no samples; nothing to evaluate")
    models = resolve_models(config.models)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "benchmark.json",
        {"dataset": str(Path(dataset_dir).resolve()), "models": models, **asdict(config)},
    )
    results: list[dict[str, Any]] = []
    for name in models:
        # Scoring from a file or a given run has no seed to vary.
        once = name == "leader_t" or (name == "leader_s" and config.student_run)
        for seed in [42] if once else range(42, 42 + config.seeds):
            run_dir = out / "runs" / name / f"seed{seed}"
            cached = run_dir / "result.json"
            if config.resume and cached.exists():
                result = json.loads(cached.read_text(encoding="utf-8"))
            else:
                result = run_one(name, seed, dataset, config, run_dir)
            results.append(result)
            if result["status"] == "ok":
                m = result["groups"]["all"]["metrics"]
                log(
                    f"{name} seed {seed}: PRAUC {m['prauc']:.4f} Jaccard {m['jaccard']:.4f} "
                    f"F1 {m['f1']:.4f} DDI {m['ddi_rate']:.4f}"
                )
            else:
                log(f"{name} seed {seed}: FAILED: {result['reason']}")
                break  # the other seeds would fail the same way
    table = aggregate(results, models)
    stats = dataset.stats
    header = (
        f"# Benchmark: {Path(dataset_dir).name}\n\n"
        f"Test samples: {len(dataset.samples('test'))}; seeds: {config.seeds}; rounds: "
        f"{config.rounds} x 80%; threshold: "
        f"{'tuned on validation Jaccard' if config.tune_thresholds else config.threshold}; "
        f"drugs: {dataset.vocab.size('medication')}; DDI source: {dataset.ddi_source}; "
        f"patients: {stats.get('patients', '?')}. Cells: mean ± std over seeds x rounds."
    )
    write_json_atomic(
        out / "results.json", {"config": asdict(config), "models": table, "runs": results}
    )
    write_markdown(out / "results.md", table, header)
    write_csv(out / "results.csv", table)
    write_plots(out, table)
    return table
