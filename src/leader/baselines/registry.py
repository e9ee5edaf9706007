"""Every model by name, imported lazily: the baselines and LEADER(S), one contract.

``load(dir)`` opens any saved model folder (:mod:`leader.models`).

>>> sorted(MODELS)[:3]
['cognet', 'ecc', 'gamenet']
>>> model = create("lr", seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from leader.baselines.base import Recommender
from leader.config import replace
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
    "leader_s": "leader.student.recommender:StudentRecommender",
}
# Saved-folder types that load (``leader.models.load``) but are not trained by ``create``:
# the teacher is trained by ``leader teacher train`` and scored from its features file.
LOADABLE: dict[str, str] = {"leader_t": "leader.teacher.model:LeaderTeacher"}
# Models that read molecules (SMILES through RDKit).
MOLECULE_MODELS: frozenset[str] = frozenset({"safedrug", "molerec"})


def model_class(name: str) -> type[Any]:
    target = MODELS.get(name) or LOADABLE.get(name)
    if target is None:
        raise LeaderError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def default_config(name: str) -> Any:
    return model_class(name).config_class()


def create(name: str, **overrides: Any) -> Recommender:
    """A fresh model with its default config, ``overrides`` applied where the field exists."""
    cls = model_class(name)
    return cls(replace(default_config(name), **overrides))  # type: ignore[no-any-return]


def load(directory: str | Path) -> Recommender:
    """Load any saved model folder; its type comes from the ``config.json`` header."""
    from leader.models import load as load_model

    return load_model(directory)  # type: ignore[no-any-return]
