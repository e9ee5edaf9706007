"""Independent jobs in parallel worker processes: the pool of the pipeline's student steps
and of ``leader benchmark --workers``.

Workers are started with ``spawn``, so none inherits torch state (threads, seeds, open
handles) from the parent; each sets its own torch threads. Results come back in the order
of ``calls``; a job that raises re-raises here, with its traceback.

>>> run_in_processes(pow, [(2, 3), (3, 2)], workers=2)  # doctest: +SKIP
[8, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def run_in_processes(
    function: Callable[..., Any], calls: Sequence[tuple[Any, ...]], workers: int
) -> list[Any]:
    """``function(*args)`` for every ``args`` in ``calls``, ``workers`` at a time, in
    spawned processes (``function`` and its arguments must pickle: a module-level function
    and plain data). Jobs start in the order given."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no torch state inherited
    with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        futures = [pool.submit(function, *args) for args in calls]
        return [future.result() for future in futures]
