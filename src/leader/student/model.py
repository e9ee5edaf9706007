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
from dataclasses import dataclass
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
from leader.student.losses import bce_loss, distillation_loss, info_nce, soft_label_loss
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


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout whose mask costs a quarter of a random draw per element.

    ``F.dropout`` draws one random number per element on the CPU (about a third of a
    training step of this small model); here one 64-bit draw gives four 16-bit ones.
    The drop rate is ``p`` rounded to a multiple of 2**-16.
    """
    if not training or p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    return x * dropout_mask(x.shape, p, x.dtype)


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A float mask of ``shape``: 0 with probability ``p`` (to 2**-16), else ``1 / (1 - p)``.

    Built in float arithmetic alone: on CPUs without AVX2, PyTorch's bool kernels (a
    comparison, a bool -> float cast, a float x bool product) run unvectorised, each
    several times slower than a float operation; they were a fifth of a training step.
    """
    numel = shape.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64)
    bits = words.view(torch.int16)[:numel].view(shape)  # uniform over the int16 range
    cut = round(p * 65536)
    # Keep when bits >= cut - 32768 (P = 1 - cut / 65536): bits - (cut - 32769) is then
    # >= 1, else <= 0, so clamping to [0, 1] gives exactly 1 or 0 (int16 values are
    # exact in float32).
    mask = bits.to(dtype).sub_(cut - 32769).clamp_(0, 1)
    return mask.mul_(65536 / (65536 - cut))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`fast_dropout`'s mask (same rate, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


MIN_BUCKET_SETS = 32  # a length bucket holds at least this many sets (or the rest)


@dataclass
class SetLayout:
    """Where the real elements of a batch of padded sets are, and length buckets.

    Built once per batch and stream from the mask. ``real`` lists the real elements in
    row-major order (the packed order); attention runs per bucket of sets of similar
    length (widths up to a power of two), so a set of 3 codes never pays for the
    longest set of the batch.
    """

    sets: int  # N
    real: torch.Tensor  # (T,) flat positions of real elements in the padded (N, L) layout
    owner: torch.Tensor  # (T,) set of each real element
    count: torch.Tensor  # (N, 1) real elements per set (>= 1), float
    # per bucket: gather (n_b, W_b) into the packed elements (padding reads element 0:
    # masked as a key, dropped as a query, so it adds nothing, not even to gradients),
    # key bias (n_b, 1, 1, W_b): 0 for real keys, -inf for padding; None when every
    # set fills the width (a float to add: bool kernels are slow, see dropout_mask),
    # positions of the real elements in the flattened (n_b * W_b) bucket or None
    buckets: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
    inverse: torch.Tensor  # (T,) where each packed element is in the buckets' output

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> SetLayout:
        """mask (N, L): True for real elements, at least one per row."""
        n, _ = mask.shape
        lengths = mask.sum(1)  # (N,)
        real = mask.reshape(-1).nonzero().squeeze(1)  # (T,)
        total = int(real.numel())
        start = torch.cumsum(lengths, 0) - lengths  # (N,) packed index of each set's first
        width_class = torch.ceil(torch.log2(lengths.clamp_min(1).double())).long()
        buckets: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        covered = []
        classes = torch.unique(width_class, return_counts=True)
        groups: list[list[int]] = [[]]
        size = 0
        for c, members_in_class in zip(*(t.tolist() for t in classes), strict=True):
            # A class of a few sets joins the next wider one: a bucket costs ~20 ops.
            if size >= MIN_BUCKET_SETS:
                groups.append([])
                size = 0
            groups[-1].append(c)
            size += members_in_class
        for group in groups:
            in_group = (width_class >= group[0]) & (width_class <= group[-1])
            members = in_group.nonzero().squeeze(1)  # (n_b,)
            member_lengths = lengths.index_select(0, members)
            width = int(member_lengths.max())
            columns = torch.arange(width)
            valid = columns[None, :] < member_lengths[:, None]  # (n_b, W_b)
            gather = torch.where(valid, start.index_select(0, members)[:, None] + columns, 0)
            if bool(valid.all()):
                buckets.append((gather, None, None))
                covered.append(gather.reshape(-1))
            else:
                positions = valid.reshape(-1).nonzero().squeeze(1)
                bias = torch.zeros(valid.shape).masked_fill_(~valid, float("-inf"))
                buckets.append((gather, bias[:, None, None, :], positions))
                covered.append(gather.reshape(-1).index_select(0, positions))
        order = torch.cat(covered)  # packed index of each element of the buckets' output
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(total)
        return cls(
            sets=n,
            real=real,
            owner=torch.div(real, mask.shape[1], rounding_mode="floor"),
            count=lengths.clamp_min(1).to(torch.float32)[:, None],
            buckets=buckets,
            inverse=inverse,
        )


class SetEncoderLayer(nn.Module):
    """A pre-LN transformer layer without positions, then masked mean pooling.

    Sets are unordered, so no positions. Every operation but attention runs on the real
    elements alone (packed); attention runs per length bucket (:class:`SetLayout`), each
    bucket padded only to its own longest set. The function is the padded layer's.
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
            nn.Linear(dim, ffn), nn.ReLU(inplace=True), FastDropout(dropout), nn.Linear(ffn, dim)
        )
        self.drop = FastDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, L, d) padded, mask (N, L) True for real elements -> (N, d)."""
        layout = SetLayout.from_mask(mask)
        return self.forward_packed(x.reshape(-1, x.shape[-1]).index_select(0, layout.real), layout)

    def forward_packed(self, packed: torch.Tensor, layout: SetLayout) -> torch.Tensor:
        """packed (T, d) real elements in layout order -> (N, d) pooled sets."""
        attended = self.attend(self.qkv(self.norm1(packed)), layout)  # (T, d)
        packed = packed + self.drop(self.out(attended))
        packed = packed + self.drop(self.ff(self.norm2(packed)))  # (T, d)
        total = packed.new_zeros(layout.sets, packed.shape[1]).index_add_(0, layout.owner, packed)
        return total / layout.count.to(total.dtype)

    def attend(self, qkv: torch.Tensor, layout: SetLayout) -> torch.Tensor:
        """Multi-head attention within each set: qkv (T, 3d) -> (T, d)."""
        dim = qkv.shape[1] // 3
        outputs = []
        for gather, key_bias, positions in layout.buckets:
            n, width = gather.shape
            block = qkv.index_select(0, gather.reshape(-1))  # (n * W, 3d)
            q, k, v = block.view(n, width, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            out = self.attend_bucket(q, k, v, key_bias).transpose(1, 2).reshape(n * width, dim)
            outputs.append(out if positions is None else out.index_select(0, positions))
        return torch.cat(outputs).index_select(0, layout.inverse)

    def attend_bucket(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor | None
    ) -> torch.Tensor:
        """q, k, v (n, h, W, d_h), key bias (n, 1, 1, W) or None -> (n, h, W, d_h)."""
        n, heads, width, head_dim = q.shape
        if width == 1:
            # A set of one: the weight is 1 (then dropout, drawn as for any width); CPU
            # matmuls run one small matrix at a time, so skipping them pays for these sets.
            weights = v.new_ones(n, heads, 1, 1)
            return v * fast_dropout(weights, self.attn_dropout, self.training)
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(head_dim**-0.5)  # (n, h, W, W)
        if key_bias is not None:
            scores = scores.add_(key_bias.to(scores.dtype))
        weights = fast_dropout(scores.softmax(-1), self.attn_dropout, self.training)
        return torch.matmul(weights, v)


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
        layout = SetLayout.from_mask(tokens != 0)
        packed = self.embedding(tokens.reshape(-1).index_select(0, layout.real))  # (T, d)
        encoder = self.set_encoders[stream]
        assert isinstance(encoder, SetEncoderLayer)
        return encoder.forward_packed(packed, layout)

    def encode_sets(self, batch: StudentBatch) -> list[torch.Tensor]:
        """Per stream, the batch's distinct sets encoded once: (U_stream, d) each."""
        return [self.encode_set(i, batch.tokens[kind]) for i, kind in enumerate(STREAMS)]

    def patient_vector(
        self, batch: StudentBatch, sets: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(patient vector (B, hidden), profile vector (B, d)); ``sets``: :meth:`encode_sets`."""
        b, width = batch.visit_mask.shape
        d = self.config.dim
        profile = self.encode_profile(batch.profile)  # (B, d)
        # The S real visits, sample by sample, oldest first (make_batch's order).
        owner = torch.div(batch.visit_index, width, rounding_mode="floor")  # (S,)
        position = batch.visit_index - owner * width  # (S,) 0 = the sample's first kept visit
        sets = self.encode_sets(batch) if sets is None else sets
        streams = [
            encoded.index_select(0, batch.set_index[kind])  # (S, d)
            for encoded, kind in zip(sets, STREAMS, strict=True)
        ]
        first = (position == 0) & batch.profile_slot.index_select(0, owner)  # (S,)
        streams[-1] = torch.where(first[:, None], profile.index_select(0, owner), streams[-1])
        packed = torch.cat(streams)  # (3S, d): the streams one after the other
        if self.recency is not None:
            # recency 0 = the current visit (last real one), 1 = the visit before, ...
            counts = batch.visit_mask.sum(1)  # (B,)
            recency = self.recency(counts.index_select(0, owner) - 1 - position)  # (S, d)
            packed = packed + recency.repeat(len(STREAMS), 1)
        layout = SetLayout.from_mask(batch.visit_mask.repeat(len(STREAMS), 1))  # 3B sets
        pooled = self.visit_encoder.forward_packed(packed, layout)  # (3B, d)
        pooled = pooled.view(len(STREAMS), b, d).permute(1, 0, 2).reshape(b, -1)  # (B, 3d)
        return self.fc1(F.relu(pooled)), profile

    # ------------------------------------------------------------------ contract
    def forward(self, batch: StudentBatch) -> Output:
        sets = self.encode_sets(batch)
        patient, profile = self.patient_vector(batch, sets)
        logits = self.fc2(F.relu(patient))  # (B, drugs)
        if batch.targets is None:
            return Output(None, logits)
        loss = bce_loss(logits, batch.targets)
        parts = {"bce": float(loss.detach())}
        if self.config.alpha > 0 and batch.teacher is not None and self.projector is not None:
            distill = distillation_loss(self.projector(patient), batch.teacher)
            loss = loss + self.config.alpha * distill
            parts["distill"] = float(distill.detach())
        if self.config.kd > 0 and batch.teacher_probabilities is not None:
            soft = soft_label_loss(logits, batch.teacher_probabilities)
            loss = loss + self.config.kd * soft
            parts["soft"] = float(soft.detach())
        if self.config.align and self.config.beta > 0 and batch.target_index is not None:
            truth = sets[STREAMS.index("medication")].index_select(0, batch.target_index)
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
        if was_training:  # switching walks every module: a fifth of a small call's time
            self.eval()
        out = np.zeros((len(encoded), self.vocab.size("medication")), dtype=np.float32)
        order = np.argsort(encoded.cost(), kind="stable") if len(encoded) > batch_size else None
        for start in range(0, len(encoded), batch_size):
            index = np.arange(start, min(start + batch_size, len(encoded)))
            if order is not None:
                index = order[index]
            logits = self(make_batch(encoded, index, with_targets=False)).logits
            out[index] = torch.sigmoid(logits.float()).numpy()
        if was_training:
            self.train()
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
