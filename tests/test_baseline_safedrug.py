"""SafeDrug (leader.baselines.safedrug): radius-2 Weisfeiler-Lehman fingerprints, an MPNN
that is not trained (the released code) unless asked, and the controllable DDI loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("rdkit")

from leader.baselines import create  # noqa: E402
from leader.baselines.molecules import wl_fingerprints  # noqa: E402
from leader.baselines.safedrug import SafeDrug  # noqa: E402
from leader.data.store import VisitDataset  # noqa: E402
from test_baselines import TINY, atc3_dataset, write_smiles  # noqa: E402


@pytest.fixture(scope="module")
def mol_dataset(tmp_path_factory: pytest.TempPathFactory) -> VisitDataset:
    return VisitDataset.load(atc3_dataset().save(tmp_path_factory.mktemp("mol") / "ds"))


@pytest.fixture(scope="module")
def smiles_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smiles(tmp_path_factory.mktemp("smiles") / "atc3_smiles.csv")


def _carbons(smiles: str, radius: int) -> list[int]:
    graph = wl_fingerprints([smiles], radius, "m")
    return graph["m_fingerprints"][: smiles.count("C")].tolist()  # heavy atoms come first


def test_fingerprints_are_radius_2_and_deterministic() -> None:
    # Pentane: C1 C2 C3 C4 C5. At radius 1, C2 and C3 both see (C, C, H, H); at radius 2
    # C2 also sees a terminal carbon and C3 does not.
    one, two = _carbons("CCCCC", 1), _carbons("CCCCC", 2)
    assert one[1] == one[2] and one[0] == one[4] and one[1] == one[3]
    assert two[1] != two[2] and two[0] == two[4] and two[1] == two[3]
    again = wl_fingerprints(["CCO", "CCCCC"], 2, "m")
    same = wl_fingerprints(["CCO", "CCCCC"], 2, "m")
    for key in again:
        assert torch.equal(again[key], same[key])
    assert int(again["m_count"][0]) == len(set(again["m_fingerprints"].tolist()))
    assert again["m_fingerprints"].shape[0] == 9 + 17  # atoms with explicit hydrogens


def test_the_mpnn_is_fixed_unless_trained(
    mol_dataset: VisitDataset, smiles_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[torch.Tensor] = []
    original = SafeDrug.build

    def build(self: SafeDrug, meta: dict[str, Any], inputs: dict[str, torch.Tensor]) -> Any:
        network = original(self, meta, inputs)
        built.append(network.molecules.embedding.weight.detach().clone())
        return network

    monkeypatch.setattr(SafeDrug, "build", build)
    for train_it in (False, True):
        model = create("safedrug", smiles=str(smiles_file), train_molecule_encoder=train_it, **TINY)
        model.fit(mol_dataset, log=lambda _: None)
        trained = model.network_.molecules.embedding.weight
        assert torch.equal(built[-1], trained) is (not train_it)
    assert create("safedrug").config.radius == 2


def test_ddi_weight_is_the_released_codes_min_unless_paper() -> None:
    from leader.baselines.safedrug import ddi_weight

    rates = torch.tensor([0.08, 0.2])  # above the target 0.06; kp 0.05: 1 + (t - r) / kp
    code = ddi_weight("code", 0.06, 0.05)(rates)  # min(0, 0.6), min(0, -1.8)
    paper = ddi_weight("paper", 0.06, 0.05)(rates)  # max(0, 0.6), max(0, -1.8)
    torch.testing.assert_close(code, torch.tensor([0.0, -1.8]))
    torch.testing.assert_close(paper, torch.tensor([0.6, 0.0]))
    assert create("safedrug").config.ddi_weight == "code"
