"""One model contract: every saved model folder, teacher, student or baseline, reads the same.

A saved model folder holds:

- ``config.json``: the header ``{"model_type", "format_version", "config", "meta"}``;
  ``model_type`` is the model's registry name (``leader_s``, ``leader_t``, ``gamenet``, ...);
  ``config`` its resolved typed config, ``meta`` what was learned that is not a weight
  (vocab sizes, teacher width, ...);
- its weights (safetensors) and ``vocab.json``;
- ``decision.json`` (optional): how probabilities become a recommendation, kept *beside* the
  model and not on it: the decision threshold chosen on validation, and the DDI pairs to
  warn about with their source;
- ``calibration.json`` (optional, :mod:`leader.calibration`): the probability calibration
  fitted on validation and the conformal risk curve behind ``--miss-rate`` sets.

``load(dir)`` is the one way evaluate, recommend, serve and benchmark open a folder;
``load_deployed(dir)`` adds the decision and the calibration.

>>> model = load("runs/student")                                       # doctest: +SKIP
>>> deployed = load_deployed("runs/student"); deployed.threshold        # doctest: +SKIP
0.35
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leader.errors import LeaderError
from leader.io import write_json_atomic

FORMAT_VERSION = 1
HEADER = "config.json"
DECISION = "decision.json"
# Names written by earlier versions -> registry names.
ALIASES = {"leader-student": "leader_s", "leader-teacher": "leader_t"}


@dataclass
class Header:
    model_type: str
    format_version: int
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


def write_header(
    directory: str | os.PathLike[str],
    model_type: str,
    config: Any,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``config.json`` (``config`` a dataclass or a plain mapping)."""
    plain = dataclasses.asdict(config) if _is_instance(config) else dict(config)
    write_json_atomic(
        Path(directory) / HEADER,
        {
            "model_type": model_type,
            "format_version": FORMAT_VERSION,
            "config": plain,
            "meta": meta or {},
        },
    )


def read_header(directory: str | os.PathLike[str], expected: str | None = None) -> Header:
    """The header of a saved model folder; ``expected`` checks its model type."""
    path = Path(directory) / HEADER
    if not path.is_file():
        raise LeaderError(
            f"{path}: missing; {directory} is not a saved model folder (train one with "
            "`leader student train`, `leader baseline train` or `leader teacher train`)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeaderError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(raw, dict) and "model_type" not in raw and isinstance(raw.get("model"), str):
        raw["model_type"] = raw["model"]  # baselines saved before the shared header
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise LeaderError(f"{path}: no model_type; not a saved model folder")
    model_type = str(ALIASES.get(raw["model_type"], raw["model_type"]))
    version = int(raw.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise LeaderError(
            f"{path}: format_version {version} is newer than this leader reads "
            f"({FORMAT_VERSION}); upgrade leader"
        )
    header = Header(model_type, version, dict(raw.get("config", {})), dict(raw.get("meta", {})))
    if expected is not None and header.model_type != expected:
        raise LeaderError(f"{path}: holds model {header.model_type!r}, not {expected!r}")
    return header


def load(directory: str | os.PathLike[str]) -> Any:
    """Open any saved model folder with its registered class (``from_pretrained``)."""
    from leader.baselines.registry import model_class

    header = read_header(directory)
    return model_class(header.model_type).from_pretrained(directory)


# ----------------------------------------------------------------------------- decision


@dataclass
class Decision:
    """How a model's probabilities become a recommended set (beside the model, not on it)."""

    threshold: float = 0.5  # recommend drugs with probability >= threshold
    ddi_pairs: list[tuple[str, str]] = field(default_factory=list)  # interacting drug codes
    ddi_source: str = "none"  # where the pairs came from (the dataset's DDI source)

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "ddi_source": self.ddi_source,
            "ddi_pairs": [list(p) for p in self.ddi_pairs],
        }


def write_decision(directory: str | os.PathLike[str], decision: Decision) -> None:
    write_json_atomic(Path(directory) / DECISION, decision.to_json())


def read_decision(directory: str | os.PathLike[str]) -> Decision | None:
    """The folder's decision, or None when it has none (a baseline saved by itself)."""
    path = Path(directory) / DECISION
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Decision(
            threshold=float(raw.get("threshold", 0.5)),
            ddi_pairs=[(str(a), str(b)) for a, b in raw.get("ddi_pairs", [])],
            ddi_source=str(raw.get("ddi_source", "none")),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise LeaderError(f"{path}: not a valid decision file ({exc})") from exc


@dataclass
class Deployed:
    """A loaded model with its decision: what recommending and serving use."""

    model: Any
    decision: Decision
    path: Path
    calibration: Any = None  # leader.calibration.Calibration | None (no calibration.json)

    @property
    def vocab(self) -> Any:
        return self.model.vocab

    @property
    def threshold(self) -> float:
        return self.decision.threshold

    @property
    def ddi_pairs(self) -> list[tuple[str, str]]:
        return self.decision.ddi_pairs

    @property
    def ddi_source(self) -> str:
        return self.decision.ddi_source

    @property
    def model_type(self) -> str:
        return read_header(self.path).model_type

    def predict_proba(self, samples: Sequence[Any]) -> np.ndarray:
        return self.model.predict_proba(samples)  # type: ignore[no-any-return]

    def num_parameters(self) -> int:
        return int(self.model.num_parameters())


def load_deployed(directory: str | os.PathLike[str]) -> Deployed:
    """:func:`load` plus the folder's :class:`Decision` (0.5 and no DDI pairs without one)
    and its calibration (None without ``calibration.json``)."""
    from leader.calibration import read_calibration

    decision = read_decision(directory) or Decision()
    return Deployed(load(directory), decision, Path(directory), read_calibration(directory))


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)
