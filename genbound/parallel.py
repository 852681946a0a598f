"""Independent linear-algebra problems on a pool of threads, one BLAS thread each.

Many mid-sized problems (a 2048 x 2048 eigendecomposition per layer, say) run faster
side by side on single threads than one after another on every core: LAPACK's
tridiagonal reduction is memory bound and its many short parallel regions wait on each
other, so on 2 cores two single-threaded eigendecompositions finish in about 0.7 of the
time of two multi-threaded ones (PASSIVE OpenMP waits make the gap larger). torch and
numpy release the GIL in these calls, so Python threads suffice.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch
from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def one_thread_each() -> Iterator[None]:
    """torch and the BLAS libraries on one thread for the block; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def default_workers() -> int:
    """torch's thread count: the cores this process is meant to use."""
    return max(1, torch.get_num_threads())


def threaded_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads (one BLAS thread each), results in order.

    At most ``2 * workers`` items are in flight, so memory stays near that many problems;
    an error in ``fn`` is raised here and cancels the items not yet started. With
    ``workers <= 1`` this is a plain loop on the caller's threads.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with (
        one_thread_each(),
        ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool,
    ):
        pending: deque[Future[R]] = deque()
        source = iter(items)
        try:
            for item in source:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
