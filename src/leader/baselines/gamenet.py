"""GAMENet: graph-augmented memory networks (Shang et al., "GAMENet: Graph Augmented
MEmory Networks for Recommending Medication Combination", AAAI 2019), read against the
authors' code (github.com/sjy1203/GAMENet, ``code/models.py``, ``code/train_GAMENet.py``).

- Patient query: diagnosis and procedure embeddings (``U(-0.1, 0.1)``, dropout 0.4 on each
  code), *averaged* per visit, one GRU (width 2D) each over the visits,
  ``query_t = Linear(ReLU([o_d ; o_p]))``.
- Memory bank: ``M = GCN_ehr(A_ehr) - lambda * GCN_ddi(A_ddi)`` over the drugs, with
  ``A_ehr`` the co-occurrence of drugs in training visits, ``A_ddi`` the dataset's DDI
  matrix, two-layer GCNs on identity features (dropout 0.3), row-normalised ``A + I``,
  learnable lambda (``U(-0.1, 0.1)``).
- Dynamic memory: keys are the queries of earlier visits, values their medication
  multi-hots. Read-out: ``o1 = softmax(q M^T) M``; ``o2 = (softmax(q K^T) V) M``; output
  ``MLP([q ; o1 ; o2])``. First-time patients have no dynamic memory: ``o2 = o1``.
- Loss per visit: ``0.9 BCE + 0.01 margin(sigmoid)``; when that visit's predicted DDI rate
  exceeds ``target_ddi`` the DDI loss (mean of ``p p^T * A_ddi``) replaces it with
  probability ``exp((target_ddi - rate) / T)``, ``T`` multiplied by ``decay`` every epoch.
- Budget (the authors'): Adam, lr 2e-4, 40 epochs, one step per visit, every visit (first
  visits included) trained on, width 64.

Remaining deviations: early stopping (patience 10 on validation PRAUC, best weights) instead
of keeping the epoch with the best validation Jaccard after all 40, so every model of the
benchmark stops by one rule; at most ``max_visits`` (10) most recent visits per sample
(MIMIC patients rarely have more). ``batch_size > 1`` trains several visits per step, each
with its own DDI decision (not the authors' setting; for large cohorts).

>>> model = GAMENet(GAMENetConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.neural import (
    GCN,
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    VisitQuery,
    bce_per_sample,
    expected_ddi,
    last_output,
    margin_per_sample,
    visit_ddi_rate,
)
from leader.config import option
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class GAMENetConfig(NeuralConfig):
    dropout: float = option(0.4, "dropout on code embeddings (authors: 0.4)")
    epochs: int = option(100, "epoch cap, not meant to bind (authors: EPOCH = 40)")
    lr: float = option(2e-4, "Adam learning rate (authors: LR = 0.0002)")
    update: str = option("visit", "one step per visit, as train_GAMENet.py")
    batch_size: int = option(1, "visits per step (authors: 1)")
    use_ddi: bool = option(True, "DDI graph in the memory bank and the annealed DDI loss")
    target_ddi: float = option(0.05, "DDI rate above which the DDI loss may be used (0.05)")
    temperature: float = option(0.5, "initial annealing temperature T (0.5)")
    decay: float = option(0.85, "T is multiplied by this after every epoch (0.85)")


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
            meta["diagnoses"], meta["procedures"], dim, 2 * dim, config.dropout, pooling="mean"
        )
        self.ehr_gcn = GCN(drugs, dim, inputs["ehr_adjacency"])
        self.ddi_gcn = GCN(drugs, dim, inputs["ddi_adjacency"])
        self.inter = nn.Parameter(torch.empty(()).uniform_(-0.1, 0.1))
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
        probabilities = torch.sigmoid(logits)
        accuracy = 0.9 * bce_per_sample(logits, batch.target)
        accuracy = accuracy + 0.01 * margin_per_sample(probabilities, batch.target)
        if not (self.config.use_ddi and self.training):
            return accuracy.mean()
        ddi: torch.Tensor = self.ddi  # type: ignore[assignment]
        rate = visit_ddi_rate(logits, ddi)  # (B,)
        # Per visit: (p_i p_j A_ij) averaged over all drug pairs, as GAMENet's batch_neg.
        ddi_loss = expected_ddi(probabilities, ddi) / ddi.numel()
        accept = torch.exp((self.config.target_ddi - rate) / max(self.temperature, 1e-6))
        use_ddi = (rate > self.config.target_ddi) & (torch.rand(rate.shape) < accept)
        return torch.where(use_ddi, ddi_loss, accuracy).mean()


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
