"""The teacher features file: one safetensors file written by ``leader teacher predict``.

Tensors ``hidden`` (N, H) and ``probabilities`` (N, drugs), float32; metadata
``sample_ids``, ``splits``, ``medication_codes`` (JSON lists), ``hidden_size``, ``model``,
``sample_mode``. One reader for every consumer (student, benchmark, pipeline), so the
format and its error messages live in one place. Light: numpy + safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from leader.errors import LeaderError
from leader.io import atomic_file

JSON_KEYS: tuple[str, ...] = ("sample_ids", "splits", "medication_codes")


def read_features(
    path: str | os.PathLike[str], require: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tensors and decoded metadata; ``require`` names tensors that must be present,
    with one row per entry of ``sample_ids``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise LeaderError(
            f"{path}: no teacher features file; write one with `leader teacher predict`"
        )
    try:
        with safe_open(str(path), framework="np") as handle:
            raw = dict(handle.metadata() or {})
            names = list(handle.keys())
            tensors = {name: handle.get_tensor(name) for name in names}
    except Exception as exc:  # safetensors raises its own error types
        raise LeaderError(f"{path}: not a readable safetensors file ({exc})") from exc
    meta: dict[str, Any] = dict(raw)
    for key in JSON_KEYS:
        if key in meta:
            try:
                meta[key] = [str(v) for v in json.loads(meta[key])]
            except (json.JSONDecodeError, TypeError) as exc:
                raise LeaderError(f"{path}: metadata {key!r} is not a JSON list") from exc
    if "hidden_size" in meta:
        meta["hidden_size"] = int(meta["hidden_size"])
    for name in require:
        if name not in tensors:
            raise LeaderError(
                f"{path}: no {name!r} tensor (found {', '.join(names) or 'none'}); "
                "not a teacher features file"
            )
        if "sample_ids" not in meta:
            raise LeaderError(f"{path}: metadata 'sample_ids' missing")
        if tensors[name].ndim != 2 or tensors[name].shape[0] != len(meta["sample_ids"]):
            raise LeaderError(
                f"{path}: {name!r} is {tensors[name].shape} but metadata lists "
                f"{len(meta['sample_ids'])} samples"
            )
    return tensors, meta


def write_features_file(
    path: str | os.PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    """Write a features file atomically (tensors as float32; metadata strings as given)."""
    from safetensors.numpy import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(tmp), metadata)
