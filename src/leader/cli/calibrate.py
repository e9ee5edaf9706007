"""``leader calibrate``: fit the probability calibration and the conformal risk curve of a
saved model on a dataset's validation split; writes RUN/calibration.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def calibrate(
    run: Annotated[Path, typer.Option(help="Saved model folder (student run or baseline).")],
    dataset: Annotated[Path, typer.Option(help="Dataset directory the model was trained on.")],
    split: Annotated[str, typer.Option(help="Split to fit on (never the test split).")] = "val",
) -> None:
    """Fit calibration (none / temperature / per-drug Platt / per-drug isotonic, chosen by
    out-of-fold Brier score) and the conformal risk curve behind `--miss-rate` sets.

    `leader student train` writes the file itself; run this for baselines, or to refit.
    """
    from leader.calibration import calibrate_dataset_split, write_calibration
    from leader.data.store import VisitDataset
    from leader.errors import LeaderError
    from leader.models import load

    if split == "test":
        raise LeaderError("--split test: calibrating on the test split would void its scores")
    model = load(run)
    data = VisitDataset.load(dataset)
    mode = getattr(getattr(model, "config", None), "sample_mode", "") or None
    fitted = calibrate_dataset_split(model, data, split, mode)
    path = write_calibration(run, fitted)
    scores = ", ".join(
        f"{m} {v['brier']:.5f} (SE of the gap {v['se']:.5f})" for m, v in fitted.selection.items()
    )
    typer.echo(
        f"{path}: {fitted.method} (out-of-fold Brier, simplest within one SE of the best: "
        f"{scores or 'not enough patients'}); "
        f"conformal risk curve on {fitted.visits} {split} visits of {fitted.patients} patients"
    )


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
