"""CLI flags generated from a config dataclass, so a field's help text is written once.

>>> @config_flags(TeacherConfig)                      # doctest: +SKIP
... def train(dataset: Path, config_values: dict) -> None: ...

Every scalar field becomes ``--field-name`` (booleans ``--x/--no-x``), with the field's help
and ``None`` as the "not given" default; the command receives the given ones as
``config_values`` (a dict) and ``overrides`` (the ``--set key=value`` strings), ready for
:func:`leader.config.load`.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

SET_HELP = "Override any config key, dotted for nested ones (repeatable): --set train.lr=1e-3."


def config_flags(
    cls: type[Any], exclude: Iterable[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    from leader.config import assign, flag_fields

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func)
        own = [
            p for p in signature.parameters.values() if p.name not in ("config_values", "overrides")
        ]
        taken = {p.name for p in own}
        annotations = dict(typing.get_type_hints(func, include_extras=True))
        annotations.pop("config_values", None)
        annotations.pop("overrides", None)
        dotted: dict[str, str] = {}  # parameter name -> dotted config key
        generated = []
        for key, hint, help_, spelling in flag_fields(cls, exclude):
            name = key.rpartition(".")[2]
            if name in taken:
                continue
            dotted[name] = key
            annotations[name] = _flag_annotation(hint, name, help_, spelling)
            generated.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotations[name]
                )
            )
        set_annotation = Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)]
        annotations["set_"] = set_annotation
        generated.append(
            inspect.Parameter(
                "set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=set_annotation
            )
        )

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values: dict[str, Any] = {}
            for name, key in dotted.items():
                value = kwargs.pop(name, None)
                if value is not None:
                    assign(values, key, value)
            overrides = kwargs.pop("set_", None) or []
            return func(**kwargs, config_values=values, overrides=list(overrides))

        positional = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotations[p.name])
            for p in own
        ]
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*positional, *generated]
        )
        wrapper.__annotations__ = annotations
        return wrapper

    return decorate


def _flag_annotation(hint: Any, name: str, help: str, spelling: str | None = None) -> Any:  # noqa: A002
    flag = spelling or "--" + name.replace("_", "-")
    inner = _without_none(hint)
    if inner is bool:
        if spelling is None:
            flag += "/--no-" + name.replace("_", "-")
        return Annotated[bool | None, typer.Option(flag, help=help)]
    if get_origin(inner) is list:
        (item,) = get_args(inner) or (str,)
        return Annotated[list[item] | None, typer.Option(flag, help=help + " (repeatable)")]  # type: ignore[valid-type]
    if get_origin(inner) is Literal:
        choices = "|".join(str(a) for a in get_args(inner))
        return Annotated[str | None, typer.Option(flag, help=f"{help} ({choices})")]
    if inner in (int, float, str):
        return Annotated[inner | None, typer.Option(flag, help=help)]
    return Annotated[str | None, typer.Option(flag, help=help)]


def _without_none(hint: Any) -> Any:
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def given(**flags: Any) -> dict[str, Any]:
    """The flags that were given (not None), for hand-written options."""
    return {k: v for k, v in flags.items() if v is not None}


__all__ = ["SET_HELP", "config_flags", "given"]
