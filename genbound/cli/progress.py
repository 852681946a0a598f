"""Progress bars for the CLI (library code never draws them)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from genbound.options import ReportOptions

T = TypeVar("T")


def interactive() -> bool:
    """Whether progress goes to a terminal (spinners and bars) or to a log (plain lines)."""
    return sys.stderr.isatty()


def _say(text: str) -> None:
    print(f"genbound: {text}", file=sys.stderr, flush=True)


def track(items: Iterable[T], total: int, stage: str) -> Iterator[T]:
    """Yield from ``items`` while showing a bar with the stage name, count, and time left (on
    stderr); written to a file, one line when the stage starts and one when it ends."""
    if not interactive():
        with _plain(f"{stage} ({total})"):
            yield from items
        return
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


@contextlib.contextmanager
def _plain(label: str) -> Iterator[None]:
    """``label ...`` when the block starts, ``label: done in T`` (or ``failed after T``) after."""
    _say(f"{label} ...")
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        _say(f"{label}: failed after {_seconds(time.perf_counter() - start)}")
        raise
    _say(f"{label}: done in {_seconds(time.perf_counter() - start)}")


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {s % 60:02.0f} s"


STAGE_NAMES = {
    "model": "rebuilding the model, caching activations",
    "gap": "empirical gap",
    "compression": "compression bound",
    "token_bound": "token- and document-level bounds",
    "curvature": "Hessian: top eigenvalue, trace, density",
    "landscape": "landscape slices",
    "pacbayes": "Gaussian PAC-Bayes certificate",
    "hessian_distance": "Hessian distance along dW",
    "sharpness": "flatness and sharpness searches",
    "loading the task": "loading the task",
}


def report_stage_names(options: ReportOptions) -> dict[str, str]:
    """Stage labels that say what the expensive stages compute with the report's
    ``options`` (its sample size, product and step budgets)."""
    o, n = options, options.curvature_examples
    return STAGE_NAMES | {
        "curvature": (
            f"Hessian on {n} training examples: top eigenvalue (Lanczos), trace "
            f"(Hutch++, {o.trace_products} products), density "
            f"({o.density_probes} x {o.density_steps} Lanczos steps)"
        ),
        "landscape": f"landscape slices: 2 x {o.landscape_steps} losses on {n} training examples",
        "pacbayes": f"Gaussian PAC-Bayes certificate: {o.pacbayes_samples} sampled models",
        "hessian_distance": f"Hessian distance: dW^T H dW per layer on {n} training examples",
        "sharpness": (
            f"flatness and sharpness: 4 searches in {' and '.join(o.sharpness_spaces)} space "
            f"on {o.sharpness_examples} training examples"
        ),
    }


def make_stage(names: Mapping[str, str] = STAGE_NAMES) -> Callable[[str], Any]:
    """A ``stage(name)`` context manager factory with these labels (see :func:`stage`)."""
    return lambda name: stage(name, names)


@contextlib.contextmanager
def stage(name: str, names: Mapping[str, str] = STAGE_NAMES) -> Iterator[None]:
    """A spinner with the stage name and elapsed time while the block runs (on stderr);
    written to a file, a line when the stage starts and one with its time when it ends.

    Stages that take no noticeable time (not in ``names``, not ``training ...``) show
    nothing; ``"<run>: <stage>"`` names a stage of one run of a sweep.
    """
    prefix, _, base = name.rpartition(": ")  # "<run>: <stage>" from a sweep
    if base not in names and not name.startswith("training "):
        yield
        return
    label = f"{prefix}: {names[base]}" if prefix and base in names else names.get(base, name)
    if not interactive():
        with _plain(label):
            yield
        return
    from rich.console import Console

    columns = (SpinnerColumn(), TextColumn(f"[bold]{label}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(name, total=1)
        yield
        bar.update(task, completed=1)
