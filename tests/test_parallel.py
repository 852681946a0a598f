"""genbound.parallel: order, errors, and thread settings restored."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from threadpoolctl import threadpool_info

from genbound.parallel import threaded_map


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info()]


def test_results_in_order_and_threads_restored():
    """Items 0 and 1 meet at a barrier, so two workers run at once; item 0 then waits until
    item 2 has started (after item 1 finished), so results finish out of order."""
    torch_threads, blas = torch.get_num_threads(), _blas_threads()
    seen = []
    both_running, item2_started = threading.Barrier(2, timeout=30), threading.Event()

    def square(i):
        seen.append((i, torch.get_num_threads(), threading.current_thread().name))
        if i < 2:
            both_running.wait()  # BrokenBarrierError unless items 0 and 1 run concurrently
        if i == 0:
            assert item2_started.wait(timeout=30)
        if i == 2:
            item2_started.set()
        return i * i

    assert list(threaded_map(square, range(9), workers=2)) == [i * i for i in range(9)]
    assert sorted(i for i, _, _ in seen) == list(range(9))
    assert {t for _, t, _ in seen} == {1}  # each worker on one torch thread
    assert len({name for _, _, name in seen}) == 2  # two workers, none the caller's
    assert threading.current_thread().name not in {name for _, _, name in seen}
    assert torch.get_num_threads() == torch_threads and _blas_threads() == blas


def test_error_is_raised_and_later_items_cancelled():
    started = []

    def fail_at_two(i):
        started.append(i)
        if i == 2:
            raise ValueError("bad item 2")
        time.sleep(0.01)
        return i

    torch_threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="bad item 2"):
        list(threaded_map(fail_at_two, range(100), workers=2))
    assert max(started) < 10  # at most 2 * workers in flight
    assert torch.get_num_threads() == torch_threads


def test_one_worker_is_a_plain_loop():
    names = set()
    out = list(threaded_map(lambda i: names.add(threading.current_thread().name) or i, [3, 1], 1))
    assert out == [3, 1] and names == {threading.current_thread().name}
