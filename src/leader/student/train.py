"""Train LEADER(S) on a dataset directory, optionally distilling from teacher features.

Teacher features are the file ``leader teacher predict`` writes: one safetensors with
``hidden`` (N, H) and ``probabilities`` (N, drugs), and ``sample_ids`` (JSON) in its
metadata. Early stopping on validation PRAUC (shared loop, ``leader.training.fit``);
the decision threshold is then chosen on validation (Jaccard).

The run folder is self-contained: config.json, model.safetensors (projector included),
vocab.json (with the profile vocabulary), ddi.json, config.yaml (resolved training
config), metrics.json (history, validation and test metrics, threshold, seed, git
revision), splits.json (patient ids per split), train.log, checkpoint/ (for --resume).

>>> train_student(Path("data/mimic3"), Path("runs/student"), StudentConfig(),
...               teacher_features=Path("runs/teacher/features.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leader.calibration import fit_calibration, write_calibration
from leader.data.store import SampleMode, VisitDataset, write_json_atomic
from leader.errors import LeaderError
from leader.logs import run_log
from leader.metrics import best_threshold, compute
from leader.models import Decision, write_decision
from leader.runinfo import write_model_card, write_run_info
from leader.student.data import (
    EncodedSamples,
    ProfileVocab,
    StudentBatch,
    attach_teacher,
    make_batch,
)
from leader.student.model import LeaderStudent, StudentConfig
from leader.training import fit, seed_everything


def load_teacher_features(path: Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """(hidden (N, H) float32, sample ids, metadata) from a teacher features file."""
    from leader.teacher.features import read_features

    tensors, meta = read_features(path, require=("hidden",))
    return tensors["hidden"].astype(np.float32, copy=False), list(meta["sample_ids"]), meta


def soft_labels(
    tensors: dict[str, np.ndarray], meta: dict[str, Any], path: Path, drug_codes: list[str]
) -> np.ndarray:
    """A features file's ``probabilities`` (N, drugs), refused unless its columns are the
    dataset's drugs in the dataset's order (soft labels on the wrong drug are worse than none)."""
    codes = meta.get("medication_codes")
    if codes is None or list(codes) != list(drug_codes):
        raise LeaderError(
            f"{path}: its medication_codes "
            + ("are missing" if codes is None else f"({len(codes)}) differ from")
            + f" the dataset's {len(drug_codes)} drugs; soft labels need the teacher "
            "predicted on this dataset (`leader teacher predict`), or set kd: 0"
        )
    return tensors["probabilities"].astype(np.float32, copy=False)


def epoch_batches(
    encoded: EncodedSamples, batch_size: int, group_patients: bool = False
) -> Callable[[np.random.Generator], Iterator[StudentBatch]]:
    """Shuffled batches of one epoch; a trailing batch of one sample is merged (InfoNCE).

    ``group_patients``: shuffle the patients rather than the samples and keep each
    patient's samples next to each other (a batch boundary may still split them). Every
    sample is still seen once an epoch, in a new order, but a batch then holds about
    ``batch_size / (samples per patient)`` patients: their earlier visits, which recur in
    all their later samples, are encoded once per batch (``make_batch``), a third to a
    half less work on MIMIC-like cohorts.
    """

    def batches(rng: np.random.Generator) -> Iterator[StudentBatch]:
        order = patient_order(encoded.patient, rng) if group_patients else None
        order = rng.permutation(len(encoded)) if order is None else order
        starts = list(range(0, len(order), batch_size))
        if len(starts) > 1 and len(order) - starts[-1] < 2:
            starts.pop()
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(order)
            yield make_batch(encoded, order[start:end])

    return batches


def patient_order(patient: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample indices, patients in random order, each patient's samples together (in order)."""
    rank = rng.permutation(int(patient.max()) + 1 if len(patient) else 0)
    return np.argsort(rank[patient], kind="stable")


def train_student(
    dataset_dir: Path,
    out_dir: Path,
    config: StudentConfig,
    teacher_features: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    plain_run: Path | None = None,
) -> Path:
    """Train, pick the threshold, evaluate on test, write the run folder; return it.

    With ``teacher_features`` and ``config.choose_distillation`` the distillation weights
    are chosen on validation (:mod:`leader.student.search`); ``plain_run``, a finished
    student of the same config without distillation, then stands for ``alpha = kd = 0``."""
    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if teacher_features is not None and config.choose_distillation:
        from leader.student.search import choose_distillation

        return choose_distillation(
            Path(dataset_dir), out_dir, config, Path(teacher_features), resume, log, plain_run
        )
    with run_log("student", out_dir, log, append=resume) as say:
        return _train(Path(dataset_dir), out_dir, config, teacher_features, resume, say)


def _train(
    dataset_dir: Path,
    out_dir: Path,
    config: StudentConfig,
    teacher_features: Path | None,
    resume: bool,
    say: Callable[[str], None],
) -> Path:
    started = time.perf_counter()
    dataset = VisitDataset.load(dataset_dir)
    mode: SampleMode = (
        "last" if (config.sample_mode or dataset.default_sample_mode) == "last" else "all"
    )
    samples = {split: dataset.samples(split, mode) for split in ("train", "val", "test")}
    if not samples["train"]:
        raise LeaderError(f"{dataset_dir}: the train split has no samples")
    if not samples["val"]:
        raise LeaderError(
            f"{dataset_dir}: the val split has no samples; early stopping needs some "
            "(prepare the dataset with a validation share)"
        )
    fields_ = [c for c in dataset.profiles.columns if c != "patient_id"]
    profile_vocab = ProfileVocab.build(samples["train"], fields_)

    teacher_hidden: np.ndarray | None = None
    teacher_soft: np.ndarray | None = None
    teacher_ids: list[str] = []
    if teacher_features is not None and (config.alpha > 0 or config.kd > 0):
        from leader.teacher.features import read_features

        path = Path(teacher_features)
        need = ("hidden",) * (config.alpha > 0) + ("probabilities",) * (config.kd > 0)
        tensors, meta = read_features(path, require=need)  # one read for both terms
        teacher_ids = list(meta["sample_ids"])
        if config.alpha > 0:
            teacher_hidden = tensors["hidden"].astype(np.float32, copy=False)
        if config.kd > 0:
            teacher_soft = soft_labels(tensors, meta, path, dataset.vocab.codes["medication"])
    elif config.alpha > 0 or config.kd > 0:
        say("no teacher features given: training without distillation (alpha = kd = 0)")
        config = replace(config, alpha=0.0, kd=0.0)

    seed_everything(config.train.seed)
    teacher_width = int(teacher_hidden.shape[1]) if teacher_hidden is not None else 0
    model = LeaderStudent(config, dataset.vocab, profile_vocab, teacher_width)
    encoded = {split: model.encode(s) for split, s in samples.items()}
    if teacher_hidden is not None or teacher_soft is not None:
        attach_teacher(
            encoded["train"], teacher_hidden, teacher_ids, str(teacher_features), teacher_soft
        )
    if teacher_hidden is not None:
        if config.standardize_teacher:
            # LLM hidden states have a few huge dimensions; z-scores keep the MSE on the
            # scale of the BCE and let every dimension count (the projector is affine,
            # so no information is lost).
            states = encoded["train"].teacher
            assert states is not None
            mean, std = states.mean(axis=0), states.std(axis=0)
            encoded["train"].teacher = (states - mean) / np.maximum(std, 1e-6)
            say(
                f"teacher states: width {states.shape[1]}, |mean| max {np.abs(mean).max():.2f}, "
                f"std range {std.min():.3f}..{std.max():.3f}; standardized"
            )
    say(
        f"student: {model.num_parameters():,} parameters at inference "
        f"({model.num_parameters(inference=False):,} with the projector); "
        f"samples train {len(encoded['train'])} val {len(encoded['val'])} "
        f"test {len(encoded['test'])}; alpha {config.alpha} beta "
        f"{config.beta if config.align else 0.0} kd {config.kd}"
        + (" (soft labels: the teacher's drug probabilities)" if teacher_soft is not None else "")
    )
    _write_resolved(out_dir, config, dataset_dir, teacher_features, mode)

    val_truth = encoded["val"].targets

    def validate(m: torch.nn.Module) -> float:
        assert isinstance(m, LeaderStudent)
        return compute(val_truth, m.predict_encoded(encoded["val"]))["prauc"]

    result = fit(
        model,
        epoch_batches(encoded["train"], config.train.batch_size, config.group_patients),
        validate,
        config.train,
        out_dir,
        resume,
        log=say,
    )
    val_prob = model.predict_encoded(encoded["val"])
    threshold = (
        best_threshold(val_truth, val_prob) if config.choose_threshold else config.threshold
    )
    ddi = dataset.ddi_matrix()
    test_prob = model.predict_encoded(encoded["test"])
    test_truth = encoded["test"].targets
    metrics: dict[str, Any] = {
        "model": "leader_s",
        "threshold": threshold,
        "threshold_rule": "validation" if config.choose_threshold else "fixed",
        "best_epoch": result.best_epoch,
        "best_val_prauc": result.best_score,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_seconds": round(time.perf_counter() - started, 2),
        "history": result.history,
        "val": {
            "at_0.5": compute(val_truth, val_prob, 0.5, ddi),
            "at_threshold": compute(val_truth, val_prob, threshold, ddi),
        },
        "test": {
            "at_0.5": compute(test_truth, test_prob, 0.5, ddi) if len(test_truth) else None,
            "at_threshold": (
                compute(test_truth, test_prob, threshold, ddi) if len(test_truth) else None
            ),
        },
        "parameters": model.num_parameters(),
        "parameters_with_projector": model.num_parameters(inference=False),
        "seed": config.train.seed,
        "sample_mode": mode,
        "distillation": teacher_width > 0 or teacher_soft is not None,
        "teacher_features": (
            str(teacher_features) if teacher_width or teacher_soft is not None else None
        ),
    }
    model.save_pretrained(out_dir)
    write_decision(out_dir, Decision(threshold, list(dataset.ddi_pairs), dataset.ddi_source))
    if len(val_truth):  # calibration and conformal risk curve, fitted on validation
        groups = [sample.patient_id for sample in samples["val"]]
        write_calibration(out_dir, fit_calibration(val_truth, val_prob, groups))
    _write_card(out_dir, dataset_dir, metrics, teacher_width > 0, teacher_soft is not None)
    write_json_atomic(out_dir / "splits.json", dataset.splits)
    write_json_atomic(out_dir / "metrics.json", metrics)
    test = metrics["test"]["at_threshold"]
    say(
        f"done: best val PRAUC {result.best_score:.4f} at epoch {result.best_epoch}; "
        f"threshold {threshold}; test "
        + (
            f"PRAUC {test['prauc']:.4f} Jaccard {test['jaccard']:.4f} F1 {test['f1']:.4f}"
            if test
            else "(empty)"
        )
    )
    return out_dir


def _write_resolved(
    out_dir: Path,
    config: StudentConfig,
    dataset_dir: Path,
    teacher_features: Path | None,
    mode: str,
) -> None:
    """config.yaml (the resolved config, to rerun with --config) and run.json."""
    config.to_yaml(out_dir / "config.yaml")
    write_run_info(
        out_dir,
        "student",
        config,
        seed=config.train.seed,
        dataset_dir=dataset_dir,
        extra={
            "teacher_features": str(teacher_features) if teacher_features else None,
            "sample_mode": mode,
        },
    )


def _write_card(
    out_dir: Path, dataset_dir: Path, metrics: dict[str, Any], hidden: bool, soft: bool
) -> None:
    test = metrics["test"]["at_threshold"] or {}
    distilled = hidden or soft
    sources = " and ".join(
        [*(["hidden states"] if hidden else []), *(["drug probabilities"] if soft else [])]
    )
    write_model_card(
        out_dir,
        "LEADER(S) student" + ("" if distilled else " (no distillation)"),
        "The compact ID-based student of LEADER (Liu et al., arXiv 2402.02803): code "
        "embeddings, set encoders per visit, a visit-level encoder and an MLP head, "
        + (
            f"distilled from an LLM teacher's {sources}."
            if distilled
            else "trained on the labels alone."
        ),
        data=f"Dataset directory `{dataset_dir}` (see run.json for its checksums and split).",
        metrics={k: float(test[k]) for k in ("prauc", "jaccard", "f1", "ddi_rate") if k in test},
        protocol=f"Test split, decision threshold {metrics['threshold']:.2f} chosen on validation "
        "(Jaccard); per-sample means (DESIGN.md metrics).",
    )
