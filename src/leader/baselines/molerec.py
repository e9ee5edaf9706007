"""MoleRec: substructure-aware molecular representation (Yang et al., "MoleRec:
Combinatorial Drug Recommendation with Substructure-Aware Molecular Representation
Learning", WWW 2023).

- Patient query ``q``: diagnosis / procedure embeddings, one GRU each over the visits,
  joined by ``Linear(ReLU(.))`` (as SafeDrug; the current visit is the last step).
- Substructures: BRICS fragments of the drugs' molecules, each embedded by a message-passing
  network over its own atom graph (``e_s``); molecules are embedded whole by a second one
  (``g_m``).
- Substructure-aware molecule representation: the patient attends over the substructures
  of each molecule, ``alpha_{m,s} = softmax_{s in S(m)}((W_q q)^T (W_k e_s) / sqrt(D))``,
  ``h_m = sum_s alpha_{m,s} e_s``: which parts of a molecule matter depends on the patient.
- Molecule score ``MLP([h_m * q ; g_m * q])``; a drug's logit is the mean over its molecules
  plus a per-drug bias.
- Loss: SafeDrug's controllable loss (BCE + margin, DDI penalty above ``target_ddi``).

Deviations (simplifications, said plainly): the molecule / substructure encoders are the
small sum message-passing networks of :mod:`leader.baselines.molecules`, not MoleRec's GIN
encoders; MoleRec's substructure-level DDI regulariser is replaced by the drug-level
controllable DDI loss of SafeDrug; the per-drug bias is ours (drugs allowed without a
molecule would otherwise score 0.5); mini-batches of samples instead of one patient per step.
First-time patients: every visit is a training sample and the current visit is the GRU's
last step, so a first-time patient is served from the current diagnoses and procedures.

>>> model = MoleRec(MoleRecConfig(smiles="atc3_smiles.csv")).fit(dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from leader.baselines.features import Batch
from leader.baselines.molecules import MoleculeEncoder, molecule_graphs
from leader.baselines.neural import (
    Inputs,
    NeuralRecommender,
    VisitQuery,
    controllable_ddi_loss,
    last_output,
)
from leader.baselines.safedrug import MoleculeConfig, prepare_molecules
from leader.data.store import Sample, VisitDataset
from leader.training import Output

MoleRecConfig = MoleculeConfig


class MoleRecNetwork(nn.Module):
    def __init__(self, meta: dict[str, Any], inputs: Inputs, config: MoleculeConfig) -> None:
        super().__init__()
        dim, drugs = config.embedding_dim, meta["drugs"]
        self.config = config
        self.dim = dim
        self.encoder = VisitQuery(meta["diagnoses"], meta["procedures"], dim, dim, config.dropout)
        self.molecules = MoleculeEncoder(inputs, "molecule", meta["molecules"], dim)
        self.fragments = MoleculeEncoder(inputs, "fragment", meta["fragments"], dim)
        for key in ("projection", "molecule_fragments", "ddi_adjacency"):
            self.register_buffer(key, inputs[key], persistent=False)
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.score = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.bias = nn.Parameter(torch.zeros(drugs))

    def forward(self, batch: Batch) -> Output:
        query = last_output(self.encoder(batch), batch.lengths)  # (B, D)
        fragments = self.fragments()  # (F, D)
        molecules = self.molecules()  # (M, D)
        mask: torch.Tensor = self.molecule_fragments  # type: ignore[assignment]  # (M, F)
        scores = self.query_proj(query) @ self.key_proj(fragments).T / self.dim**0.5  # (B, F)
        scores = scores.unsqueeze(1).masked_fill(mask.unsqueeze(0) == 0, float("-inf"))
        has_fragment = (mask.sum(dim=1) > 0).view(1, -1, 1)  # (1, M, 1)
        alpha = torch.softmax(scores.masked_fill(~has_fragment, 0.0), dim=-1) * has_fragment
        aware = alpha @ fragments  # (B, M, D): substructure-aware molecule representation
        joint = torch.cat([aware * query.unsqueeze(1), molecules * query.unsqueeze(1)], dim=-1)
        molecule_logits = self.score(joint).squeeze(-1)  # (B, M)
        projection: torch.Tensor = self.projection  # type: ignore[assignment]
        logits = molecule_logits @ projection.T + self.bias  # (B, drugs)
        if batch.target is None:
            return Output(loss=None, logits=logits)
        ddi: torch.Tensor = self.ddi_adjacency  # type: ignore[assignment]
        loss, parts = controllable_ddi_loss(
            logits, batch.target, ddi, self.config.target_ddi, self.config.kp
        )
        return Output(loss=loss, logits=logits, parts=parts)


class MoleRec(NeuralRecommender):
    """MoleRec with BRICS substructures attended by the patient."""

    name: ClassVar[str] = "molerec"
    config_class: ClassVar[type[Any]] = MoleculeConfig

    def prepare(
        self, dataset: VisitDataset, train: Sequence[Sample]
    ) -> tuple[dict[str, Any], Inputs]:
        meta, inputs, fragments = prepare_molecules(dataset, self.config, self.name)
        inputs.update(molecule_graphs(fragments, "fragment"))
        return meta, inputs

    def build(self, meta: dict[str, Any], inputs: Inputs) -> nn.Module:
        return MoleRecNetwork(meta, inputs, self.config)
