"""LEAP (leader.baselines.leap): fixed attention context, 20 greedy steps, the decoded set
read by sequence_output_process, PRAUC from the mean softmax over steps."""

from __future__ import annotations

import numpy as np
import torch

from leader.baselines import create
from leader.baselines.features import collate
from leader.baselines.neural import first_unique_tokens
from leader.data.store import VisitDataset

TINY = {"epochs": 2, "embedding_dim": 8, "threads": 1}


def test_set_is_read_like_sequence_output_process() -> None:
    steps = np.array(
        [
            [0.1, 0.6, 0.1, 0.0, 0.2],  # drug 1
            [0.1, 0.6, 0.2, 0.0, 0.1],  # 1 again: the next best, drug 2
            [0.3, 0.1, 0.1, 0.0, 0.5],  # END (4): stop
            [0.9, 0.0, 0.0, 0.0, 0.1],  # never read
        ]
    )
    assert first_unique_tokens(steps, stop={3, 4}) == [1, 2]


def test_scores_are_the_mean_softmax_over_steps(tiny_dataset: VisitDataset) -> None:
    samples = tiny_dataset.samples(None)
    mean_model = create("leap", **TINY).fit(tiny_dataset, log=lambda _: None)
    assert mean_model.config.scores == "mean_softmax"  # the reproduction's, by default
    network = mean_model.network_
    batch = collate(mean_model._encode(samples), 5, with_targets=False)
    with torch.no_grad():
        steps = network.step_probabilities(batch)  # (B, 20, drugs + 2)
    assert steps.shape == (len(samples), 20, 7)
    mean = steps[:, :, :5].mean(dim=1).numpy()
    scores, sets = mean_model.predict_with_sets(samples)
    np.testing.assert_allclose(scores, mean, atol=1e-6)
    np.testing.assert_allclose(mean_model.predict_proba(samples), mean, atol=1e-6)
    assert sets is not None
    for b, rows in enumerate(steps.numpy()):  # the set is the decoded one, not mean >= 0.5
        assert set(np.flatnonzero(sets[b])) == set(first_unique_tokens(rows, {5, 6}))
    # decoded_first keeps the decoded set at >= 0.5 and ranks by the same mean within it.
    network.config.scores = "decoded_first"
    scores, same_sets = mean_model.predict_with_sets(samples)
    assert same_sets is not None and (same_sets == sets).all()
    for b in range(len(samples)):
        decoded = set(np.flatnonzero(sets[b]))
        assert set(np.flatnonzero(scores[b] >= 0.5)) == decoded
        inside = sorted(decoded, key=lambda d: mean[b, d])
        assert list(np.argsort(scores[b])[-len(decoded) :]) == inside if decoded else True


def test_scoring_by_hand(tiny_dataset: VisitDataset) -> None:
    """Hand-set step distributions over drugs 0..4 (+ START 5, END 6): the probabilities are
    their mean per drug, the set the decoded drugs {1, 2}, though drug 2's mean is 0.25."""
    model = create("leap", **TINY).fit(tiny_dataset, log=lambda _: None)
    steps = torch.tensor(
        [
            [0.1, 0.7, 0.1, 0.0, 0.0, 0.0, 0.1],  # drug 1
            [0.0, 0.5, 0.4, 0.0, 0.0, 0.0, 0.1],  # 1 again: the next best, drug 2
            [0.0, 0.1, 0.2, 0.0, 0.0, 0.0, 0.7],  # END
            [0.0, 0.7, 0.3, 0.0, 0.0, 0.0, 0.0],  # after END: averaged, not read
        ]
    ).unsqueeze(0)
    model.network_.step_probabilities = lambda batch: steps  # type: ignore[method-assign]
    scores, sets = model.predict_with_sets(tiny_dataset.samples(None)[:1])
    np.testing.assert_allclose(scores[0], [0.025, 0.5, 0.25, 0.0, 0.0], atol=1e-6)
    assert sets is not None and sets[0].tolist() == [False, True, True, False, False]


def test_context_is_computed_once_from_start(tiny_dataset: VisitDataset) -> None:
    """The context depends on the diagnoses and START only, not on the decoded tokens."""
    model = create("leap", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_
    batch = collate(model._encode(tiny_dataset.samples(None)), 5, with_targets=False)
    with torch.no_grad():
        context, hidden = network.context(batch)
        start = network.dropout(network.medication(torch.full((batch.size,), network.start)))
        torch.testing.assert_close(hidden, start)
        # Two different next tokens change the hidden state, never the context.
        a = network.step(context, torch.zeros(batch.size, dtype=torch.long), hidden, False)[1]
        b = network.step(context, torch.ones(batch.size, dtype=torch.long), hidden, False)[1]
    assert not torch.allclose(a, b)
    assert model.config.embedding_dim == 8 and create("leap").config.embedding_dim == 128
