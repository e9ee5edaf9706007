"""The three terms of the LEADER(S) objective (arXiv 2402.02803, section "Student").

loss = BCE(logits, targets)
     + alpha * MSE(projector(student patient vector), teacher hidden state)   # distillation
     + beta  * symmetric InfoNCE(profile vector, encoded true medication set)  # alignment
     + kd    * BCE(logits, teacher's drug probabilities)    # soft labels (not in the paper)

Pure functions on tensors, tested on hand-made inputs.

>>> import torch
>>> round(float(info_nce(torch.eye(2), torch.eye(2), temperature=1.0)), 4)
0.3133
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over samples and drugs."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def distillation_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the teacher's hidden state; the teacher gets no gradient."""
    if projected.shape != teacher.shape:
        raise ValueError(
            f"projected student vectors {tuple(projected.shape)} and teacher states "
            f"{tuple(teacher.shape)} differ"
        )
    return F.mse_loss(projected, teacher.detach())


def soft_label_loss(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """BCE of the student's logits against the teacher's drug probabilities (soft labels);
    the teacher gets no gradient."""
    if logits.shape != probabilities.shape:
        raise ValueError(
            f"student logits {tuple(logits.shape)} and teacher probabilities "
            f"{tuple(probabilities.shape)} differ"
        )
    return F.binary_cross_entropy_with_logits(logits, probabilities.detach())


def info_nce(
    anchors: torch.Tensor, positives: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities with in-batch negatives.

    Row i of ``anchors`` (the profile vectors) should match row i of ``positives`` (the
    encoded true medication sets) and no other row; both directions are averaged.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    a = F.normalize(anchors, dim=-1)
    b = F.normalize(positives, dim=-1)
    logits = a @ b.T / temperature  # (B, B)
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
