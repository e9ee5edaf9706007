"""MoleRec (leader.baselines.molerec): atom and bond features into a GIN, drugs querying
their own set-encoded substructures, values scaled by the patient's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from leader.baselines import create  # noqa: E402
from leader.baselines.features import collate  # noqa: E402
from leader.baselines.molecules import ATOM_FEATURES, BOND_FEATURES, molecule_graphs  # noqa: E402
from leader.data.store import VisitDataset  # noqa: E402
from test_baselines import TINY, atc3_dataset, write_smiles  # noqa: E402


@pytest.fixture(scope="module")
def mol_dataset(tmp_path_factory: pytest.TempPathFactory) -> VisitDataset:
    return VisitDataset.load(atc3_dataset().save(tmp_path_factory.mktemp("mol") / "ds"))


@pytest.fixture(scope="module")
def smiles_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smiles(tmp_path_factory.mktemp("smiles") / "atc3_smiles.csv")


def test_atoms_and_bonds_carry_categorical_features() -> None:
    graph = molecule_graphs(["c1ccccc1O", "C=O"], "m")  # phenol, formaldehyde
    atoms, bonds = graph["m_atoms"], graph["m_bonds"]
    assert atoms.shape == (9, len(ATOM_FEATURES)) and bonds.shape == (16, len(BOND_FEATURES))
    assert atoms[:, 0].tolist() == [6] * 6 + [8, 6, 8]  # atomic numbers
    assert atoms[:6, 7].tolist() == [1] * 6 and atoms[:6, 8].tolist() == [1] * 6  # aromatic ring
    # Phenol: 6 aromatic ring bonds and a single C-O; formaldehyde: a double C=O (x2: directed).
    assert sorted(bonds[:14, 0].tolist()) == [0, 0] + [3] * 12
    assert bonds[14:, 0].tolist() == [1, 1]
    assert graph["m_owner"].tolist() == [0] * 7 + [1] * 2
    for k, size in enumerate(ATOM_FEATURES):
        assert int(atoms[:, k].max()) < size


def test_drugs_attend_over_their_own_patient_weighted_substructures(
    mol_dataset: VisitDataset, smiles_file: Path
) -> None:
    model = create("molerec", smiles=str(smiles_file), **TINY).fit(mol_dataset, log=lambda _: None)
    network = model.network_
    assert len(network.molecules.layers) == 2 and create("molerec").config.gin_layers == 4
    samples = mol_dataset.samples(None)
    batch = collate(model._encode(samples), 5, with_targets=False)
    mask = network.drug_fragments  # (drugs, fragments)
    with torch.no_grad():
        drugs = network.projection @ network.molecules()
        substructures = network.set_block(network.fragments())
        scores = network.query_proj(drugs) @ network.key_proj(substructures).T
        attention = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        assert torch.allclose(attention.sum(dim=1), torch.ones(5))
        assert (attention[~mask] == 0).all()  # a drug reads its own substructures only
        first = network(batch).logits
        # Patient weights ~0 scale every value to 0: every patient gets the same scores.
        network.fragment_weight.bias.fill_(-50.0)
        flat = network(batch).logits
    assert not torch.allclose(first, first[:1].expand_as(first))
    torch.testing.assert_close(flat, flat[:1].expand_as(flat))


def test_prediction_computes_the_drug_side_once_with_the_same_outputs(
    mol_dataset: VisitDataset, smiles_file: Path
) -> None:
    model = create("molerec", smiles=str(smiles_file), **TINY).fit(mol_dataset, log=lambda _: None)
    samples = mol_dataset.samples(None)
    network = model.network_
    calls: list[int] = []
    drug_side = network.drug_side

    def counted() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return drug_side()

    network.drug_side = counted  # type: ignore[method-assign]
    shared = model.predict_proba(samples, batch_size=2)  # several batches, one drug side
    assert len(calls) == 1 and network.shared is None  # released after the call
    with torch.no_grad():  # batch by batch, the drug side recomputed for each (the plain path)
        per_batch = [
            torch.sigmoid(network(collate(model._encode(samples[i : i + 2]), 5, False)).logits)
            for i in range(0, len(samples), 2)
        ]
    np.testing.assert_allclose(shared, torch.cat(per_batch).numpy(), atol=1e-6)
    assert len(calls) == 1 + len(per_batch)
