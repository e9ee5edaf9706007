"""GAMENet (leader.baselines.gamenet) and the shared neural pieces it pins: U(-0.1, 0.1)
embeddings, mean pooling of a visit's codes, the margin loss on probabilities, per-visit
annealed DDI decisions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leader.baselines import create
from leader.baselines.neural import margin_loss, pool_codes, visit_ddi_rate
from leader.data.store import VisitDataset

TINY = {"epochs": 2, "embedding_dim": 8, "threads": 1}


def test_visit_codes_are_averaged_and_embeddings_uniform(tiny_dataset: VisitDataset) -> None:
    model = create("gamenet", **TINY).fit(tiny_dataset, log=lambda _: None)
    encoder = model.network_.encoder
    assert encoder.pooling == "mean"
    fresh = create("gamenet", **TINY).fit(tiny_dataset, log=lambda _: None)
    assert fresh.config.lr == 2e-4 and create("gamenet").config.epochs == 100
    embedding = nn.Embedding(4, 3, padding_idx=0)
    from leader.baselines.neural import init_uniform

    init_uniform(embedding)
    assert embedding.weight.abs().max() <= 0.1 and embedding.weight[0].abs().sum() == 0
    codes = torch.tensor([[[1, 2, 0], [3, 0, 0]]])  # two visits, padded
    identity = nn.Identity()
    mean = pool_codes(embedding, codes, identity, "mean")[0]
    torch.testing.assert_close(mean[0], embedding.weight[1:3].mean(dim=0))
    torch.testing.assert_close(mean[1], embedding.weight[3])
    total = pool_codes(embedding, codes, identity, "sum")[0]
    torch.testing.assert_close(total[0], embedding.weight[1:3].sum(dim=0))


def test_margin_loss_reads_probabilities() -> None:
    logits = torch.tensor([[3.0, -1.0, 0.5]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    expected = F.multilabel_margin_loss(torch.sigmoid(logits), torch.tensor([[0, -1, -1]]))
    torch.testing.assert_close(margin_loss(logits, target), expected)


def test_ddi_rate_is_measured_per_visit() -> None:
    ddi = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    logits = torch.tensor([[5.0, 5.0, -5.0], [5.0, -5.0, 5.0], [5.0, 5.0, 5.0]])
    torch.testing.assert_close(visit_ddi_rate(logits, ddi), torch.tensor([1.0, 0.0, 1 / 3]))


def test_ddi_loss_is_taken_per_visit_with_the_annealing_probability(
    tiny_dataset: VisitDataset,
) -> None:
    """Above the target, a visit uses the DDI loss with probability exp((target - r) / T)."""
    model = create("gamenet", target_ddi=0.0, temperature=1e-6, **TINY)
    model.fit(tiny_dataset, log=lambda _: None)
    network = model.network_
    network.train()
    torch.manual_seed(0)
    from leader.baselines.features import collate

    batch = collate(model._encode(tiny_dataset.samples("train")), 5, with_targets=True)
    assert batch.target is not None
    with torch.no_grad():
        logits = network(batch).logits
        network.temperature = 1e-6  # acceptance ~0: the accuracy loss for every visit
        accurate = network._loss(logits, batch)
        network.temperature = 1e6  # acceptance ~1 for visits over the target
        mixed = network._loss(logits, batch)
    assert accurate is not None and mixed is not None
    rates = visit_ddi_rate(logits, network.ddi)
    if bool((rates > 0).any()):
        assert not torch.isclose(accurate, mixed)
