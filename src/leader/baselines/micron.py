"""MICRON: medication change prediction with residual health representations (Yang,
Xiao, Glass, Sun, "Change Matters: Medication Change Prediction with Recurrent Residual
Networks", IJCAI 2021), read against the authors' code (github.com/ycq091044/MICRON,
``src/models.py``, ``src/MICRON.py``).

- Health representation of one visit, without an RNN: ``r_t = Linear([sum e_d ; sum e_p])``
  (embeddings ``U(-0.1, 0.1)``, dropout 0.5 on each code).
- Prescription network ``h(r) = MLP(r)`` (D -> 4D -> drugs), one logit per drug.
- Residual: the network applied to the *representation difference*,
  ``u_t = h(r_t - r_{t-1})``, so that ``h(r_{t-1}) + u_t`` should reconstruct ``h(r_t)``.
- Training (per sample with an earlier visit; first visits are not trained on, as the
  code): ``0.25 (BCE + margin + rec [+ DDI])`` with
  ``BCE = 0.75 BCE(h(r_t), y_t) + 0.25 BCE(h(r_{t-1}), y_{t-1})``,
  ``margin = 0.05 (0.75 m(sigmoid h(r_t), y_t) + 0.25 m(sigmoid h(r_{t-1}), y_{t-1}))``,
  ``rec = mean_drugs (sigmoid h(r_t) - sigmoid(h(r_{t-1}) + u_t))^2`` and
  ``DDI = mean_drugs sum_j p_i p_j A_ij`` added only when the visit's predicted DDI rate is
  above 0.08. (The code's adaptive loss weights never leave their initial 0.25: the counter
  that would update them is commented out.)
- Inference carries logits forward: from the first kept visit, ``s_1 = h(r_1)`` and its
  recorded medications as the set; at every later visit ``s_t = s_{t-1} + u_t``,
  ``p_t = sigmoid(s_t)``, and the set is updated (add ``p >= 0.8``, remove ``p < 0.2``, keep
  the rest as it was), through the earlier visits up to the current one.
- Budget (the authors'): RMSprop, lr 2e-4, weight decay 1e-5, 40 epochs, one step per
  patient (its visits' losses together), width 64.

Output, as the authors score it: the probabilities are the raw chained sigmoid ``p_t``
(their ``y_pred_prob``, PRAUC's ranking) and the set is the updated set (their ``y_pred``,
for Jaccard / F1 / DDI / #MED): the two are kept apart (``predict_with_sets``), so a drug
can be in the set with ``p < 0.5`` (kept from the previous visit) or out of it with
``p >= 0.5`` (not added below 0.8). A first-time patient (no earlier visit; MICRON's code
skips them) gets ``sigmoid(h(r))``, the prediction of its initial-visit term, and the set
``p >= 0.5``.

Remaining deviations: a patient's loss is the mean over its visits, not the sum (Adam-type
optimisers are nearly scale-free); early stopping (patience 10 on validation PRAUC) instead of
the best of 40 epochs by validation Jaccard; the chain starts at the first of the
``max_visits`` (10) most recent visits; the code's test-time thresholds fitted on ROC curves
of the evaluation split are not used (the paper's 0.8 / 0.2 are).

>>> model = MICRON(MICRONConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
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
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    bce_per_sample,
    expected_ddi,
    init_uniform,
    last_output,
    margin_per_sample,
    pool_codes,
    visit_ddi_rate,
)
from leader.config import option
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class MICRONConfig(NeuralConfig):
    dropout: float = option(0.5, "dropout on code embeddings (authors: 0.5)")
    epochs: int = option(100, "epoch cap, not meant to bind (authors: EPOCH = 40)")
    optimizer: str = option("rmsprop", "authors: RMSprop")
    lr: float = option(2e-4, "learning rate (authors: --lr 2e-4)")
    weight_decay: float = option(1e-5, "weight decay (authors: --weight_decay 1e-5)")
    update: str = option("patient", "one step per patient, as MICRON.py")
    batch_size: int = option(1, "patients per step (authors: 1)")
    add_threshold: float = option(0.8, "a drug is added when its probability reaches this")
    remove_threshold: float = option(0.2, "a drug is removed when its probability is below")
    ddi_threshold: float = option(0.08, "the DDI loss is added above this visit DDI rate")


def update_set(
    previous: torch.Tensor, probabilities: torch.Tensor, add: float, remove: float
) -> torch.Tensor:
    """MICRON's set update: add ``p >= add``, remove ``p < remove``, keep the rest."""
    kept = previous.bool() & ~(probabilities < remove)
    return kept | (probabilities >= add)


class MICRONNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: MICRONConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.drugs = drugs
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(meta["procedures"] + 1, dim, padding_idx=0)
        init_uniform(self.diagnosis, self.procedure)
        self.dropout = nn.Dropout(config.dropout)
        self.health = nn.Linear(2 * dim, dim)
        self.prescription = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, drugs)
        )
        self.register_buffer("ddi", inputs["ddi_adjacency"], persistent=False)

    def representations(self, batch: Batch) -> torch.Tensor:
        """(B, V, D) health representation of every visit."""
        codes = torch.cat(
            [
                pool_codes(self.diagnosis, batch.diagnoses, self.dropout),
                pool_codes(self.procedure, batch.procedures, self.dropout),
            ],
            dim=-1,
        )
        return self.health(codes)  # type: ignore[no-any-return]

    def forward(self, batch: Batch) -> Output:
        health = self.representations(batch)
        current_health = last_output(health, batch.lengths)
        previous_health = last_output(health, (batch.lengths - 1).clamp(min=1))
        current = self.prescription(current_health)  # (B, drugs)
        if batch.target is None:
            return Output(loss=None, logits=torch.logit(self.predict(batch)[0], eps=1e-6))
        previous = self.prescription(previous_health)
        residual = self.prescription(current_health - previous_health)
        target, earlier = batch.target, batch.previous_medications()
        p_current, p_previous = torch.sigmoid(current), torch.sigmoid(previous)
        bce = 0.75 * bce_per_sample(current, target) + 0.25 * bce_per_sample(previous, earlier)
        margin = 0.05 * (
            0.75 * margin_per_sample(p_current, target)
            + 0.25 * margin_per_sample(p_previous, earlier)
        )
        rec = ((p_current - torch.sigmoid(previous + residual)) ** 2).mean(dim=1)
        ddi: torch.Tensor = self.ddi  # type: ignore[assignment]
        ddi_loss = expected_ddi(p_current, ddi) / self.drugs
        over = (visit_ddi_rate(current, ddi) > self.config.ddi_threshold).float()
        per_sample = 0.25 * (bce + margin + rec + over * ddi_loss)
        # Only samples with an earlier visit train (the code skips first visits).
        has_previous = (batch.lengths > 1).float()
        loss = (per_sample * has_previous).sum() / has_previous.sum().clamp(min=1)
        return Output(loss=loss, logits=current, parts={"rec": float(rec.detach().mean())})

    def predict(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, drugs) chained probabilities and (B, drugs) the chain's set (module docs)."""
        add, remove = self.config.add_threshold, self.config.remove_threshold
        health = self.representations(batch)  # (B, V, D)
        logits = self.prescription(health[:, 0])  # s_1 (B, drugs)
        chosen = batch.medication_multi_hot()[:, 0].bool()  # the first visit's recorded set
        for t in range(1, health.shape[1]):
            live = (t < batch.lengths).unsqueeze(-1)  # (B, 1) visit t exists
            step = logits + self.prescription(health[:, t] - health[:, t - 1])
            logits = torch.where(live, step, logits)
            updated = update_set(chosen, torch.sigmoid(logits), add, remove)
            chosen = torch.where(live, updated, chosen)
        probabilities = torch.sigmoid(logits)
        first_time = (batch.lengths == 1).unsqueeze(-1)
        return probabilities, torch.where(first_time, probabilities >= 0.5, chosen)


class MICRON(NeuralRecommender):
    """MICRON: the previous prescription updated by predicted medication changes."""

    name: ClassVar[str] = "micron"
    config_class: ClassVar[type[Any]] = MICRONConfig
    decodes_sets: ClassVar[bool] = True

    def trains_on(self, sample: Sample) -> bool:
        return not sample.is_single_visit  # the code trains from each patient's second visit

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        return {}, {"ddi_adjacency": torch.from_numpy(dataset.ddi_matrix().astype(np.float32))}

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return MICRONNetwork(meta, inputs, self.config)
