"""``leader synth``: write the embedded synthetic demo cohort (generic event format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def synth(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for events.csv, profiles.csv, ddi.csv and README.txt (created).",
        ),
    ],
    patients: Annotated[int, typer.Option("--patients", help="Number of patients.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed, the same bytes.")] = 0,
) -> None:
    """Generate the synthetic demo cohort (not real patients) and print its statistics."""
    import time

    from leader.data.synthetic import generate, summary, write

    start = time.perf_counter()
    cohort = generate(patients=patients, seed=seed)
    folder = write(cohort, out)
    elapsed = time.perf_counter() - start
    typer.echo(f"synthetic cohort (seed {seed}) written to {folder} in {elapsed:.1f} s")
    for key, value in summary(cohort).items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        typer.echo(f"  {key:28s} {shown}")


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to the ``leader`` app."""
    app.command("synth")(synth)
