"""The LLM teacher LEADER(T): prompts -> LoRA-tuned LLM -> medication output layer.

>>> from leader.teacher import TeacherConfig, train_teacher, predict_teacher  # doctest: +SKIP
>>> run = train_teacher(data_dir, Path("runs/t"), TeacherConfig(max_steps=100))  # doctest: +SKIP
>>> metrics = predict_teacher(run, data_dir, Path("runs/t/features.safetensors"))  # doctest: +SKIP
"""

from leader.teacher.config import TeacherConfig
from leader.teacher.model import LeaderTeacher
from leader.teacher.predict import predict_teacher
from leader.teacher.train import train_teacher

__all__ = ["LeaderTeacher", "TeacherConfig", "predict_teacher", "train_teacher"]
