"""Commands of the student area: ``leader student train``, ``evaluate``, ``run``, ``demo``.

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


def evaluate(
    run: Annotated[Path, typer.Option(help="Student run folder (or a saved baseline).")],
    dataset: Annotated[Path, typer.Option(help="Dataset directory.")],
    out: Annotated[
        Path | None, typer.Option(help="JSON file to write (default: RUN/evaluation.json).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    efficiency: Annotated[
        bool, typer.Option(help="Measure latency and throughput on this CPU.")
    ] = True,
) -> None:
    """Test metrics at 0.5 and at the validation threshold, DDI-safe row, speed.

    Whole test set, single- and multi-visit samples, 10 rounds of 80% (mean, std);
    parameters, single-patient latency, batch throughput. Writes RUN/evaluation.json.
    """
    from leader.data.store import write_json_atomic
    from leader.evaluate import evaluate_run, format_table

    report = evaluate_run(run, dataset, split=split, efficiency=efficiency)
    target = out or run / "evaluation.json"
    write_json_atomic(target, report)
    typer.echo(format_table(report))
    typer.echo(f"wrote {target}")


def run(
    config: Annotated[Path, typer.Option(help="Pipeline YAML (see configs/).")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the config's `out`).")
    ] = None,
    from_step: Annotated[
        str | None,
        typer.Option("--from", help="Redo this step and every later one."),
    ] = None,
) -> None:
    """The whole pipeline from one YAML: prepare, teacher, students, popularity, report.

    Steps whose inputs and config are unchanged are reused; --from STEP redoes from there.
    """
    from leader.pipeline import load_config, run_pipeline

    result = run_pipeline(load_config(config), out=out, from_step=from_step, log=typer.echo)
    typer.echo(f"report: {result / 'report' / 'report.md'}")


def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("leader-demo"),
    from_step: Annotated[
        str | None, typer.Option("--from", help="Redo this step and every later one.")
    ] = None,
) -> None:
    """The whole pipeline on the synthetic demo cohort with the real SmolLM2 teacher.

    Sized for a laptop CPU (about 15 minutes on 2 cores); writes ./leader-demo.
    """
    from leader.pipeline import demo_config, run_pipeline

    result = run_pipeline(demo_config(), out=out, from_step=from_step, log=typer.echo)
    typer.echo(f"report: {result / 'report' / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.add_typer(student_app, name="student")
    app.command("evaluate")(evaluate)
    app.command("run")(run)
    app.command("demo")(demo)
