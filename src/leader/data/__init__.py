"""Data: raw EHR tables -> the dataset directory -> samples."""

from leader.data.store import KINDS, Sample, Visit, VisitDataset, Vocabulary

__all__ = ["KINDS", "Sample", "Visit", "VisitDataset", "Vocabulary"]
