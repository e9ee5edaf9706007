"""SafeDrug: dual molecular graph encoders with DDI control (Yang et al., "SafeDrug:
Dual Molecular Graph Encoders for Recommending Effective and Safe Drug Combinations",
IJCAI 2021).

- Patient query: diagnosis / procedure embeddings (sum per visit), one GRU each over the
  visits, ``q = Linear(ReLU([o_d ; o_p]))`` at the current visit.
- Global (molecule) encoder: a message-passing network over each drug's molecule graphs,
  averaged per drug into ``E`` (drugs, D); ``m = sigmoid(q E^T)``;
  ``a_global = LayerNorm(m + Linear(m))``.
- Local (substructure) encoder: BRICS fragments of the molecules; ``H`` (drugs, fragments)
  marks which fragments a drug contains; ``a_local = MaskedLinear_{H^T}(sigmoid(W q))``.
- Output logits ``a_global * a_local``; loss: SafeDrug's controllable loss (0.95 BCE + 0.05
  margin while the batch's DDI rate is under ``target_ddi``; above it mixed with the DDI
  penalty ``0.0005 sum p p^T * A`` by ``beta = max(0, 1 + (target - rate) / kp)``).

Deviations (simplifications, said plainly):
- Molecule encoder: atom type (atomic number, aromatic) embeddings and 2 rounds of sum
  message passing over bonds, sum-pooled, instead of SafeDrug's radius-1 Weisfeiler-Lehman
  fingerprints. It runs in every forward pass and trains; the released code computed the
  molecule embeddings once at construction, so its MPNN weights never trained.
- Up to ``molecules_per_drug`` (3, as SafeDrug's preprocessing) SMILES per drug.
- Mini-batches of samples instead of one patient per step; DDI rate measured per batch.
- Every visit (first visits included) is a training sample; the current visit is the GRU's
  last step, so first-time patients are served from their current diagnoses/procedures.
- Drugs without a molecule: an error naming them, unless ``allow_missing_molecules`` (their
  molecule embedding and fragment row are then zero: the global term sees ``sigmoid(0)``).
- A learned per-drug output bias (zero-initialised) is added to the logits: without it a
  drug with no fragment always scores exactly 0.5.

>>> model = SafeDrug(SafeDrugConfig(smiles="atc3_smiles.csv")).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.molecules import (
    MoleculeEncoder,
    brics_fragments,
    drug_molecules,
    molecule_graphs,
    read_smiles,
)
from leader.baselines.neural import (
    Inputs,
    NeuralConfig,
    NeuralRecommender,
    VisitQuery,
    controllable_ddi_loss,
    last_output,
)
from leader.data.store import Sample, VisitDataset
from leader.training import Output


@dataclass
class MoleculeConfig(NeuralConfig):
    smiles: str | None = None  # atc3,smiles CSV (SafeDrug / MoleRec resource); required
    allow_missing_molecules: bool = False  # let drugs without SMILES go without (else error)
    molecules_per_drug: int = 3  # SMILES kept per drug, in file order
    target_ddi: float = 0.06  # SafeDrug's DDI target for the controllable loss
    kp: float = 0.05  # proportional gain of the controllable loss


SafeDrugConfig = MoleculeConfig


def prepare_molecules(
    dataset: VisitDataset, config: MoleculeConfig, model: str
) -> tuple[dict[str, Any], Inputs, list[str]]:
    """Molecule graphs, drug -> molecule projection, BRICS fragments, DDI matrix."""
    smiles_by_drug = read_smiles(config.smiles, model)
    molecules = drug_molecules(
        dataset.vocab.codes["medication"],
        smiles_by_drug,
        config.smiles or "",
        config.molecules_per_drug,
        config.allow_missing_molecules,
    )
    fragments, molecule_fragments = brics_fragments(molecules.smiles)
    inputs: Inputs = {
        **molecule_graphs(molecules.smiles, "molecule"),
        "projection": torch.from_numpy(molecules.projection),
        "molecule_fragments": torch.from_numpy(molecule_fragments),
        "ddi_adjacency": torch.from_numpy(dataset.ddi_matrix().astype(np.float32)),
    }
    meta = {
        "molecules": len(molecules.smiles),
        "fragments": len(fragments),
        "drugs_without_molecule": molecules.missing,
    }
    return meta, inputs, fragments


class SafeDrugNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: MoleculeConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.encoder = VisitQuery(meta["diagnoses"], meta["procedures"], dim, dim, config.dropout)
        self.molecules = MoleculeEncoder(inputs, "molecule", meta["molecules"], dim)
        self.register_buffer("projection", inputs["projection"], persistent=False)
        drug_fragments = (inputs["projection"] @ inputs["molecule_fragments"] > 0).float()
        self.register_buffer("fragment_mask", drug_fragments.T.contiguous(), persistent=False)
        self.register_buffer("ddi", inputs["ddi_adjacency"], persistent=False)
        self.global_output = nn.Linear(drugs, drugs)
        self.global_norm = nn.LayerNorm(drugs)
        self.local_transform = nn.Linear(dim, max(meta["fragments"], 1))
        self.local_weight = nn.Parameter(torch.empty(max(meta["fragments"], 1), drugs))
        nn.init.uniform_(self.local_weight, -1 / drugs**0.5, 1 / drugs**0.5)
        self.bias = nn.Parameter(torch.zeros(drugs))  # not in SafeDrug; see the docstring

    def forward(self, batch: Batch) -> Output:
        query = last_output(self.encoder(batch), batch.lengths)  # (B, D)
        projection: torch.Tensor = self.projection  # type: ignore[assignment]
        drug_embedding = projection @ self.molecules()  # (drugs, D)
        match = torch.sigmoid(query @ drug_embedding.T)  # (B, drugs)
        global_att = self.global_norm(match + self.global_output(match))
        fragments = torch.sigmoid(self.local_transform(query))  # (B, fragments)
        fragment_mask: torch.Tensor = self.fragment_mask  # type: ignore[assignment]
        if fragment_mask.shape[0] == 0:  # no fragments at all: an all-zero local term
            fragment_mask = torch.zeros_like(self.local_weight)
        local_att = fragments @ (self.local_weight * fragment_mask)  # (B, drugs)
        logits = global_att * local_att + self.bias
        loss = None
        if batch.target is not None:
            ddi: torch.Tensor = self.ddi  # type: ignore[assignment]
            loss, parts = controllable_ddi_loss(
                logits, batch.target, ddi, self.config.target_ddi, self.config.kp
            )
            return Output(loss=loss, logits=logits, parts=parts)
        return Output(loss=None, logits=logits)


class SafeDrug(NeuralRecommender):
    """SafeDrug with RDKit molecule graphs and BRICS substructures."""

    name: ClassVar[str] = "safedrug"
    config_class: ClassVar[type[Any]] = MoleculeConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        meta, inputs, _ = prepare_molecules(dataset, self.config, self.name)
        return meta, inputs

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return SafeDrugNetwork(meta, inputs, self.config)
