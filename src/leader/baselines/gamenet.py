"""GAMENet: graph-augmented memory networks (Shang et al., "GAMENet: Graph Augmented
MEmory Networks for Recommending Medication Combination", AAAI 2019).

- Patient query: diagnosis and procedure embeddings (sum per visit), one GRU each over the
  visits, ``query_t = Linear(ReLU([o_d ; o_p]))``.
- Memory bank: ``M = GCN_ehr(A_ehr) - lambda * GCN_ddi(A_ddi)`` over the drugs, with
  ``A_ehr`` the co-occurrence of drugs in training visits, ``A_ddi`` the dataset's DDI
  matrix, two-layer GCNs on identity features, row-normalised ``A + I``, learnable lambda.
- Dynamic memory: keys are the queries of earlier visits, values their medication
  multi-hots.
- Read-out: ``o1 = softmax(q M^T) M``; ``o2 = (softmax(q K^T) V) M`` over earlier visits;
  output ``MLP([q ; o1 ; o2])``.
- Loss: ``0.9 BCE + 0.01 multi-label margin``; with DDI knowledge, when the batch's DDI rate
  exceeds ``target_ddi`` the DDI loss (mean of ``p p^T * A_ddi``) replaces it with
  probability ``exp((target_ddi - rate) / T)``, ``T`` annealed by ``decay`` every epoch
  (the released code's simulated annealing).

Deviations and first-time patients:
- The paper trains one patient (all visits) per step; here mini-batches of samples, and the
  annealing decision is taken per batch instead of per visit.
- First-time patients have no dynamic memory; as in the released code, ``o2 = o1`` then.
- The released code skips each patient's first visit in training; here every sample
  (first visits included) is trained on, so the model learns to serve first-time patients.

>>> model = GAMENet(GAMENetConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.neural import (
    GCN,
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    VisitQuery,
    batch_ddi_rate,
    last_output,
    margin_loss,
)
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class GAMENetConfig(NeuralConfig):
    use_ddi: bool = True  # DDI graph in the memory bank and the annealed DDI loss
    target_ddi: float = 0.05  # DDI rate above which the DDI loss may be used
    temperature: float = 0.5  # initial annealing temperature T
    decay: float = 0.85  # T is multiplied by this after every epoch


def cooccurrence(dataset: VisitDataset, train: Sequence[Sample]) -> np.ndarray:
    """0/1 (drugs, drugs): drugs prescribed together in a training visit (EHR graph)."""
    drugs = dataset.vocab.size("medication")
    matrix = np.zeros((drugs, drugs), dtype=np.float32)
    seen: set[str] = set()
    index = dataset.vocab.index("medication")
    for sample in train:
        for visit in (*sample.history, sample.current):
            if visit.visit_id in seen:
                continue
            seen.add(visit.visit_id)
            codes = sorted({index[c] for c in visit.medications if c in index})
            for a in codes:
                for b in codes:
                    if a != b:
                        matrix[a, b] = 1.0
    return matrix


class GAMENetNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: GAMENetConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.encoder = VisitQuery(
            meta["diagnoses"], meta["procedures"], dim, 2 * dim, config.dropout
        )
        self.ehr_gcn = GCN(drugs, dim, inputs["ehr_adjacency"], config.dropout)
        self.ddi_gcn = GCN(drugs, dim, inputs["ddi_adjacency"], config.dropout)
        self.inter = nn.Parameter(torch.tensor(0.1))
        self.register_buffer("ddi", inputs["ddi_adjacency"].float(), persistent=False)
        self.output = nn.Sequential(
            nn.ReLU(), nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, drugs)
        )
        self.temperature = config.temperature
        self.epochs_started = 0

    def start_epoch(self) -> None:
        if self.epochs_started > 0:
            self.temperature *= self.config.decay
        self.epochs_started += 1

    def forward(self, batch: Batch) -> Output:
        queries = self.encoder(batch)  # (B, V, D)
        query = last_output(queries, batch.lengths)  # (B, D)
        memory = self.ehr_gcn()  # (drugs, D)
        if self.config.use_ddi:
            memory = memory - self.inter * self.ddi_gcn()
        fact1 = torch.softmax(query @ memory.T, dim=-1) @ memory  # (B, D)
        # Dynamic memory over earlier visits only: mask the current visit and padding.
        steps = torch.arange(queries.shape[1]).unsqueeze(0)
        earlier = steps < (batch.lengths - 1).unsqueeze(1)  # (B, V)
        scores = torch.einsum("bd,bvd->bv", query, queries).masked_fill(~earlier, float("-inf"))
        has_history = earlier.any(dim=1, keepdim=True)  # (B, 1)
        weights = torch.softmax(scores.masked_fill(~has_history, 0.0), dim=1) * earlier
        values = batch.medication_multi_hot()  # (B, V, drugs)
        fact2 = torch.einsum("bv,bvm->bm", weights, values) @ memory  # (B, D)
        fact2 = torch.where(has_history, fact2, fact1)
        logits = self.output(torch.cat([query, fact1, fact2], dim=-1))  # (B, drugs)
        return Output(loss=self._loss(logits, batch), logits=logits)

    def _loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        if batch.target is None:
            return None
        accuracy = 0.9 * F.binary_cross_entropy_with_logits(logits, batch.target)
        accuracy = accuracy + 0.01 * margin_loss(logits, batch.target)
        if not (self.config.use_ddi and self.training):
            return accuracy
        ddi: torch.Tensor = self.ddi  # type: ignore[assignment]
        rate = batch_ddi_rate(logits, ddi)
        if rate <= self.config.target_ddi:
            return accuracy
        probabilities = torch.sigmoid(logits)
        ddi_loss = (probabilities.unsqueeze(2) * probabilities.unsqueeze(1) * ddi).mean()
        accept = math.exp((self.config.target_ddi - rate) / max(self.temperature, 1e-6))
        return ddi_loss if float(torch.rand(())) < accept else accuracy


class GAMENet(NeuralRecommender):
    """GAMENet with EHR and DDI graph memory."""

    name: ClassVar[str] = "gamenet"
    config_class: ClassVar[type[Any]] = GAMENetConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        return {}, {
            "ehr_adjacency": torch.from_numpy(cooccurrence(dataset, train)),
            "ddi_adjacency": torch.from_numpy(dataset.ddi_matrix().astype(np.float32)),
        }

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return GAMENetNetwork(meta, inputs, self.config)
