"""LEAP: sequential drug decoding with attention over the diagnoses (Zhang, Chen, Zhou,
Zhang, Li, "LEAP: Learning to Prescribe Effective and Safe Treatment Combinations for
Multimorbidity", KDD 2017).

An encoder embeds the current visit's diagnoses; a GRU decoder emits one drug per step
(then END). At each step the previous drug's embedding ``x`` attends over the diagnosis
embeddings ``D`` (``a = softmax(w^T [h ; d_i])``, content ``c = a D``), and
``h = GRU([c ; x], h)``; the next drug is ``softmax(W ReLU(h))`` over drugs + END. Training:
teacher forcing with cross-entropy on the visit's drugs in record order, then END
(the GAMENet reproduction's set-up). Prediction: greedy decoding; a drug cannot be emitted
twice; decoding stops at END or after the longest training set.

LEAP reads only the current visit, so first-time patients are served like everyone else.

Deviations: LEAP's reinforcement-learning fine-tuning (rewarding DDI-free combinations) is
not implemented; greedy decoding stands in for beam search; scores for PRAUC are each
drug's highest decoding probability, mapped so that the ``>= 0.5`` set is exactly the
decoded set (:func:`leader.baselines.neural.decoded_scores`).

>>> model = LEAP(LEAPConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.neural import (
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    decoded_scores,
    last_output,
    teacher_forcing,
)
from leader.data.store import Sample, VisitDataset
from leader.training import Output

LEAPConfig = NeuralConfig


class LEAPNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], config: NeuralConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.drugs, self.start, self.end = drugs, drugs, drugs  # START input id = END output id
        self.max_steps = int(meta["max_medications"]) + 1
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.medication = nn.Embedding(drugs + 1, dim)  # + START
        self.dropout = nn.Dropout(config.dropout)
        self.attention = nn.Linear(2 * dim, 1)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.output = nn.Linear(dim, drugs + 1)  # + END

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        codes = last_output(batch.diagnoses, batch.lengths)  # (B, C) current diagnoses
        mask = codes > 0
        mask[:, 0] |= ~mask.any(dim=1)  # a visit without diagnoses attends to padding
        return self.dropout(self.diagnosis(codes)), mask  # (B, C, D), (B, C)

    def step(
        self,
        memory: torch.Tensor,
        mask: torch.Tensor,
        previous: torch.Tensor,
        hidden: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout(self.medication(previous))  # (B, D)
        state = x if hidden is None else hidden
        joint = torch.cat([state.unsqueeze(1).expand_as(memory), memory], dim=-1)
        scores = self.attention(joint).squeeze(-1).masked_fill(~mask, float("-inf"))
        context = (torch.softmax(scores, dim=1).unsqueeze(-1) * memory).sum(dim=1)  # (B, D)
        hidden = self.cell(torch.cat([context, x], dim=-1), state)
        return self.output(F.relu(hidden)), hidden  # (B, drugs + 1)

    def forward(self, batch: Batch) -> Output:
        memory, mask = self.encode(batch)
        if batch.target_sequences is None:
            return Output(loss=None, logits=torch.logit(self.predict(batch), eps=1e-6))
        inputs, outputs = teacher_forcing(batch.target_sequences, self.start, self.end)
        hidden, step_logits = None, []
        for t in range(inputs.shape[1]):
            logits, hidden = self.step(memory, mask, inputs[:, t], hidden)
            step_logits.append(logits)
        stacked = torch.stack(step_logits, dim=1)  # (B, T, drugs + 1)
        loss = F.cross_entropy(stacked.flatten(0, 1), outputs.flatten(), ignore_index=-100)
        return Output(loss=loss, logits=stacked.max(dim=1).values[:, : self.drugs])

    def predict(self, batch: Batch) -> torch.Tensor:
        memory, mask = self.encode(batch)
        size = batch.size
        chosen = torch.zeros(size, self.drugs, dtype=torch.bool)
        best = torch.zeros(size, self.drugs)
        done = torch.zeros(size, dtype=torch.bool)
        previous = torch.full((size,), self.start, dtype=torch.long)
        hidden = None
        for _ in range(self.max_steps):
            logits, hidden = self.step(memory, mask, previous, hidden)
            logits[:, : self.drugs] = logits[:, : self.drugs].masked_fill(chosen, float("-inf"))
            probabilities = torch.softmax(logits, dim=-1)
            live = ~done
            best[live] = torch.maximum(best[live], probabilities[live, : self.drugs])
            previous = probabilities.argmax(dim=-1)
            emitted = live & (previous != self.end)
            chosen[emitted, previous[emitted]] = True
            done |= previous == self.end
            previous = torch.where(
                previous == self.end, torch.full_like(previous, self.start), previous
            )
            if bool(done.all()):
                break
        return decoded_scores(best, chosen)


class LEAP(NeuralRecommender):
    """LEAP: attention-based sequential decoding of the drug set."""

    name: ClassVar[str] = "leap"
    config_class: ClassVar[type[Any]] = NeuralConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        longest = int(dataset.targets(train).sum(axis=1).max()) if train else 1
        return {"max_medications": max(longest, 1)}, {}

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return LEAPNetwork(meta, self.config)
