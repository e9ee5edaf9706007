"""Teacher prediction: probabilities + the hidden state that fed the output layer, per sample.

The features file (one safetensors file) is what the student distils from (LEADER §4.3):
tensors ``hidden`` (N, H) float32 and ``probabilities`` (N, drugs) float32; metadata (JSON
strings) ``sample_ids``, ``splits``, ``medication_codes``, ``hidden_size``, ``model``,
``sample_mode``. Rows cover every sample of every split. The LEADER(T) test metrics
(whole test set, single-visit, multi-visit, rounds; threshold 0.5) go to
``<stem>.metrics.json`` beside it.

>>> metrics = predict_teacher(run_dir, data_dir, Path("features.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leader.data.store import SPLITS, VisitDataset, write_json_atomic
from leader.errors import LeaderError
from leader.metrics import evaluate_groups
from leader.teacher.model import LeaderTeacher

log = logging.getLogger("leader.teacher")


def predict_teacher(
    run_dir: Path, dataset_dir: Path, out_file: Path, batch_size: int | None = None
) -> dict[str, Any]:
    """Write the features file for every sample of every split; return the test metrics."""
    from safetensors.numpy import save_file

    run_dir, out_file = Path(run_dir), Path(out_file)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = LeaderTeacher.from_pretrained(run_dir, device=device)
    dataset = VisitDataset.load(dataset_dir)
    if teacher.medication_codes != dataset.vocab.codes["medication"]:
        raise LeaderError(
            f"{dataset_dir}: its drug vocabulary differs from the one {run_dir} was trained on; "
            "predict on the dataset the teacher was trained on"
        )
    mode = teacher.config.resolved_sample_mode(dataset.default_sample_mode)
    samples, splits = [], []
    for split in SPLITS:
        if split in dataset.splits:
            part = dataset.samples(split, mode)
            samples.extend(part)
            splits.extend([split] * len(part))
    autocast = teacher.autocast_dtype()
    started = time.perf_counter()
    ids, stats = teacher.encode(samples)
    log.info("predicting %d samples (%s)", len(samples), stats.summary())
    probabilities, hidden = teacher.predict_ids(
        ids, batch_size or teacher.config.eval_batch_size, autocast
    )
    seconds = time.perf_counter() - started
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_file.name}.", dir=out_file.parent)
    os.close(fd)
    try:
        save_file(
            {
                "hidden": hidden.astype(np.float32),
                "probabilities": probabilities.astype(np.float32),
            },
            tmp,
            metadata={
                "sample_ids": json.dumps([s.sample_id for s in samples]),
                "splits": json.dumps(splits),
                "medication_codes": json.dumps(teacher.medication_codes),
                "hidden_size": str(teacher.hidden_size),
                "model": teacher.config.model,
                "sample_mode": mode,
            },
        )
        os.replace(tmp, out_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    test = [i for i, split in enumerate(splits) if split == "test"]
    test_samples = [samples[i] for i in test]
    metrics: dict[str, Any] = evaluate_groups(
        dataset.targets(test_samples).reshape(len(test_samples), -1),
        probabilities[test].reshape(len(test_samples), -1),
        [s.is_single_visit for s in test_samples],
        threshold=teacher.config.threshold,
        ddi=dataset.ddi_matrix(),
    )
    log.info(
        "wrote %s: %d samples, %.1f samples/s",
        out_file,
        len(samples),
        len(samples) / max(seconds, 1e-9),
    )
    write_json_atomic(out_file.with_name(f"{out_file.stem}.metrics.json"), metrics)
    return metrics
