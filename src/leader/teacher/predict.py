"""Teacher prediction: probabilities + the hidden state that fed the output layer, per sample.

The features file (one safetensors file) is what the student distils from (LEADER §4.3):
tensors ``hidden`` (N, H) float32 and ``probabilities`` (N, drugs) float32; metadata (JSON
strings) ``sample_ids``, ``splits``, ``medication_codes``, ``hidden_size``, ``model``,
``sample_mode``. Rows cover every sample of every split. The LEADER(T) test metrics
(whole test set, single-visit, multi-visit, rounds; threshold 0.5) go to
``<stem>.metrics.json`` beside it.

:func:`predict_untrained` writes the same format for the backbone before fine-tuning (its
pooled token state); the distillation controls are in :mod:`leader.controls`.

>>> metrics = predict_teacher(run_dir, data_dir, Path("features.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leader.data.store import SPLITS, Sample, SampleMode, VisitDataset, write_json_atomic
from leader.errors import LeaderError
from leader.metrics import evaluate_groups
from leader.teacher.config import TeacherConfig
from leader.teacher.features import write_features_file
from leader.teacher.model import LeaderTeacher

log = logging.getLogger("leader.teacher")


def predict_teacher(
    run_dir: Path, dataset_dir: Path, out_file: Path, batch_size: int | None = None
) -> dict[str, Any]:
    """Write the features file for every sample of every split; return the test metrics."""
    run_dir = Path(run_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = LeaderTeacher.from_pretrained(run_dir, device=device)
    return write_features(teacher, dataset_dir, out_file, batch_size, trained_on=str(run_dir))


def predict_untrained(
    config: TeacherConfig, dataset_dir: Path, out_file: Path, batch_size: int | None = None
) -> dict[str, Any]:
    """The control "before fine-tuning": the same backbone, prompts and pooled token, LoRA
    at its initial value (a no-op: B starts at zero) and an untrained output layer. Its
    ``hidden`` is what the backbone knows before it saw a label."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = VisitDataset.load(dataset_dir)
    teacher = LeaderTeacher.build(config, dataset.vocab).to(device)
    return write_features(teacher, dataset_dir, out_file, batch_size, trained_on="")  # pooled


def all_samples(dataset: VisitDataset, mode: SampleMode) -> tuple[list[Sample], list[str]]:
    """Every sample of every split, in split order, and its split's name."""
    samples: list[Sample] = []
    splits: list[str] = []
    for split in SPLITS:
        if split in dataset.splits:
            part = dataset.samples(split, mode)
            samples.extend(part)
            splits.extend([split] * len(part))
    return samples, splits


def write_features(
    teacher: LeaderTeacher,
    dataset_dir: Path,
    out_file: Path,
    batch_size: int | None = None,
    trained_on: str = "",
    predicted: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Predict every sample of every split with ``teacher`` (or take ``predicted``:
    probabilities and features in :func:`all_samples` order) and write the file.

    A fine-tuned teacher (``trained_on`` set) writes its distillation features (``hidden``
    of :meth:`LeaderTeacher.forward`); the control before fine-tuning (``trained_on`` empty)
    writes the backbone's pooled token state: what it knows before it saw a label."""
    out_file = Path(out_file)
    dataset = VisitDataset.load(dataset_dir)
    if teacher.medication_codes != dataset.vocab.codes["medication"]:
        raise LeaderError(
            f"{dataset_dir}: its drug vocabulary differs from the one {trained_on or 'the teacher'}"
            " was trained on; predict on the dataset the teacher was trained on"
        )
    mode = teacher.config.resolved_sample_mode(dataset.default_sample_mode)
    samples, splits = all_samples(dataset, mode)
    started = time.perf_counter()
    computed_here = predicted is None
    if predicted is None:
        ids, stats = teacher.encode(samples)
        log.info("predicting %d samples (%s)", len(samples), stats.summary())
        predicted = teacher.predict_ids(
            ids,
            batch_size or teacher.config.eval_batch_size,
            teacher.autocast_dtype(),
            "hidden" if trained_on else "pooled",
        )
    probabilities, hidden = predicted
    if probabilities.shape[0] != len(samples):
        raise LeaderError(f"{out_file}: {probabilities.shape[0]} rows for {len(samples)} samples")
    seconds = time.perf_counter() - started
    metadata = {
        "sample_ids": json.dumps([s.sample_id for s in samples]),
        "splits": json.dumps(splits),
        "medication_codes": json.dumps(teacher.medication_codes),
        "hidden_size": str(hidden.shape[1]),
        "model": teacher.config.model,
        "sample_mode": mode,
        "fine_tuned": "true" if trained_on else "false",
    }
    write_features_file(out_file, {"hidden": hidden, "probabilities": probabilities}, metadata)
    test = [i for i, split in enumerate(splits) if split == "test"]
    test_samples = [samples[i] for i in test]
    metrics: dict[str, Any] = evaluate_groups(
        dataset.targets(test_samples).reshape(len(test_samples), -1),
        probabilities[test].reshape(len(test_samples), -1),
        [s.is_single_visit for s in test_samples],
        threshold=teacher.config.threshold,
        ddi=dataset.ddi_matrix(),
    )
    rate = f", {len(samples) / max(seconds, 1e-9):.1f} samples/s" if computed_here else ""
    log.info("wrote %s: %d samples%s", out_file, len(samples), rate)
    write_json_atomic(out_file.with_name(f"{out_file.stem}.metrics.json"), metrics)
    return metrics
