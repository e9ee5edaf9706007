"""The LLM teacher LEADER(T): prompts -> LoRA-tuned LLM -> medication output layer.

Names load lazily, so importing the package (or its config) does not import torch.

>>> from leader.teacher import TeacherConfig, train_teacher, predict_teacher  # doctest: +SKIP
>>> run = train_teacher(data_dir, Path("runs/t"), TeacherConfig(max_steps=100))  # doctest: +SKIP
>>> metrics = predict_teacher(run, data_dir, Path("runs/t/features.safetensors"))  # doctest: +SKIP
"""

from __future__ import annotations

from leader.lazy import lazy_names

_NAMES = {
    "LeaderTeacher": "leader.teacher.model",
    "TeacherConfig": "leader.teacher.config",
    "predict_teacher": "leader.teacher.predict",
    "train_teacher": "leader.teacher.train",
}

__all__ = sorted(_NAMES)
__getattr__ = lazy_names(__name__, _NAMES)
