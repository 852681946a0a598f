"""What the measures of one report share: the checkpoint, the task, the options, and the
expensive things built at most once per report (the train and test objectives, the
curvature sample and its adapter-layer copy of the model)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genbound.errors import GenboundError
from genbound.options import ReportOptions

if TYPE_CHECKING:
    from genbound.checkpoint.model import Checkpoint
    from genbound.spectra.analyze import Progress
    from genbound.tasks.objective import Objective
    from genbound.tasks.protocol import Task
    from genbound.tasks.sampling import Sample

#: ``stage(name)`` returns a context manager around one stage (the CLI shows a spinner).
Stage = Callable[[str], AbstractContextManager[Any]]


def no_stage(name: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass(eq=False)
class MeasureContext:
    """One report's inputs and shared intermediate values.

    Attributes:
        checkpoint: the checkpoint measured.
        task: its data, or None (data-free report).
        options: the report's settings.
        n_train, n_train_source: N for the bounds and where it came from (given, the
            checkpoint's record, or the task's training set), or None.
        stage: wraps each stage (a spinner in the CLI).
        progress: wraps per-layer loops (a progress bar in the CLI).
        results: results computed so far, by measure name (what ``after`` declares).
        warnings: things a reader must know, in the order found.
        seconds: wall time per stage.
        task_failure: the error of a task that could not run the checkpoint (a head of
            another size, a missing base): it fails the report, not one measure.
    """

    checkpoint: Checkpoint
    task: Task | None
    options: ReportOptions
    n_train: int | None = None
    n_train_source: str | None = None
    stage: Stage = no_stage
    progress: Progress | None = None
    results: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    task_failure: GenboundError | None = None
    _objectives: tuple[Objective, Objective] | None = None
    _samples: dict[int, tuple[Objective, Sample]] = field(default_factory=dict)
    _adapted: Objective | None = None

    @contextlib.contextmanager
    def timed(self, part: str, *, shown: bool = True) -> Iterator[None]:
        """Time ``part`` into :attr:`seconds` (inside its ``stage`` when ``shown``)."""
        start = time.perf_counter()
        try:
            with self.stage(part) if shown else contextlib.nullcontext():
                yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start

    def objectives(self) -> tuple[Objective, Objective]:
        """The task's (train, test) objectives of the merged model, built once (stage
        ``model``). What genbound's tasks log as warnings while building them (texts cut
        at the maximum length) goes into the report's warnings too."""
        if self._objectives is None:
            assert self.task is not None, "objectives() needs a task"
            with self.timed("model"), _task_warnings() as said:
                try:
                    train, test = self.task.objectives(self.checkpoint)
                except GenboundError as exc:  # the task and the checkpoint disagree
                    self.task_failure = exc
                    raise
            self.warnings.extend(said)
            n = self.n_train
            if n is not None and train.num_examples != n:
                self.warnings.append(
                    f"the task's training set has {train.num_examples:,} examples but N = "
                    f"{n:,} ({self.n_train_source}); the compression bound uses the task's "
                    f"{train.num_examples:,} and holds only if they are the run's whole "
                    "training set"
                )
            self._objectives = (train, test)
        return self._objectives

    def sample(self, examples: int | None = None) -> tuple[Objective, Sample]:
        """The training objective on ``examples`` examples (default
        ``options.curvature_examples``; a seeded sample stratified by label) and which
        examples they are; drawn once per size."""
        n = self.options.curvature_examples if examples is None else examples
        if n not in self._samples:
            from genbound.tasks.sampling import sample_objective

            train, _ = self.objectives()
            self._samples[n] = sample_objective(train, n, seed=self.options.seed)
        return self._samples[n]

    def sharpness_sample(self) -> tuple[Objective, Sample]:
        """:meth:`sample` of ``options.sharpness_examples`` examples (the curvature sample
        when the sizes agree)."""
        return self.sample(self.options.sharpness_examples)

    def adapted(self) -> Objective:
        """The sample's objective on a copy of the model with each factored update as an
        adapter layer (see :func:`genbound.tasks.rebuild.adapter_objective`); built once."""
        if self._adapted is None:
            from genbound.tasks.rebuild import adapter_objective

            sub, _ = self.sample()
            self._adapted, notes = adapter_objective(sub, self.checkpoint)
            self.warnings.extend(notes)
        return self._adapted


@contextlib.contextmanager
def _task_warnings() -> Iterator[list[str]]:
    """The messages of warnings logged under ``genbound.tasks`` meanwhile (still logged)."""
    import logging

    said: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logger = logging.getLogger("genbound.tasks")
    handler = Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
