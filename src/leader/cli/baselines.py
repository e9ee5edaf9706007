"""``leader benchmark``: put LEADER next to the baselines on one dataset (issue 5).

Top-level imports stay light; the work happens in :mod:`leader.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark)
    baseline = typer.Typer(help="Train one baseline model (LR, ECC, RETAIN, GAMENet, ...).")
    baseline.command("train")(train)
    app.add_typer(baseline, name="baseline")


def train(
    model: Annotated[str, typer.Option(help="Model name (see `leader benchmark --help`).")],
    dataset: Annotated[Path, typer.Option(help="Dataset directory written by `leader prepare`.")],
    out: Annotated[Path, typer.Option(help="Folder for the saved model (save_pretrained).")],
    epochs: Annotated[int | None, typer.Option(help="Epoch limit (neural models).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 42,
    smiles: Annotated[
        Path | None,
        typer.Option(help="atc3,smiles CSV for SafeDrug / MoleRec (default: the dataset's)."),
    ] = None,
    allow_missing_molecules: Annotated[
        bool,
        typer.Option(
            "--allow-missing-molecules/--strict-molecules",
            help="Molecule models: drugs without SMILES go without their molecule part, or "
            "--strict-molecules: an error.",
        ),
    ] = True,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = default).")] = 0,
) -> None:
    """Train one baseline (early stopping on val), save it, print its test metrics."""
    from leader.baselines import create
    from leader.baselines.registry import MOLECULE_MODELS
    from leader.benchmark import BenchmarkConfig, find_molecules
    from leader.data.store import VisitDataset
    from leader.metrics import compute

    data = VisitDataset.load(dataset)
    overrides: dict[str, object] = {"seed": seed, "threads": threads}
    if epochs is not None:
        overrides["epochs"] = epochs
    overrides["allow_missing_molecules"] = allow_missing_molecules
    name = model.lower().replace("-", "_")
    if name in MOLECULE_MODELS:
        # --smiles, else the dataset's molecules (written to OUT/molecules.csv), as the
        # benchmark finds them
        config = BenchmarkConfig(smiles=str(smiles) if smiles is not None else None)
        found = find_molecules(data, config, out)
        if found.file is not None:
            overrides["smiles"] = str(found.file)
    recommender = create(name, **overrides)
    recommender.fit(data, log=typer.echo)
    recommender.save_pretrained(out)
    test = data.samples("test")
    if test:
        metrics = compute(
            data.targets(test), recommender.predict_proba(test), 0.5, data.ddi_matrix()
        )
        typer.echo(
            "test: "
            + " ".join(f"{k} {metrics[k]:.4f}" for k in ("prauc", "jaccard", "f1", "ddi_rate"))
        )
    typer.echo(f"saved: {out}")


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
    folds: Annotated[
        int,
        typer.Option(
            help="Patient-level K-fold cross-validation (validation carved from each training "
            "part), mean ± std over folds; 0 = the dataset's own split."
        ),
    ] = 0,
    rounds: Annotated[int, typer.Option(help="Rounds of a random 80% of the test set.")] = 10,
    smiles: Annotated[
        Path | None,
        typer.Option(
            help="atc3,smiles CSV for SafeDrug / MoleRec (default: the dataset's molecules, "
            "from `leader prepare --smiles` or the shipped atc3_smiles.csv for ATC3 drugs)."
        ),
    ] = None,
    allow_missing_molecules: Annotated[
        bool,
        typer.Option(
            "--allow-missing-molecules/--strict-molecules",
            help="Molecule models: drugs without SMILES go without their molecule part "
            "(said in the table's notes), or --strict-molecules: an error.",
        ),
    ] = True,
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
    """Every model on one dataset under one protocol; write tables and plots.

    Each model at threshold 0.5 and at the threshold chosen on validation, mean ± std over
    seeds x rounds (or folds), a paired permutation test against the best model.
    """
    from leader.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(
        models=[models],
        seeds=seeds,
        epochs=epochs,
        folds=folds,
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
