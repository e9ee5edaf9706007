"""COGNet: conditional generation of the drug set with a copy mechanism (Wu, Qian, Zhang,
Tian, Zhou, "Conditional Generation Net for Medication Recommendation", WWW 2022).

- Encoders: per visit, a transformer encoder layer over the diagnosis set and one over the
  procedure set (no positions: sets); the visit representation is the sum of their
  masked means. Drug embeddings are enhanced by graphs, ``E + GCN_ehr - lambda GCN_ddi``
  (EHR co-occurrence and DDI graphs, as GAMENet).
- Decoder: a transformer decoder layer over ``[START, m1, ..., m_{k-1}]`` (causal, learned
  positions) attending to the current visit's encoded diagnoses and procedures.
- Generation: ``p_gen = softmax(W h)`` over drugs + END.
- Copy: visit-level weights ``s_j = softmax_j(v_t . v_j / sqrt(D))`` over earlier visits,
  drug-level attention ``a_jk = softmax_k((W_c h) . e(m_jk))`` within visit ``j``;
  ``p_copy(c) = sum_j s_j sum_k a_jk [m_jk = c]``.
- Output ``w p_gen + (1 - w) p_copy`` with the gate ``w = sigmoid(W_g h)``; loss: NLL of the
  visit's drugs in record order, then END (teacher forcing).
- Prediction: greedy decoding (no repeated drug; stop at END or after the longest training
  set); PRAUC scores are each drug's highest decoding probability, mapped so the ``>= 0.5``
  set is exactly the decoded set.

First-time patients have nothing to copy: their gate is fixed to 1 (pure generation from
the current diagnoses and procedures); every visit, first ones included, is trained on.

Deviations: greedy decoding instead of COGNet's beam search (beam 4); one cross-attention
over the concatenated diagnosis and procedure encodings instead of two; COGNet's
medication-history encoder feeding the decoder is not implemented (history reaches the
output through the copy path only); record order for the decoding target.

>>> model = COGNet(COGNetConfig(epochs=20)).fit(dataset)  # doctest: +SKIP
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
from leader.baselines.gamenet import cooccurrence
from leader.baselines.neural import (
    GCN,
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    decoded_scores,
    last_output,
    teacher_forcing,
)
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class COGNetConfig(NeuralConfig):
    heads: int = 4  # attention heads (embedding_dim must be divisible by it)
    ffn: int = 128  # feed-forward width of the transformer layers
    max_positions: int = 64  # decoder positions (drugs per visit + 1 at most)


class COGNetNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: COGNetConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.dim, self.drugs = dim, drugs
        self.start, self.end = drugs, drugs
        self.max_steps = min(int(meta["max_medications"]) + 1, config.max_positions)
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(meta["procedures"] + 1, dim, padding_idx=0)
        self.medication = nn.Embedding(drugs + 1, dim)  # + START
        self.position = nn.Embedding(config.max_positions, dim)
        self.ehr_gcn = GCN(drugs, dim, inputs["ehr_adjacency"], config.dropout)
        self.ddi_gcn = GCN(drugs, dim, inputs["ddi_adjacency"], config.dropout)
        self.inter = nn.Parameter(torch.tensor(0.1))

        def encoder() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                dim, config.heads, config.ffn, config.dropout, batch_first=True
            )

        self.diagnosis_encoder, self.procedure_encoder = encoder(), encoder()
        self.decoder = nn.TransformerDecoderLayer(
            dim, config.heads, config.ffn, config.dropout, batch_first=True
        )
        self.generate = nn.Linear(dim, drugs + 1)  # + END
        self.copy_query = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 1)

    def _encode_sets(
        self, codes: torch.Tensor, embedding: nn.Embedding, encoder: nn.TransformerEncoderLayer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, C) codes -> per-code encodings (B, V, C, D) and set means (B, V, D)."""
        b, v, c = codes.shape
        flat = codes.reshape(b * v, c)
        padding = flat == 0
        empty = padding.all(dim=1)
        padding[empty, 0] = False  # an empty set attends to one padding slot (ignored below)
        encoded = encoder(embedding(flat), src_key_padding_mask=padding)  # (BV, C, D)
        real = (~(flat == 0)).float().unsqueeze(-1)
        mean = (encoded * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)
        return encoded.reshape(b, v, c, -1), mean.reshape(b, v, -1)

    def context(self, batch: Batch) -> dict[str, torch.Tensor]:
        diagnoses, diagnosis_means = self._encode_sets(
            batch.diagnoses, self.diagnosis, self.diagnosis_encoder
        )
        procedures, procedure_means = self._encode_sets(
            batch.procedures, self.procedure, self.procedure_encoder
        )
        visits = diagnosis_means + procedure_means  # (B, V, D)
        current_codes = torch.cat(
            [
                last_output(batch.diagnoses, batch.lengths),
                last_output(batch.procedures, batch.lengths),
            ],
            dim=1,
        )
        memory = torch.cat(
            [last_output(diagnoses, batch.lengths), last_output(procedures, batch.lengths)], dim=1
        )  # (B, Cd+Cp, D)
        memory_padding = current_codes == 0
        memory_padding[memory_padding.all(dim=1), 0] = False
        # Visit-level copy weights over earlier visits only.
        current = last_output(visits, batch.lengths)  # (B, D)
        steps = torch.arange(visits.shape[1]).unsqueeze(0)
        earlier = steps < (batch.lengths - 1).unsqueeze(1)  # (B, V)
        scores = torch.einsum("bd,bvd->bv", current, visits) / self.dim**0.5
        has_history = earlier.any(dim=1)
        scores = scores.masked_fill(~earlier, float("-inf")).masked_fill(
            ~has_history.unsqueeze(1), 0.0
        )
        visit_weights = torch.softmax(scores, dim=1) * earlier  # (B, V)
        drug_table = (
            self.medication.weight[: self.drugs] + self.ehr_gcn() - self.inter * self.ddi_gcn()
        )
        return {
            "memory": memory,
            "memory_padding": memory_padding,
            "visit_weights": visit_weights,
            "has_history": has_history,
            "history": batch.medications,
            "drug_table": drug_table,
        }

    def distribution(self, ctx: dict[str, torch.Tensor], prefix: torch.Tensor) -> torch.Tensor:
        """(B, T) decoder inputs -> (B, T, drugs + 1) output probabilities."""
        length = prefix.shape[1]
        table = torch.cat([ctx["drug_table"], self.medication.weight[self.drugs :]], dim=0)
        x = table[prefix] + self.position(torch.arange(length)).unsqueeze(0)  # (B, T, D)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        h = self.decoder(
            x, ctx["memory"], tgt_mask=causal, memory_key_padding_mask=ctx["memory_padding"]
        )  # (B, T, D)
        generated = torch.softmax(self.generate(h), dim=-1)  # (B, T, drugs + 1)
        history = ctx["history"]  # (B, V, Cm) drug ids + 1, 0 = padding
        token_embeddings = F.pad(ctx["drug_table"], (0, 0, 1, 0))[history]  # (B, V, Cm, D)
        token_scores = torch.einsum("btd,bvkd->btvk", self.copy_query(h), token_embeddings)
        token_scores = token_scores.masked_fill((history == 0).unsqueeze(1), float("-inf"))
        attention = torch.nan_to_num(torch.softmax(token_scores, dim=-1), nan=0.0)
        weights = attention * ctx["visit_weights"][:, None, :, None]  # (B, T, V, Cm)
        copied = torch.zeros(*h.shape[:2], self.drugs + 2)
        index = history.flatten(1).unsqueeze(1).expand(-1, length, -1)  # (B, T, V*Cm)
        copied.scatter_add_(2, index, weights.flatten(2))
        copied = torch.cat([copied[..., 1 : self.drugs + 1], torch.zeros(*h.shape[:2], 1)], dim=-1)
        gate = torch.sigmoid(self.gate(h))  # (B, T, 1)
        gate = torch.where(ctx["has_history"][:, None, None], gate, torch.ones_like(gate))
        return gate * generated + (1 - gate) * copied

    def forward(self, batch: Batch) -> Output:
        if batch.target_sequences is None:
            return Output(loss=None, logits=torch.logit(self.predict(batch), eps=1e-6))
        inputs, outputs = teacher_forcing(batch.target_sequences, self.start, self.end)
        inputs, outputs = (
            inputs[:, : self.position.num_embeddings],
            outputs[:, : self.position.num_embeddings],
        )
        probabilities = self.distribution(self.context(batch), inputs)  # (B, T, drugs + 1)
        log_probabilities = torch.log(probabilities.clamp(min=1e-10))
        loss = F.nll_loss(log_probabilities.flatten(0, 1), outputs.flatten(), ignore_index=-100)
        return Output(
            loss=loss,
            logits=torch.logit(probabilities.max(dim=1).values[:, : self.drugs], eps=1e-6),
        )

    def predict(self, batch: Batch) -> torch.Tensor:
        ctx = self.context(batch)
        size = batch.size
        chosen = torch.zeros(size, self.drugs, dtype=torch.bool)
        best = torch.zeros(size, self.drugs)
        done = torch.zeros(size, dtype=torch.bool)
        prefix = torch.full((size, 1), self.start, dtype=torch.long)
        for _ in range(self.max_steps):
            probabilities = self.distribution(ctx, prefix)[:, -1].clone()  # (B, drugs + 1)
            probabilities[:, : self.drugs] = probabilities[:, : self.drugs].masked_fill(chosen, 0.0)
            live = ~done
            best[live] = torch.maximum(best[live], probabilities[live, : self.drugs])
            token = probabilities.argmax(dim=-1)
            emitted = live & (token != self.end)
            chosen[emitted, token[emitted]] = True
            done |= token == self.end
            token = torch.where(done, torch.full_like(token, self.start), token)
            prefix = torch.cat([prefix, token.unsqueeze(1)], dim=1)
            if bool(done.all()):
                break
        return decoded_scores(best, chosen)


class COGNet(NeuralRecommender):
    """COGNet: transformer generation of the drug set, copying from earlier visits."""

    name: ClassVar[str] = "cognet"
    config_class: ClassVar[type[Any]] = COGNetConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        longest = int(dataset.targets(train).sum(axis=1).max()) if train else 1
        return {"max_medications": max(longest, 1)}, {
            "ehr_adjacency": torch.from_numpy(cooccurrence(dataset, train)),
            "ddi_adjacency": torch.from_numpy(dataset.ddi_matrix().astype(np.float32)),
        }

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return COGNetNetwork(meta, inputs, self.config)
