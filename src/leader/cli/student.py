"""Commands of the student area: ``leader student train``.

Top-level imports stay light (typer, stdlib): torch loads inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

student_app = typer.Typer(
    help="The distilled student LEADER(S): a compact ID-based model trained on the labels "
    "and the teacher's hidden states.",
    no_args_is_help=True,
)


@student_app.command("train")
def train(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (leader prepare).")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    teacher_features: Annotated[
        Path | None,
        typer.Option(help="Features file of `leader teacher predict` (none: no distillation)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML StudentConfig (a `student:` section or flat).")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="Distillation weight (0 = no distillation).")
    ] = None,
    beta: Annotated[float | None, typer.Option(help="Profile alignment weight.")] = None,
    align: Annotated[
        bool | None, typer.Option("--align/--no-align", help="Use the alignment loss.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="At most this many epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (0 = default).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
) -> None:
    """Train the student, distilling from teacher features when given."""
    from leader.student import StudentConfig, train_student

    values: dict[str, Any] = {}
    if config is not None:
        values.update(_read_student_yaml(config))
    flags = {
        "alpha": alpha,
        "beta": beta,
        "align": align,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "seed": seed,
        "threads": threads,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    resolved = StudentConfig.from_dict(values, str(config) if config else "student options")
    run = train_student(dataset, out, resolved, teacher_features, resume=resume, log=typer.echo)
    typer.echo(f"wrote {run}")


def _read_student_yaml(path: Path) -> dict[str, Any]:
    import yaml

    from leader.errors import LeaderError

    if not path.is_file():
        raise LeaderError(f"{path}: student config file not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise LeaderError(f"{path}: expected a mapping of student options")
    section = data.get("student", data)
    if not isinstance(section, dict):
        raise LeaderError(f"{path}: 'student' must be a mapping")
    return dict(section)


def register(app: typer.Typer) -> None:
    app.add_typer(student_app, name="student")
