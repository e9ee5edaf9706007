"""LEAP: sequential drug decoding with attention over the diagnoses (Zhang, Chen, Zhou,
Zhang, Li, "LEAP: Learning to Prescribe Effective and Safe Treatment Combinations for
Multimorbidity", KDD 2017), read against the reproduction the GAMENet / SafeDrug line
reports (github.com/sjy1203/GAMENet, ``code/models.py`` ``Leap``, ``code/baseline/train_Leap.py``).

- Encoder: embeddings of the current visit's diagnoses (dropout 0.3).
- Decoder: a GRU over ``[c ; x_t]`` with ``x_t`` the previous token's embedding (dropout 0.3)
  over drugs + START + END. The context ``c`` is the attention of the START embedding over
  the diagnoses, ``c = softmax_i(w^T [x_START ; d_i]) D``, computed once and reused at every
  step (the code overwrites the diagnosis memory with the first step's context, so later
  steps attend over that single vector); the GRU starts from ``x_START``. Next token:
  ``softmax(W ReLU(h_t))`` over drugs + START + END.
- Training: teacher forcing, cross-entropy on the visit's drugs in record order, then END.
- Prediction: 20 greedy steps (the code's ``max_len``), each feeding back its most probable
  token; the set is read from the step distributions by ``sequence_output_process``
  (:func:`leader.baselines.neural.first_unique_tokens`: the best not-yet-emitted token per
  step, stopping at END or START); PRAUC ranks by the mean softmax over the 20 steps.
- Budget (the reproduction's): Adam, lr 2e-4, 30 epochs, one step per visit, width 128,
  PyTorch's default embedding initialisation (the code has no ``init_weights``).

LEAP reads only the current visit, so first-time patients are served like everyone else.

Output, as the reproduction scores it: the probabilities are the mean softmax over the 20
steps (PRAUC's ranking) and the set is the decoded set (Jaccard / F1 / DDI / #MED), kept
apart (``predict_with_sets``). ``scores = "decoded_first"`` (this project's earlier default)
instead returns ``0.5 + 0.5 m`` for a decoded drug and ``0.5 m`` for any other, so that one
score matrix thresholded at 0.5 gives the decoded set (PRAUC then ranks decoded drugs
first). Remaining deviations: the reinforcement-learning fine-tuning stage (rewarding
Jaccard, an extra 30 epochs) is not
implemented: the reproduction reports LEAP without it as well. Early stopping (patience 10
on validation PRAUC) instead of the last of 30 epochs.

>>> model = LEAP(LEAPConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
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
    decoded_scores,
    first_unique_tokens,
    last_output,
    teacher_forcing,
)
from leader.config import option
from leader.data.store import Sample, VisitDataset
from leader.errors import LeaderError
from leader.training import Output


@dataclass
class LEAPConfig(NeuralConfig):
    embedding_dim: int = option(128, "embedding / GRU width (reproduction: emb_dim=128)")
    dropout: float = option(0.3, "dropout on the embeddings (reproduction: 0.3)")
    epochs: int = option(100, "epoch cap, not meant to bind (reproduction: EPOCH = 30)")
    lr: float = option(2e-4, "Adam learning rate (reproduction: LR = 0.0002)")
    update: str = option("visit", "one step per visit, as train_Leap.py")
    batch_size: int = option(1, "visits per step (reproduction: 1)")
    max_steps: int = option(20, "decoding steps at prediction (reproduction: max_len=20)")
    scores: str = option(
        "mean_softmax",
        "'mean_softmax' (the reproduction's probabilities) or 'decoded_first' (decoded drugs "
        "scored above 0.5; see the module docs)",
    )


class LEAPNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], config: LEAPConfig) -> None:
        super().__init__()
        if config.scores not in ("decoded_first", "mean_softmax"):
            raise LeaderError("leap: scores must be decoded_first or mean_softmax")
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.drugs, self.start, self.end = drugs, drugs, drugs + 1
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.medication = nn.Embedding(drugs + 2, dim)  # + START, END
        self.dropout = nn.Dropout(config.dropout)
        self.attention = nn.Linear(2 * dim, 1)
        self.cell = nn.GRUCell(2 * dim, dim)
        self.output = nn.Linear(dim, drugs + 2)  # + START, END

    def context(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) the fixed context and (B, D) the initial hidden state (START's embedding)."""
        codes = last_output(batch.diagnoses, batch.lengths)  # (B, C) current diagnoses
        mask = codes > 0
        mask[:, 0] |= ~mask.any(dim=1)  # a visit without diagnoses attends to padding
        memory = self.dropout(self.diagnosis(codes))  # (B, C, D)
        start = torch.full((batch.size,), self.start, dtype=torch.long)
        first = self.dropout(self.medication(start))  # (B, D)
        joint = torch.cat([first.unsqueeze(1).expand_as(memory), memory], dim=-1)
        scores = self.attention(joint).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (torch.softmax(scores, dim=1).unsqueeze(-1) * memory).sum(dim=1), first

    def step(
        self, context: torch.Tensor, token: torch.Tensor, hidden: torch.Tensor, first: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = hidden if first else self.dropout(self.medication(token))  # START: x_START
        hidden = self.cell(torch.cat([context, x], dim=-1), hidden)
        return self.output(F.relu(hidden)), hidden  # (B, drugs + 2)

    def forward(self, batch: Batch) -> Output:
        if batch.target_sequences is None:
            return Output(loss=None, logits=torch.logit(self.predict(batch)[0], eps=1e-6))
        context, hidden = self.context(batch)
        inputs, outputs = teacher_forcing(batch.target_sequences, self.start, self.end)
        step_logits = []
        for t in range(inputs.shape[1]):
            logits, hidden = self.step(context, inputs[:, t], hidden, first=t == 0)
            step_logits.append(logits)
        stacked = torch.stack(step_logits, dim=1)  # (B, T, drugs + 2)
        loss = F.cross_entropy(stacked.flatten(0, 1), outputs.flatten(), ignore_index=-100)
        return Output(loss=loss, logits=stacked.max(dim=1).values[:, : self.drugs])

    def step_probabilities(self, batch: Batch) -> torch.Tensor:
        """(B, max_steps, drugs + 2) softmax of every greedy decoding step."""
        context, hidden = self.context(batch)
        token = torch.full((batch.size,), self.start, dtype=torch.long)
        steps = []
        for t in range(self.config.max_steps):
            logits, hidden = self.step(context, token, hidden, first=t == 0)
            steps.append(torch.softmax(logits, dim=-1))
            token = logits.argmax(dim=-1)  # fed back as is, repeats included (the code)
        return torch.stack(steps, dim=1)

    def predict(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, drugs) mean softmax over the steps and (B, drugs) the decoded set."""
        steps = self.step_probabilities(batch)
        mean = steps[:, :, : self.drugs].mean(dim=1)  # (B, drugs)
        chosen = torch.zeros_like(mean, dtype=torch.bool)
        for b, rows in enumerate(steps.numpy()):
            chosen[b, first_unique_tokens(rows, {self.start, self.end})] = True
        if self.config.scores == "decoded_first":
            return decoded_scores(mean, chosen), chosen
        return mean, chosen


class LEAP(NeuralRecommender):
    """LEAP: attention-based sequential decoding of the drug set."""

    name: ClassVar[str] = "leap"
    config_class: ClassVar[type[Any]] = LEAPConfig
    decodes_sets: ClassVar[bool] = True

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        return {}, {}

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return LEAPNetwork(meta, self.config)
