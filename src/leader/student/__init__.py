"""LEADER(S): the compact student distilled from the LLM teacher (arXiv 2402.02803).

Names load lazily, so importing the package (or its config) does not import torch.

>>> from leader.student import LeaderStudent, StudentConfig, train_student  # doctest: +SKIP
"""

from __future__ import annotations

from leader.lazy import lazy_names

_NAMES = {
    "LeaderStudent": "leader.student.model",
    "StudentConfig": "leader.student.config",
    "StudentRecommender": "leader.student.recommender",
    "load_teacher_features": "leader.student.train",
    "train_student": "leader.student.train",
}

__all__ = sorted(_NAMES)
__getattr__ = lazy_names(__name__, _NAMES)
