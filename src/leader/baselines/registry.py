"""Every baseline by name, imported lazily, so ``leader benchmark`` can run any of them.

>>> sorted(MODELS)[:3]
['cognet', 'ecc', 'gamenet']
>>> model = create("lr", seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from leader.baselines.base import Recommender
from leader.baselines.neural import replace_config
from leader.errors import LeaderError

# name -> "module:Class"; every class has a ``config_class`` and takes its config first.
MODELS: dict[str, str] = {
    "popularity": "leader.baselines.floors:Popularity",
    "previous_visit": "leader.baselines.floors:PreviousVisit",
    "lr": "leader.baselines.linear:LR",
    "ecc": "leader.baselines.linear:ECC",
    "retain": "leader.baselines.retain:RETAIN",
    "leap": "leader.baselines.leap:LEAP",
    "gamenet": "leader.baselines.gamenet:GAMENet",
    "safedrug": "leader.baselines.safedrug:SafeDrug",
    "micron": "leader.baselines.micron:MICRON",
    "cognet": "leader.baselines.cognet:COGNet",
    "molerec": "leader.baselines.molerec:MoleRec",
}
# Models that read molecules (SMILES through RDKit).
MOLECULE_MODELS: frozenset[str] = frozenset({"safedrug", "molerec"})


def model_class(name: str) -> type[Any]:
    if name not in MODELS:
        raise LeaderError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    module, _, cls = MODELS[name].partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def default_config(name: str) -> Any:
    return model_class(name).config_class()


def create(name: str, **overrides: Any) -> Recommender:
    """A fresh model with its default config, ``overrides`` applied where the field exists."""
    cls = model_class(name)
    return cls(replace_config(default_config(name), **overrides))  # type: ignore[no-any-return]


def load(directory: str | Path) -> Recommender:
    """Load any saved baseline; the model name comes from its ``config.json``."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise LeaderError(f"{path}: missing; not a saved baseline folder")
    name = json.loads(path.read_text(encoding="utf-8")).get("model")
    return model_class(str(name)).from_pretrained(directory)  # type: ignore[no-any-return]
