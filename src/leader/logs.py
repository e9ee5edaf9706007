"""One logging hierarchy: every run logs to ``leader.<area>`` with a file handler per run.

The handler is attached for the run only and removed afterwards (importing leader adds no
handler; STYLE.md). A ``echo`` callback still receives every line, for callers that show
progress their own way (the CLI, the pipeline's step prefixes).

>>> with run_log("student", Path("runs/s")) as say:   # doctest: +SKIP
...     say("epoch 1 ...")                              # -> runs/s/train.log and leader.student
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(name)s %(message)s"


@contextmanager
def run_log(
    area: str,
    run_dir: Path | None,
    echo: Callable[[str], None] | None = None,
    append: bool = False,
    filename: str = "train.log",
) -> Iterator[Callable[[str], None]]:
    """Yield ``say(message)``: logs to ``leader.<area>`` (and ``run_dir/filename``)."""
    logger = logging.getLogger(f"leader.{area}")
    logger.setLevel(logging.INFO)
    handler: logging.Handler | None = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(
            run_dir / filename, mode="a" if append else "w", encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)

    def say(message: str) -> None:
        logger.info(message)
        if echo is not None:
            echo(message)

    try:
        yield say
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
