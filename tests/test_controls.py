"""Distillation controls (leader.controls): neutral, the teacher's width, and self-distillation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from leader.config import replace
from leader.controls import noise_features, prior_features, self_features, training_prior
from leader.data.store import VisitDataset
from leader.student import StudentConfig, train_student
from leader.student.model import LeaderStudent
from leader.teacher.features import read_features
from leader.teacher.predict import all_samples


def _teacher_file(dataset: VisitDataset, path: Path, width: int = 6) -> Path:
    samples, splits = all_samples(dataset, "all")
    rng = np.random.default_rng(1)
    save_file(
        {
            "hidden": (rng.standard_normal((len(samples), width)) * 3 + 1).astype(np.float32),
            "probabilities": rng.random((len(samples), 5)).astype(np.float32),
        },
        str(path),
        metadata={
            "sample_ids": json.dumps([s.sample_id for s in samples]),
            "splits": json.dumps(splits),
            "medication_codes": json.dumps(list(dataset.vocab.codes["medication"])),
            "hidden_size": str(width),
            "model": "test",
            "sample_mode": "all",
        },
    )
    return path


def test_prior_is_each_drugs_training_frequency(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    assert tiny_dataset.path is not None
    source = _teacher_file(tiny_dataset, tmp_path / "teacher.safetensors")
    train = tiny_dataset.samples("train", "all")
    by_hand = np.zeros(5)
    codes = list(tiny_dataset.vocab.codes["medication"])
    for sample in train:
        for drug in sample.current.medications:
            by_hand[codes.index(drug)] += 1 / len(train)
    _, meta = read_features(source)
    prior = training_prior(tiny_dataset.path, meta["sample_ids"], meta["splits"])
    np.testing.assert_allclose(prior, by_hand, atol=1e-6)
    assert not np.allclose(prior, 0.5)

    tensors, prior_meta = read_features(
        prior_features(source, tiny_dataset.path, tmp_path / "prior.safetensors")
    )
    teacher, _ = read_features(source)
    assert tensors["hidden"].shape == teacher["hidden"].shape  # the teacher's width
    rows = len(teacher["hidden"])
    np.testing.assert_allclose(tensors["probabilities"], np.tile(by_hand, (rows, 1)), atol=1e-6)
    assert np.ptp(tensors["hidden"], axis=0).max() == 0  # one state for every sample
    assert prior_meta["sample_ids"] == meta["sample_ids"] and prior_meta["fine_tuned"] == "false"

    noise, _ = read_features(
        noise_features(source, tiny_dataset.path, tmp_path / "noise.safetensors", seed=3)
    )
    assert noise["hidden"].shape == teacher["hidden"].shape
    assert not np.allclose(noise["hidden"], teacher["hidden"], atol=0.1)
    np.testing.assert_allclose(noise["probabilities"], tensors["probabilities"])


def test_self_distillation_writes_the_plain_students_logits(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    assert tiny_dataset.path is not None
    config = replace(StudentConfig(alpha=0.0), epochs=2, batch_size=4)
    plain = train_student(tiny_dataset.path, tmp_path / "plain", config)
    out = self_features(plain, tiny_dataset.path, tmp_path / "self.safetensors")
    tensors, meta = read_features(out, require=("hidden", "probabilities"))
    samples, splits = all_samples(tiny_dataset, "all")
    assert meta["sample_ids"] == [s.sample_id for s in samples] and meta["splits"] == splits
    assert meta["medication_codes"] == list(tiny_dataset.vocab.codes["medication"])
    want = LeaderStudent.from_pretrained(plain).predict_proba(samples)
    np.testing.assert_allclose(tensors["probabilities"], want, atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-tensors["hidden"])), want, atol=1e-5)
    # a student trains from it exactly as from a teacher's file
    distilled = replace(
        StudentConfig(alpha=0.5, kd=2.0, choose_distillation=False), epochs=1, batch_size=4
    )
    run = train_student(tiny_dataset.path, tmp_path / "selfd", distilled, out)
    assert LeaderStudent.from_pretrained(run).teacher_width == 5
