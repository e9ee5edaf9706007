"""MoleRec: substructure-aware molecular representation (Yang et al., "MoleRec:
Combinatorial Drug Recommendation with Substructure-Aware Molecular Representation
Learning", WWW 2023), read against the authors' code (github.com/yangnianzu0515/MoleRec,
``src/modules/MoleRec.py``, ``src/modules/SetTransformer.py``, ``src/training.py``).

- Patient: diagnosis / procedure embeddings (``U(-0.1, 0.1)``, dropout 0.7 on each code)
  summed per visit, one GRU each; ``q = Linear(ReLU([h_d ; h_p ; o_d ; o_p]))`` from the GRUs'
  final states and current outputs (the same vectors for one-layer GRUs, as the code).
- Molecules: a 4-layer GIN over atom and bond features (OGB's categorical set), batch norm,
  dropout 0.7, mean pooling; averaged per drug into ``G`` (drugs, D).
- Substructures: the BRICS fragments of the drugs' molecules, each encoded by a second
  4-layer GIN over its own graph, then a set transformer block (SAB, 2 heads, layer norm)
  over all of them: ``S`` (fragments, D).
- Patient-specific substructure weights ``w = sigmoid(W q)`` (fragments,).
- Substructure-aware drug representation: each drug *queries* its own substructures,
  ``A = softmax_{s in H(drug)}(Q(G) K(S)^T / sqrt(D))`` (drugs, fragments), values scaled by
  the patient's weights: ``h = A (w * S)``; a drug without substructures attends to all.
- Score ``MLP(h)`` (D -> D/2 -> 1) per drug.
- Loss per visit: ``0.95 BCE + 0.05 margin(sigmoid)``; when the visit's predicted DDI rate is
  above ``target_ddi`` the DDI loss ``0.0005 sum p p^T * A`` is mixed in with MoleRec's
  weight ``beta = min(1, exp(coef (1 - rate / target)))``.
- Budget (the authors'): Adam, lr 5e-4, 50 epochs, one step per visit, width 64, dropout
  0.7, target DDI 0.06, coef 2.5.

Remaining deviations: atom / bond features are computed here with RDKit (the same nine atom
and three bond categories as OGB's ``smiles2graph``, which the project does not depend on);
early stopping (patience 10 on validation PRAUC) instead of the best of 50 epochs by
validation Jaccard; at most ``max_visits`` (10) most recent visits per sample; batch norm in
the GINs uses the statistics of the whole molecule set at prediction too, not running
averages (every pass reads every molecule; see :class:`~leader.baselines.molecules.GINEncoder`).

>>> model = MoleRec(MoleRecConfig(smiles="atc3_smiles.csv")).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.molecules import GINEncoder, molecule_graphs
from leader.baselines.neural import (
    Inputs,
    NeuralRecommender,
    VisitQuery,
    controllable_ddi_loss,
    last_output,
)
from leader.baselines.safedrug import MoleculeConfig, prepare_molecules
from leader.config import option
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class MoleRecConfig(MoleculeConfig):
    dropout: float = option(0.7, "dropout on code embeddings and in the GINs (authors: --dp 0.7)")
    epochs: int = option(100, "epoch cap, not meant to bind (authors: --epochs 50)")
    lr: float = option(5e-4, "Adam learning rate (authors: --lr 5e-4)")
    update: str = option("visit", "one step per visit, as training.py")
    batch_size: int = option(1, "visits per step (authors: 1)")
    coef: float = option(2.5, "DDI weight annealing coefficient (authors: --coef 2.5)")
    gin_layers: int = option(4, "GIN layers of both molecule encoders (authors: 4)")
    heads: int = option(2, "heads of the substructure set transformer (authors: 2)")


class SetAttentionBlock(nn.Module):
    """Set transformer SAB as MoleRec's: ``LN(O(LN(Q + softmax(Q K^T / sqrt(d)) V)))``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, D)
        n, dim = x.shape
        split = dim // self.heads
        q, k, v = (
            f(x).view(n, self.heads, split).transpose(0, 1) for f in (self.q, self.k, self.v)
        )
        attention = torch.softmax(q @ k.transpose(1, 2) / split**0.5, dim=-1)  # (H, N, N)
        out = (q + attention @ v).transpose(0, 1).reshape(n, dim)
        return self.norm2(self.o(self.norm1(out)))  # type: ignore[no-any-return]


class MoleRecNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: MoleRecConfig) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.config = config
        self.dim = dim
        self.encoder = VisitQuery(meta["diagnoses"], meta["procedures"], dim, dim, config.dropout)
        self.encoder.query = nn.Sequential(nn.ReLU(), nn.Linear(4 * dim, dim))
        layers, dropout = config.gin_layers, config.dropout
        self.molecules = GINEncoder(inputs, "molecule", meta["molecules"], dim, layers, dropout)
        fragments = max(meta["fragments"], 1)
        self.fragments = GINEncoder(inputs, "fragment", meta["fragments"], dim, layers, dropout)
        self.set_block = SetAttentionBlock(dim, config.heads)
        self.fragment_weight = nn.Linear(dim, fragments)
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.score = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, 1))
        drug_fragments = (inputs["projection"] @ inputs["molecule_fragments"]) > 0  # (N, F)
        if drug_fragments.shape[1] == 0:
            drug_fragments = torch.zeros(drug_fragments.shape[0], 1, dtype=torch.bool)
        # A drug without substructures attends to all of them (the code's masked_fill).
        drug_fragments |= ~drug_fragments.any(dim=1, keepdim=True)
        self.register_buffer("drug_fragments", drug_fragments, persistent=False)
        self.register_buffer("projection", inputs["projection"], persistent=False)
        self.register_buffer("ddi", inputs["ddi_adjacency"], persistent=False)
        self.shared: tuple[torch.Tensor, torch.Tensor] | None = None  # see share()

    def patient(self, batch: Batch) -> torch.Tensor:
        d, p = self.encoder.streams(batch)
        current = torch.cat([last_output(d, batch.lengths), last_output(p, batch.lengths)], -1)
        return self.encoder.query(torch.cat([current, current], dim=-1))  # type: ignore[no-any-return]

    def drug_side(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The patient-independent part: (N, F) each drug's attention over substructures and
        (F, D) the set-encoded substructures (both GINs read every molecule)."""
        projection: torch.Tensor = self.projection  # type: ignore[assignment]
        drugs = projection @ self.molecules()  # (N, D)
        if self.fragments.count > 0:
            substructures = self.set_block(self.fragments())  # (F, D)
        else:
            substructures = torch.zeros(1, self.dim)
        mask: torch.Tensor = self.drug_fragments  # type: ignore[assignment]
        scores = self.query_proj(drugs) @ self.key_proj(substructures).T / self.dim**0.5
        attention = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (N, F)
        return attention, substructures

    def share(self, on: bool) -> None:
        """Prediction (eval mode, no gradient): ``on`` computes the drug side once for every
        batch until ``share(False)``; the same outputs, the GINs run once per call."""
        self.shared = self.drug_side() if on and not self.training else None

    def forward(self, batch: Batch) -> Output:
        query = self.patient(batch)  # (B, D)
        shared = self.shared if not self.training else None
        attention, substructures = shared if shared is not None else self.drug_side()
        weights = torch.sigmoid(self.fragment_weight(query))  # (B, F)
        aware = attention @ (weights.unsqueeze(-1) * substructures)  # (B, N, D)
        logits = self.score(aware).squeeze(-1)  # (B, N)
        if batch.target is None:
            return Output(loss=None, logits=logits)
        ddi: torch.Tensor = self.ddi  # type: ignore[assignment]
        target, coef = self.config.target_ddi, self.config.coef
        loss, parts = controllable_ddi_loss(
            logits,
            batch.target,
            ddi,
            target,
            lambda rate: torch.exp(coef * (1 - rate / target)).clamp(max=1.0),
        )
        return Output(loss=loss, logits=logits, parts=parts)


class MoleRec(NeuralRecommender):
    """MoleRec: drugs attend over their patient-weighted, set-encoded substructures."""

    name: ClassVar[str] = "molerec"
    config_class: ClassVar[type[Any]] = MoleRecConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        meta, inputs, fragments = prepare_molecules(dataset, self.config, self.name)
        inputs.update(molecule_graphs(meta["molecule_smiles"], "molecule"))
        inputs.update(molecule_graphs(fragments, "fragment"))
        return meta, inputs

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return MoleRecNetwork(meta, inputs, self.config)
