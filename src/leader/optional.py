"""Optional dependency groups: a clear message when an extra is not installed.

``pip install leader`` serves and evaluates a trained student; the LLM teacher, the HTTP
service, plots and molecules come with extras (``leader[teacher]``, ``leader[serve]``,
``leader[plots]``, ``leader[mol]``; ``leader[all]`` for everything).

>>> require("json", "teacher", "the teacher")  # present: returns quietly
"""

from __future__ import annotations

import importlib.util

from leader.errors import LeaderError


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str, feature: str) -> None:
    """Raise a LeaderError naming the extra to install when ``module`` is missing."""
    if not available(module):
        raise LeaderError(
            f"{feature} needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'leader[{extra}]'"
        )
