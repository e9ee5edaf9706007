"""Package ``__getattr__`` that imports a public name's module only when it is used
(PEP 562), so ``import leader.teacher`` or ``leader.student`` does not import torch.

>>> __getattr__ = lazy_names("leader.student", {"StudentConfig": "leader.student.config"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
