from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leader.training import FitResult, Output, TrainConfig, fit, seed_everything


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> Output:
        x, y = batch
        logits = self.layer(self.drop(x))
        return Output(torch.nn.functional.binary_cross_entropy_with_logits(logits, y), logits)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, :3] > 0).float()
    return x, y


def _run(
    run_dir: Path | None, epochs: int, resume: bool = False, report_to: str = "none"
) -> tuple[FitResult, _Linear]:
    seed_everything(1)
    model = _Linear()
    x, y = _data()

    def batches(rng: np.random.Generator):  # type: ignore[no-untyped-def]
        order = rng.permutation(len(x))
        for i in range(0, len(x), 16):
            idx = torch.as_tensor(order[i : i + 16])
            yield x[idx], y[idx]

    def validate(m: torch.nn.Module) -> float:
        return -float(m((x, y)).loss)

    config = TrainConfig(epochs=epochs, lr=0.05, patience=100, report_to=report_to)
    return fit(model, batches, validate, config, run_dir, resume, log=lambda _: None), model


def test_fit_learns_and_keeps_best() -> None:
    result, _ = _run(None, epochs=15)
    assert result.epochs_run == 15
    assert result.best_score == max(h["val"] for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_resume_ends_where_uninterrupted_run_ends(tmp_path: Path) -> None:
    full, full_model = _run(tmp_path / "a", epochs=8)
    _run(tmp_path / "b", epochs=4)  # "crashes" after epoch 4
    resumed, resumed_model = _run(tmp_path / "b", epochs=8, resume=True)
    assert resumed.epochs_run == 8
    assert [h["val"] for h in resumed.history] == [h["val"] for h in full.history]
    for a, b in zip(
        full_model.state_dict().values(), resumed_model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_early_stopping() -> None:
    seed_everything(0)
    model = _Linear()
    scores = iter([0.5, 0.6, 0.55, 0.54, 0.53, 0.9])
    x, y = _data()
    result = fit(
        model,
        lambda rng: [(x, y)],
        lambda m: next(scores),
        TrainConfig(epochs=10, patience=3),
        log=lambda _: None,
    )
    assert result.stopped_early and result.epochs_run == 5 and result.best_epoch == 2


def test_report_to_tensorboard_writes_events_under_the_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")  # installed by the dev extra
    _run(tmp_path, epochs=3, report_to="tensorboard")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_report_to_needs_a_known_tracker() -> None:
    from leader.errors import LeaderError

    with pytest.raises(LeaderError, match="report_to must be"):
        TrainConfig(report_to="wandb").validate()
