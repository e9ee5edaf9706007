"""``leader benchmark``: put LEADER next to the baselines on one dataset (issue 5).

Top-level imports stay light; the work happens in :mod:`leader.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark)


def benchmark(
    dataset: Annotated[Path, typer.Option(help="Dataset directory written by `leader prepare`.")],
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated model names, or 'all': popularity, previous_visit, lr, ecc, "
            "retain, leap, gamenet, safedrug, micron, cognet, molerec, leader_s, leader_t."
        ),
    ] = "all",
    seeds: Annotated[int, typer.Option(help="Training seeds per model (42, 43, ...).")] = 3,
    out: Annotated[
        Path | None, typer.Option(help="Results folder (default: results/benchmark-<dataset>).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Override every trained model's epoch limit.")
    ] = None,
    threshold: Annotated[float, typer.Option(help="Decision threshold for every model.")] = 0.5,
    tune_thresholds: Annotated[
        bool, typer.Option(help="Pick each model's threshold on validation Jaccard instead.")
    ] = False,
    rounds: Annotated[int, typer.Option(help="Rounds of a random 80% of the test set.")] = 10,
    smiles: Annotated[
        Path | None,
        typer.Option(
            help="atc3,smiles CSV for SafeDrug / MoleRec (e.g. resources/atc3_smiles.csv)."
        ),
    ] = None,
    allow_missing_molecules: Annotated[
        bool,
        typer.Option(help="Molecule models: let drugs without SMILES go without (else an error)."),
    ] = False,
    teacher_features: Annotated[
        Path | None,
        typer.Option(
            help="Teacher features file (`leader teacher predict`): scores LEADER(T), "
            "and distils LEADER(S)."
        ),
    ] = None,
    student_run: Annotated[
        Path | None, typer.Option(help="Evaluate this LEADER(S) run instead of training one.")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = default).")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Reuse finished runs in the results folder.")
    ] = False,
) -> None:
    """Train and evaluate baselines and LEADER on one dataset; write tables and plots."""
    from leader.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(
        models=[models],
        seeds=seeds,
        epochs=epochs,
        threshold=threshold,
        tune_thresholds=tune_thresholds,
        rounds=rounds,
        smiles=str(smiles) if smiles else None,
        allow_missing_molecules=allow_missing_molecules,
        teacher_features=str(teacher_features) if teacher_features else None,
        student_run=str(student_run) if student_run else None,
        threads=threads,
        resume=resume,
    )
    target = out or Path("results") / f"benchmark-{dataset.resolve().name}"
    run_benchmark(dataset, target, config, log=typer.echo)
    typer.echo(f"results: {target}/results.md")
