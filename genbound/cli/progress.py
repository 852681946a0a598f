"""Progress bars for the CLI (library code never draws them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def track(items: Iterable[T], total: int, stage: str) -> Iterator[T]:
    """Yield from ``items`` while showing a bar with the stage name, count, and time left (on stderr)."""
    columns = (
        TextColumn(f"[bold]{stage}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(stage, total=total)
        for item in items:
            yield item
            bar.advance(task)


STAGE_NAMES = {
    "model": "rebuilding the model, caching activations",
    "gap": "empirical gap",
    "compression": "compression bound",
    "curvature": "Hessian: top eigenvalue, trace, density",
    "landscape": "landscape slices",
    "loading the task": "loading the task",
}


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """A spinner with the stage name and elapsed time while the block runs (on stderr).

    Stages that take no noticeable time (not in :data:`STAGE_NAMES`, not ``training ...``)
    show nothing; ``"<run>: <stage>"`` names a stage of one run of a sweep.
    """
    from rich.console import Console

    prefix, _, base = name.rpartition(": ")  # "<run>: <stage>" from a sweep
    if base not in STAGE_NAMES and not name.startswith("training "):
        yield
        return
    label = f"{prefix}: {STAGE_NAMES[base]}" if prefix else STAGE_NAMES.get(base, name)
    columns = (SpinnerColumn(), TextColumn(f"[bold]{label}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(name, total=1)
        yield
        bar.update(task, completed=1)
