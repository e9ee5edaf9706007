"""RETAIN (leader.baselines.retain): reverse-time attention, paper form and code form."""

from __future__ import annotations

import numpy as np
import torch

from leader.baselines import create
from leader.baselines.retain import reverse_padded
from leader.data.store import Sample, Visit, VisitDataset

TINY = {"epochs": 2, "embedding_dim": 8, "threads": 1}


def _with_current_diagnoses(sample: Sample, diagnoses: tuple[str, ...]) -> Sample:
    current = Visit(sample.current.visit_id, None, diagnoses, sample.current.procedures, ())
    return Sample(sample.sample_id, sample.patient_id, sample.history, current, sample.profile)


def test_paper_form_reads_the_current_visit_code_form_does_not(
    tiny_dataset: VisitDataset,
) -> None:
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v3"]
    changed = _with_current_diagnoses(sample, ("d4", "d5"))
    paper = create("retain", form="paper", **TINY).fit(tiny_dataset, log=lambda _: None)
    code = create("retain", **TINY).fit(tiny_dataset, log=lambda _: None)
    assert code.config.form == "code"  # the reproductions' released code, by default
    a, b = paper.predict_proba([sample, changed])
    assert not np.allclose(a, b)
    a, b = code.predict_proba([sample, changed])
    np.testing.assert_allclose(a, b, atol=1e-7)
    # The code form has nothing to read for a first-time patient: sigmoid(output bias).
    first = next(s for s in tiny_dataset.samples(None) if s.is_single_visit)
    bias = torch.sigmoid(code.network_.output.bias).detach().numpy()
    np.testing.assert_allclose(code.predict_proba([first])[0], bias, atol=1e-6)
    assert not code.trains_on(first) and paper.trains_on(first)


def test_attention_runs_over_visits_in_reverse_time(tiny_dataset: VisitDataset) -> None:
    """alpha is a softmax over the real visits; the newest visit comes first."""
    model = create("retain", **TINY).fit(tiny_dataset, log=lambda _: None)
    network = model.network_
    sample = {s.sample_id: s for s in tiny_dataset.samples(None)}["p1:v3"]
    from leader.baselines.features import collate

    batch = collate(model._encode([sample]), 5, with_targets=False)
    with torch.no_grad():
        visits, lengths = network.visits(batch)
        g, _ = network.alpha_gru(reverse_padded(visits, lengths))
        alpha = torch.softmax(network.alpha(g).squeeze(-1), dim=1)
    assert alpha.shape == (1, 3) and torch.isclose(alpha.sum(), torch.tensor(1.0))
    assert not torch.allclose(alpha, torch.full_like(alpha, 1.0))  # not the code's all-ones
    x = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [0.0]]])
    out = reverse_padded(x, torch.tensor([3, 2]))
    assert out.squeeze(-1).tolist() == [[3.0, 2.0, 1.0], [5.0, 4.0, 0.0]]
