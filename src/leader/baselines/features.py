"""Shared inputs for the baselines: multi-hot features, encoded visit sequences, batches.

Every neural baseline reads the same :class:`Batch`: the patient's kept visits (earlier
visits oldest first, then the current visit) as padded code-index tensors. The current
visit's medications are the target and are never part of the input: its medication slot is
empty. Indices are shifted by one so that 0 is padding (``nn.Embedding(padding_idx=0)``).

>>> from leader.data.store import Vocabulary
>>> vocab = Vocabulary(codes={"diagnosis": ["d1"], "procedure": [], "medication": ["m1"]})
>>> code_features(vocab, [["d1"]], [[]]).tolist()
[[1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leader.data.store import Sample, Vocabulary


def code_features(
    vocab: Vocabulary, diagnoses: Sequence[Sequence[str]], procedures: Sequence[Sequence[str]]
) -> np.ndarray:
    """Multi-hot (samples, diagnoses + procedures) of the given code lists."""
    rows = [
        np.concatenate([vocab.multi_hot("diagnosis", d), vocab.multi_hot("procedure", p)])
        for d, p in zip(diagnoses, procedures, strict=True)
    ]
    width = vocab.size("diagnosis") + vocab.size("procedure")
    return np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)


def current_visit_features(vocab: Vocabulary, samples: Sequence[Sample]) -> np.ndarray:
    """Multi-hot diagnoses + procedures of each sample's current visit (LR / ECC input)."""
    return code_features(
        vocab, [s.current.diagnoses for s in samples], [s.current.procedures for s in samples]
    )


@dataclass(frozen=True)
class EncodedSample:
    """Code indices (+1, 0 = padding) per kept visit, oldest first; the last is current."""

    diagnoses: tuple[tuple[int, ...], ...]
    procedures: tuple[tuple[int, ...], ...]
    medications: tuple[tuple[int, ...], ...]  # the current visit's slot is always empty
    target: tuple[int, ...]  # current medications, 0-based indices, record order


def encode_sample(sample: Sample, vocab: Vocabulary, max_visits: int) -> EncodedSample:
    """Keep the ``max_visits - 1`` most recent earlier visits and the current visit.

    Most recent, not first: LEADER's code kept the first 10 visits and lost the current one.
    """
    history = sample.history[-(max_visits - 1) :] if max_visits > 1 else ()

    def shifted(kind: str, codes: Sequence[str]) -> tuple[int, ...]:
        return tuple(i + 1 for i in vocab.encode(kind, codes))

    visits = [*history, sample.current]
    return EncodedSample(
        diagnoses=tuple(shifted("diagnosis", v.diagnoses) for v in visits),
        procedures=tuple(shifted("procedure", v.procedures) for v in visits),
        medications=tuple(shifted("medication", v.medications) for v in history) + ((),),
        target=tuple(dict.fromkeys(vocab.encode("medication", sample.current.medications))),
    )


@dataclass
class Batch:
    """Padded visit sequences; visits are right-padded, position ``lengths - 1`` is current."""

    diagnoses: torch.Tensor  # (B, V, Cd) long, 0 = padding
    procedures: torch.Tensor  # (B, V, Cp) long
    medications: torch.Tensor  # (B, V, Cm) long; empty for the current visit and padding
    visit_mask: torch.Tensor  # (B, V) bool, True for real visits
    lengths: torch.Tensor  # (B,) long, number of real visits (history + current)
    target: torch.Tensor | None  # (B, drugs) float multi-hot, None at prediction time
    target_sequences: list[list[int]] | None  # drugs in record order (sequence decoders)
    num_drugs: int

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    def current(self, per_visit: torch.Tensor) -> torch.Tensor:
        """Pick the current visit's row of a (B, V, ...) tensor -> (B, ...)."""
        index = (self.lengths - 1).clamp(min=0)
        return per_visit[torch.arange(self.size), index]

    def medication_multi_hot(self) -> torch.Tensor:
        """(B, V, drugs) multi-hot of each visit's recorded medications (0 for current)."""
        out = torch.zeros(*self.medications.shape[:2], self.num_drugs + 1)
        out.scatter_(2, self.medications, 1.0)
        return out[..., 1:]

    def previous_medications(self) -> torch.Tensor:
        """(B, drugs) the last earlier visit's medications; zeros for first-time patients."""
        index = (self.lengths - 2).clamp(min=0)
        previous = self.medication_multi_hot()[torch.arange(self.size), index]
        return previous * (self.lengths > 1).unsqueeze(-1).float()


def _pad(rows: Sequence[Sequence[Sequence[int]]], visits: int) -> torch.Tensor:
    width = max([len(codes) for visit_codes in rows for codes in visit_codes] + [1])
    out = torch.zeros(len(rows), visits, width, dtype=torch.long)
    for b, visit_codes in enumerate(rows):
        for v, codes in enumerate(visit_codes):
            if codes:
                out[b, v, : len(codes)] = torch.tensor(codes, dtype=torch.long)
    return out


def collate(encoded: Sequence[EncodedSample], num_drugs: int, with_targets: bool) -> Batch:
    """Stack encoded samples into one padded :class:`Batch`."""
    visits = max(len(e.diagnoses) for e in encoded)
    lengths = torch.tensor([len(e.diagnoses) for e in encoded], dtype=torch.long)
    target = None
    if with_targets:
        target = torch.zeros(len(encoded), num_drugs)
        for b, e in enumerate(encoded):
            target[b, list(e.target)] = 1.0
    return Batch(
        diagnoses=_pad([e.diagnoses for e in encoded], visits),
        procedures=_pad([e.procedures for e in encoded], visits),
        medications=_pad([e.medications for e in encoded], visits),
        visit_mask=torch.arange(visits).unsqueeze(0) < lengths.unsqueeze(1),
        lengths=lengths,
        target=target,
        target_sequences=[list(e.target) for e in encoded] if with_targets else None,
        num_drugs=num_drugs,
    )
