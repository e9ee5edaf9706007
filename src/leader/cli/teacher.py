"""Commands of the teacher area: ``leader prompts`` and ``leader teacher train|predict``.

Top-level imports stay light (typer, stdlib): torch and transformers load inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from leader.cli.options import config_flags
from leader.teacher.config import TeacherConfig

teacher_app = typer.Typer(
    help="The LLM teacher LEADER(T): LoRA fine-tuning with a medication output layer, "
    "and feature export for the student.",
    no_args_is_help=True,
)


def prompts(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (leader prepare).")],
    patient: Annotated[str, typer.Option(help="Patient id.")],
    visit: Annotated[
        str | None, typer.Option(help="Visit id to recommend for (default: the last one).")
    ] = None,
    history_visits: Annotated[int, typer.Option(help="Most recent earlier visits shown.")] = 3,
    max_tokens: Annotated[
        int | None, typer.Option(help="Token budget (counted with --model's tokenizer).")
    ] = None,
    profile: Annotated[bool, typer.Option(help="Add the profile sentence.")] = True,
    template: Annotated[
        Path | None, typer.Option(help="YAML/JSON file overriding the template's format strings.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Backbone whose tokenizer counts tokens (default: count words)."),
    ] = None,
) -> None:
    """Print the teacher's prompt for one patient visit."""
    from leader.data.store import VisitDataset
    from leader.errors import LeaderError
    from leader.teacher.prompts import PromptBuilder, PromptConfig

    data = VisitDataset.load(dataset)
    visits = data.patient_visits(patient)
    if not visits:
        raise LeaderError(f"{dataset}: no patient {patient!r} in visits.parquet")
    ids = [v.visit_id for v in visits]
    target = visit if visit is not None else ids[-1]
    if target not in ids:
        raise LeaderError(f"{dataset}: patient {patient!r} has no visit {target!r} (has {ids})")
    sample = next(s for s in data.samples(None, "all") if s.sample_id == f"{patient}:{target}")
    counter = None
    if model is not None:
        from leader.teacher.backbone import load_tokenizer

        tokenizer = load_tokenizer(model)
        counter = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    config = PromptConfig(
        history_visits=history_visits,
        profile=profile,
        max_tokens=max_tokens,
        template=str(template) if template else None,
    )
    built = PromptBuilder(data.vocab, config, count_tokens=counter).build(sample)
    typer.echo(built.text)
    unit = "tokens" if counter else "words"
    note = f"[{built.tokens} {unit}"
    if built.truncated:
        note += f"; budget dropped {built.dropped_visits} visits, cut {built.truncated_items} items"
    if built.over_budget:
        note += "; over budget: the current visit alone does not fit"
    typer.echo(note + "]", err=True)


@teacher_app.command("train")
@config_flags(TeacherConfig)
def train(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (leader prepare).")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML TeacherConfig (a `teacher:` section or flat).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    config_values: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> None:
    """Fine-tune the teacher (LoRA + medication output layer). Works under `accelerate launch`.

    Every TeacherConfig field has a flag (`leader config show teacher` lists them).
    """
    from leader import config as configs
    from leader.optional import require

    require("transformers", "teacher", "leader teacher train")
    from leader.teacher import train_teacher

    source = config
    if source is None and resume and (out / "config.yaml").is_file():
        source = out / "config.yaml"
    resolved = configs.load(TeacherConfig, source, "teacher", overrides or [], config_values)
    train_teacher(dataset, out, resolved, resume=resume)


@teacher_app.command("predict")
def predict(
    run: Annotated[Path, typer.Option(help="Run folder of `leader teacher train`.")],
    dataset: Annotated[Path, typer.Option(help="Dataset directory.")],
    out: Annotated[Path, typer.Option(help="Features file to write (.safetensors).")],
    batch_size: Annotated[int | None, typer.Option(help="Samples per forward pass.")] = None,
) -> None:
    """Write probabilities + hidden states of every sample, and the LEADER(T) test metrics."""
    import logging

    from leader.optional import require

    require("transformers", "teacher", "leader teacher predict")
    from leader.teacher import predict_teacher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    metrics = predict_teacher(run, dataset, out, batch_size=batch_size)
    whole = metrics.get("all", {}).get("metrics") or {}
    summary = ", ".join(f"{k} {whole[k]:.4f}" for k in ("prauc", "jaccard", "f1") if k in whole)
    typer.echo(f"wrote {out}; test: {summary or 'no test samples'}")


def register(app: typer.Typer) -> None:
    app.command("prompts")(prompts)
    app.add_typer(teacher_app, name="teacher")
