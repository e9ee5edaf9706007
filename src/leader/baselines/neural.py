"""What the neural baselines share: config fields, fit/predict/save around the shared loop.

Each neural baseline module defines a ``torch.nn.Module`` following the project contract
``forward(batch) -> Output(loss, logits)`` (``leader.training``) and a small subclass of
:class:`NeuralRecommender` that says how to build it. Training is always
``leader.training.fit``: one stopping rule for every model, the student's (early stopping
after ``patience`` = 10 epochs without a better validation PRAUC, best weights kept), and
each model's own optimisation from its authors' code, set as its config's defaults with the
value cited: learning rate, optimiser, dropout and update granularity (one step per visit,
``update="visit", batch_size=1``, or per patient, ``update="patient"``). The epoch count is
a cap that should not bind: at least the authors' count and the student's 100 (the authors'
count is in each config's help), and an epoch holds as many optimiser steps as the authors'
(``epoch_passes``: under one sample per patient, a visit-level model passes over the
training samples visits/samples times per epoch). One torch thread by default, the
student's rule. No gradient clipping (none of the originals clips).

Shared pieces follow the originals: ``U(-0.1, 0.1)`` code embeddings where the authors'
``init_weights`` does that (:func:`init_uniform`); dropout on every code embedding before
pooling (:func:`pool_codes`); the multi-label margin loss on ``sigmoid(logits)``; DDI
losses steered by each *visit's* predicted DDI rate (:func:`visit_ddi_rate`), so a batch of
visits trains as the authors' one visit per step did; beam search for set decoders.

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
from leader.config import option
from leader.data.store import Sample, VisitDataset, Vocabulary
from leader.errors import LeaderError
from leader.metrics import compute, ddi_rate
from leader.training import TrainConfig, fit, seed_everything


@dataclass
class NeuralConfig:
    """What every neural baseline shares. Each model's config overrides the defaults with its
    authors' budget (learning rate, dropout, epochs, update granularity), citing them."""

    embedding_dim: int = option(64, "code embedding / hidden width")
    dropout: float = option(0.5, "dropout on code embeddings (the authors' value per model)")
    epochs: int = option(
        100,
        "at most this many epochs: a cap that should not bind (early stopping ends training); "
        "at least the authors' count and the student's 100",
    )
    epoch_passes: int = option(
        0,
        "passes over the training samples per epoch; 0 = as many optimiser steps per epoch as "
        "the authors took: update=visit, their visits / our samples, rounded (1 when every "
        "visit is a sample, about 2.4 under --protocol paper's one sample per patient); "
        "update=patient, 1",
    )
    update: str = option(
        "visit",
        "one optimiser step per 'visit' (batch_size samples) or per 'patient' "
        "(batch_size patients, all their samples), as the authors trained",
    )
    batch_size: int = option(1, "samples (update=visit) or patients (update=patient) per step")
    optimizer: str = option("adam", "adam or rmsprop")
    lr: float = option(5e-4, "learning rate")
    weight_decay: float = option(0.0, "weight decay")
    patience: int = option(
        10,
        "early stopping: epochs without a better validation PRAUC (the same rule as the student)",
    )
    max_visits: int = option(10, "most recent visits kept per sample (earlier + current)")
    seed: int = option(42, "seeds weights, shuffling and dropout")
    threads: int = option(
        1, "torch CPU threads (0 = torch's default); 1, the student's rule (TrainConfig.threads)"
    )


Inputs = dict[str, torch.Tensor]


class NeuralRecommender:
    """fit / predict_proba / save_pretrained / from_pretrained for one torch network."""

    name: ClassVar[str]
    config_class: ClassVar[type[Any]] = NeuralConfig
    decodes_sets: ClassVar[bool] = False  # True: network.predict returns (scores, sets)

    def __init__(self, config: Any | None = None) -> None:
        self.config = config or self.config_class()
        self.network_: nn.Module
        self.vocab_: Vocabulary
        self.meta_: dict[str, Any] = {}
        self.inputs_: Inputs = {}
        self.fit_result_: Any = None
        self.epoch_passes_ = 1

    # ---------------------------------------------------------------- subclass hooks
    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        """Build metadata (JSON) and fixed input tensors from the training data."""
        return {}, {}

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        raise NotImplementedError

    def trains_on(self, sample: Sample) -> bool:
        """Whether the authors trained on this kind of sample (all, by default)."""
        return True

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
        trained = [s for s in train if self.trains_on(s)]
        if not trained:
            raise LeaderError(
                f"{self.name}: no sample of the train split it can learn from (it trains on "
                "patients with an earlier visit only); check splits.json"
            )
        encoded = self._encode(trained)
        groups = self._update_groups(trained)
        passes = self.config.epoch_passes or self.authors_passes(dataset, trained)
        if passes > 1:
            log(
                f"{self.name}: an epoch is {passes} passes over the {len(trained)} training "
                "samples (the authors' optimiser steps per epoch: one per visit)"
            )
        drugs = self.meta_["drugs"]
        truth = dataset.targets(validation)

        def batches(rng: np.random.Generator) -> Iterator[Batch]:
            hook = getattr(self.network_, "start_epoch", None)
            if hook is not None:
                hook()
            order = np.concatenate([rng.permutation(len(groups)) for _ in range(passes)])
            for start in range(0, len(order), self.config.batch_size):
                chunk = [
                    encoded[i]
                    for g in order[start : start + self.config.batch_size]
                    for i in groups[g]
                ]
                yield collate(chunk, drugs, with_targets=True)

        def validate(network: nn.Module) -> float:
            return compute(truth, self.predict_proba(validation))["prauc"]

        train_config = TrainConfig(
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            patience=self.config.patience,
            max_grad_norm=0.0,  # none of the originals clips gradients
            seed=self.config.seed,
            threads=self.config.threads,
            optimizer=self.config.optimizer,
        )
        self.fit_result_ = fit(self.network_, batches, validate, train_config, run_dir, log=log)
        self.epoch_passes_ = passes
        return self

    def authors_passes(self, dataset: VisitDataset, trained: Sequence[Sample]) -> int:
        """Passes per epoch that give the authors' optimiser steps per epoch: they stepped
        once per training visit (update=visit) or per patient (update=patient)."""
        if self.config.update != "visit":
            return 1  # one step per patient either way (each patient's samples together)
        visits = [s for s in dataset.samples("train", "all") if self.trains_on(s)]
        return max(1, round(len(visits) / max(len(trained), 1)))

    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 256) -> np.ndarray:
        """(samples, drugs) the model's own probabilities (the authors' scores)."""
        return self.predict_with_sets(samples, batch_size)[0]

    def predict_with_sets(
        self, samples: Sequence[Sample], batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, for a model that decodes its set itself (``decodes_sets``:
        LEAP, COGNet, MICRON), that set (samples, drugs) bool; None for the others, whose
        set is their thresholded probabilities."""
        self.network_.eval()
        drugs = int(self.meta_["drugs"])
        scores = [np.zeros((0, drugs), dtype=np.float32)]
        sets = [np.zeros((0, drugs), dtype=bool)]
        encoded = self._encode(samples)
        predict = getattr(self.network_, "predict", None)
        share = getattr(self.network_, "share", None)  # patient-independent parts, once
        with torch.no_grad():
            if share is not None:
                share(True)
            try:
                for start in range(0, len(encoded), batch_size):
                    batch = collate(
                        encoded[start : start + batch_size], drugs, with_targets=False
                    )
                    out = (
                        predict(batch) if predict else torch.sigmoid(self.network_(batch).logits)
                    )
                    probabilities, chosen = out if isinstance(out, tuple) else (out, None)
                    scores.append(probabilities.float().numpy())
                    if chosen is not None:
                        sets.append(chosen.bool().numpy())
            finally:
                if share is not None:
                    share(False)
        decoded = np.concatenate(sets) if self.decodes_sets else None
        return np.concatenate(scores), decoded

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

    def _update_groups(self, samples: Sequence[Sample]) -> list[list[int]]:
        """Sample indices per shuffled unit: one sample, or one patient's samples."""
        if self.config.update == "visit":
            return [[i] for i in range(len(samples))]
        if self.config.update != "patient":
            raise LeaderError(
                f"{self.name}: update must be 'visit' or 'patient', not {self.config.update!r}"
            )
        by_patient: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            by_patient.setdefault(sample.patient_id, []).append(i)
        return list(by_patient.values())

    def _encode(self, samples: Sequence[Sample]) -> list[EncodedSample]:
        return [encode_sample(s, self.vocab_, self.config.max_visits) for s in samples]


def replace_config(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` with only the fields this config has."""
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in names})


# -------------------------------------------------------------------- shared layers


def init_uniform(*embeddings: nn.Embedding, bound: float = 0.1) -> None:
    """``U(-bound, bound)`` embeddings, the originals' ``init_weights``; padding rows stay 0."""
    for embedding in embeddings:
        nn.init.uniform_(embedding.weight, -bound, bound)
        if embedding.padding_idx is not None:
            with torch.no_grad():
                embedding.weight[embedding.padding_idx].zero_()


def pool_codes(
    embedding: nn.Embedding, codes: torch.Tensor, dropout: nn.Module, mode: str = "sum"
) -> torch.Tensor:
    """Code embeddings (dropout on each, as the originals) pooled per visit.

    (B, V, C) -> (B, V, D); ``mode`` ``sum`` (SafeDrug, MICRON, MoleRec, RETAIN) or ``mean``
    over the visit's real codes (GAMENet); padding (0) adds nothing, an empty visit gives 0.
    """
    vectors = dropout(embedding(codes)) * (codes > 0).unsqueeze(-1)  # (B, V, C, D)
    total = vectors.sum(dim=-2)
    if mode == "sum":
        return total
    count = (codes > 0).sum(dim=-1, keepdim=True).clamp(min=1)
    return total / count


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
    """Two-layer graph convolution over the drugs, identity node features (GAMENet).

    ``A ReLU(A I W1) W2`` with dropout 0.3 between the layers, as GAMENet's ``GCN``.
    """

    def __init__(self, nodes: int, dim: int, adjacency: torch.Tensor, dropout: float = 0.3):
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
    ``query_t = Linear(ReLU([GRU_d(d_1..d_t)_t ; GRU_p(p_1..p_t)_t]))``; codes pooled per
    visit by ``pooling`` (GAMENet: mean, the others: sum), embeddings ``U(-0.1, 0.1)``.
    """

    def __init__(
        self,
        diagnoses: int,
        procedures: int,
        dim: int,
        hidden: int,
        dropout: float,
        pooling: str = "sum",
    ):
        super().__init__()
        self.diagnosis = nn.Embedding(diagnoses + 1, dim, padding_idx=0)
        self.procedure = nn.Embedding(procedures + 1, dim, padding_idx=0)
        init_uniform(self.diagnosis, self.procedure)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.diagnosis_gru = nn.GRU(dim, hidden, batch_first=True)
        self.procedure_gru = nn.GRU(dim, hidden, batch_first=True)
        self.query = nn.Sequential(nn.ReLU(), nn.Linear(2 * hidden, dim))

    def streams(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU outputs of both streams, (B, V, H) each (right-padded positions are junk)."""
        d = pool_codes(self.diagnosis, batch.diagnoses, self.dropout, self.pooling)
        p = pool_codes(self.procedure, batch.procedures, self.dropout, self.pooling)
        return self.diagnosis_gru(d)[0], self.procedure_gru(p)[0]

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, V, D): the query after each visit (right-padded positions are junk)."""
        d, p = self.streams(batch)
        return self.query(torch.cat([d, p], dim=-1))  # type: ignore[no-any-return]


# -------------------------------------------------------------------- shared losses
# Per sample (B,) so that a batch of visits is trained as the originals trained one visit.


def bce_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)


def margin_per_sample(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-label margin loss on probabilities (every original applies it to the sigmoid)."""
    drugs = target.shape[1]
    positions = torch.arange(drugs).expand_as(target)
    # Positive indices first, then -1 (PyTorch stops reading at the first -1).
    keys = torch.where(target > 0.5, positions, positions + drugs)
    ordered = torch.sort(keys, dim=1).values
    index = torch.where(ordered < drugs, ordered, torch.full_like(ordered, -1))
    return F.multilabel_margin_loss(probabilities, index, reduction="none")


def margin_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean multi-label margin loss of ``sigmoid(logits)`` (GAMENet / SafeDrug's term)."""
    return margin_per_sample(torch.sigmoid(logits), target).mean()


def expected_ddi(probabilities: torch.Tensor, ddi: torch.Tensor) -> torch.Tensor:
    """(B,) ``sum_ij p_i p_j A_ij`` per sample (SafeDrug's DDI loss before its weight)."""
    return ((probabilities @ ddi) * probabilities).sum(dim=1)


def ddi_penalty(probabilities: torch.Tensor, ddi: torch.Tensor) -> torch.Tensor:
    """Expected interacting pairs ``sum_ij p_i p_j A_ij``, averaged over the batch."""
    return expected_ddi(probabilities, ddi).mean()


def visit_ddi_rate(logits: torch.Tensor, ddi: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B,) DDI rate of each visit's predicted set (interacting pairs / pairs; 0 under 2 drugs).

    Per visit, as the originals measure it to steer their DDI loss (one visit per step).
    """
    with torch.no_grad():
        predicted = (torch.sigmoid(logits) >= threshold).float()
        interacting = ((predicted @ ddi) * predicted).sum(dim=1) / 2
        size = predicted.sum(dim=1)
        pairs = size * (size - 1) / 2
        return torch.where(pairs > 0, interacting / pairs.clamp(min=1), torch.zeros_like(size))


def batch_ddi_rate(logits: torch.Tensor, ddi: torch.Tensor, threshold: float = 0.5) -> float:
    """DDI rate of the batch's thresholded predictions (DESIGN.md definition)."""
    predicted = (torch.sigmoid(logits) >= threshold).detach().numpy()
    return ddi_rate(predicted, ddi.numpy())


def controllable_ddi_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ddi: torch.Tensor,
    target_ddi: float,
    weight: Callable[[torch.Tensor], torch.Tensor],
    ddi_weight: float = 0.0005,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SafeDrug's controllable loss, per visit; MoleRec uses it with its own weight schedule.

    Per visit with DDI rate ``r``: ``r <= target``: ``0.95 BCE + 0.05 margin(sigmoid)``;
    else ``beta (0.95 BCE + 0.05 margin) + (1 - beta) * ddi_weight * sum p p^T * A`` with
    ``beta = weight(r)``; the batch loss is the mean over visits.
    """
    probabilities = torch.sigmoid(logits)
    accuracy = 0.95 * bce_per_sample(logits, target) + 0.05 * margin_per_sample(
        probabilities, target
    )
    penalty = ddi_weight * expected_ddi(probabilities, ddi)
    rate = visit_ddi_rate(logits, ddi)
    beta = torch.where(rate <= target_ddi, torch.ones_like(rate), weight(rate))
    loss = (beta * accuracy + (1 - beta) * penalty).mean()
    parts = {"accuracy": float(accuracy.detach().mean()), "ddi_rate": float(rate.mean())}
    return loss, parts


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


def first_unique_tokens(step_probabilities: np.ndarray, stop: set[int]) -> list[int]:
    """The set a sequence decoder emits, read from its per-step distributions (T, tokens).

    At each step the most probable token not emitted yet is taken; the first step whose
    best remaining token is in ``stop`` (END / START) ends the set. This is the GAMENet
    repository's ``sequence_output_process``, which LEAP and COGNet are scored with.
    """
    emitted: list[int] = []
    for row in step_probabilities:
        for token in np.argsort(-row, kind="stable"):
            token = int(token)
            if token in stop:
                return emitted
            if token not in emitted:
                emitted.append(token)
                break
    return emitted


StepFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BeamResult:
    tokens: list[list[int]]  # per row: the best hypothesis, END excluded
    scores: torch.Tensor  # (B,) its summed log-probability
    step_maxima: torch.Tensor  # (B, tokens) max of its step distributions over emitting steps
    at_choice: torch.Tensor  # (B, tokens) a token's probability at the step that emitted it
    first_step: torch.Tensor  # (B, tokens) the first step's distribution
    emitted: torch.Tensor  # (B,) steps of the best hypothesis that emitted a token (not END)


def beam_search(
    step: StepFunction, rows: int, beam: int, max_steps: int, start: int, end: int
) -> BeamResult:
    """Beam search for sets: no token twice, a hypothesis ends at ``end`` (COGNet's beam).

    ``step(prefixes)`` maps (rows * beam, L) token prefixes (row-major: all beams of row 0
    first) to (rows * beam, tokens) log-probabilities of the next token, ``start`` excluded
    from the choice. Scores are summed log-probabilities without length normalisation, and
    finished hypotheses compete with live ones at every step, as in COGNet's ``Beam``.
    ``beam=1`` is greedy decoding. Along each hypothesis the raw step distributions are
    kept as COGNet's ``get_prob_list`` reads them: their maximum over the steps that emitted
    a token and each emitted token's probability at its step (:func:`decoded_step_scores`).
    """
    prefixes = torch.full((rows * beam, 1), start, dtype=torch.long)
    scores = torch.full((rows, beam), float("-inf"))
    scores[:, 0] = 0.0  # one live hypothesis per row at the start
    finished = torch.zeros(rows, beam, dtype=torch.bool)
    maxima: torch.Tensor | None = None  # (rows, beam, tokens)
    at_choice: torch.Tensor | None = None  # (rows, beam, tokens)
    first: torch.Tensor | None = None  # (rows, tokens)
    counts = torch.zeros(rows, beam)
    for _ in range(max_steps):
        log_probs = step(prefixes)  # (rows * beam, tokens)
        tokens = log_probs.shape[1]
        step_probs = log_probs.detach().exp().view(rows, beam, tokens)  # raw, for PRAUC
        log_probs = log_probs.clone()
        log_probs[:, start] = float("-inf")
        used = torch.zeros_like(log_probs, dtype=torch.bool)
        used.scatter_(1, prefixes, True)
        used[:, end] = False
        log_probs = log_probs.masked_fill(used, float("-inf")).view(rows, beam, tokens)
        if maxima is None or at_choice is None or first is None:
            maxima, at_choice = torch.zeros(rows, beam, tokens), torch.zeros(rows, beam, tokens)
            first = step_probs[:, 0].clone()
        live = ~finished & torch.isfinite(scores)
        grow = torch.where(live.unsqueeze(-1), scores.unsqueeze(-1) + log_probs, float("-inf"))
        stay = torch.where(finished, scores, float("-inf")).unsqueeze(-1)  # carry finished
        candidates = torch.cat([grow, stay], dim=-1).view(rows, -1)  # (rows, beam*(tokens+1))
        best, index = candidates.topk(beam, dim=1)
        parent, token = index // (tokens + 1), index % (tokens + 1)
        carried = token == tokens
        emitted = ~carried & (token != end)  # (rows, beam) this step emitted a token
        gather = parent.unsqueeze(-1).expand(-1, -1, tokens)
        parent_step = torch.gather(step_probs, 1, gather)  # the distribution it chose from
        maxima = torch.gather(maxima, 1, gather)
        maxima = torch.where(emitted.unsqueeze(-1), torch.maximum(maxima, parent_step), maxima)
        at_choice = torch.gather(at_choice, 1, gather)
        slot = token.clamp(max=tokens - 1).unsqueeze(-1)  # (rows, beam, 1)
        value = torch.where(
            emitted.unsqueeze(-1), parent_step.gather(2, slot), at_choice.gather(2, slot)
        )
        at_choice = at_choice.scatter(2, slot, value)
        counts = torch.gather(counts, 1, parent) + emitted.float()
        finished = torch.gather(finished, 1, parent) | carried | (token == end)
        finished |= ~torch.isfinite(best)
        scores = best
        flat_parent = (parent + torch.arange(rows).unsqueeze(1) * beam).view(-1)
        next_token = torch.where(carried, end, token).view(-1, 1)
        prefixes = torch.cat([prefixes[flat_parent], next_token], dim=1)
        if bool(finished.all()):
            break
    assert maxima is not None and at_choice is not None and first is not None
    top = scores.argmax(dim=1)  # (rows,)
    rows_index = torch.arange(rows)
    chosen = prefixes.view(rows, beam, -1)[rows_index, top, 1:]
    result = [[int(t) for t in row if int(t) != end] for row in chosen]
    return BeamResult(
        result,
        scores[rows_index, top],
        maxima[rows_index, top],
        at_choice[rows_index, top],
        first,
        counts[rows_index, top],
    )


def decoded_step_scores(result: BeamResult, chosen: torch.Tensor) -> torch.Tensor:
    """COGNet's probabilities (``recommend.py``): a decoded drug scores its probability at
    the step that emitted it, any other drug its maximum over the emitting steps.

    ``chosen`` (B, drugs) bool; the first ``drugs`` token columns are read. A row that
    decoded nothing (the code would fail on an empty list) scores its first step's
    distribution.
    """
    drugs = chosen.shape[1]
    scores = torch.where(chosen, result.at_choice[:, :drugs], result.step_maxima[:, :drugs])
    decoded_nothing = (result.emitted == 0).unsqueeze(1)
    return torch.where(decoded_nothing, result.first_step[:, :drugs], scores)
