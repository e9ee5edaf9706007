"""Commands of the student area: ``leader student train``.

Top-level imports stay light (typer, stdlib): torch loads inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from leader.cli.options import config_flags
from leader.student.config import StudentConfig

student_app = typer.Typer(
    help="The distilled student LEADER(S): a compact ID-based model trained on the labels "
    "and the teacher's hidden states.",
    no_args_is_help=True,
)


@student_app.command("train")
@config_flags(StudentConfig)
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
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    config_values: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Train the student, distilling from teacher features when given.

    Every StudentConfig field has a flag (`leader config show student` lists them);
    `--set train.lr=1e-3` reaches any key.
    """
    from leader import config as configs
    from leader.student import train_student

    resolved = configs.load(StudentConfig, config, "student", overrides or [], config_values)
    run = train_student(dataset, out, resolved, teacher_features, resume=resume, log=typer.echo)
    typer.echo(f"wrote {run}")


def register(app: typer.Typer) -> None:
    app.add_typer(student_app, name="student")
