"""LEADER(S): the compact ID-based student (Liu et al., arXiv 2402.02803).

Shared code embedding (special tokens + diagnoses + procedures + medications); per visit a
set encoder per kind (one pre-LN transformer layer without positions, masked mean pooling);
visit t = (diagnoses_t, procedures_t, medications_{t-1}) with the embedded profile in the
medication slot of the patient's first visit; one visit-level layer shared by the three
streams, masked mean pooling; head ReLU -> Linear(3d, hidden) -> ReLU -> Linear(hidden, drugs).
The output of Linear(3d, hidden) is the patient vector that a projector maps to the
teacher's width for distillation.

>>> model = LeaderStudent.from_pretrained("runs/student")          # doctest: +SKIP
>>> probabilities = model.predict_proba(dataset.samples("test"))    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.data.store import Sample, Vocabulary
from leader.errors import LeaderError
from leader.student.config import StudentConfig
from leader.student.data import (
    STREAMS,
    EncodedSamples,
    ProfileVocab,
    StudentBatch,
    TokenSpace,
    encode_samples,
    make_batch,
)
from leader.student.losses import bce_loss, distillation_loss, info_nce
from leader.training import Output

ARCHITECTURE = (
    "dim",
    "heads",
    "ffn",
    "dropout",
    "attn_dropout",
    "hidden",
    "max_visits",
    "max_codes",
    "visit_positions",
)


class SetEncoderLayer(nn.Module):
    """A pre-LN transformer layer without positions, then masked mean pooling.

    Sets are unordered, so no positions. Only attention sees the padded layout; every
    other operation runs on the real elements alone (packed), which is most of the cost.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (N, L, d); mask (N, L) True for real elements, at least one per row -> (N, d)
        n, length, dim = x.shape
        real = mask.reshape(-1).nonzero().squeeze(1)  # (T,) flat positions of real elements
        packed = x.reshape(-1, dim).index_select(0, real)  # (T, d)
        projected = self.qkv(self.norm1(packed))  # (T, 3d)
        qkv = projected.new_zeros(n * length, 3 * dim).index_copy(0, real, projected)
        q, k, v = qkv.view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask[:, None, None, :],
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (N, h, L, d/h)
        attended = attended.transpose(1, 2).reshape(n * length, dim).index_select(0, real)
        packed = packed + self.drop(self.out(attended))
        packed = packed + self.drop(self.ff(self.norm2(packed)))  # (T, d)
        owner = torch.div(real, length, rounding_mode="floor")  # (T,) row of each element
        total = packed.new_zeros(n, dim).index_add_(0, owner, packed)
        count = mask.sum(1, keepdim=True).clamp_min(1).to(packed.dtype)
        return total / count


class LeaderStudent(nn.Module):
    """The student. ``forward(batch) -> Output(loss, logits, parts)``."""

    def __init__(
        self,
        config: StudentConfig,
        vocab: Vocabulary,
        profile_vocab: ProfileVocab,
        teacher_width: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.space = TokenSpace(vocab)
        self.profile_vocab = profile_vocab
        self.teacher_width = teacher_width
        d = config.dim
        self.embedding = nn.Embedding(self.space.size, d, padding_idx=0)
        self.set_encoders = nn.ModuleList(
            SetEncoderLayer(d, config.heads, config.ffn, config.dropout, config.attn_dropout)
            for _ in STREAMS
        )
        self.visit_encoder = SetEncoderLayer(
            d, config.heads, config.ffn, config.dropout, config.attn_dropout
        )
        self.recency = nn.Embedding(config.max_visits, d) if config.visit_positions else None
        sizes = profile_vocab.sizes()
        self.profile_embeddings = nn.ModuleList(nn.Embedding(n, d) for n in sizes)
        # With no profile fields the first-visit slot is one learned vector.
        self.profile_proj = nn.Linear(len(sizes) * d, d) if sizes else None
        self.profile_default = nn.Parameter(torch.zeros(d)) if not sizes else None
        self.fc1 = nn.Linear(len(STREAMS) * d, config.hidden)
        self.fc2 = nn.Linear(config.hidden, vocab.size("medication"))
        self.projector = nn.Linear(config.hidden, teacher_width) if teacher_width else None

    # ------------------------------------------------------------------ encoders
    def encode_profile(self, profile: torch.Tensor) -> torch.Tensor:
        """(B, F) value ids -> (B, d)."""
        if self.profile_proj is None:
            assert self.profile_default is not None
            return self.profile_default.expand(profile.shape[0], -1)
        parts = [emb(profile[:, i]) for i, emb in enumerate(self.profile_embeddings)]
        return self.profile_proj(torch.cat(parts, dim=-1))

    def encode_set(self, stream: int, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, d) pooled set vectors, with the stream's set encoder."""
        return self.set_encoders[stream](self.embedding(tokens), tokens != 0)

    def patient_vector(self, batch: StudentBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(patient vector (B, hidden), profile vector (B, d))."""
        b, width = batch.visit_mask.shape
        d = self.config.dim
        profile = self.encode_profile(batch.profile)  # (B, d)
        streams = []
        for i, kind in enumerate(STREAMS):
            pooled = self.encode_set(i, batch.tokens[kind])  # (S, d)
            grid = pooled.new_zeros(b * width, d).index_copy(0, batch.visit_index, pooled)
            streams.append(grid.view(b, width, d))
        medication = streams[-1]
        first = torch.where(batch.profile_slot[:, None], profile, medication[:, 0])
        streams[-1] = torch.cat([first[:, None], medication[:, 1:]], dim=1)
        x = torch.cat(streams, dim=0)  # (3B, V, d), streams stacked along the batch
        mask = batch.visit_mask.repeat(len(STREAMS), 1)  # (3B, V)
        if self.recency is not None:
            # recency 0 = the current visit (last real one), 1 = the visit before, ...
            counts = batch.visit_mask.sum(1, keepdim=True)  # (B, 1)
            recency = (counts - 1 - torch.arange(width)[None, :]).clamp_min(0)  # (B, V)
            x = x + self.recency(recency).repeat(len(STREAMS), 1, 1)
        pooled = self.visit_encoder(x, mask)  # (3B, d)
        pooled = pooled.view(len(STREAMS), b, d).permute(1, 0, 2).reshape(b, -1)  # (B, 3d)
        return self.fc1(F.relu(pooled)), profile

    # ------------------------------------------------------------------ contract
    def forward(self, batch: StudentBatch) -> Output:
        patient, profile = self.patient_vector(batch)
        logits = self.fc2(F.relu(patient))  # (B, drugs)
        if batch.targets is None:
            return Output(None, logits)
        loss = bce_loss(logits, batch.targets)
        parts = {"bce": float(loss.detach())}
        if self.config.alpha > 0 and batch.teacher is not None and self.projector is not None:
            distill = distillation_loss(self.projector(patient), batch.teacher)
            loss = loss + self.config.alpha * distill
            parts["distill"] = float(distill.detach())
        if self.config.align and self.config.beta > 0 and batch.target_tokens is not None:
            truth = self.encode_set(STREAMS.index("medication"), batch.target_tokens)
            align = info_nce(profile, truth, self.config.temperature)
            loss = loss + self.config.beta * align
            parts["align"] = float(align.detach())
        return Output(loss, logits, parts)

    def encode(self, samples: Sequence[Sample]) -> EncodedSamples:
        return encode_samples(
            samples, self.space, self.profile_vocab, self.config.max_visits, self.config.max_codes
        )

    @torch.no_grad()
    def predict_encoded(self, encoded: EncodedSamples, batch_size: int = 1024) -> np.ndarray:
        """Probabilities (N, drugs) for encoded samples; similar-size samples batched together."""
        was_training = self.training
        self.eval()
        out = np.zeros((len(encoded), self.vocab.size("medication")), dtype=np.float32)
        order = np.argsort(encoded.cost(), kind="stable") if len(encoded) > batch_size else None
        for start in range(0, len(encoded), batch_size):
            index = np.arange(start, min(start + batch_size, len(encoded)))
            if order is not None:
                index = order[index]
            logits = self(make_batch(encoded, index, with_targets=False)).logits
            out[index] = torch.sigmoid(logits.float()).numpy()
        self.train(was_training)
        return out

    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 1024) -> np.ndarray:
        """Drug probabilities (N, drugs) for samples, batched, without gradients."""
        if not samples:
            return np.zeros((0, self.vocab.size("medication")), dtype=np.float32)
        return self.predict_encoded(self.encode(samples), batch_size)

    def num_parameters(self, inference: bool = True) -> int:
        """Parameters; ``inference=True`` leaves out the projector (training only)."""
        skip = (
            {id(p) for p in self.projector.parameters()}
            if (inference and self.projector)
            else set()
        )
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, run_dir: str | os.PathLike[str]) -> Path:
        """config.json (the model header), model.safetensors (projector included), vocab.json.

        The decision threshold and DDI pairs are written beside it by training
        (``decision.json``, :mod:`leader.models`), not held by the model.
        """
        from safetensors.torch import save_file

        from leader.io import atomic_file, write_json_atomic
        from leader.models import write_header

        root = Path(run_dir)
        root.mkdir(parents=True, exist_ok=True)
        write_header(
            root,
            "leader_s",
            self.config,
            {
                "teacher_width": self.teacher_width,
                "token_space": {"size": self.space.size, "offsets": self.space.offsets},
                "drugs": self.vocab.size("medication"),
                "weights_include_projector": self.projector is not None,
            },
        )
        write_json_atomic(
            root / "vocab.json",
            {**self.vocab.to_json(), "profile": self.profile_vocab.to_json()},
        )
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_file(root / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "model": "leader_s"})
        return root

    @classmethod
    def from_pretrained(cls, run_dir: str | os.PathLike[str]) -> LeaderStudent:
        """Load a student run folder; the model is returned in eval mode."""
        from safetensors.torch import load_file

        from leader.config import from_dict
        from leader.models import read_header

        root = Path(run_dir)
        needed = ("config.json", "model.safetensors", "vocab.json")
        missing = [name for name in needed if not (root / name).exists()]
        if missing:
            raise LeaderError(
                f"{root}: not a student run folder (missing {', '.join(missing)}); "
                "train one with `leader student train`"
            )
        header = read_header(root, "leader_s")
        config = from_dict(StudentConfig, header.config, f"{root / 'config.json'}: config")
        vocab_json = json.loads((root / "vocab.json").read_text(encoding="utf-8"))
        model = cls(
            config,
            Vocabulary.from_json(vocab_json),
            ProfileVocab.from_json(vocab_json["profile"]),
            teacher_width=int(header.meta.get("teacher_width", 0)),
        )
        if model.space.offsets != header.meta.get("token_space", {}).get("offsets"):
            raise LeaderError(f"{root}: vocab.json does not match config.json's token space")
        model.load_state_dict(load_file(str(root / "model.safetensors")))
        model.eval()
        return model
