"""Molecules for the molecule-aware baselines (SafeDrug, MoleRec), through RDKit.

Input: an ``atc3_smiles.csv``-format file: columns ``atc3,smiles``, one row per molecule,
several rows per drug class allowed (the SafeDrug / MoleRec resource). RDKit is an optional
extra: ``pip install 'leader[mol]'``.

Every drug of the vocabulary must have at least one parsable molecule; otherwise fitting
fails with a :class:`LeaderError` naming the drugs. ``allow_missing=True`` lets such drugs go
without a molecule instead (their molecule terms are then zero; said in the model docs).

Featurisation (kept simple, and real): a molecule is a graph of atoms (type = atomic number
and aromaticity) and bonds; :class:`MoleculeEncoder` runs a few rounds of sum message
passing and sum-pools the atoms. Substructures are RDKit BRICS fragments, as in SafeDrug.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leader.errors import LeaderError

ATOM_TYPES = 256  # embedding rows: min(atomic number, 127) * 2 + aromatic


def require_rdkit() -> ModuleType:
    try:
        import rdkit.Chem as chem
        from rdkit import RDLogger
    except ImportError as exc:
        raise LeaderError(
            "SafeDrug and MoleRec need RDKit: install the extra with `pip install 'leader[mol]'`"
        ) from exc
    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    return chem


def read_smiles(path: str | Path | None, model: str) -> dict[str, list[str]]:
    """atc3 -> SMILES strings, in file order."""
    if path is None:
        raise LeaderError(
            f"{model} reads molecules: give an atc3,smiles CSV with --smiles FILE "
            "(e.g. the shared resources/atc3_smiles.csv)"
        )
    file = Path(path)
    if not file.exists():
        raise LeaderError(f"{file}: no such SMILES file (expected columns atc3,smiles)")
    out: dict[str, list[str]] = {}
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "atc3" not in columns or "smiles" not in columns:
            raise LeaderError(
                f"{file}: columns atc3 and smiles needed (found: {', '.join(columns)})"
            )
        for row in reader:
            code, smiles = (row["atc3"] or "").strip(), (row["smiles"] or "").strip()
            if code and smiles:
                out.setdefault(code, []).append(smiles)
    return out


@dataclass
class DrugMolecules:
    """The molecules behind the drug vocabulary."""

    smiles: list[str]  # unique parsable molecules
    projection: np.ndarray  # (drugs, molecules): row-normalised drug -> its molecules
    missing: list[str]  # drugs without a molecule (only with allow_missing)


def drug_molecules(
    drugs: Sequence[str],
    smiles_by_drug: dict[str, list[str]],
    source: str | Path,
    per_drug: int,
    allow_missing: bool,
) -> DrugMolecules:
    chem = require_rdkit()
    molecules: dict[str, int] = {}
    links: list[tuple[int, int]] = []
    missing: list[str] = []
    for d, drug in enumerate(drugs):
        kept = 0
        for smiles in smiles_by_drug.get(drug, []):
            if kept >= per_drug:
                break
            if chem.MolFromSmiles(smiles) is None:
                continue  # unparsable molecule: skipped, as SafeDrug's preprocessing does
            links.append((d, molecules.setdefault(smiles, len(molecules))))
            kept += 1
        if kept == 0:
            missing.append(drug)
    if missing and not allow_missing:
        shown = ", ".join(missing[:20]) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise LeaderError(
            f"{source}: no parsable SMILES for {len(missing)} of {len(drugs)} drugs: {shown}. "
            "Add rows (atc3,smiles) for them, prepare the dataset keeping only drugs with a "
            "molecule, or pass --allow-missing-molecules"
        )
    projection = np.zeros((len(drugs), len(molecules)), dtype=np.float32)
    for d, m in links:
        projection[d, m] = 1.0
    projection /= np.maximum(projection.sum(axis=1, keepdims=True), 1.0)
    return DrugMolecules(list(molecules), projection, missing)


def brics_fragments(smiles: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """BRICS fragments of each molecule: (fragments, (molecules, fragments) 0/1 mask)."""
    chem = require_rdkit()
    from rdkit.Chem import BRICS

    fragments: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    for m, text in enumerate(smiles):
        molecule = chem.MolFromSmiles(text)
        for fragment in sorted(BRICS.BRICSDecompose(molecule)):
            pairs.append((m, fragments.setdefault(fragment, len(fragments))))
    mask = np.zeros((len(smiles), len(fragments)), dtype=np.float32)
    for m, f in pairs:
        mask[m, f] = 1.0
    return list(fragments), mask


def molecule_graphs(smiles: Sequence[str], prefix: str) -> dict[str, torch.Tensor]:
    """Atoms and bonds of all molecules as one disjoint graph, as named tensors.

    ``{prefix}_atoms`` (atoms,) type ids; ``{prefix}_edges`` (2, directed bonds);
    ``{prefix}_owner`` (atoms,) molecule of each atom.
    """
    chem = require_rdkit()
    atoms: list[int] = []
    owner: list[int] = []
    edges: list[tuple[int, int]] = []
    for m, text in enumerate(smiles):
        molecule = chem.MolFromSmiles(text)
        if molecule is None:
            raise LeaderError(f"RDKit cannot parse SMILES {text!r}")
        offset = len(atoms)
        for atom in molecule.GetAtoms():
            atoms.append(min(atom.GetAtomicNum(), 127) * 2 + int(atom.GetIsAromatic()))
            owner.append(m)
        for bond in molecule.GetBonds():
            a, b = offset + bond.GetBeginAtomIdx(), offset + bond.GetEndAtomIdx()
            edges += [(a, b), (b, a)]
    edge_tensor = torch.tensor(edges, dtype=torch.long).T if edges else torch.zeros(2, 0).long()
    return {
        f"{prefix}_atoms": torch.tensor(atoms, dtype=torch.long),
        f"{prefix}_edges": edge_tensor.contiguous(),
        f"{prefix}_owner": torch.tensor(owner, dtype=torch.long),
    }


class MoleculeEncoder(nn.Module):
    """Sum message passing over atom graphs, then sum pooling per molecule.

    ``h_a <- ReLU(W_l (h_a + sum_{b in N(a)} h_b))`` for ``layers`` rounds.
    """

    def __init__(
        self, graphs: dict[str, torch.Tensor], prefix: str, count: int, dim: int, layers: int = 2
    ) -> None:
        super().__init__()
        self.count = count
        for key in ("atoms", "edges", "owner"):
            self.register_buffer(key, graphs[f"{prefix}_{key}"], persistent=False)
        self.atom_embedding = nn.Embedding(ATOM_TYPES, dim)
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self) -> torch.Tensor:
        atoms: torch.Tensor = self.atoms  # type: ignore[assignment]
        edges: torch.Tensor = self.edges  # type: ignore[assignment]
        owner: torch.Tensor = self.owner  # type: ignore[assignment]
        hidden = self.atom_embedding(atoms)  # (atoms, D)
        for layer in self.layers:
            messages = torch.zeros_like(hidden).index_add(0, edges[1], hidden[edges[0]])
            hidden = F.relu(layer(hidden + messages))
        pooled = torch.zeros(self.count, hidden.shape[1], dtype=hidden.dtype)
        return pooled.index_add(0, owner, hidden)  # (molecules, D)
