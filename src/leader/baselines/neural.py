"""What the neural baselines share: config fields, fit/predict/save around the shared loop.

Each neural baseline module defines a ``torch.nn.Module`` following the project contract
``forward(batch) -> Output(loss, logits)`` (``leader.training``) and a small subclass of
:class:`NeuralRecommender` that says how to build it. Training is always
``leader.training.fit`` (early stopping on validation PRAUC, best weights, seeded).

A saved model folder holds ``config.json`` (model name, config, build metadata),
``model.safetensors`` (weights), ``inputs.safetensors`` (fixed tensors the network was
built from: DDI / co-occurrence graphs, molecule graphs) and ``vocab.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from leader.baselines.base import (
    config_from_dict,
    read_config,
    read_vocab,
    training_samples,
    write_config,
    write_vocab,
)
from leader.baselines.features import Batch, EncodedSample, collate, encode_sample
from leader.data.store import Sample, VisitDataset, Vocabulary
from leader.metrics import compute, ddi_rate
from leader.training import TrainConfig, fit, seed_everything


@dataclass
class NeuralConfig:
    embedding_dim: int = 64  # code embedding / hidden width
    dropout: float = 0.4  # dropout on embeddings / hidden states
    epochs: int = 30  # at most this many training epochs
    batch_size: int = 16  # samples per optimiser step
    lr: float = 5e-4  # Adam learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    patience: int = 5  # early stopping: epochs without a better validation PRAUC
    max_visits: int = 10  # most recent visits kept per sample (earlier visits + current)
    seed: int = 42  # seeds weights, shuffling and dropout
    threads: int = 0  # torch CPU threads (0 = torch's default)


Inputs = dict[str, torch.Tensor]


class NeuralRecommender:
    """fit / predict_proba / save_pretrained / from_pretrained for one torch network."""

    name: ClassVar[str]
    config_class: ClassVar[type[Any]] = NeuralConfig

    def __init__(self, config: Any | None = None) -> None:
        self.config = config or self.config_class()
        self.network_: nn.Module
        self.vocab_: Vocabulary
        self.meta_: dict[str, Any] = {}
        self.inputs_: Inputs = {}
        self.fit_result_: Any = None

    # ---------------------------------------------------------------- subclass hooks
    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        """Build metadata (JSON) and fixed input tensors from the training data."""
        return {}, {}

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        raise NotImplementedError

    # ---------------------------------------------------------------- public API
    def fit(
        self,
        dataset: VisitDataset,
        run_dir: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> Self:
        seed_everything(self.config.seed)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        train = training_samples(dataset, self.name)
        validation = dataset.samples("val") or train
        self.vocab_ = dataset.vocab
        extra, self.inputs_ = self.prepare(dataset, train)
        self.meta_ = {
            "diagnoses": dataset.vocab.size("diagnosis"),
            "procedures": dataset.vocab.size("procedure"),
            "drugs": dataset.vocab.size("medication"),
            **extra,
        }
        self.network_ = self.build(self.meta_, self.inputs_)
        encoded = self._encode(train)
        drugs = self.meta_["drugs"]
        truth = dataset.targets(validation)

        def batches(rng: np.random.Generator) -> Iterator[Batch]:
            hook = getattr(self.network_, "start_epoch", None)
            if hook is not None:
                hook()
            order = rng.permutation(len(encoded))
            for start in range(0, len(order), self.config.batch_size):
                chunk = [encoded[i] for i in order[start : start + self.config.batch_size]]
                yield collate(chunk, drugs, with_targets=True)

        def validate(network: nn.Module) -> float:
            return compute(truth, self.predict_proba(validation))["prauc"]

        train_config = TrainConfig(
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            patience=self.config.patience,
            seed=self.config.seed,
            threads=self.config.threads,
        )
        self.fit_result_ = fit(self.network_, batches, validate, train_config, run_dir, log=log)
        return self

    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 256) -> np.ndarray:
        self.network_.eval()
        drugs = int(self.meta_["drugs"])
        outputs = [np.zeros((0, drugs), dtype=np.float32)]
        encoded = self._encode(samples)
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = collate(encoded[start : start + batch_size], drugs, with_targets=False)
                predict = getattr(self.network_, "predict", None)
                scores = predict(batch) if predict else torch.sigmoid(self.network_(batch).logits)
                outputs.append(scores.float().numpy())
        return np.concatenate(outputs)

    def num_parameters(self) -> int:
        return int(sum(p.numel() for p in self.network_.parameters()))

    def save_pretrained(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.network_.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        save_file(
            {k: v.contiguous() for k, v in self.inputs_.items()}, str(out / "inputs.safetensors")
        )
        write_config(out, self.name, self.config, self.meta_)
        write_vocab(out, self.vocab_)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        root = Path(directory)
        config, meta = read_config(root, cls.name)
        model = cls(config_from_dict(cls.config_class, config, f"{root}/config.json"))
        model.vocab_ = read_vocab(root)
        model.meta_ = meta
        model.inputs_ = dict(load_file(str(root / "inputs.safetensors")))
        model.network_ = model.build(meta, model.inputs_)
        model.network_.load_state_dict(load_file(str(root / "model.safetensors")))
        model.network_.eval()
        return model

    def _encode(self, samples: Sequence[Sample]) -> list[EncodedSample]:
        return [encode_sample(s, self.vocab_, self.config.max_visits) for s in samples]


def replace_config(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` with only the fields this config has."""
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in names})


# -------------------------------------------------------------------- shared layers


def sum_embed(embedding: nn.Embedding, codes: torch.Tensor) -> torch.Tensor:
    """Sum of code embeddings per visit: (B, V, C) -> (B, V, D); padding (0) adds nothing."""
    return embedding(codes).sum(dim=-2)


def last_output(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, V, D) -> (B, D) at position ``lengths - 1`` (the current visit)."""
    return outputs[torch.arange(outputs.shape[0]), (lengths - 1).clamp(min=0)]


def normalize_rows(adjacency: torch.Tensor) -> torch.Tensor:
    """Row-normalised ``A + I``, GAMENet's GCN normalisation."""
    a = adjacency.float() + torch.eye(adjacency.shape[0])
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-12)


class GCN(nn.Module):
    """Two-layer graph convolution over the drugs, identity node features (GAMENet)."""

    def __init__(self, nodes: int, dim: int, adjacency: torch.Tensor, dropout: float) -> None:
        super().__init__()
        self.register_buffer("adjacency", normalize_rows(adjacency), persistent=False)
        self.first = nn.Linear(nodes, dim)
        self.second = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        adjacency: torch.Tensor = self.adjacency  # type: ignore[assignment]
        hidden = F.relu(adjacency @ self.first.weight.T + self.first.bias)  # (N, D): A·I·W
        return adjacency @ self.second(self.dropout(hidden))  # (N, D)


class VisitQuery(nn.Module):
    """Diagnosis and procedure streams through their own GRU, joined into a query per visit.

    The patient representation of GAMENet / SafeDrug / MoleRec:
    ``query_t = Linear(ReLU([GRU_d(d_1..d_t)_t ; GRU_p(p_1..p_t)_t]))``.
    """

    def __init__(self, diagnoses: int, procedures: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.diagnosis = nn.Embedding(diagnoses + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(procedures + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.diagnosis_gru = nn.GRU(dim, hidden, batch_first=True)
        self.procedure_gru = nn.GRU(dim, hidden, batch_first=True)
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(2 * hidden, dim))

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, V, D): the query after each visit (right-padded positions are junk)."""
        d, _ = self.diagnosis_gru(self.dropout(sum_embed(self.diagnosis, batch.diagnoses)))
        p, _ = self.procedure_gru(self.dropout(sum_embed(self.procedure, batch.procedures)))
        return self.query(torch.cat([d, p], dim=-1))  # type: ignore[no-any-return]


# -------------------------------------------------------------------- shared losses


def margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-label margin loss (GAMENet / SafeDrug's second term)."""
    drugs = target.shape[1]
    positions = torch.arange(drugs).expand_as(target)
    # Positive indices first, then -1 (PyTorch stops reading at the first -1).
    keys = torch.where(target > 0.5, positions, positions + drugs)
    ordered = torch.sort(keys, dim=1).values
    index = torch.where(ordered < drugs, ordered, torch.full_like(ordered, -1))
    return F.multilabel_margin_loss(logits, index)


def ddi_penalty(probabilities: torch.Tensor, ddi: torch.Tensor) -> torch.Tensor:
    """Expected interacting pairs ``sum_ij p_i p_j A_ij``, averaged over the batch."""
    return ((probabilities @ ddi) * probabilities).sum(dim=1).mean()


def batch_ddi_rate(logits: torch.Tensor, ddi: torch.Tensor, threshold: float = 0.5) -> float:
    """DDI rate of the batch's thresholded predictions (DESIGN.md definition)."""
    predicted = (torch.sigmoid(logits) >= threshold).detach().numpy()
    return ddi_rate(predicted, ddi.numpy())


def controllable_ddi_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ddi: torch.Tensor,
    target_ddi: float,
    kp: float,
    ddi_weight: float = 0.0005,
    bce_weight: float = 0.95,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SafeDrug's controllable loss: accuracy terms, plus the DDI term when over target.

    With ``r`` the batch's DDI rate: ``r <= target``: ``0.95 BCE + 0.05 margin``; else
    ``beta (0.95 BCE + 0.05 margin) + (1 - beta) * ddi_weight * penalty`` with
    ``beta = max(0, 1 + (target - r) / kp)``.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    margin = margin_loss(logits, target)
    accuracy = bce_weight * bce + (1 - bce_weight) * margin
    rate = batch_ddi_rate(logits, ddi)
    penalty = ddi_weight * ddi_penalty(torch.sigmoid(logits), ddi)
    if rate <= target_ddi:
        loss = accuracy
    else:
        beta = max(0.0, 1.0 + (target_ddi - rate) / kp)
        loss = beta * accuracy + (1 - beta) * penalty
    return loss, {"bce": float(bce.detach()), "ddi_rate": rate, "ddi": float(penalty.detach())}


# -------------------------------------------------------------------- sequence decoders


def teacher_forcing(
    sequences: Sequence[Sequence[int]], start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs ``[START, m1..mk]`` and outputs ``[m1..mk, END]``, padded.

    Padding: inputs ``start`` (ignored through the outputs), outputs -100 (ignored by the loss).
    """
    length = max(len(s) for s in sequences) + 1
    inputs = torch.full((len(sequences), length), start, dtype=torch.long)
    outputs = torch.full((len(sequences), length), -100, dtype=torch.long)
    for b, sequence in enumerate(sequences):
        inputs[b, 1 : len(sequence) + 1] = torch.tensor(sequence, dtype=torch.long)
        outputs[b, : len(sequence) + 1] = torch.tensor([*sequence, end], dtype=torch.long)
    return inputs, outputs


def decoded_scores(best: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Scores whose ``>= 0.5`` set is the decoded set, ranked by decoding probability.

    ``best`` (B, drugs): each drug's highest probability over the decoding steps;
    ``chosen`` (B, drugs) bool: the decoded drugs. Chosen: ``0.5 + 0.5 p``, others ``0.5 p``
    (strictly below 0.5), so PRAUC ranks the decoded drugs first.
    """
    return torch.where(chosen, 0.5 + 0.5 * best, 0.5 * best.clamp(max=0.999))
