"""The one reader of teacher features files: format and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from leader.errors import LeaderError
from leader.teacher.features import read_features


def _write(path: Path, rows: int, ids: int) -> Path:
    save_file(
        {
            "hidden": np.ones((rows, 4), np.float32),
            "probabilities": np.zeros((rows, 3), np.float32),
        },
        str(path),
        metadata={
            "sample_ids": json.dumps([f"p:{i}" for i in range(ids)]),
            "hidden_size": "4",
            "medication_codes": json.dumps(["a", "b", "c"]),
        },
    )
    return path


def test_reads_tensors_and_decodes_metadata(tmp_path: Path) -> None:
    tensors, meta = read_features(_write(tmp_path / "f.safetensors", 2, 2), require=("hidden",))
    assert tensors["hidden"].shape == (2, 4)
    assert meta["sample_ids"] == ["p:0", "p:1"] and meta["hidden_size"] == 4
    assert meta["medication_codes"] == ["a", "b", "c"]


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LeaderError, match="no teacher features file"):
        read_features(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LeaderError, match="not a readable safetensors file"):
        read_features(tmp_path / "junk.safetensors")
    short = _write(tmp_path / "short.safetensors", 2, 3)
    with pytest.raises(LeaderError, match="metadata lists 3 samples"):
        read_features(short, require=("hidden",))
    with pytest.raises(LeaderError, match="no 'logits' tensor"):
        read_features(short, require=("logits",))
