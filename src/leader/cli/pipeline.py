"""Commands that chain or score runs: ``leader evaluate``, ``leader run``, ``leader demo``.

Top-level imports stay light (typer, stdlib): torch loads inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
    folds: Annotated[
        int,
        typer.Option(
            help="K-fold cross-validation by patient: retrain the run's model (same config) "
            "on each fold, mean ± std over folds (writes RUN/evaluation-folds.json)."
        ),
    ] = 0,
    protocol: Annotated[
        str,
        typer.Option(
            help="default: the threshold chosen on validation; paper: the paper's fixed "
            "thresholds (student 0.3, other models 0.5)."
        ),
    ] = "default",
    average: Annotated[
        str,
        typer.Option(
            help="sample (default): metrics averaged over samples; patient: each patient's "
            "samples averaged first, then over patients (the GAMENet/SafeDrug line's)."
        ),
    ] = "sample",
) -> None:
    """Test metrics at 0.5 and at the validation threshold, DDI-safe row, speed,
    calibration (ECE, Brier, reliability diagram) and conformal sets.

    Whole test set, single- and multi-visit samples, 10 rounds of 80% (mean, std);
    parameters, single-patient latency, batch throughput. Writes RUN/evaluation.json.
    With --folds K: K-fold cross-validation instead (RUN/folds/ holds each fold's work).
    """
    from leader.evaluate import evaluate_folds, evaluate_run, format_table
    from leader.io import write_json_atomic

    if folds:
        if protocol != "default":
            from leader.errors import LeaderError

            raise LeaderError("--folds scores by the default protocol; drop --protocol")
        report = evaluate_folds(run, dataset, folds, run / "folds", average=average)
        target = out or run / "evaluation-folds.json"
        write_json_atomic(target, report)
        typer.echo(format_table(report))
        typer.echo(f"wrote {target}")
        return
    report = evaluate_run(
        run, dataset, split=split, efficiency=efficiency, protocol=protocol, average=average
    )
    target = out or run / "evaluation.json"
    write_json_atomic(target, report)
    typer.echo(format_table(report))
    typer.echo(f"wrote {target}")
    if "calibration" in report:
        from leader.calibration import plot_reliability

        diagram = target.with_name(f"{target.stem}-reliability.png")
        if plot_reliability(diagram, {report["model"]: report["calibration"]["reliability"]}):
            typer.echo(f"wrote {diagram} (reliability diagram)")


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

    Sized for a laptop CPU (about 9 minutes on 2 cores); writes ./leader-demo.
    """
    from leader.pipeline import demo_config, run_pipeline

    result = run_pipeline(demo_config(), out=out, from_step=from_step, log=typer.echo)
    typer.echo(f"report: {result / 'report' / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("run")(run)
    app.command("demo")(demo)
