"""RETAIN: reverse-time attention over the visits (Choi et al., "RETAIN: An Interpretable
Predictive Model for Healthcare using Reverse Time Attention Mechanism", NeurIPS 2016),
read against the authors' code (github.com/mp2893/retain) and the medication-recommendation
reproduction the GAMENet / SafeDrug line reports (github.com/sjy1203/GAMENet,
``code/models.py`` ``Retain``, ``code/baseline/train_Retain.py``).

- A visit is the sum of its code embeddings ``v_i`` (one table over diagnoses, procedures
  and medications, ``U(-0.1, 0.1)`` as mp2893/retain, dropout 0.3 on each code as the
  reproduction).
- Two GRUs read the visits in reverse time order; ``alpha = softmax_i(w^T g_i + b)`` over
  the visits, ``beta_i = tanh(W h_i + b)``; ``c = sum_i alpha_i (beta_i * v_i)``; one logit per
  drug ``W_out c + b``; loss BCE.
- ``form`` says what the model reads. ``code`` (the default: both reproductions, GAMENet's
  and SafeDrug's ``train_Retain.py``, as published): earlier visits only (the current
  visit's codes are not read), trained on samples with an earlier visit; a first-time
  patient has nothing to read and gets ``sigmoid(b)``, a learned constant. ``paper``:
  the earlier visits with their medications and the current visit's diagnoses and
  procedures (empty medication slot), trained on every sample, so a first-time patient is
  a sequence of one visit. The benchmark names the form in RETAIN's row.
- Budget (the reproduction's): Adam, lr 2e-4, 40 epochs, one step per patient, width 64.

Remaining deviations: the reproduction's GRUs read forward in time and its ``softmax``
runs over a singleton axis (every ``alpha`` is 1); both are the paper's here (reverse time,
softmax over visits). A patient's loss is the mean over its visits (the code sums);
early stopping (patience 10 on validation PRAUC); at most ``max_visits`` (10) visits.

>>> model = RETAIN(RETAINConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.neural import (
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    init_uniform,
    pool_codes,
)
from leader.config import option
from leader.data.store import Sample
from leader.errors import LeaderError
from leader.training import Output


@dataclass
class RETAINConfig(NeuralConfig):
    dropout: float = option(0.3, "dropout on code embeddings (reproduction: 0.3)")
    epochs: int = option(100, "epoch cap, not meant to bind (reproduction: EPOCH = 40)")
    lr: float = option(2e-4, "Adam learning rate (reproduction: LR = 0.0002)")
    update: str = option("patient", "one step per patient, as train_Retain.py")
    batch_size: int = option(1, "patients per step (reproduction: 1)")
    form: str = option(
        "code",
        "'code': earlier visits only, as both reproductions' released code; "
        "'paper': read the current visit's diagnoses and procedures too",
    )


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[b]`` steps of each row of (B, V, ...); padding stays put."""
    steps = torch.arange(x.shape[1]).unsqueeze(0)  # (1, V)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x[torch.arange(x.shape[0]).unsqueeze(1), index]


class RetainNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], config: RETAINConfig) -> None:
        super().__init__()
        if config.form not in ("paper", "code"):
            raise LeaderError(f"retain: form must be 'paper' or 'code', not {config.form!r}")
        dim = config.embedding_dim
        self.form = config.form
        self.offsets = (meta["diagnoses"], meta["diagnoses"] + meta["procedures"])
        total = meta["diagnoses"] + meta["procedures"] + meta["drugs"]
        self.embedding = nn.Embedding(total + 1, dim, padding_idx=0)  # one table, 0 = padding
        init_uniform(self.embedding)
        self.dropout = nn.Dropout(config.dropout)
        self.alpha_gru = nn.GRU(dim, dim, batch_first=True)
        self.beta_gru = nn.GRU(dim, dim, batch_first=True)
        self.alpha = nn.Linear(dim, 1)
        self.beta = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, meta["drugs"])

    def visits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, D) visit vectors and (B,) how many visits are read."""
        procedures = torch.where(batch.procedures > 0, batch.procedures + self.offsets[0], 0)
        medications = torch.where(batch.medications > 0, batch.medications + self.offsets[1], 0)
        codes = torch.cat([batch.diagnoses, procedures, medications], dim=-1)  # (B, V, C)
        lengths = batch.lengths
        if self.form == "code":  # earlier visits only: drop the current visit's codes
            lengths = lengths - 1
            current = torch.arange(codes.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
            codes = codes.masked_fill(current.unsqueeze(-1), 0)
        return pool_codes(self.embedding, codes, self.dropout), lengths

    def forward(self, batch: Batch) -> Output:
        visits, lengths = self.visits(batch)
        reversed_visits = reverse_padded(visits, lengths.clamp(min=1))  # newest first
        g, _ = self.alpha_gru(reversed_visits)  # (B, V, D)
        h, _ = self.beta_gru(reversed_visits)  # (B, V, D)
        real = torch.arange(visits.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # (B, V)
        scores = self.alpha(g).squeeze(-1).masked_fill(~real, float("-inf"))
        alpha = torch.softmax(scores, dim=1).nan_to_num(0.0)  # (B, V); no visit read: 0
        beta = torch.tanh(self.beta(h))  # (B, V, D)
        context = (alpha.unsqueeze(-1) * beta * reversed_visits).sum(dim=1)  # (B, D)
        logits = self.output(context)  # (B, drugs)
        loss = None
        if batch.target is not None:
            per_sample = F.binary_cross_entropy_with_logits(
                logits, batch.target, reduction="none"
            ).mean(dim=1)
            trained = (lengths > 0).float()
            loss = (per_sample * trained).sum() / trained.sum().clamp(min=1)
        return Output(loss=loss, logits=logits)


class RETAIN(NeuralRecommender):
    """RETAIN over the patient's visits (the current one last in the paper form)."""

    name: ClassVar[str] = "retain"
    config_class: ClassVar[type[Any]] = RETAINConfig

    def trains_on(self, sample: Sample) -> bool:
        return self.config.form == "paper" or not sample.is_single_visit

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return RetainNetwork(meta, self.config)
