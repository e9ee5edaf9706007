"""RETAIN: reverse-time attention over the visits (Choi et al., "RETAIN: An Interpretable
Predictive Model for Healthcare using Reverse Time Attention Mechanism", NeurIPS 2016).

Each visit is embedded as the sum of its code embeddings ``v_i``. Two GRUs read the visits
in reverse time order; the first gives a scalar visit-level attention
``alpha = softmax(w_alpha^T g_i + b)``, the second a vector code-level attention
``beta_i = tanh(W_beta h_i + b)``. The context ``c = sum_i alpha_i (beta_i * v_i)`` goes
through dropout and a linear layer to one logit per drug; loss BCE.

Medication recommendation setting (as in the GAMENet / SafeDrug reproductions): an earlier
visit's embedding sums its diagnoses, procedures and medications.

Deviations and first-time patients:
- The reproductions feed only earlier visits and so cannot serve a patient without one.
  Here the current visit is always the last step, with its diagnoses and procedures and an
  empty medication slot: a first-time patient is a sequence of one visit.
- The original predicts a fixed label per patient; here one multi-label output per sample.
- At most ``max_visits`` most recent visits (default 10).

>>> model = RETAIN(RETAINConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.neural import Inputs, NeuralConfig, NeuralRecommender, sum_embed
from leader.training import Output


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[b]`` steps of each row of (B, V, ...); padding stays put."""
    steps = torch.arange(x.shape[1]).unsqueeze(0)  # (1, V)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x[torch.arange(x.shape[0]).unsqueeze(1), index]


class RetainNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], config: NeuralConfig) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(meta["procedures"] + 1, dim, padding_idx=0)
        self.medication = nn.Embedding(meta["drugs"] + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.alpha_gru = nn.GRU(dim, dim, batch_first=True)
        self.beta_gru = nn.GRU(dim, dim, batch_first=True)
        self.alpha = nn.Linear(dim, 1)
        self.beta = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, meta["drugs"])

    def forward(self, batch: Batch) -> Output:
        visits = (
            sum_embed(self.diagnosis, batch.diagnoses)
            + sum_embed(self.procedure, batch.procedures)
            + sum_embed(self.medication, batch.medications)
        )  # (B, V, D)
        reversed_visits = reverse_padded(self.dropout(visits), batch.lengths)  # newest first
        g, _ = self.alpha_gru(reversed_visits)  # (B, V, D)
        h, _ = self.beta_gru(reversed_visits)  # (B, V, D)
        scores = self.alpha(g).squeeze(-1).masked_fill(~batch.visit_mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)  # (B, V)
        beta = torch.tanh(self.beta(h))  # (B, V, D)
        context = (alpha.unsqueeze(-1) * beta * reversed_visits).sum(dim=1)  # (B, D)
        logits = self.output(self.dropout(context))  # (B, drugs)
        loss = None
        if batch.target is not None:
            loss = F.binary_cross_entropy_with_logits(logits, batch.target)
        return Output(loss=loss, logits=logits)


class RETAIN(NeuralRecommender):
    """RETAIN over the patient's visits, the current one last."""

    name: ClassVar[str] = "retain"
    config_class: ClassVar[type[Any]] = NeuralConfig

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return RetainNetwork(meta, self.config)


RETAINConfig = NeuralConfig
