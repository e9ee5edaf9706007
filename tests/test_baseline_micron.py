"""MICRON (leader.baselines.micron): the residual, the set update rule and the chain that
carries logits forward from the first kept visit."""

from __future__ import annotations

import numpy as np
import torch

from leader.baselines import create
from leader.baselines.features import collate
from leader.baselines.micron import update_set
from leader.data.store import VisitDataset

TINY = {"epochs": 2, "embedding_dim": 8, "threads": 1}


def test_update_rule_adds_at_0_8_removes_under_0_2_keeps_the_rest() -> None:
    previous = torch.tensor([[1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    p = torch.tensor([[0.9, 0.5, 0.1, 0.8, 0.5, 0.19]])
    assert update_set(previous, p, 0.8, 0.2).int().tolist() == [[1, 1, 0, 1, 0, 0]]


def test_probabilities_are_the_raw_chain_and_the_set_is_the_update(
    tiny_dataset: VisitDataset,
) -> None:
    """The authors' scoring, by hand on one network: PRAUC from sigmoid(s_t) as it is, the set
    from the update rule, even where the two disagree at 0.5."""
    model = create("micron", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_
    with torch.no_grad():  # a hand-set chain: h(r1) and the residual are fixed logits
        network.prescription[2].weight.zero_()
        network.prescription[2].bias.copy_(torch.tensor([2.0, -0.4, 0.4, -3.0, 0.0]))
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v2"]  # v1 gave m1, m2
    scores, sets = model.predict_with_sets([sample])
    # s_2 = b + b (every h(.) outputs the bias): logits 4.0, -0.8, 0.8, -6.0, 0.0
    expected = 1 / (1 + np.exp(-np.array([4.0, -0.8, 0.8, -6.0, 0.0])))
    np.testing.assert_allclose(scores[0], expected, atol=1e-6)
    assert tiny_dataset.vocab.codes["medication"] == ["m1", "m2", "m3", "m4", "m5"]
    # v1's set {m1, m2} updated: m1 (0.98) and m2 (0.31 >= 0.2) stay; m3 (0.69) is not
    # added below 0.8: the set is not the probabilities at 0.5.
    assert sets is not None and sets[0].tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(model.predict_proba([sample])[0], expected, atol=1e-6)


def test_chain_carries_logits_from_the_first_visit(tiny_dataset: VisitDataset) -> None:
    """p1:v3 reads v1, v2, v3: s = h(r1) + h(r2 - r1) + h(r3 - r2), the set starts at v1's."""
    model = create("micron", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v3"]
    batch = collate(model._encode([sample]), 5, with_targets=False)
    with torch.no_grad():
        r = network.representations(batch)[0]  # (3, D)
        h = network.prescription
        logits = h(r[0]) + h(r[1] - r[0]) + h(r[2] - r[1])
        # The residual is the network applied to the difference, not a difference of outputs.
        assert not torch.allclose(h(r[1] - r[0]), h(r[1]) - h(r[0]), atol=1e-4)
        chosen = torch.tensor([True, True, False, False, False])  # v1: m1, m2
        for t in (1, 2):
            partial = h(r[0]) + sum(h(r[k] - r[k - 1]) for k in range(1, t + 1))
            chosen = update_set(chosen, torch.sigmoid(partial), 0.8, 0.2)
    scores, sets = model.predict_with_sets([sample])
    np.testing.assert_allclose(scores[0], torch.sigmoid(logits).numpy(), atol=1e-6)
    assert sets is not None and sets[0].tolist() == chosen.tolist()


def test_without_changes_the_first_visits_set_is_kept(tiny_dataset: VisitDataset) -> None:
    model = create("micron", add_threshold=1.5, remove_threshold=-0.5, **TINY)
    model.fit(tiny_dataset, log=lambda _: None)
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v3"]
    _, sets = model.predict_with_sets([sample])
    assert sets is not None
    kept = sets[0]
    codes = tiny_dataset.vocab.codes["medication"]
    assert {codes[i] for i in np.flatnonzero(kept)} == {"m1", "m2"}  # v1's recorded drugs


def test_trains_only_on_visits_with_an_earlier_visit(tiny_dataset: VisitDataset) -> None:
    model = create("micron", **TINY)
    samples = tiny_dataset.samples("train")
    assert [model.trains_on(s) for s in samples] == [not s.is_single_visit for s in samples]
    assert model.config.optimizer == "rmsprop" and model.config.update == "patient"
