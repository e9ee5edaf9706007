"""COGNet: conditional generation of the drug set with a copy mechanism (Wu, Qian, Zhang,
Tian, Zhou, "Conditional Generation Net for Medication Recommendation", WWW 2022), read
against the authors' code (github.com/BarryRun/COGNet, ``src/COGNet_model.py``,
``src/COGNet.py``, ``src/recommend.py``, ``src/beam.py``).

- Embeddings (dropout 0.3; PyTorch's default initialisation, as the code) of diagnoses,
  procedures and drug tokens (drugs + START + END + padding).
- Encoders: per visit, a transformer encoder layer (2 heads, feed-forward 2048, dropout 0.2:
  the code's ``nn.TransformerEncoderLayer`` defaults) over the diagnosis set and one over
  the procedure set (no positions: sets); a third over each earlier visit's medication set.
  Visit vectors ``v^d``, ``v^p`` pool the encoded codes by self-attention (``SelfAttend``).
- Graph memory: ``M = GCN_ehr - lambda GCN_ddi`` (first layer shared, as the code's GCN)
  over EHR co-occurrence and DDI graphs, one row per drug (zero for the special tokens).
- Decoder (one layer, 2 heads, feed-forward 2D, dropout 0.2): inputs ``e(m) + M[m]`` of
  ``[START, m1, ..., m_{k-1}]`` (no positions), causal self-attention, then attention to the
  current visit's encoded diagnoses plus attention to its encoded procedures, feed-forward.
- Generation: ``p_gen = softmax(W_o h)`` over drugs + START + END.
- Copy: visit weights ``s_j = softmax_j((v^d_t . v^d_j + v^p_t . v^p_j) / sqrt(D))`` over
  earlier visits; the keys are the *encoded* medications of the earlier visits:
  ``a = softmax_all tokens((W_c h) . k / sqrt(D))``, ``p_copy(m) ∝ sum_{tokens = m} a s_j``.
- Output ``z p_gen + (1 - z) p_copy`` with ``z = sigmoid(W_z h)``; a first-time patient
  (nothing to copy) uses ``p_gen`` alone, as the code's first visit.
- Targets: the visit's drugs *rarest first* (by training-set frequency), then END;
  loss NLL (teacher forcing).
- Prediction: beam search of size 4 (no drug twice, a hypothesis ends at END, scores are
  summed log-probabilities, at most 45 steps: the code's ``--beam_size 4 --max_len 45``).
  Decoding computes the decoder at the newest position only (the causal self-attention's
  last query over the whole prefix, then that position's cross-attention and feed-forward):
  the same outputs as the whole prefix at a fraction of the cost.
- Budget (the authors'): Adam, lr 1e-3, 200 epochs, 16 patients (all their visits) per step,
  width 64.

Output, as the authors score it (``recommend.py``): the set is the best hypothesis'
drugs (Jaccard / F1 / DDI / #MED) and the probabilities are, per drug, its maximum over the
hypothesis' decoding steps, and for a decoded drug its probability at the step that chose
it (PRAUC's ranking); the two are kept apart (``predict_with_sets``). The authors keep
log-probabilities there; probabilities rank the same.

Remaining deviations: drug frequencies for the order are counted on the training split
(the code counts them on the whole data set, test included). The code's
unused SafeDrug-style bipartite layer and ``W_dec``/``W_stay`` projections are left out
(they never reach the output). Early stopping (patience 10 on validation PRAUC) instead
of the best of 200 epochs by validation Jaccard; at most ``max_visits`` (10) visits.

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
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    beam_search,
    decoded_step_scores,
    last_output,
    normalize_rows,
    teacher_forcing,
)
from leader.config import option
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class COGNetConfig(NeuralConfig):
    dropout: float = option(0.3, "dropout on the embeddings (authors: 0.3)")
    epochs: int = option(200, "epoch cap, not meant to bind (authors: EPOCH = 200)")
    lr: float = option(1e-3, "Adam learning rate (authors: --lr 0.001)")
    update: str = option("patient", "steps over whole patients, as COGNet.py")
    batch_size: int = option(16, "patients per step (authors: --batch_size 16)")
    heads: int = option(2, "attention heads (authors: nhead = 2)")
    encoder_ffn: int = option(2048, "feed-forward width of the set encoders (PyTorch default)")
    layer_dropout: float = option(0.2, "dropout inside the transformer layers (authors: 0.2)")
    beam_size: int = option(4, "beam width at prediction (authors: --beam_size 4); 1 = greedy")
    max_steps: int = option(45, "most drugs decoded per visit (authors: --max_len 45)")


class SelfAttend(nn.Module):
    """Attention pooling ``sum_i softmax_i(w^T tanh(W x_i)) x_i`` over a set (COGNet)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(dim, 32), nn.Tanh())
        self.gate = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        scores = self.gate(self.hidden(x)).squeeze(-1).masked_fill(~real, -1e9)
        return (torch.softmax(scores, dim=-1).unsqueeze(-1) * x).sum(dim=-2)


class SharedGCN(nn.Module):
    """COGNet's graph encoder: one first layer for both graphs, a second layer each."""

    def __init__(self, nodes: int, dim: int, ehr: torch.Tensor, ddi: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ehr", normalize_rows(ehr), persistent=False)
        self.register_buffer("ddi", normalize_rows(ddi), persistent=False)
        self.first = nn.Linear(nodes, dim)
        self.ehr_second, self.ddi_second = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(0.3)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for adjacency, second in ((self.ehr, self.ehr_second), (self.ddi, self.ddi_second)):
            a: torch.Tensor = adjacency  # type: ignore[assignment]
            hidden = self.dropout(F.relu(a @ self.first.weight.T + self.first.bias))
            out.append(a @ second(hidden))  # (N, D)
        return out[0], out[1]


class DecoderLayer(nn.Module):
    """Self-attention, then attention to diagnoses plus attention to procedures, then FFN."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

        self.self_attention, self.to_diagnoses, self.to_procedures = (
            attention(),
            attention(),
            attention(),
        )
        self.ffn = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(3))

    def forward(
        self,
        x: torch.Tensor,
        diagnoses: torch.Tensor,
        diagnosis_padding: torch.Tensor,
        procedures: torch.Tensor,
        procedure_padding: torch.Tensor,
        last_only: bool = False,
    ) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), or (B, 1, D) the last position only with ``last_only``
        (causal: the last query sees the whole prefix, so it equals the full output's last
        row; every later sublayer is per position)."""
        if last_only:
            query = x[:, -1:]
            attended = self.self_attention(query, x, x, need_weights=False)[0]
            x = query
        else:
            length = x.shape[1]
            causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
            attended = self.self_attention(x, x, x, attn_mask=causal, need_weights=False)[0]
        x = self.norms[0](x + self.dropouts[0](attended))
        d = self.to_diagnoses(
            x, diagnoses, diagnoses, key_padding_mask=diagnosis_padding, need_weights=False
        )[0]
        p = self.to_procedures(
            x, procedures, procedures, key_padding_mask=procedure_padding, need_weights=False
        )[0]
        x = self.norms[1](x + self.dropouts[1](d) + self.dropouts[1](p))
        return self.norms[2](x + self.dropouts[2](self.ffn(x)))  # type: ignore[no-any-return]


def _visible(padding: torch.Tensor) -> torch.Tensor:
    """A key-padding mask where an all-padding row keeps its first slot (no NaN)."""
    padding = padding.clone()
    padding[padding.all(dim=-1), 0] = False
    return padding


class COGNetNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: COGNetConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.dim, self.drugs = dim, drugs
        self.start, self.end, self.pad = drugs, drugs + 1, drugs + 2
        self.diagnosis = nn.Embedding(meta["diagnoses"] + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(meta["procedures"] + 1, dim, padding_idx=0)
        self.medication = nn.Embedding(drugs + 3, dim, padding_idx=drugs + 2)
        self.dropout = nn.Dropout(config.dropout)

        def encoder() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                dim, config.heads, config.encoder_ffn, config.layer_dropout, batch_first=True
            )

        self.diagnosis_encoder, self.procedure_encoder = encoder(), encoder()
        self.medication_encoder = encoder()
        self.diagnosis_pool, self.procedure_pool = SelfAttend(dim), SelfAttend(dim)
        self.gcn = SharedGCN(drugs, dim, inputs["ehr_adjacency"], inputs["ddi_adjacency"])
        self.inter = nn.Parameter(torch.empty(()).uniform_(-0.1, 0.1))
        self.decoder = DecoderLayer(dim, config.heads, config.layer_dropout)
        self.generate = nn.Linear(dim, drugs + 2)
        self.copy_query = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 1)
        self.register_buffer("frequency", inputs["drug_frequency"], persistent=False)

    # ---------------------------------------------------------------- encoding
    def _encode_sets(
        self, codes: torch.Tensor, embedding: nn.Embedding, encoder: nn.Module, pad: int = 0
    ) -> torch.Tensor:
        """(B, V, C) codes -> (B, V, C, D) encodings, each set on its own.

        Each distinct set is encoded once per call: a visit recurs in every later sample of
        its patient (and padding visits are all alike), and a set's encoding depends on the
        set alone. That is the authors' computation (one encoding per visit per step, their
        batch being whole patients) at a fraction of the cost; identical sets of different
        patients in one batch share a dropout draw.
        """
        b, v, c = codes.shape
        flat = codes.reshape(b * v, c)
        unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
        encoded = encoder(
            self.dropout(embedding(unique)), src_key_padding_mask=_visible(unique == pad)
        )
        return encoded[inverse].reshape(b, v, c, -1)  # type: ignore[no-any-return]

    def context(self, batch: Batch) -> dict[str, torch.Tensor]:
        diagnoses = self._encode_sets(batch.diagnoses, self.diagnosis, self.diagnosis_encoder)
        procedures = self._encode_sets(batch.procedures, self.procedure, self.procedure_encoder)
        d_visits = self.diagnosis_pool(diagnoses, batch.diagnoses > 0)  # (B, V, D)
        p_visits = self.procedure_pool(procedures, batch.procedures > 0)
        current_d = last_output(d_visits, batch.lengths)
        current_p = last_output(p_visits, batch.lengths)
        scores = (
            torch.einsum("bd,bvd->bv", current_d, d_visits)
            + torch.einsum("bd,bvd->bv", current_p, p_visits)
        ) / self.dim**0.5
        steps = torch.arange(d_visits.shape[1]).unsqueeze(0)
        earlier = steps < (batch.lengths - 1).unsqueeze(1)  # (B, V)
        visit_weights = torch.softmax(scores.masked_fill(~earlier, -1e9), dim=1) * earlier
        # Earlier visits' medication sets as tokens (pad = drugs + 2), encoded per visit.
        tokens = torch.where(batch.medications > 0, batch.medications - 1, self.pad)
        keys = self._encode_sets(tokens, self.medication, self.medication_encoder, self.pad)
        ehr, ddi = self.gcn()
        memory = F.pad(ehr - self.inter * ddi, (0, 0, 0, 3))  # (drugs + 3, D)
        return {
            "diagnoses": last_output(diagnoses, batch.lengths),  # (B, Cd, D)
            "diagnosis_padding": _visible(last_output(batch.diagnoses, batch.lengths) == 0),
            "procedures": last_output(procedures, batch.lengths),
            "procedure_padding": _visible(last_output(batch.procedures, batch.lengths) == 0),
            "keys": keys.flatten(1, 2),  # (B, V*Cm, D)
            "key_tokens": tokens.flatten(1),  # (B, V*Cm)
            "key_weights": (visit_weights.unsqueeze(-1) * (tokens != self.pad)).flatten(1),
            "has_history": earlier.any(dim=1),  # (B,)
            "memory": memory,
        }

    # ---------------------------------------------------------------- decoding
    def distribution(
        self, ctx: dict[str, torch.Tensor], prefix: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """(B, T) decoder inputs -> (B, T, drugs + 2) output probabilities (T = 1: the last
        position only, with ``last_only``, for decoding)."""
        x = self.dropout(self.medication(prefix)) + ctx["memory"][prefix]  # (B, T, D)
        h = self.decoder(
            x,
            ctx["diagnoses"],
            ctx["diagnosis_padding"],
            ctx["procedures"],
            ctx["procedure_padding"],
            last_only,
        )  # (B, T, D), or (B, 1, D) with last_only
        generated = torch.softmax(self.generate(h), dim=-1)  # (B, T, drugs + 2)
        scores = torch.einsum("btd,bkd->btk", self.copy_query(h), ctx["keys"]) / self.dim**0.5
        real = ctx["key_tokens"] != self.pad  # (B, K)
        attention = torch.softmax(scores.masked_fill(~real.unsqueeze(1), -1e9), dim=-1)
        weights = attention * ctx["key_weights"].unsqueeze(1)  # (B, T, K)
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        copied = torch.zeros(*h.shape[:2], self.drugs + 3)
        index = ctx["key_tokens"].unsqueeze(1).expand(-1, h.shape[1], -1)
        copied = copied.scatter_add(2, index, weights)[..., : self.drugs + 2]
        gate = torch.sigmoid(self.gate(h))  # (B, T, 1)
        gate = torch.where(ctx["has_history"][:, None, None], gate, torch.ones_like(gate))
        return gate * generated + (1 - gate) * copied

    def rarest_first(self, sequences: list[list[int]]) -> list[list[int]]:
        frequency: torch.Tensor = self.frequency  # type: ignore[assignment]
        return [sorted(s, key=lambda d: float(frequency[d])) for s in sequences]

    def forward(self, batch: Batch) -> Output:
        if batch.target_sequences is None:
            return Output(loss=None, logits=torch.logit(self.predict(batch)[0], eps=1e-6))
        ordered = self.rarest_first(batch.target_sequences)
        inputs, outputs = teacher_forcing(ordered, self.start, self.end)
        probabilities = self.distribution(self.context(batch), inputs)  # (B, T, drugs + 2)
        log_probabilities = torch.log(probabilities.clamp(min=1e-10))
        loss = F.nll_loss(log_probabilities.flatten(0, 1), outputs.flatten(), ignore_index=-100)
        logits = torch.logit(probabilities.max(dim=1).values[:, : self.drugs], eps=1e-6)
        return Output(loss=loss, logits=logits)

    def predict(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, drugs) the authors' probabilities and (B, drugs) the beam's set."""
        ctx = self.context(batch)
        beam = self.config.beam_size
        expanded = {
            k: v if k == "memory" else v.repeat_interleave(beam, dim=0) for k, v in ctx.items()
        }

        def step(prefixes: torch.Tensor) -> torch.Tensor:
            last = self.distribution(expanded, prefixes, last_only=True)[:, -1]  # (B * beam, .)
            return torch.log(last.clamp(min=1e-10))

        result = beam_search(step, batch.size, beam, self.config.max_steps, self.start, self.end)
        chosen = torch.zeros(batch.size, self.drugs, dtype=torch.bool)
        for b, tokens in enumerate(result.tokens):
            chosen[b, [t for t in tokens if t < self.drugs]] = True
        return decoded_step_scores(result, chosen), chosen


class COGNet(NeuralRecommender):
    """COGNet: transformer generation of the drug set, copying from earlier visits."""

    name: ClassVar[str] = "cognet"
    config_class: ClassVar[type[Any]] = COGNetConfig
    decodes_sets: ClassVar[bool] = True

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        frequency = dataset.targets(train).sum(axis=0).astype(np.float32)
        return {}, {
            "ehr_adjacency": torch.from_numpy(cooccurrence(dataset, train)),
            "ddi_adjacency": torch.from_numpy(dataset.ddi_matrix().astype(np.float32)),
            "drug_frequency": torch.from_numpy(frequency),
        }

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return COGNetNetwork(meta, inputs, self.config)
