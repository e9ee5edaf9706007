"""LEADER(S): the compact student distilled from the LLM teacher (arXiv 2402.02803).

>>> from leader.student import LeaderStudent, StudentConfig, train_student  # doctest: +SKIP
"""

from leader.student.model import LeaderStudent, StudentConfig
from leader.student.train import load_teacher_features, train_student

__all__ = ["LeaderStudent", "StudentConfig", "load_teacher_features", "train_student"]
