"""``leader benchmark``: every model on one dataset under one protocol, one results folder.

The protocol (issue 13), the same for every model: train on the train split (each model's
own early stopping on validation PRAUC), score the validation and test splits, choose the
decision threshold maximising validation Jaccard (:func:`leader.metrics.best_threshold`),
then score the test split at threshold 0.5 *and* at that threshold with
:func:`leader.evaluate.evaluate_probabilities` (whole test set, single-visit and multi-visit
samples, 10 rounds of a random 80%). Every model, LEADER(S) included, runs ``seeds`` times.
Cells are mean ± std over seeds x rounds; with ``folds=K`` (patient-level K-fold
cross-validation, validation carved from each training part) over the K folds of each
fold's whole test part (averaged over seeds). Each model's per-sample PRAUC (averaged over
seeds) is compared with the best model's by a paired sign-flip permutation test
(:mod:`leader.results`).

Models are the registry's baselines plus ``leader_s`` (the student, trained here, or loaded
from ``student_run``) and ``leader_t`` (the teacher, scored from a features file). A
student run or features file whose drug vocabulary or split differs from the dataset's is
refused (it would misalign drug columns or leak test patients). SafeDrug and MoleRec read
the dataset's molecules (``molecules.json``, or the shipped ``atc3_smiles.csv`` of an ATC3
dataset); drugs without one go without their molecule part unless
``allow_missing_molecules`` is off. A model that cannot run (LEADER(T) without features) is
listed as not run; one that fails is listed with its reason; the run goes on.

The folder: ``results.md`` / ``results.csv`` / ``results.json`` (tables), ``prauc.png``,
``jaccard_ddi.png``, ``run.json`` (resolved options, dataset checksums, versions), the card
``README.md``, ``runs/<model>/[fold<k>/]seed<s>/`` (saved model, ``train.log``,
``result.json``), ``folds/fold<k>/`` (each fold's dataset). With
``resume=True`` finished runs are reused.

>>> run_benchmark("data/mimic3", "results/mimic3", BenchmarkConfig(models=["lr"]))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leader.benchmark_config import BenchmarkConfig
from leader.calibration import (
    calibration_report,
    fit_calibration,
    markdown_table,
    plot_reliability,
    summarize,
)
from leader.config import replace
from leader.data.store import Sample, VisitDataset
from leader.errors import LeaderError
from leader.evaluate import evaluate_probabilities, fold_dataset, fold_splits
from leader.io import write_json_atomic
from leader.logs import run_log
from leader.metrics import METRICS, best_threshold, per_sample_prauc
from leader.results import (
    GROUP_TITLES,
    PERMUTATIONS,
    RULES,
    Row,
    compare_to_best,
    markdown_rows,
    mean_std,
    pooled,
    write_csv,
)
from leader.runinfo import write_model_card, write_run_info

GROUPS: tuple[str, ...] = tuple(GROUP_TITLES)
LEADER_MODELS: tuple[str, ...] = ("leader_s", "leader_t")
CALIBRATION_TEXT = (
    "Per seed, a calibration fitted on the validation split (none, temperature, per-drug "
    "Platt or isotonic: the lowest out-of-fold Brier score, `leader.calibration`) and the "
    "conformal risk control threshold fitted there too (`leader.conformal`; n = the "
    "validation visits); ECE (15 bins) and Brier score on test over every (visit, drug), "
    "before -> after; conformal sets: test miss rate (the mean fraction of a visit's drugs "
    "left out; guaranteed <= alpha in expectation) / mean set size. Mean ± std over seeds; "
    "reliability.png: the first seed's diagram."
)
EXTRA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("parameters", "parameters"),
    ("best_epoch", "best epoch"),
    ("epochs_run", "epochs"),
    ("train_seconds", "train s"),
    ("wall_seconds", "wall s"),
    ("cpu_seconds", "CPU s"),
    ("patients_per_second", "patients/s"),
)
# Each model's own probabilities, as its authors score it (PRAUC ranks by these); the
# decoders' sets are their own (rows "decoded set"), everyone else's a threshold's.
SCORING: dict[str, str] = {
    "popularity": "training frequencies (a floor; no model)",
    "previous_visit": "the last visit's drugs lifted by 0.5 over training frequencies (a floor)",
    "lr": "logistic regression per drug",
    "ecc": "classifier chains' probabilities averaged",
    "retain": "sigmoid of its logits",
    "gamenet": "sigmoid of its logits",
    "safedrug": "sigmoid of its logits",
    "molerec": "sigmoid of its logits",
    "micron": "the raw chained sigmoid (its authors' y_pred_prob), its set by its add/remove "
    "update",
    "leap": "the mean softmax over the 20 decoding steps (the reproduction's), its set decoded",
    "cognet": "per drug, its maximum over the beam's decoding steps, a decoded drug's at the "
    "step that chose it (the authors' recommend.py), its set the beam's",
    "leader_s": "sigmoid of its logits",
    "leader_t": "sigmoid of its logits (from the features file)",
}
# Config fields that pick between the released code and the paper: named in the row.
VARIANTS: dict[str, tuple[str, ...]] = {
    "retain": ("form",),
    "safedrug": ("ddi_weight",),
    "leap": ("scores",),
}
# Models submitted to the worker pool slowest first (measured on the MIMIC-III demo), so
# that the long ones do not start last.
SLOWEST_FIRST: tuple[str, ...] = (
    "molerec", "cognet", "safedrug", "leader_s", "gamenet", "micron", "leap", "retain", "ecc",
)  # fmt: skip
ATC3 = re.compile(r"^[A-Z][0-9]{2}[A-Z]$")


class NotRun(LeaderError):
    """A model that cannot run with what was given (listed as 'not run', not failed)."""


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


# ------------------------------------------------------------------------ inputs checked


def check_student_run(run: Path, dataset: VisitDataset) -> None:
    """Refuse a student run trained on another drug vocabulary or another split."""
    vocab_file, splits_file = run / "vocab.json", run / "splits.json"
    for file in (vocab_file, splits_file):
        if not file.exists():
            raise LeaderError(
                f"--student-run {run}: no {file.name}; cannot check it was trained on this "
                "dataset's drugs and split (train it again with `leader student train`)"
            )
    codes = json.loads(vocab_file.read_text(encoding="utf-8"))["medication"]["codes"]
    _same_drugs(codes, dataset, f"--student-run {vocab_file}")
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    seen = set(splits.get("train", [])) | set(splits.get("val", []))
    leaked = [p for p in dataset.splits.get("test", []) if p in seen]
    if leaked:
        raise LeaderError(
            f"--student-run {splits_file}: {len(leaked)} of this dataset's test patients were "
            f"in the run's training or validation split (first: {', '.join(leaked[:5])}); "
            "its scores would leak. Train the student on this dataset"
        )
    if any(sorted(splits.get(k, [])) != sorted(v) for k, v in dataset.splits.items()):
        raise LeaderError(
            f"--student-run {splits_file}: the run's patient split differs from the dataset's "
            "splits.json; train the student on this dataset"
        )


def check_teacher_features(path: Path, dataset: VisitDataset) -> None:
    """Refuse a features file of another drug vocabulary or predicted under another split."""
    from leader.teacher.features import read_features

    _, metadata = read_features(path)
    if "medication_codes" in metadata:
        codes = list(metadata["medication_codes"])
        if sorted(codes) != sorted(dataset.vocab.codes["medication"]):
            _same_drugs(codes, dataset, f"--teacher-features {path}")
    patient_split = {p: split for split, patients in dataset.splits.items() for p in patients}
    split_of = {
        f"{patient}:{visit}": patient_split.get(patient)
        for patient, visit in zip(
            dataset.visits["patient_id"], dataset.visits["visit_id"], strict=True
        )
    }
    moved = [
        (sample_id, recorded, split_of[sample_id])
        for sample_id, recorded in zip(
            metadata.get("sample_ids", []), metadata.get("splits", []), strict=False
        )
        if split_of.get(sample_id) is not None and recorded != split_of[sample_id]
    ]
    if moved:
        sample_id, recorded, now = moved[0]
        raise LeaderError(
            f"--teacher-features {path}: {len(moved)} samples were in another split when the "
            f"teacher predicted them (first: {sample_id} was {recorded!r}, is {now!r} here); "
            "a teacher trained on another split leaks test patients. Train and predict the "
            "teacher on this dataset"
        )


def _same_drugs(codes: Sequence[str], dataset: VisitDataset, source: str) -> None:
    ours = dataset.vocab.codes["medication"]
    if list(codes) == list(ours):
        return
    extra = sorted(set(codes) - set(ours))
    lacking = sorted(set(ours) - set(codes))
    detail = (
        f"{len(extra)} codes not in the dataset (first: {', '.join(extra[:5]) or '-'}), "
        f"{len(lacking)} dataset codes missing (first: {', '.join(lacking[:5]) or '-'})"
        if extra or lacking
        else "same codes in another order"
    )
    raise LeaderError(
        f"{source}: its drug vocabulary ({len(codes)} codes) differs from the dataset's "
        f"({len(ours)}): {detail}; drug columns would not line up. Use a run made on this "
        "dataset"
    )


# ------------------------------------------------------------------------ molecules


@dataclass
class Molecules:
    file: Path | None  # atc3,smiles CSV handed to SafeDrug / MoleRec
    source: str  # where the SMILES came from, for the table's notes
    missing: list[str]  # drugs with no parsable SMILES


def find_molecules(dataset: VisitDataset, config: BenchmarkConfig, out: Path) -> Molecules:
    """--smiles, else the dataset's molecules.json, else the shipped atc3_smiles.csv of the
    resources folder the dataset was prepared from (ATC3 drug vocabularies)."""
    drugs = dataset.vocab.codes["medication"]
    if config.smiles:
        file, source = Path(config.smiles), config.smiles
    elif dataset.molecules:
        file = out / "molecules.csv"
        _write_smiles_csv(file, dataset.molecules)
        source = f"the dataset's molecules.json (from {dataset.molecule_source})"
    else:
        resources = dataset.manifest.get("options", {}).get("resources")
        shipped = Path(resources) / "atc3_smiles.csv" if resources else None
        if shipped is None or not shipped.is_file() or not all(ATC3.match(d) for d in drugs):
            return Molecules(None, "none", [])
        file, source = shipped, f"{shipped} (ATC3 drug vocabulary)"
    return Molecules(file, source, _unparsable(drugs, file))


def _write_smiles_csv(path: Path, molecules: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["atc3", "smiles"])
        writer.writerows((drug, smiles) for drug, all_ in molecules.items() for smiles in all_)
    tmp.replace(path)


def _unparsable(drugs: Sequence[str], file: Path) -> list[str]:
    """Drugs without one RDKit-parsable SMILES in ``file`` ([] when RDKit is absent: the
    molecule models then fail with their own message)."""
    try:
        from leader.baselines.molecules import read_smiles, require_rdkit

        chem = require_rdkit()
        by_drug = read_smiles(file, "benchmark")
    except LeaderError:
        return []
    return [d for d in drugs if not any(chem.MolFromSmiles(s) for s in by_drug.get(d, []))]


# ------------------------------------------------------------------------ one model run


@dataclass
class Scored:
    """A trained model's output on the validation and test splits."""

    test: np.ndarray  # (test samples, drugs)
    val: np.ndarray | None  # None: no validation scores (LEADER(T) file without val rows)
    parameters: int | None
    train_seconds: float | None
    predict_seconds: float | None  # None when nothing ran (scores read from a file)
    test_sets: np.ndarray | None = None  # a decoder's own sets (None: threshold the scores)
    best_epoch: int | None = None
    epochs_run: int | None = None
    epoch_cap: int | None = None
    variant: str = ""  # e.g. "form=code": the released code's or the paper's set-up


def _train_baseline(
    name: str,
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    molecules: Molecules,
    run_dir: Path,
    log: Callable[[str], None],
) -> Scored:
    from leader.baselines.base import scores_and_sets
    from leader.baselines.registry import MOLECULE_MODELS, create

    overrides: dict[str, Any] = {
        "seed": seed,
        "threads": config.threads,
        **model_options(config.model_options).get(name, {}),
    }
    if config.epochs is not None:
        overrides["epochs"] = config.epochs
    if name in MOLECULE_MODELS:
        if molecules.file is None:
            raise NotRun(
                f"{name} reads molecules: the dataset records none (no SMILES for its drug "
                "codes); prepare it with --smiles FILE or give `leader benchmark --smiles FILE`"
            )
        overrides["smiles"] = str(molecules.file)
        overrides["allow_missing_molecules"] = config.allow_missing_molecules
    model = create(name, **overrides)
    started = time.perf_counter()
    model.fit(dataset, log=log)  # type: ignore[call-arg]
    train_seconds = time.perf_counter() - started
    model.save_pretrained(run_dir / "model")
    started = time.perf_counter()
    test, test_sets = scores_and_sets(model, dataset.samples("test"))
    predict_seconds = time.perf_counter() - started
    val = dataset.samples("val")
    fitted = getattr(model, "fit_result_", None)
    model_config = model.config
    return Scored(
        test,
        model.predict_proba(val) if val else None,
        model.num_parameters(),
        train_seconds,
        predict_seconds,
        test_sets,
        fitted.best_epoch if fitted is not None else None,
        fitted.epochs_run if fitted is not None else None,
        getattr(model_config, "epochs", None) if fitted is not None else None,
        ", ".join(f"{f}={getattr(model_config, f)}" for f in VARIANTS.get(name, ())),
    )


def model_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``MODEL.FIELD=VALUE`` items -> {model: {field: value}}, each value converted to the
    type of the field's default; an unknown model or field is an error naming the item."""
    from leader.baselines.registry import MODELS, default_config

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        name, _, field = key.strip().partition(".")
        name = name.lower().replace("-", "_")
        if not raw or not field or name not in MODELS:
            raise LeaderError(
                f"--model-options {item!r}: expected MODEL.FIELD=VALUE with MODEL one of "
                f"{', '.join(MODELS)}"
            )
        default = default_config(name)
        if not hasattr(default, field):
            raise LeaderError(f"--model-options {item!r}: {name} has no option {field!r}")
        current = getattr(default, field)
        value: Any = raw.strip()
        try:
            if isinstance(current, bool):
                value = value.lower() in ("1", "true", "yes")
            elif isinstance(current, int | float):
                value = type(current)(value)
        except ValueError as exc:
            raise LeaderError(f"--model-options {item!r}: {exc}") from exc
        out.setdefault(name, {})[field] = value
    return out


def _student(
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    run_dir: Path,
    log: Callable[[str], None],
) -> Scored:
    try:
        from leader.models import load
        from leader.student import StudentConfig, train_student
    except ImportError as exc:
        raise LeaderError(
            f"LEADER(S) not available: leader.student cannot be imported ({exc})"
        ) from exc
    train_seconds: float | None = None
    epoch_cap: int | None = None
    if config.student_run:
        source = Path(config.student_run)
    else:
        if dataset.path is None:
            raise LeaderError("LEADER(S) needs a dataset directory on disk")
        changes: dict[str, Any] = {"seed": seed, "threads": config.threads}
        if config.epochs is not None:
            changes["epochs"] = config.epochs
        student_config = replace(StudentConfig(), **changes)
        # Teacher features belong to the dataset's own split: not used on re-split folds.
        features = Path(config.teacher_features) if config.teacher_features else None
        if config.folds:
            features = None
        started = time.perf_counter()
        source = train_student(dataset.path, run_dir / "model", student_config, features, log=log)
        train_seconds = time.perf_counter() - started
        epoch_cap = student_config.train.epochs
    model = load(source)
    started = time.perf_counter()
    test = model.predict_proba(dataset.samples("test"))
    predict_seconds = time.perf_counter() - started
    val = dataset.samples("val")
    metrics_file = Path(source) / "metrics.json"
    trained = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.exists() else {}
    return Scored(
        test,
        model.predict_proba(val) if val else None,
        model.num_parameters(),
        train_seconds,
        predict_seconds,
        best_epoch=trained.get("best_epoch"),
        epochs_run=trained.get("epochs_run"),
        epoch_cap=epoch_cap if train_seconds is not None else None,
    )


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
        raise NotRun("not run: no teacher features (give --teacher-features FILE)")
    if config.folds:
        raise NotRun("not run: teacher features belong to the dataset's split, --folds re-splits")
    path = Path(config.teacher_features)
    codes = dataset.vocab.codes["medication"]
    test = read_teacher_probabilities(path, dataset.samples("test"), codes)
    if test.shape[1] != len(codes):
        raise LeaderError(f"{path}: {test.shape[1]} drug columns, dataset has {len(codes)}")
    try:
        val: np.ndarray | None = read_teacher_probabilities(path, dataset.samples("val"), codes)
    except LeaderError:
        val = None  # no validation rows in the file: no validation-threshold row
    # Scored from a file: the teacher's training and inference costs are not measured here.
    return Scored(test, val, None, None, None)


def run_one(
    name: str,
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    run_dir: Path,
    molecules: Molecules | None = None,
    fold: int | None = None,
) -> dict[str, Any]:
    """Train/score/evaluate one model with one seed; never raises for a model's failure."""
    head: dict[str, Any] = {"model": name, "seed": seed, "fold": fold}
    wall, cpu = time.perf_counter(), time.process_time()
    with run_log("benchmark", run_dir) as log:
        result = _run_logged(name, seed, dataset, config, run_dir, molecules, head, log)
    # This process's CPU time (all its threads): one model at a time runs in it.
    result["wall_seconds"] = round(time.perf_counter() - wall, 2)
    result["cpu_seconds"] = round(time.process_time() - cpu, 2)
    write_json_atomic(run_dir / "result.json", result)
    return result


def _run_logged(
    name: str,
    seed: int,
    dataset: VisitDataset,
    config: BenchmarkConfig,
    run_dir: Path,
    molecules: Molecules | None,
    head: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    try:
        if name == "leader_s":
            if config.student_run and config.folds:
                raise NotRun(
                    "not run: a given --student-run belongs to one split, --folds re-splits"
                )
            scored = _student(seed, dataset, config, run_dir, log)
        elif name == "leader_t":
            scored = _teacher(dataset, config)
        else:
            scored = _train_baseline(
                name, seed, dataset, config, molecules or Molecules(None, "none", []), run_dir, log
            )
        result = {"status": "ok", **head, **_score(scored, dataset, config, seed)}
    except NotRun as exc:
        result = {"status": "not_run", **head, "reason": str(exc).removeprefix("not run: ")}
    except Exception as exc:  # a failing model is reported, the benchmark goes on
        log(traceback.format_exc())
        reason = str(exc) if isinstance(exc, LeaderError) else f"{type(exc).__name__}: {exc}"
        result = {"status": "failed", **head, "reason": reason}
    return result


def _score(
    scored: Scored, dataset: VisitDataset, config: BenchmarkConfig, seed: int
) -> dict[str, Any]:
    """The one protocol: the validation threshold, then ``evaluate_probabilities``."""
    test, val = dataset.samples("test"), dataset.samples("val")
    y_true = dataset.targets(test)
    threshold = best_threshold(dataset.targets(val), scored.val) if scored.val is not None else None
    evaluated = evaluate_probabilities(
        y_true,
        scored.test,
        [s.is_single_visit for s in test],
        dataset.ddi_matrix(),
        threshold if threshold is not None else 0.5,
        config.rounds,
        seed,
        predicted=scored.test_sets,
        patients=[s.patient_id for s in test] if config.average == "patient" else None,
    )
    if threshold is None:
        evaluated["results"]["at_validation"] = None
        evaluated["thresholds"]["validation"] = None
    calibrated = None
    if scored.val is not None and len(val):  # fitted on validation, measured on test
        fitted = fit_calibration(dataset.targets(val), scored.val, [s.patient_id for s in val])
        calibrated = calibration_report(fitted, y_true, scored.test, source="validation")
    return {
        "calibration": calibrated,
        "thresholds": evaluated["thresholds"],
        "set_rule": evaluated["set_rule"],
        "average": evaluated["average"],
        "results": evaluated["results"],
        "variant": scored.variant,
        "best_epoch": scored.best_epoch,
        "epochs_run": scored.epochs_run,
        "epoch_cap": scored.epoch_cap,
        "parameters": scored.parameters,
        "train_seconds": scored.train_seconds,
        "predict_seconds": scored.predict_seconds,
        "patients_per_second": len(test) / scored.predict_seconds
        if scored.predict_seconds
        else None,
        "per_sample": {
            "sample_ids": [s.sample_id for s in test],
            "single_visit": [s.is_single_visit for s in test],
            "prauc": per_sample_prauc(y_true, scored.test).tolist(),
        },
    }


# ------------------------------------------------------------------------ aggregation


def _cell(ok: list[dict[str, Any]], rule: str, group: str, metric: str, folds: bool) -> Any:
    scored = [r for r in ok if r["results"].get(rule) and r["results"][rule][group]["rounds"]]
    if not scored:
        return None
    if not folds:  # mean ± std over seeds x rounds
        return pooled([r["results"][rule][group]["rounds"][metric] for r in scored])
    per_fold: dict[int, list[float]] = {}  # each fold's whole test part, mean over seeds
    for r in scored:
        per_fold.setdefault(r["fold"], []).append(r["results"][rule][group]["metrics"][metric])
    return mean_std(float(np.mean(v)) for v in per_fold.values())


def _mean_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def aggregate(
    results: list[dict[str, Any]], models: Sequence[str], folds: int = 0
) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in models:
        runs = [r for r in results if r["model"] == name]
        ok = [r for r in runs if r["status"] == "ok"]
        if not ok:
            status = "not_run" if any(r["status"] == "not_run" for r in runs) else "failed"
            reasons = sorted({r.get("reason", "") for r in runs})
            table[name] = {"status": status, "reason": "; ".join(reasons) or "not run"}
            continue
        first_of_fold = {r["fold"]: r for r in reversed(ok)}.values()
        decoded = any(r.get("set_rule") == "decoded" for r in ok)  # absent in older results
        entry: dict[str, Any] = {
            "status": "ok",
            "seeds": sorted({r["seed"] for r in ok}),
            "folds": sorted({r["fold"] for r in ok if r["fold"] is not None}),
            "failed_runs": [
                {"seed": r["seed"], "fold": r["fold"], "reason": r.get("reason", "")}
                for r in runs
                if r["status"] != "ok"
            ],
            "thresholds": {
                "at_0.5": None if decoded else 0.5,
                "at_validation": _mean_of([{"t": r["thresholds"]["validation"]} for r in ok], "t"),
            },
            "set_rule": "decoded" if decoded else "threshold",
            "variant": ok[0].get("variant", ""),
            "parameters": ok[0]["parameters"],
            "best_epoch": _mean_of(ok, "best_epoch"),
            "epochs_run": _mean_of(ok, "epochs_run"),
            "epoch_cap": ok[0].get("epoch_cap"),
            "runs_at_cap": sum(
                1 for r in ok if r.get("epoch_cap") and r.get("epochs_run") == r["epoch_cap"]
            ),
            "train_seconds": _mean_of(ok, "train_seconds"),
            "wall_seconds": _mean_of(ok, "wall_seconds"),
            "cpu_seconds": _mean_of(ok, "cpu_seconds"),
            "patients_per_second": _mean_of(ok, "patients_per_second"),
            "results": {},
        }
        for rule in RULES:
            entry["results"][rule] = {}
            for group in GROUPS:
                samples = sum(r["results"]["at_0.5"][group]["samples"] for r in first_of_fold)
                cells = (
                    {m: _cell(ok, rule, group, m, bool(folds)) for m in METRICS} if samples else {}
                )
                entry["results"][rule][group] = {"samples": samples, **cells}
        entry["per_sample"] = _mean_per_sample(ok)
        entry["calibration"] = summarize([r["calibration"] for r in ok if r.get("calibration")])
        table[name] = entry
    return table


def _mean_per_sample(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample PRAUC averaged over seeds (folds' test parts are disjoint: concatenated)."""
    values: dict[str, list[float]] = {}
    single: dict[str, bool] = {}
    for r in ok:
        part = r["per_sample"]
        for sample_id, flag, prauc in zip(
            part["sample_ids"], part["single_visit"], part["prauc"], strict=True
        ):
            values.setdefault(sample_id, []).append(prauc)
            single[sample_id] = flag
    ids = sorted(values)
    return {
        "sample_ids": ids,
        "single_visit": [single[i] for i in ids],
        "prauc": [float(np.mean(values[i])) for i in ids],
    }


def table_rows(table: dict[str, Any]) -> dict[str, list[Row]]:
    """Rows per group: each model at 0.5 and at its validation threshold, with its p-value
    against the group's best model (per-sample PRAUC, paired permutation test)."""
    ok = {n: e for n, e in table.items() if e["status"] == "ok"}
    rows: dict[str, list[Row]] = {}
    for group in GROUPS:
        per_sample = {}
        for name, entry in ok.items():
            part = entry["per_sample"]
            keep = [
                i
                for i, flag in enumerate(part["single_visit"])
                if group == "all" or flag == (group == "single_visit")
            ]
            per_sample[name] = (
                [part["sample_ids"][i] for i in keep],
                np.array([part["prauc"][i] for i in keep]),
            )
        common = set.intersection(*(set(ids) for ids, _ in per_sample.values())) if ok else set()
        aligned = {
            name: np.array([v for i, v in zip(ids, values, strict=True) if i in common])
            for name, (ids, values) in per_sample.items()
        }
        best, p_values = compare_to_best(aligned)
        rows[group] = []
        for name, entry in ok.items():
            if not entry["results"]["at_0.5"][group]["samples"]:
                continue
            extra = {key: entry.get(key) for key, _ in EXTRA_COLUMNS}
            variant = entry.get("variant", "")
            for rule, label in RULES.items():
                cells = entry["results"][rule][group]
                if not any(cells.get(m) for m in METRICS):
                    continue
                if rule == "at_0.5" and entry.get("set_rule") == "decoded":
                    label = "decoded set"
                rows[group].append(
                    Row(
                        model=name,
                        rule=label,
                        threshold=entry["thresholds"][rule],
                        group=group,
                        samples=cells["samples"],
                        cells={m: cells.get(m) for m in METRICS},
                        seeds=len(entry["seeds"]),
                        p_value=p_values.get(name),
                        best=name == best,
                        extra=extra,
                        variant=variant,
                    )
                )
    return rows


# ------------------------------------------------------------------------ writing


def protocol_text(
    dataset: VisitDataset, name: str, config: BenchmarkConfig, molecules: Molecules
) -> str:
    """The table's header: what was run and how each cell was computed."""
    if config.folds:
        split = (
            f"patient-level {config.folds}-fold cross-validation over "
            f"{sum(len(v) for v in dataset.splits.values())} patients (validation carved from "
            "each training part, seed 42); cells: mean ± std over the folds of each fold's "
            "whole test part (averaged over seeds)"
        )
    else:
        split = (
            f"the dataset's split ({len(dataset.samples('test'))} test samples); cells: mean "
            f"± std over seeds x {config.rounds} rounds of a random 80% of the test samples"
        )
    return (
        f"# Benchmark: {name}\n\n"
        f"**Protocol.** {split}. Seeds: {config.seeds} per trained model (42..."
        f"{41 + config.seeds}; a given run or features file counts once). Every model is "
        "scored at threshold 0.5 and at the threshold maximising validation Jaccard "
        "(grid 0.05..0.95, chosen per seed and fold; rows `validation (t)`, t its mean). "
        "p: two-sided paired sign-flip permutation test "
        f"({PERMUTATIONS:,} permutations, exact for up to 13 samples) of each model's "
        "per-sample PRAUC (averaged over seeds) against the group's best model (bold). "
        + (
            "Metrics are averaged per patient first (each patient's samples), then over "
            "patients (`--average patient`; DDI rate and #MED pooled over samples). "
            if config.average == "patient"
            else "Metrics are averaged over test samples (`--average sample`). "
        )
        + "PRAUC ranks each model's own probabilities, as its authors score it (notes); "
        "the models that decode their own set (LEAP, COGNet, MICRON) are scored on that set "
        "(rows `decoded set`) instead of at 0.5. Every trained model stops after 10 epochs "
        "without a better validation PRAUC, under an epoch cap of at least its authors' "
        "count and the student's 100 (columns `best epoch`, `epochs`: means over runs). "
        f"Drugs: {dataset.vocab.size('medication')}; DDI source: {dataset.ddi_source}; "
        f"patients: {dataset.stats.get('patients', '?')}; molecules: {molecules.source}."
    )


def notes(table: dict[str, Any], config: BenchmarkConfig, molecules: Molecules) -> list[str]:
    from leader.baselines.registry import MOLECULE_MODELS

    out = []
    ran = [n for n in MOLECULE_MODELS if table.get(n, {}).get("status") == "ok"]
    if molecules.missing and ran and config.allow_missing_molecules:
        out.append(
            f"{', '.join(sorted(ran))}: {len(molecules.missing)} drugs have no parsable SMILES "
            f"({', '.join(molecules.missing)}); their molecule part is left out "
            "(`--strict-molecules` makes this an error)."
        )
    student = table.get("leader_s", {})
    if student.get("status") == "ok" and config.teacher_features and config.folds:
        out.append("leader_s: trained without distillation (teacher features belong to one split).")
    if student.get("status") == "ok" and config.student_run:
        out.append(f"leader_s: scored from the given run {config.student_run} (one seed).")
    for name, entry in table.items():
        if entry["status"] == "ok" and entry["failed_runs"]:
            out.append(f"{name}: {len(entry['failed_runs'])} runs failed; cells over the rest.")
    ok = {n: e for n, e in table.items() if e["status"] == "ok"}
    scoring = [f"{n}: {SCORING[n]}" for n in ok if n in SCORING]
    if scoring:
        out.append("Probabilities (PRAUC's ranking): " + "; ".join(scoring) + ".")
    capped = {n: e for n, e in ok.items() if e.get("epoch_cap")}
    if capped:
        at_cap = {n: e["runs_at_cap"] for n, e in capped.items() if e.get("runs_at_cap")}
        runs = sum(len(e["seeds"]) * max(len(e["folds"]), 1) for e in capped.values())
        out.append(
            f"Epoch caps: {sum(at_cap.values())} of {runs} trained runs reached their cap"
            + (
                " (" + ", ".join(f"{n}: {k}" for n, k in at_cap.items()) + "): their budget bound"
                if at_cap
                else "; every run stopped on validation"
            )
            + ". Caps: "
            + ", ".join(f"{n} {e['epoch_cap']}" for n, e in capped.items())
            + "."
        )
    variants = [f"{n}: {e['variant']}" for n, e in ok.items() if e.get("variant")]
    if variants:
        out.append(
            "Set-ups (in the rows): "
            + "; ".join(variants)
            + ". form=code / ddi_weight=code are the authors' released code (RETAIN: earlier "
            "visits only; SafeDrug: min(0, ...)); the paper's is one option away "
            "(`--model-options retain.form=paper`, `safedrug.ddi_weight=paper`)."
        )
    return out


def write_markdown(
    path: Path, table: dict[str, Any], rows: dict[str, list[Row]], header: str, notes_: list[str]
) -> None:
    lines = [header, ""]
    for group in GROUPS:
        lines += [f"## {GROUP_TITLES[group]}", ""]
        lines += markdown_rows(rows[group], extra_columns=EXTRA_COLUMNS)
        lines.append("")
    calibration = markdown_table({n: e.get("calibration") for n, e in table.items()})
    if calibration:
        lines += ["## Calibration and conformal sets", "", CALIBRATION_TEXT, "", *calibration, ""]
    if notes_:
        lines += ["## Notes", "", *(f"- {note}" for note in notes_), ""]
    for status, title in (("not_run", "Not run"), ("failed", "Failed")):
        listed = {n: e for n, e in table.items() if e["status"] == status}
        if listed:
            lines += [f"## {title}", ""]
            lines += [f"- **{name}**: {entry['reason']}" for name, entry in listed.items()]
            lines.append("")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def write_plots(out: Path, table: dict[str, Any]) -> None:
    from leader.optional import available

    if not available("matplotlib"):  # leader[plots] not installed: tables only
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {
        n: e["results"]
        for n, e in table.items()
        if e["status"] == "ok" and e["results"]["at_0.5"]["all"]["samples"]
    }
    names = list(ok)
    prauc = [ok[n]["at_0.5"]["all"]["prauc"] for n in names]
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
        rule = "at_validation" if ok[name]["at_validation"]["all"].get("jaccard") else "at_0.5"
        jaccard, ddi = ok[name][rule]["all"]["jaccard"], ok[name][rule]["all"]["ddi_rate"]
        axes.errorbar(
            ddi["mean"], jaccard["mean"], xerr=ddi["std"], yerr=jaccard["std"], fmt="o", capsize=2
        )
        axes.annotate(
            name, (ddi["mean"], jaccard["mean"]), fontsize=8, xytext=(3, 3),
            textcoords="offset points",
        )  # fmt: skip
    axes.set_xlabel("DDI rate (lower is safer)")
    axes.set_ylabel("Jaccard (validation threshold)")
    figure.tight_layout()
    figure.savefig(out / "jaccard_ddi.png", dpi=120)
    plt.close(figure)
    curves = {n: e["calibration"]["reliability"] for n, e in table.items() if e.get("calibration")}
    plot_reliability(out / "reliability.png", curves)


# ------------------------------------------------------------------------ entry point


def _units(
    dataset: VisitDataset, config: BenchmarkConfig, out: Path
) -> list[tuple[int | None, VisitDataset]]:
    """(fold, dataset) pairs: the dataset itself, or one re-split copy per fold."""
    if not config.folds:
        return [(None, dataset)]
    return [
        (k, fold_dataset(dataset, splits, out / "folds" / f"fold{k}"))
        for k, splits in enumerate(fold_splits(dataset, config.folds))
    ]


def run_benchmark(
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: BenchmarkConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every requested model x fold x seed, write the results folder, return the table."""
    if config.seeds < 1:
        raise LeaderError("--seeds must be at least 1")
    config.validate("leader benchmark")
    model_options(config.model_options)  # a typo fails now, not after the first model
    dataset = VisitDataset.load(dataset_dir)
    if not dataset.samples("test") and not config.folds:
        raise LeaderError(f"{dataset_dir}: the test split has no samples; nothing to evaluate")
    if config.student_run:
        check_student_run(Path(config.student_run), dataset)
    if config.teacher_features:
        check_teacher_features(Path(config.teacher_features), dataset)
    models = resolve_models(config.models)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, "benchmark", config, seed=42, dataset_dir=Path(dataset_dir),
                   extra={"models": models})  # fmt: skip
    molecules = find_molecules(dataset, config, out)
    units = _units(dataset, config, out)
    results = _run_models(models, units, config, molecules, out, log)
    table = aggregate(results, models, config.folds)
    rows = table_rows(table)
    header = protocol_text(dataset, Path(dataset_dir).name, config, molecules)
    notes_ = notes(table, config, molecules)
    write_json_atomic(
        out / "results.json",
        {
            "config": asdict(config),
            "protocol": header,
            "notes": notes_,
            "models": table,
            "runs": [{k: v for k, v in r.items() if k != "per_sample"} for r in results],
        },
    )
    write_markdown(out / "results.md", table, rows, header, notes_)
    others = [
        {"model": n, "status": e["status"].replace("_", " "), "reason": e["reason"]}
        for n, e in table.items()
        if e["status"] != "ok"
    ]
    write_csv(
        out / "results.csv",
        [row for group in GROUPS for row in rows[group]],
        others,
        [key for key, _ in EXTRA_COLUMNS],
    )
    write_plots(out, table)
    write_model_card(
        out,
        f"Benchmark on {Path(dataset_dir).name}",
        f"{len(models)} medication recommenders under one protocol (results.md): "
        + ", ".join(models)
        + ".",
        data=f"Dataset directory `{Path(dataset_dir).resolve()}` (checksums in run.json).",
        protocol=header,
    )
    return table


def _seeds(name: str, config: BenchmarkConfig) -> list[int]:
    # Scoring from a file or a given run has no seed to vary.
    once = name == "leader_t" or (name == "leader_s" and config.student_run)
    return [42] if once else list(range(42, 42 + config.seeds))


def _run_models(
    models: list[str],
    units: list[tuple[int | None, VisitDataset]],
    config: BenchmarkConfig,
    molecules: Molecules,
    out: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every model's runs: one after another, or ``workers`` models at once, each model in
    its own process (:func:`leader.workers.run_in_processes`, the pipeline's pool)."""
    if config.workers <= 1 or len(models) <= 1:
        results: list[dict[str, Any]] = []
        for name in models:
            results += _run_model(name, _seeds(name, config), units, config, molecules, out, log)
        return results
    from leader.workers import run_in_processes

    order = sorted(models, key=lambda n: SLOWEST_FIRST.index(n) if n in SLOWEST_FIRST else 99)
    paths = [(fold, str(data.path)) for fold, data in units]
    log(f"{len(models)} models, {config.workers} at a time, each in its own process")
    done = run_in_processes(
        _model_in_process,
        [(name, _seeds(name, config), paths, config, molecules, str(out)) for name in order],
        config.workers,
    )
    by_model = dict(zip(order, done, strict=True))
    return [result for name in models for result in by_model[name]]


def _model_in_process(
    name: str,
    seeds: list[int],
    paths: list[tuple[int | None, str]],
    config: BenchmarkConfig,
    molecules: Molecules,
    out: str,
) -> list[dict[str, Any]]:
    """One model's runs in a worker process (its datasets loaded from their folders)."""
    units = [(fold, VisitDataset.load(path)) for fold, path in paths]
    return _run_model(name, seeds, units, config, molecules, Path(out), print)


def _run_model(
    name: str,
    seeds: list[int],
    units: list[tuple[int | None, VisitDataset]],
    config: BenchmarkConfig,
    molecules: Molecules,
    out: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    results = []
    for fold, data in units:
        for seed in seeds:
            where = (
                out / "runs" / name / (f"fold{fold}" if fold is not None else "") / f"seed{seed}"
            )
            cached = where / "result.json"
            result = json.loads(cached.read_text(encoding="utf-8")) if cached.exists() else {}
            if not (config.resume and ("per_sample" in result or result.get("status") == "failed")):
                result = run_one(name, seed, data, config, where, molecules, fold)
            results.append(result)
            label = f"{name} {'' if fold is None else f'fold {fold} '}seed {seed}"
            if result["status"] == "ok":
                m = result["results"]["at_0.5"]["all"]["metrics"]
                log(
                    f"{label}: PRAUC {m['prauc']:.4f} Jaccard@0.5 {m['jaccard']:.4f} "
                    f"validation threshold {result['thresholds']['validation']}"
                )
            else:
                log(f"{label}: {result['status'].upper().replace('_', ' ')}: {result['reason']}")
                return results  # the other seeds and folds would fail the same way
    return results
