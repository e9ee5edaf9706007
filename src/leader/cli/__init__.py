"""The ``leader`` command: one Typer app, thin; each area registers its commands.

Areas live in ``leader.cli.<area>`` modules exposing ``register(app)``; their
top-level imports stay light (typer + stdlib) so ``leader --help`` is instant.
A :class:`~leader.errors.LeaderError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from leader.errors import LeaderError

AREAS: tuple[str, ...] = (
    "leader.cli.data",  # prepare, stats
    "leader.cli.synth",  # synth
    "leader.cli.teacher",  # prompts, teacher train/predict
    "leader.cli.student",  # student train
    "leader.cli.pipeline",  # evaluate, run, demo
    "leader.cli.calibrate",  # calibrate
    "leader.cli.baselines",  # benchmark, baseline train
    "leader.cli.serve",  # recommend, serve
    "leader.cli.config",  # config show
)

app = typer.Typer(
    name="leader",
    help="LEADER: LLM-distilled medication recommendation. Prepare a cohort, fine-tune an "
    "LLM teacher, distil a fast student, evaluate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the installed version."""
    from leader import __version__

    typer.echo(__version__)


def _register_areas() -> None:
    # A missing area is a broken install, not an optional feature: let the ImportError show.
    for name in AREAS:
        importlib.import_module(name).register(app)


_register_areas()


def main() -> None:
    try:
        app()
    except LeaderError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
