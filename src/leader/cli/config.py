"""``leader config show NAME``: the resolved defaults of any config, with their help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

config_app = typer.Typer(
    help="Inspect the typed configs: every default with its help, or a file resolved.",
    no_args_is_help=True,
)


@config_app.command("show")
def show(
    name: Annotated[
        str, typer.Argument(help="Config name: teacher, student, train, ... or a model.")
    ],
    file: Annotated[
        Path | None, typer.Option("--file", help="Resolve this YAML file against the defaults.")
    ] = None,
    section: Annotated[
        str | None, typer.Option(help="Section of the file to read (default: NAME if present).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value overrides (repeatable).")
    ] = None,
) -> None:
    """Print every field: name, type, value (resolved) and help."""
    import yaml

    from leader import config

    cls = config.named(name)
    resolved = config.load(cls, file, section or name, set_ or [])
    values = config.to_dict(resolved)
    for dotted, kind, _, help_ in config.describe(cls):
        value: object = values
        for part in dotted.split("."):
            value = value[part]  # type: ignore[index]
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
        typer.echo(f"{dotted}: {shown}  # {kind}. {help_}")


@config_app.command("list")
def list_configs() -> None:
    """The config names ``show`` knows."""
    from leader import config

    for name in config.all_names():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
