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
    function: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    workers: int,
    after: Sequence[Sequence[int]] | None = None,
) -> list[Any]:
    """``function(*args)`` for every ``args`` in ``calls``, ``workers`` at a time, in
    spawned processes (``function`` and its arguments must pickle: a module-level function
    and plain data). Jobs start in the order given; ``after[i]`` lists the jobs (indexes into
    ``calls``, earlier ones) that must finish before job ``i`` starts."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    needs = [set(a) for a in after] if after is not None else [set() for _ in calls]
    results: dict[int, Any] = {}
    waiting = list(range(len(calls)))
    context = multiprocessing.get_context("spawn")  # no torch state inherited
    with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        running: dict[Future[Any], int] = {}
        while waiting or running:
            for index in [i for i in waiting if needs[i] <= results.keys()]:
                waiting.remove(index)
                running[pool.submit(function, *calls[index])] = index
            if not running:
                raise ValueError(f"jobs {waiting} wait for jobs that never run")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()  # a failed job raises here
    return [results[i] for i in range(len(calls))]
