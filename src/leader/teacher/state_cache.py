"""The frozen layers' output kept on disk between teacher runs (``cache_dir``).

With ``lora_layers`` or ``lora_r: 0`` the frozen layers run once per prompt; across runs
(a second seed, a learning curve, 10% of the patients) the same prompts give the same
states, so they are computed once and read back. One safetensors file per *setting* (the
backbone's weights file, the layers kept and frozen, the precision the states are stored
in); inside it one tensor per *prompt*, named by a hash of its token ids, so any dataset,
split or subset that produces the same prompt reuses its state, and nothing else can.
Files are written atomically (a killed run leaves the previous file whole).

>>> cache = StateCache(Path("states"), {"model": "m", "layers": 8})  # doctest: +SKIP
>>> found, missing = cache.lookup(ids)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from leader.errors import LeaderError

log = logging.getLogger("leader.teacher")


def prompt_key(ids: Sequence[int]) -> str:
    """A name for one prompt's state: the hash of its token ids (and their count)."""
    digest = hashlib.sha256(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
    return f"p{len(ids)}_{digest.hexdigest()[:24]}"


class StateCache:
    """Per-prompt frozen states of one backbone setting, in ``folder``."""

    def __init__(self, folder: Path, setting: dict[str, Any]) -> None:
        self.folder = Path(folder).expanduser()
        text = json.dumps(setting, sort_keys=True)
        self.setting = setting
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.file = self.folder / f"states-{digest}.safetensors"
        self._states: dict[str, torch.Tensor] | None = None

    def states(self) -> dict[str, torch.Tensor]:
        """Every state held for this setting (read once)."""
        if self._states is None:
            self._states = {}
            if self.file.is_file():
                from safetensors.torch import load_file

                try:
                    self._states = dict(load_file(self.file))
                except Exception as exc:  # a damaged file is recomputed, never trusted
                    log.warning("%s: unreadable (%s); its states are recomputed", self.file, exc)
        return self._states

    def lookup(self, ids: Sequence[Sequence[int]]) -> tuple[list[torch.Tensor | None], list[int]]:
        """(state or None per prompt, indices of the prompts not held)."""
        held = self.states()
        found: list[torch.Tensor | None] = [held.get(prompt_key(i)) for i in ids]
        return found, [n for n, state in enumerate(found) if state is None]

    def add(self, ids: Sequence[Sequence[int]], states: Sequence[torch.Tensor]) -> None:
        """Hold ``states`` (one (T_i, H) tensor per prompt) and rewrite the file atomically."""
        if not ids:
            return
        from safetensors.torch import save_file

        held = self.states()
        for prompt, state in zip(ids, states, strict=True):
            held[prompt_key(prompt)] = state.contiguous()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.file.name}.", dir=self.folder)
        os.close(fd)
        try:
            save_file(held, tmp, metadata={"setting": json.dumps(self.setting, sort_keys=True)})
            os.replace(tmp, self.file)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise LeaderError(f"{self.folder}: cannot write the state cache ({exc})") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
