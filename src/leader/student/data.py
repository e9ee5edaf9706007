"""Samples -> integer arrays, once; batches -> tensors by vectorised gathers.

The student reads codes, not text. Every code of every kind lives in ONE token space
(LEADER(S), arXiv 2402.02803, "shared embedding"): the special tokens first, then the
diagnoses, the procedures and the medications, each kind at its own offset. The authors'
alignment loss looked drugs up three rows off; here every lookup goes through
:class:`TokenSpace`, and the tests check the offsets.

Visit t of a sample carries (diagnoses_t, procedures_t, medications_{t-1}); the first
visit of a patient has no previous medications, so the model fills that slot with the
profile vector. Only the most recent ``max_visits`` visits are kept, the current one
always (the authors kept the first ten and lost the current visit of long histories).

Encoding happens once per split (Python loop, ragged arrays); a batch is then a few
NumPy gathers, so an epoch costs no Python per code. Each stream keeps every distinct
code set once and a set id per visit; a batch holds each distinct set once (the model
encodes it once and gathers), whether it recurs across the samples of one patient (a
patient's visit is in the history of all their later samples), across patients (a
common set of two procedures) or as an alignment target.

>>> space = TokenSpace(dataset.vocab)                        # doctest: +SKIP
>>> encoded = encode_samples(train, space, profile_vocab)     # doctest: +SKIP
>>> batch = make_batch(encoded, np.arange(16))                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leader.data.store import KINDS, Sample, Visit, Vocabulary
from leader.errors import LeaderError

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[EMPTY]")
PAD = 0  # padding inside a set; masked everywhere
EMPTY = 1  # stands for an empty set, so every set has one real token to attend to
# The three per-visit streams: diagnoses_t, procedures_t, medications_{t-1}.
STREAMS: tuple[str, ...] = KINDS


class TokenSpace:
    """One id per special token and per code of every kind, kinds at fixed offsets."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.offsets: dict[str, int] = {}
        start = len(SPECIAL_TOKENS)
        for kind in KINDS:
            self.offsets[kind] = start
            start += vocab.size(kind)
        self.size = start

    def encode(self, kind: str, codes: Sequence[str], limit: int | None = None) -> list[int]:
        """Token ids of the known codes of ``kind`` (first ``limit``); unknown codes skipped."""
        offset = self.offsets[kind]
        ids = [offset + i for i in self.vocab.encode(kind, codes)]
        return ids[:limit] if limit is not None else ids

    def decode(self, token: int) -> tuple[str, str]:
        """(kind, code) of a token id; special tokens give ("special", name)."""
        if token < len(SPECIAL_TOKENS):
            return "special", SPECIAL_TOKENS[token]
        for kind in reversed(KINDS):
            if token >= self.offsets[kind]:
                return kind, self.vocab.codes[kind][token - self.offsets[kind]]
        raise ValueError(f"token {token} outside the token space")


@dataclass
class ProfileVocab:
    """Values seen per profile field; index 0 of every field is 'not seen in training'."""

    fields: list[str]
    values: dict[str, list[str]]

    @classmethod
    def build(cls, samples: Sequence[Sample], fields: Sequence[str]) -> ProfileVocab:
        values: dict[str, list[str]] = {f: [] for f in fields}
        seen: dict[str, set[str]] = {f: set() for f in fields}
        for sample in samples:
            for f in fields:
                value = sample.profile.get(f, "unknown")
                if value not in seen[f]:
                    seen[f].add(value)
                    values[f].append(value)
        return cls(fields=list(fields), values={f: sorted(v) for f, v in values.items()})

    def sizes(self) -> list[int]:
        return [len(self.values[f]) + 1 for f in self.fields]

    def encode(self, profile: dict[str, str]) -> list[int]:
        out = []
        for f in self.fields:
            index = self._index[f]
            out.append(index.get(profile.get(f, "unknown"), 0))
        return out

    @property
    def _index(self) -> dict[str, dict[str, int]]:
        cached = getattr(self, "_cache", None)
        if cached is None:
            cached = {f: {v: i + 1 for i, v in enumerate(vs)} for f, vs in self.values.items()}
            self._cache = cached
        return cached

    def to_json(self) -> dict[str, object]:
        return {"fields": self.fields, "values": self.values}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProfileVocab:
        fields = [str(f) for f in data["fields"]]  # type: ignore[attr-defined]
        values = {str(k): [str(x) for x in v] for k, v in data["values"].items()}  # type: ignore[attr-defined]
        return cls(fields=fields, values=values)


@dataclass
class Ragged:
    """Variable-length integer rows: ``flat[offsets[i]:offsets[i+1]]`` is row i."""

    flat: np.ndarray  # (total,) int64
    offsets: np.ndarray  # (rows + 1,) int64

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> Ragged:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(flat=flat, offsets=offsets)

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.offsets[rows + 1] - self.offsets[rows]

    def pad(self, rows: np.ndarray) -> np.ndarray:
        """Rows padded with PAD to the longest selected row: (len(rows), L) int64."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        width = int(lengths.max()) if len(rows) else 0
        columns = np.arange(width)
        mask = columns[None, :] < lengths[:, None]  # (R, L)
        gather = np.where(mask, starts[:, None] + columns[None, :], 0)
        return np.where(mask, self.flat[gather] if len(self.flat) else 0, PAD)


class SetInterner:
    """One id per distinct code set, in order of first sight; the sets as a :class:`Ragged`."""

    def __init__(self) -> None:
        self.ids: dict[tuple[int, ...], int] = {}
        self.sets: list[list[int]] = []

    def __call__(self, tokens: list[int]) -> int:
        """The id of ``tokens`` (a new one the first time the set is seen)."""
        key = tuple(tokens)
        found = self.ids.get(key)
        if found is None:
            found = self.ids[key] = len(self.sets)
            self.sets.append(tokens)
        return found

    def ragged(self) -> Ragged:
        return Ragged.from_rows(self.sets)


@dataclass
class EncodedSamples:
    """A list of samples as arrays. One 'row' per kept visit of each sample."""

    sample_ids: list[str]
    patient: np.ndarray  # (N,) int64 patient of each sample (0, 1, ... in order of first sight)
    n_visits: np.ndarray  # (N,) kept visits per sample, current included, >= 1
    row_start: np.ndarray  # (N,) first row of the sample in ``set_ids``
    profile_slot: np.ndarray  # (N,) bool: first kept visit is the patient's first visit
    profile: np.ndarray  # (N, F) profile value ids (0 = unseen)
    sets: dict[str, Ragged]  # per stream, the distinct sets (EMPTY if a set is empty)
    set_ids: dict[str, np.ndarray]  # per stream, (rows,) the set of each kept visit in ``sets``
    target_ids: np.ndarray  # (N,) current medications (alignment loss), in sets["medication"]
    targets: np.ndarray  # (N, drugs) float32 multi-hot of the current medications
    single_visit: np.ndarray  # (N,) bool, no earlier visit at all
    teacher: np.ndarray | None = None  # (N, H) float32 teacher hidden states
    teacher_probabilities: np.ndarray | None = None  # (N, drugs) float32 soft labels

    def __len__(self) -> int:
        return len(self.sample_ids)

    def visit_set(self, kind: str, row: int) -> list[int]:
        """The tokens of stream ``kind`` of kept-visit row ``row``."""
        ragged, set_id = self.sets[kind], int(self.set_ids[kind][row])
        return ragged.flat[ragged.offsets[set_id] : ragged.offsets[set_id + 1]].tolist()

    def cost(self) -> np.ndarray:
        """Tokens per sample: used to group samples of similar size into a batch."""
        rows = self.row_start[:, None] + np.arange(int(self.n_visits.max()))[None, :]
        valid = np.arange(int(self.n_visits.max()))[None, :] < self.n_visits[:, None]
        rows = np.where(valid, rows, 0)
        total = np.zeros(len(self), dtype=np.int64)
        for kind, ragged in self.sets.items():
            lengths = ragged.lengths(self.set_ids[kind][rows])
            total += np.where(valid, lengths, 0).sum(axis=1)
        return total


def kept_visits(sample: Sample, max_visits: int) -> tuple[list[Visit], Visit | None]:
    """The most recent ``max_visits`` visits (current last) and the visit just before them.

    The visit before the window supplies the previous medications of the first kept
    visit; None means the window starts at the patient's first visit (profile slot).
    """
    if max_visits < 1:
        raise ValueError("max_visits must be at least 1")
    visits = [*sample.history, sample.current]
    kept = visits[-max_visits:]
    before = visits[-max_visits - 1] if len(visits) > max_visits else None
    return kept, before


def encode_samples(
    samples: Sequence[Sample],
    space: TokenSpace,
    profile_vocab: ProfileVocab,
    max_visits: int = 10,
    max_codes: int = 100,
) -> EncodedSamples:
    """Encode samples once: token ids per visit and stream, profile ids, targets."""
    interners = {kind: SetInterner() for kind in STREAMS}
    streams: dict[str, list[int]] = {kind: [] for kind in STREAMS}  # set id per kept visit
    target_ids: list[int] = []
    patients: dict[str, int] = {}
    n_visits, row_start, profile_slot, profiles, single = [], [], [], [], []
    drug_offset = space.offsets["medication"]
    multi_hot = np.zeros((len(samples), space.vocab.size("medication")), dtype=np.float32)
    for i, sample in enumerate(samples):
        kept, before = kept_visits(sample, max_visits)
        row_start.append(len(streams["diagnosis"]))
        n_visits.append(len(kept))
        profile_slot.append(before is None)
        single.append(sample.is_single_visit)
        profiles.append(profile_vocab.encode(sample.profile))
        patients.setdefault(sample.patient_id, len(patients))
        previous = before
        for visit in kept:
            prior = previous.medications if previous is not None else ()
            for kind, codes in zip(
                STREAMS, (visit.diagnoses, visit.procedures, prior), strict=True
            ):
                streams[kind].append(
                    interners[kind](space.encode(kind, codes, max_codes) or [EMPTY])
                )
            previous = visit
        drugs = space.encode("medication", sample.current.medications)
        target_ids.append(interners["medication"](drugs or [EMPTY]))
        multi_hot[i, np.asarray(drugs, dtype=np.int64) - drug_offset] = 1.0
    return EncodedSamples(
        sample_ids=[s.sample_id for s in samples],
        patient=np.fromiter((patients[s.patient_id] for s in samples), np.int64, len(samples)),
        n_visits=np.asarray(n_visits, dtype=np.int64),
        row_start=np.asarray(row_start, dtype=np.int64),
        profile_slot=np.asarray(profile_slot, dtype=bool),
        profile=np.asarray(profiles, dtype=np.int64).reshape(
            len(samples), len(profile_vocab.fields)
        ),
        sets={kind: interner.ragged() for kind, interner in interners.items()},
        set_ids={kind: np.asarray(ids, dtype=np.int64) for kind, ids in streams.items()},
        target_ids=np.asarray(target_ids, dtype=np.int64),
        targets=multi_hot,
        single_visit=np.asarray(single, dtype=bool),
    )


def attach_teacher(
    encoded: EncodedSamples,
    hidden: np.ndarray | None,
    sample_ids: Sequence[str],
    source: str,
    probabilities: np.ndarray | None = None,
) -> None:
    """Align teacher hidden states (and drug probabilities) to ``encoded`` by sample id;
    error naming missing ids."""
    position = {sid: i for i, sid in enumerate(sample_ids)}
    missing = [sid for sid in encoded.sample_ids if sid not in position]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise LeaderError(
            f"{source}: teacher features miss {len(missing)} of {len(encoded)} training "
            f"samples (e.g. {shown}); run `leader teacher predict` on this dataset again"
        )
    order = np.fromiter((position[sid] for sid in encoded.sample_ids), dtype=np.int64)
    if hidden is not None:
        encoded.teacher = np.ascontiguousarray(hidden[order], dtype=np.float32)
    if probabilities is not None:
        encoded.teacher_probabilities = np.ascontiguousarray(
            probabilities[order], dtype=np.float32
        )


@dataclass
class StudentBatch:
    """Tensors of one batch. S = real visits in the batch, V = longest kept history.

    Each stream's distinct sets are there once (U_stream of them); ``set_index`` says
    which one each visit holds, ``target_index`` which medication set is each sample's
    alignment target.
    """

    tokens: dict[str, torch.Tensor]  # per stream (U_stream, L_stream) token ids, PAD = 0
    set_index: dict[str, torch.Tensor]  # per stream (S,) row of ``tokens`` of each visit
    visit_index: torch.Tensor  # (S,) position of each real visit in the flattened (B, V)
    visit_mask: torch.Tensor  # (B, V) True for real visits (left-aligned, current last)
    profile_slot: torch.Tensor  # (B,) True: the first visit's medication slot is the profile
    profile: torch.Tensor  # (B, F) profile value ids
    targets: torch.Tensor | None = None  # (B, drugs) multi-hot
    target_index: torch.Tensor | None = None  # (B,) current medications: row of tokens[med]
    teacher: torch.Tensor | None = None  # (B, H) teacher hidden states
    teacher_probabilities: torch.Tensor | None = None  # (B, drugs) soft labels

    @property
    def size(self) -> int:
        return int(self.visit_mask.shape[0])


def make_batch(
    encoded: EncodedSamples, index: np.ndarray, with_targets: bool = True
) -> StudentBatch:
    """Gather the samples at ``index`` into padded tensors (no Python loop over samples)."""
    index = np.asarray(index, dtype=np.int64)
    counts = encoded.n_visits[index]  # (B,)
    width = int(counts.max())
    first = np.repeat(np.cumsum(counts) - counts, counts)  # (S,) batch offset of each sample
    position = np.arange(int(counts.sum())) - first  # (S,) visit position inside the sample
    rows = np.repeat(encoded.row_start[index], counts) + position
    owner = np.repeat(np.arange(len(index)), counts)
    tokens, set_index = {}, {}
    for kind in STREAMS:
        ids = encoded.set_ids[kind][rows]
        if kind == "medication" and with_targets:
            ids = np.concatenate([ids, encoded.target_ids[index]])  # targets after the visits
        distinct, where = np.unique(ids, return_inverse=True)
        tokens[kind] = torch.from_numpy(encoded.sets[kind].pad(distinct))
        set_index[kind] = torch.from_numpy(where.reshape(-1))
    batch = StudentBatch(
        tokens=tokens,
        set_index={kind: where[: len(rows)] for kind, where in set_index.items()},
        visit_index=torch.from_numpy(owner * width + position),
        visit_mask=torch.from_numpy(np.arange(width)[None, :] < counts[:, None]),
        profile_slot=torch.from_numpy(encoded.profile_slot[index]),
        profile=torch.from_numpy(encoded.profile[index]),
    )
    if with_targets:
        batch.targets = torch.from_numpy(encoded.targets[index])
        batch.target_index = set_index["medication"][len(rows) :]
        if encoded.teacher is not None:
            batch.teacher = torch.from_numpy(encoded.teacher[index])
        if encoded.teacher_probabilities is not None:
            batch.teacher_probabilities = torch.from_numpy(encoded.teacher_probabilities[index])
    return batch
