"""``leader benchmark``: put LEADER next to the baselines on one dataset (issue 5).

Top-level imports stay light; the work happens in :mod:`leader.benchmark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from leader.benchmark_config import BenchmarkConfig
from leader.cli.options import config_flags


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
    threads: Annotated[
        int, typer.Option(help="torch CPU threads (0 = torch's default; 1: the student's rule).")
    ] = 1,
) -> None:
    """Train one baseline (early stopping on val), save it, print its test metrics."""
    from leader.baselines import create
    from leader.baselines.base import scores_and_sets
    from leader.baselines.registry import MOLECULE_MODELS
    from leader.benchmark import BenchmarkConfig, find_molecules
    from leader.data.store import VisitDataset
    from leader.metrics import compute
    from leader.runinfo import write_model_card, write_run_info

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
    metrics: dict[str, float] = {}
    if test:
        probabilities, sets = scores_and_sets(recommender, test)  # a decoder: its own set
        scores = compute(data.targets(test), probabilities, 0.5, data.ddi_matrix(), sets)
        metrics = {k: float(scores[k]) for k in ("prauc", "jaccard", "f1", "ddi_rate")}
        typer.echo("test: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    write_run_info(out, "baseline", recommender.config, seed=seed, dataset_dir=dataset)
    write_model_card(
        out,
        f"{name} (baseline)",
        f"The {name} medication recommender, as implemented in leader.baselines.{name} "
        "(its module docstring cites the paper and lists every deviation).",
        data=f"Dataset directory `{dataset}` (checksums in run.json).",
        metrics=metrics or None,
        protocol="Test split, threshold 0.5 (a decoder: its decoded set); per-sample means "
        "(DESIGN.md metrics).",
    )
    typer.echo(f"saved: {out}")


@config_flags(BenchmarkConfig)
def benchmark(
    dataset: Annotated[Path, typer.Option(help="Dataset directory written by `leader prepare`.")],
    out: Annotated[
        Path | None, typer.Option(help="Results folder (default: results/benchmark-<dataset>).")
    ] = None,
    config_values: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Every model on one dataset under one protocol; write tables and plots.

    Each model at threshold 0.5 and at the threshold chosen on validation, mean ± std over
    seeds x rounds (or folds), a paired permutation test against the best model. Every
    BenchmarkConfig field has a flag (`leader config show benchmark`).
    """
    from leader import config as configs
    from leader.benchmark import run_benchmark

    config = configs.load(BenchmarkConfig, None, None, overrides or [], config_values)
    target = out or Path("results") / f"benchmark-{dataset.resolve().name}"
    run_benchmark(dataset, target, config, log=typer.echo)
    typer.echo(f"results: {target}/results.md")
