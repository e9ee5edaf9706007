"""MICRON: medication change prediction with residual health representations (Yang,
Xiao, Glass, Sun, "Change Matters: Medication Change Prediction with Recurrent Residual
Networks", IJCAI 2021).

- Health representation of a visit, without an RNN: ``r_t = Linear([sum e_d ; sum e_p])``
  (diagnosis and procedure embeddings of that visit only).
- Prescription network ``h(r) = MLP(r)`` -> one logit per drug.
- Change: ``delta = h(r_t) - h(r_{t-1})`` (the residual between consecutive visits)
  updates the previous prescription: a drug of the previous visit is removed when
  ``delta < -c``, a new one added when ``delta > c``. As a probability:
  ``p_change = sigmoid(delta + c (2 y_{t-1} - 1))``.
- Loss: SafeDrug-style controllable loss on ``h(r_t)`` (BCE + margin, DDI penalty above the
  target), plus BCE of ``h(r_{t-1})`` on the previous medications and BCE of ``p_change`` on
  the current ones (the reconstruction / change terms).

First-time patients: no previous visit, so no change to apply; they get
``sigmoid(h(r_t))``, MICRON's own initial-visit prediction.

Deviations: the previous prescription ``y_{t-1}`` is the recorded medication list of the
last earlier visit (each sample is scored alone), not MICRON's own prediction carried along
the patient's visits; the add/remove thresholds are one margin ``c`` on the logit residual
(default 1.386 = logit(0.8)) rather than two probability thresholds; MICRON's separate
multi-label margin and DDI weights are replaced by SafeDrug's controllable loss.

>>> model = MICRON(MICRONConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.neural import (
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    controllable_ddi_loss,
    last_output,
    sum_embed,
)
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class MICRONConfig(NeuralConfig):
    change_margin: float = 1.386  # c: residual logit needed to add / remove a drug
    target_ddi: float = 0.06  # DDI target of the controllable loss
    kp: float = 0.05  # proportional gain of the controllable loss


class MICRONNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: MICRONConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(meta["procedures"] + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.health = nn.Linear(2 * dim, dim)
        self.prescription = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, drugs)
        )
        self.register_buffer("ddi", inputs["ddi_adjacency"], persistent=False)

    def _logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = torch.cat(
            [
                sum_embed(self.diagnosis, batch.diagnoses),
                sum_embed(self.procedure, batch.procedures),
            ],
            dim=-1,
        )
        health = self.health(self.dropout(codes))  # (B, V, D)
        current = self.prescription(last_output(health, batch.lengths))  # (B, drugs)
        previous = self.prescription(last_output(health, (batch.lengths - 1).clamp(min=1)))
        has_previous = (batch.lengths > 1).unsqueeze(-1)  # (B, 1)
        return current, previous, has_previous

    def change_logits(
        self, batch: Batch, current: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        prior = 2 * batch.previous_medications() - 1  # +1 kept, -1 absent
        return current - previous + self.config.change_margin * prior

    def forward(self, batch: Batch) -> Output:
        current, previous, has_previous = self._logits(batch)
        change = self.change_logits(batch, current, previous)
        logits = torch.where(has_previous, change, current)
        if batch.target is None:
            return Output(loss=None, logits=logits)
        ddi: torch.Tensor = self.ddi  # type: ignore[assignment]
        loss, parts = controllable_ddi_loss(
            current, batch.target, ddi, self.config.target_ddi, self.config.kp
        )
        if bool(has_previous.any()):
            rows = has_previous.squeeze(-1)
            loss = loss + F.binary_cross_entropy_with_logits(
                previous[rows], batch.previous_medications()[rows]
            )
            loss = loss + F.binary_cross_entropy_with_logits(change[rows], batch.target[rows])
        return Output(loss=loss, logits=logits, parts=parts)


class MICRON(NeuralRecommender):
    """MICRON: the previous prescription updated by predicted medication changes."""

    name: ClassVar[str] = "micron"
    config_class: ClassVar[type[Any]] = MICRONConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        return {}, {"ddi_adjacency": torch.from_numpy(dataset.ddi_matrix().astype(np.float32))}

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return MICRONNetwork(meta, inputs, self.config)
