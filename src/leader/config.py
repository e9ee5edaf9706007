"""One configuration system for every typed dataclass config of the project.

A config is a dataclass whose fields carry their default *and* their help text
(``option(default, "help")``), so the CLI flags, ``leader config show NAME`` and the docs
come from one place. Every config is read the same way: defaults, then a YAML file (the
whole file or one section of it), then ``--set key=value`` overrides (repeatable, dotted
keys reach nested configs, values parsed as YAML). Unknown keys and wrongly typed values
are errors naming the source, the key and what was expected; a config's own ``check()``
adds the rules between fields.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     steps: int = option(10, "optimizer steps")
>>> load(Demo, overrides=["steps=20"]).steps
20
>>> describe(Demo)[0]
('steps', 'int', 10, 'optimizer steps')
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args, get_origin

from leader.errors import LeaderError

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002  (the word every CLI uses)
    *,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its help text; ``factory`` for mutable defaults; ``flag`` a
    CLI spelling other than ``--field-name`` (e.g. ``"--allow-x/--strict-x"``)."""
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type[Any], help: str = "", **defaults: Any) -> Any:  # noqa: A002
    """A field holding another config (``defaults`` replace the inner class's)."""
    return dataclasses.field(
        default_factory=lambda: cls(**defaults), metadata={"help": help, "nested": True}
    )


# ----------------------------------------------------------------------------- reading


def load(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    section: str | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Defaults <- ``path`` (its ``section`` when the file has one) <- ``values`` <- ``overrides``.

    ``values`` are already-typed settings (e.g. CLI flags that were given); ``overrides``
    are ``key=value`` strings (``--set``).
    """
    data: dict[str, Any] = {}
    where = cls.__name__
    if path is not None:
        data = read_yaml_mapping(path, section)
        where = str(path)
    if values:
        _merge(data, dict(values))
    for text in overrides:
        key, value = parse_override(text)
        _assign(data, key, value)
    if overrides:
        where = f"{where} with --set" if path is not None else "--set"
    return from_dict(cls, data, where)


def read_yaml_mapping(path: str | os.PathLike[str], section: str | None = None) -> dict[str, Any]:
    """The mapping in a YAML file, or its ``section`` when that key holds a mapping."""
    import yaml

    source = Path(path)
    if not source.is_file():
        raise LeaderError(f"{source}: config file not found")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LeaderError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise LeaderError(f"{source}: a config file is a mapping of key: value")
    if section is not None and section in data:
        inner = data[section]
        if not isinstance(inner, dict):
            raise LeaderError(f"{source}: section {section!r} must be a mapping")
        return dict(inner)
    return dict(data)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-3"`` -> ``("train.lr", 0.001)``; the value is parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LeaderError(f"--set {text!r}: expected key=value (e.g. --set lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Build ``cls`` from a mapping: unknown keys and wrong types are errors; then ``check()``."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise LeaderError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise LeaderError(
            f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}: {name}")
    config = cls(**kwargs)
    validate(config, where)
    return config


def validate(config: Any, where: str | None = None) -> None:
    """Run ``config.check()`` (and its nested configs'); problems become one LeaderError."""
    problems = _problems(config)
    if problems:
        raise LeaderError(f"{where or type(config).__name__}: " + "; ".join(problems))


def _problems(config: Any, prefix: str = "") -> list[str]:
    found = [prefix + p for p in (config.check() if hasattr(config, "check") else [])]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += _problems(value, f"{prefix}{f.name}.")
    return found


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (YAML/JSON ready)."""
    return dataclasses.asdict(config)


def replace(config: T, **changes: Any) -> T:
    """A copy with ``changes`` applied where the field exists, in this config or a nested one
    (``seed=1`` reaches ``train.seed``); others are ignored. The copy is checked."""
    copy = _replace(config, changes)
    validate(copy)
    return copy


def _replace(config: T, changes: Mapping[str, Any]) -> T:
    own: dict[str, Any] = {}
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if f.name in changes:
            own[f.name] = changes[f.name]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            own[f.name] = _replace(value, changes)
    return dataclasses.replace(config, **own)  # type: ignore[type-var]


# ----------------------------------------------------------------------------- describing


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, help) for every field, nested configs flattened."""
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            rows += describe(type(value), f"{prefix}{f.name}.")
            continue
        rows.append((prefix + f.name, type_name(hints[f.name]), value, f.metadata.get("help", "")))
    return rows


def help_text(cls: type[Any], name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " | ".join(type_name(a) for a in get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in get_args(hint))}]"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


# Every named config ``leader config show NAME`` knows: name -> "module:Class".
CONFIGS: dict[str, str] = {
    "cohort": "leader.data.cohort:CohortOptions",
    "teacher": "leader.teacher.config:TeacherConfig",
    "student": "leader.student.config:StudentConfig",
    "train": "leader.config:TrainConfig",
    "pipeline": "leader.pipeline:PipelineConfig",
    "benchmark": "leader.benchmark_config:BenchmarkConfig",
    "serve": "leader.serve:ServeConfig",
}


def named(name: str) -> type[Any]:
    """The config class registered as ``name`` (baselines by their model name too)."""
    if name in CONFIGS:
        module, _, attr = CONFIGS[name].partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    from leader.baselines.registry import MODELS, model_class

    if name in MODELS:
        return model_class(name).config_class  # type: ignore[no-any-return]
    raise LeaderError(
        f"unknown config {name!r}; known: {', '.join([*CONFIGS, *sorted(MODELS)])}"
    )


def all_names() -> list[str]:
    from leader.baselines.registry import MODELS

    return [*CONFIGS, *MODELS]


# ----------------------------------------------------------------------------- internals


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise LeaderError(f"--set {dotted}: {part!r} is not a section")
        node = child
    node[last] = value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type hint (ints accepted for floats, None for optionals)."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option_hint in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option_hint, where)
            except LeaderError as exc:
                errors.append(exc)
        raise LeaderError(f"{where}: expected {type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(hint):
            raise LeaderError(f"{where}: expected one of {list(get_args(hint))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise LeaderError(f"{where}: expected a list, got {value!r}")
        args = get_args(hint)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise LeaderError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value) and isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise LeaderError(f"{where}: expected a mapping of {hint.__name__} settings")
        return from_dict(hint, value, where)
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise LeaderError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise LeaderError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise LeaderError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. `split: 8:1:1` is fine, `seed_name: 42` too
        raise LeaderError(f"{where}: expected a string, got {value!r}")
    if hint is Path:
        if isinstance(value, str | os.PathLike):
            return Path(value)
        raise LeaderError(f"{where}: expected a path, got {value!r}")
    return value


def flag_fields(
    cls: type[Any], exclude: Iterable[str] = ()
) -> list[tuple[str, Any, str, str | None]]:
    """(dotted name, type hint, help, flag spelling) of every field that gets a CLI flag.

    Fields of nested configs get a flag named by their own name (``train.epochs`` ->
    ``--epochs``) unless an outer field already has that name; ``--set`` reaches all.
    """
    skip = set(exclude)
    found: list[tuple[str, Any, str, str | None]] = []
    taken: set[str] = set()
    queue: list[tuple[type[Any], str]] = [(cls, "")]
    while queue:
        current, prefix = queue.pop(0)
        hints = typing.get_type_hints(current)
        for f in dataclasses.fields(current):
            if f.metadata.get("nested"):
                queue.append((hints[f.name], f"{prefix}{f.name}."))
                continue
            if f.name in skip or f.name in taken:
                continue
            taken.add(f.name)
            help_, flag = str(f.metadata.get("help", "")), f.metadata.get("flag")
            found.append((prefix + f.name, hints[f.name], help_, flag))
    return found


def assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b] = value`` for ``dotted == "a.b"`` (sections created as needed)."""
    _assign(data, dotted, value)


class Config:
    """Mixin giving a config dataclass the shared loader as methods.

    Subclasses define ``check() -> list[str]`` (rules between fields; empty = fine).
    """

    def check(self) -> list[str]:
        return []

    def validate(self, where: str | None = None) -> None:
        validate(self, where)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> Self:
        return from_dict(cls, data, where)

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str],
        section: str | None = None,
        overrides: Sequence[str] = (),
        **values: Any,
    ) -> Self:
        """Read a YAML file (any subset of the fields, or a ``section``); ``values`` win."""
        return load(cls, path, section, overrides, values)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config atomically."""
        import yaml

        from leader.io import write_text_atomic

        write_text_atomic(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------- shared configs


@dataclasses.dataclass
class TrainConfig(Config):
    """The optimisation settings every ID-based model shares (nested as ``train:``)."""

    epochs: int = option(100, "at most this many passes over the training samples")
    batch_size: int = option(16, "samples per optimiser step")
    lr: float = option(5e-4, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    patience: int = option(10, "stop after this many epochs without a better validation score")
    max_grad_norm: float = option(5.0, "gradient clipping by norm (0 = off)")
    seed: int = option(42, "seeds weights, shuffling and dropout (per epoch: resume is exact)")
    threads: int = option(
        1,
        "torch CPU threads (0 = torch's default); 1 is fastest for small models on a few shared "
        "cores (measured: 2 threads cost 10x the CPU time on a busy 2-core VM)",
    )
    report_to: str = option(
        "none", "experiment tracking under the run folder: none, tensorboard or mlflow"
    )
    optimizer: str = option("adamw", "adamw (Adam when weight_decay is 0) or rmsprop")

    def check(self) -> list[str]:
        problems = [
            f"{name} must be >= 1 (got {getattr(self, name)})"
            for name in ("epochs", "batch_size", "patience")
            if getattr(self, name) < 1
        ]
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.threads < 0 or self.max_grad_norm < 0 or self.weight_decay < 0:
            problems.append("threads, max_grad_norm and weight_decay must be >= 0")
        if self.report_to not in ("none", "tensorboard", "mlflow"):
            problems.append(f"report_to must be none, tensorboard or mlflow ({self.report_to!r})")
        if self.optimizer not in ("adamw", "adam", "rmsprop"):
            problems.append(f"optimizer must be adamw, adam or rmsprop ({self.optimizer!r})")
        return problems
