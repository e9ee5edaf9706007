"""Distillation controls: features files that teach nothing of the LLM (issue 19).

A distillation gain is the LLM's only if a student distilled through *the same terms and
settings* from a teacher without the LLM's knowledge does worse. Each control here writes
the teacher features format (:mod:`leader.teacher.features`), so the student trains on it
exactly as on the teacher's file, and each is built so that it *could* pass:

- :func:`self_features`, **self-distillation**: the student trained without distillation is
  the teacher (its logits as ``hidden``, its probabilities as soft labels). Distilling from
  any stronger-or-equal model is known to help students; the LLM's claim is its gain over
  this row.
- :func:`prior_features`, **prior soft labels**: every sample gets each drug's training
  frequency as its soft label and the teacher's mean state as its target. It is label
  smoothing towards the prior, a regulariser and nothing else (it is what the label-wise
  attention head says before fine-tuning: zero query weights and the prior bias).
- :func:`noise_features`, **noise states**: Gaussian noise with the teacher's per-dimension
  mean and std (same width), soft labels at the training frequencies: the regulariser of a
  noisy target of the teacher's shape and scale.

Soft labels are never 0.5 (that pulls every drug towards "maybe" and can only hurt), and
the targets have the teacher's width, so a control can score as well as the teacher's
student if the gain was regularisation.

>>> prior_features(Path("teacher/features.safetensors"), Path("data"),
...                Path("prior.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from leader.errors import LeaderError
from leader.teacher.features import read_features, write_features_file

# The controls a pipeline and the benchmark scripts train a student from, and their rows.
CONTROL_NAMES: dict[str, str] = {
    "self": "self-distillation: the student without distillation as the teacher",
    "prior": "prior soft labels (each drug's training frequency), teacher's mean state",
    "noise": "noise of the teacher's width and scale, prior soft labels",
}


def training_prior(dataset_dir: Path, sample_ids: list[str], splits: list[str]) -> np.ndarray:
    """Each drug's frequency over the training rows of a features file, (drugs,) float32."""
    from leader.data.store import VisitDataset

    dataset = VisitDataset.load(dataset_dir)
    train = {s.sample_id: s for s in dataset.samples("train", "all")}
    train |= {s.sample_id: s for s in dataset.samples("train", "last")}
    rows = [train[i] for i, split in zip(sample_ids, splits, strict=True) if split == "train"]
    if not rows:
        raise LeaderError(f"{dataset_dir}: no training samples to take the drugs' prior from")
    return dataset.targets(rows).reshape(len(rows), -1).mean(axis=0).astype(np.float32)


def _metadata(meta: dict[str, Any], control: str) -> dict[str, str]:
    out = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in meta.items()}
    return out | {"control": control, "fine_tuned": "false"}


def _teacher(source: Path) -> tuple[np.ndarray, dict[str, Any]]:
    tensors, meta = read_features(source, require=("hidden",))
    for key in ("splits", "medication_codes"):
        if key not in meta:
            raise LeaderError(f"{source}: metadata {key!r} missing; write it again with "
                              "`leader teacher predict`")  # fmt: skip
    return tensors["hidden"].astype(np.float64), meta


def prior_features(source: Path, dataset_dir: Path, out_file: Path) -> Path:
    """Prior soft labels and the teacher's mean training state, for every row of ``source``."""
    hidden, meta = _teacher(source)
    prior = training_prior(dataset_dir, meta["sample_ids"], meta["splits"])
    train = np.array([s == "train" for s in meta["splits"]])
    rows = len(hidden)
    tensors = {
        "hidden": np.repeat(hidden[train].mean(axis=0, keepdims=True), rows, axis=0),
        "probabilities": np.repeat(prior[None, :], rows, axis=0),
    }
    control = f"prior soft labels and mean state of {Path(source).name}"
    write_features_file(out_file, tensors, _metadata(meta, control))
    return Path(out_file)


def noise_features(source: Path, dataset_dir: Path, out_file: Path, seed: int = 0) -> Path:
    """Gaussian noise with ``source``'s per-dimension mean and std, prior soft labels."""
    hidden, meta = _teacher(source)
    prior = training_prior(dataset_dir, meta["sample_ids"], meta["splits"])
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(hidden.shape) * hidden.std(axis=0) + hidden.mean(axis=0)
    tensors = {"hidden": noise, "probabilities": np.repeat(prior[None, :], len(noise), axis=0)}
    control = f"noise (seed {seed}) shaped like {Path(source).name}, prior soft labels"
    write_features_file(out_file, tensors, _metadata(meta, control))
    return Path(out_file)


def self_features(run_dir: Path, dataset_dir: Path, out_file: Path) -> Path:
    """The student of ``run_dir`` (trained without distillation) as a teacher: its logits
    as ``hidden`` and its probabilities, for every sample of every split."""
    from leader.data.store import VisitDataset
    from leader.student.model import LeaderStudent
    from leader.teacher.predict import all_samples

    model = LeaderStudent.from_pretrained(run_dir)
    dataset = VisitDataset.load(dataset_dir)
    if list(model.vocab.codes["medication"]) != list(dataset.vocab.codes["medication"]):
        raise LeaderError(f"{run_dir}: trained on other drugs than {dataset_dir}")
    mode = model.config.sample_mode or dataset.default_sample_mode
    samples, splits = all_samples(dataset, "last" if mode == "last" else "all")
    probabilities = model.predict_proba(samples).astype(np.float64)
    clipped = np.clip(probabilities, 1e-6, 1 - 1e-6)
    metadata = {
        "sample_ids": json.dumps([s.sample_id for s in samples]),
        "splits": json.dumps(splits),
        "medication_codes": json.dumps(list(dataset.vocab.codes["medication"])),
        "hidden_size": str(probabilities.shape[1]),
        "model": f"leader_s ({Path(run_dir).name})",
        "sample_mode": str(mode),
        "fine_tuned": "true",
        "control": f"self-distillation from {run_dir}",
    }
    tensors = {"hidden": np.log(clipped / (1 - clipped)), "probabilities": probabilities}
    write_features_file(out_file, tensors, metadata)
    return Path(out_file)
