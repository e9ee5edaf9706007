"""The shared training loop for ID-based models (the student and the neural baselines).

Early stopping on a validation score (PRAUC by convention), the best weights kept,
seeded, atomic checkpoints every epoch, exact resume after a crash, one log line an epoch.

The model contract (STYLE.md): ``model(batch) -> Output(loss, logits)``.

>>> result = fit(model, batches, validate, TrainConfig(epochs=20), run_dir)  # doctest: +SKIP
>>> result.best_score, result.best_epoch                                      # doctest: +SKIP
"""
# TrainConfig lives with the config system (a light module: the CLI builds flags from it).

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leader.config import TrainConfig
from leader.io import atomic_dir
from leader.tracking import open_tracker


@dataclass
class Output:
    """What every model's ``forward(batch)`` returns."""

    loss: torch.Tensor | None  # scalar training loss (None when no targets were given)
    logits: torch.Tensor  # (B, drugs)
    parts: dict[str, float] = field(default_factory=dict)  # named loss terms, for the log


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch in one call."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (Adam when ``weight_decay`` is 0) or RMSprop over the trainable parameters."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer in ("adam", "adamw"):
        # foreach: one multi-tensor kernel per update (a fifth of a student step at batch 16)
        return torch.optim.AdamW(
            parameters, lr=config.lr, weight_decay=config.weight_decay, foreach=True
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: adamw, adam, rmsprop")


BatchFactory = Callable[[np.random.Generator], Iterable[Any]]
Validator = Callable[[torch.nn.Module], float]


def fit(
    model: torch.nn.Module,
    batches: BatchFactory,
    validate: Validator,
    config: TrainConfig,
    run_dir: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` with early stopping; leave it holding the best weights.

    ``batches(rng)`` yields the batches of one epoch (shuffled with ``rng``);
    ``validate(model)`` returns the score to maximise (model is in eval mode, no grad).
    With ``run_dir``, a checkpoint is written atomically after every epoch and
    ``resume=True`` continues from the last one, ending where an uninterrupted run would.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    optimizer = make_optimizer(model, config)
    state = _TrainState()
    best_weights = _clone_state(model)
    if resume and run_dir is not None and (run_dir / "checkpoint" / "state.json").exists():
        state, best_weights = _load_checkpoint(run_dir / "checkpoint", model, optimizer)
        log(
            f"resumed after epoch {state.epoch} (best {state.best_score:.4f} at {state.best_epoch})"
        )
    start = time.perf_counter() - state.seconds
    tracker = open_tracker(config.report_to, run_dir, asdict(config))
    while state.epoch < config.epochs and state.since_best < config.patience:
        epoch = state.epoch + 1
        # Every epoch's randomness derives from (seed, epoch): resume replays it exactly.
        torch.manual_seed(config.seed * 1000 + epoch)
        rng = np.random.default_rng([config.seed, epoch])
        model.train()
        losses: list[float] = []
        for batch in batches(rng):
            optimizer.zero_grad(set_to_none=True)
            output = model(batch)
            if output.loss is None:
                raise ValueError("the model returned no loss for a training batch")
            output.loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            losses.append(float(output.loss.detach()))
        model.eval()
        with torch.no_grad():
            score = float(validate(model))
        state.epoch = epoch
        state.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": score})
        if score > state.best_score:
            state.best_score, state.best_epoch, state.since_best = score, epoch, 0
            best_weights = _clone_state(model)
        else:
            state.since_best += 1
        state.seconds = time.perf_counter() - start
        eta = state.seconds / epoch * (config.epochs - epoch)
        log(
            f"epoch {epoch}/{config.epochs} loss {np.mean(losses):.4f} val {score:.4f} "
            f"best {state.best_score:.4f}@{state.best_epoch} "
            f"{state.seconds:.1f}s (at most {eta:.0f}s left)"
        )
        tracker.log({"train/loss": float(np.mean(losses)), "val/score": score}, epoch)
        if run_dir is not None:
            _save_checkpoint(run_dir / "checkpoint", state, model, optimizer, best_weights)
    tracker.close()
    model.load_state_dict(best_weights)
    model.eval()
    return FitResult(
        best_score=state.best_score,
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        stopped_early=state.since_best >= config.patience and state.epoch < config.epochs,
        history=state.history,
        seconds=time.perf_counter() - start,
    )


@dataclass
class _TrainState:
    epoch: int = 0
    best_score: float = float("-inf")
    best_epoch: int = 0
    since_best: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_checkpoint(
    target: Path,
    state: _TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    best_weights: dict[str, torch.Tensor],
) -> None:
    """Write into a temporary sibling, then swap it in: a crash leaves the old one whole."""
    with atomic_dir(target) as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_contiguous(best_weights), str(tmp / "best.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))


def _load_checkpoint(
    source: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[_TrainState, dict[str, torch.Tensor]]:
    model.load_state_dict(load_file(str(source / "model.safetensors")))
    # Our own file, written by _save_checkpoint; weights_only refuses arbitrary objects.
    optimizer.load_state_dict(torch.load(source / "optimizer.pt", weights_only=True))
    raw = json.loads((source / "state.json").read_text())
    return _TrainState(**raw), load_file(str(source / "best.safetensors"))


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in tensors.items()}
