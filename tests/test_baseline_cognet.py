"""COGNet (leader.baselines.cognet): beam search, rarest-first targets, copying from the
encoded medications of earlier visits."""

from __future__ import annotations

import torch

from leader.baselines import create
from leader.baselines.features import collate
from leader.baselines.neural import beam_search, decoded_step_scores
from leader.data.store import VisitDataset

TINY = {"epochs": 2, "embedding_dim": 8, "threads": 1, "heads": 2, "encoder_ffn": 16}

# Tokens 0..3 are drugs A..D, 4 START, 5 END; next-token probabilities per emitted prefix.
TABLE = {
    (): {0: 0.5, 1: 0.4, 5: 0.1},
    (0,): {2: 0.35, 3: 0.35, 5: 0.3},
    (1,): {5: 0.9, 2: 0.1},
    (0, 2): {5: 0.5, 3: 0.5},
    (0, 3): {5: 0.5, 2: 0.5},
}


def table_step(prefixes: torch.Tensor) -> torch.Tensor:
    out = torch.full((prefixes.shape[0], 6), 1e-9)
    for row, prefix in enumerate(prefixes.tolist()):
        key = tuple(t for t in prefix[1:] if t != 5)
        for token, p in TABLE.get(key, {5: 1.0}).items():
            out[row, token] = p
    return out.log()


def test_beam_finds_a_better_set_than_greedy() -> None:
    greedy = beam_search(table_step, rows=1, beam=1, max_steps=6, start=4, end=5)
    beam = beam_search(table_step, rows=1, beam=4, max_steps=6, start=4, end=5)
    assert greedy.tokens == [[0, 2]]  # A (0.5), then C (0.35), then END (0.5): 0.0875
    assert beam.tokens == [[1]]  # B (0.4), then END (0.9): 0.36
    assert float(beam.scores.exp()) > float(greedy.scores.exp())
    torch.testing.assert_close(beam.scores.exp(), torch.tensor([0.36]))


def test_probabilities_are_the_authors_step_maxima() -> None:
    """recommend.py: a decoded drug scores its probability at the step that chose it, any other
    drug its maximum over the emitting steps (END's step excluded)."""
    greedy = beam_search(table_step, rows=1, beam=1, max_steps=6, start=4, end=5)
    chosen = torch.tensor([[True, False, True, False]])  # A, C
    # Steps: () -> A (A .5, B .4), (A) -> C (C .35, D .35), (A, C) -> END (not read).
    torch.testing.assert_close(
        decoded_step_scores(greedy, chosen), torch.tensor([[0.5, 0.4, 0.35, 0.35]])
    )
    beam = beam_search(table_step, rows=1, beam=4, max_steps=6, start=4, end=5)
    chosen = torch.tensor([[False, True, False, False]])  # B, then END
    # One emitting step (): A .5 stays above the decoded B .4; C, D were never likely.
    torch.testing.assert_close(
        decoded_step_scores(beam, chosen), torch.tensor([[0.5, 0.4, 1e-9, 1e-9]])
    )


def test_decoding_the_last_position_only_gives_the_same_distribution(
    tiny_dataset: VisitDataset,
) -> None:
    model = create("cognet", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_.eval()
    batch = collate(model._encode(tiny_dataset.samples(None)), 5, with_targets=False)
    prefix = torch.tensor([[5, 0, 2, 1]]).expand(batch.size, -1)  # START, m1, m3, m2
    with torch.no_grad():
        ctx = network.context(batch)
        full = network.distribution(ctx, prefix)[:, -1]
        last = network.distribution(ctx, prefix, last_only=True)[:, -1]
    torch.testing.assert_close(last, full, atol=1e-6, rtol=1e-5)
    scores, sets = model.predict_with_sets(tiny_dataset.samples(None))
    assert sets is not None and scores.shape == sets.shape == (batch.size, 5)


def test_beam_never_repeats_a_drug() -> None:
    def always_a(prefixes: torch.Tensor) -> torch.Tensor:
        out = torch.full((prefixes.shape[0], 4), 0.01)
        out[:, 0] = 0.97  # drug 0 is always the most probable
        return out.log()

    result = beam_search(always_a, rows=2, beam=3, max_steps=3, start=2, end=3)
    for tokens in result.tokens:
        assert len(tokens) == len(set(tokens))


def test_targets_are_rarest_first(tiny_dataset: VisitDataset) -> None:
    model = create("cognet", **TINY).fit(tiny_dataset, log=lambda _: None)
    # Train visits (p1, p3, p4, p6): m1 4x, m2 3x, m3 1x, m5 2x, m4 0x.
    assert model.network_.frequency.tolist() == [4.0, 3.0, 1.0, 0.0, 2.0]
    assert model.network_.rarest_first([[0, 1, 2, 4]]) == [[2, 4, 1, 0]]


def test_copy_reads_only_the_earlier_visits_medications(tiny_dataset: VisitDataset) -> None:
    """With the gate shut on generation, p1:v3 can only emit v1's and v2's drugs (m1-m3)."""
    model = create("cognet", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v3"]
    batch = collate(model._encode([sample]), 5, with_targets=False)
    with torch.no_grad():
        network.gate.bias.fill_(-50.0)  # z ~ 0: the output is the copy distribution
        ctx = network.context(batch)
        probabilities = network.distribution(ctx, torch.tensor([[network.start]]))[0, 0]
        # The copy keys are the encoder's output, not the raw drug embeddings.
        raw = network.medication(torch.tensor([1, 2, 2]))  # v1: m1 m2 (+pad), v2: m2 m3
        assert not torch.allclose(ctx["keys"][0, :3], raw, atol=1e-3)
    assert float(probabilities[:3].sum()) > 0.99
    assert float(probabilities[3:5].sum()) < 1e-3


def test_each_distinct_set_is_encoded_once_with_the_same_encodings(
    tiny_dataset: VisitDataset,
) -> None:
    model = create("cognet", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_.eval()
    batch = collate(model._encode(tiny_dataset.samples(None)), 5, with_targets=False)
    calls: list[int] = []
    encoder = network.diagnosis_encoder
    hook = encoder.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    with torch.no_grad():
        shared = network._encode_sets(batch.diagnoses, network.diagnosis, encoder)
        b, v, c = batch.diagnoses.shape
        flat = batch.diagnoses.reshape(b * v, c)  # every set, repeats and padding included
        mask = flat == 0
        mask[mask.all(dim=-1), 0] = False
        each = encoder(network.diagnosis(flat), src_key_padding_mask=mask).reshape(b, v, c, -1)
    hook.remove()
    distinct = len({tuple(row) for row in flat.tolist()})
    assert calls[0] == distinct < b * v  # p1's visits recur in its later samples
    real = (batch.diagnoses > 0).unsqueeze(-1)  # padding positions are junk either way
    torch.testing.assert_close(shared * real, each * real, atol=1e-5, rtol=1e-4)
