"""Compute every requested measure of one checkpoint, recording what was skipped and why."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genbound.errors import GenboundError
from genbound.measures.base import Measure
from genbound.measures.context import MeasureContext, Stage, no_stage
from genbound.measures.registry import compute_order, registered
from genbound.options import ReportOptions
from genbound.parts import PARTS

if TYPE_CHECKING:
    from genbound.bounds import MIBoundResult, Theorem1Result
    from genbound.bounds.compression import CompressionBoundResult
    from genbound.checkpoint.model import Checkpoint
    from genbound.gap import GapResult
    from genbound.landscape import Landscape
    from genbound.measures.curvature import Curvature
    from genbound.spectra import SpectraResult
    from genbound.spectra.analyze import Progress
    from genbound.tasks.protocol import Task

log = logging.getLogger(__name__)

NO_DATA = (
    "no data: pass --data TRAIN TEST (with --text-column and --label-column) "
    "or --task module:function"
)
#: Results kept as their own attributes of :class:`Measures`, by measure name.
_FIELDS = {
    "spectra": "spectra",
    "mi": "mi",
    "theorem1": "theorem1",
    "gap": "gap",
    "compression": "compression",
    "curvature": "curvature",
    "landscape": "landscapes",
}


@dataclass(frozen=True)
class Measures:
    """The measures of one checkpoint.

    Attributes:
        spectra: per-layer spectra and intruders (None if not requested).
        mi: MI and Occam bounds on the 0-1 loss, or None (see ``skipped``).
        theorem1: the corrected Theorem 1 correction terms, or None.
        gap: the empirical gap (cross-entropy and 0-1 error), or None.
        compression: the compression bound on the test 0-1 error, or None.
        curvature: top eigenvalue and trace of the Hessian on ``curvature_examples``
            training examples, or None.
        landscapes: 1-D slices by direction kind (``"random-filter"``, ``"path"``).
        task: the task's description, or None without data.
        task_reference: the JSON task reference the data came from, if known.
        n_train: N used by the bounds, and ``n_train_source`` where it came from.
        num_labels: number of classes (from the task), for the chance level.
        skipped: measure name -> why it was not computed.
        warnings: things a reader must know (e.g. N of the task differs from the run's).
        seconds: wall time per stage.
        settings: what the measures were computed with (:class:`ReportOptions`, with the
            user measures actually loaded).
        results: every other measure's result by name (user measures, and any measure
            without an attribute above).
        user_measures: the user measures of this report (see :mod:`genbound.measures.user`).
    """

    spectra: SpectraResult | None
    mi: MIBoundResult | None = None
    theorem1: Theorem1Result | None = None
    gap: GapResult | None = None
    compression: CompressionBoundResult | None = None
    curvature: Curvature | None = None
    landscapes: dict[str, Landscape] = field(default_factory=dict)
    task: str | None = None
    task_reference: dict[str, Any] | None = None
    n_train: int | None = None
    n_train_source: str | None = None
    num_labels: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    user_measures: tuple[Measure, ...] = ()

    def result(self, name: str) -> Any:
        """The result of the measure called ``name`` (None if it was not computed)."""
        if name in _FIELDS:
            return getattr(self, _FIELDS[name]) or None
        return self.results.get(name)

    def measures(self) -> tuple[Measure, ...]:
        """The measures a report of these results lists: genbound's own, then the user's."""
        return registered() + self.user_measures


def n_train_of(
    ckpt: Checkpoint, task: Task | None, given: int | None
) -> tuple[int | None, str | None]:
    """N and where it came from: given, else the checkpoint's record, else the task's data."""
    if given is not None:
        return int(given), "given"
    if ckpt.n_train is not None:
        return int(ckpt.n_train), "checkpoint"
    if task is not None:
        return int(task.n_train), "task's training set"
    return None, None


def measure_checkpoint(
    ckpt: Checkpoint,
    *,
    task: Task | None = None,
    task_reference: dict[str, Any] | None = None,
    options: ReportOptions | None = None,
    progress: Progress | None = None,
    stage: Stage = no_stage,
    extra_measures: Sequence[Any] = (),
    **option_fields: Any,
) -> Measures:
    """Every requested measure the checkpoint and ``task`` allow.

    Args:
        ckpt: the checkpoint.
        task: its data (None: only the data-free measures, the rest recorded as skipped).
        task_reference: where ``task`` came from (recorded in the report).
        options: the report's settings (:class:`~genbound.options.ReportOptions`):
            which of genbound's measures (``parts``), user measures, sample sizes, budgets,
            the seed.
        progress: wraps per-layer loops (a progress bar in the CLI).
        stage: wraps each stage (a spinner in the CLI).
        extra_measures: user measures given as objects (functions or Measures) rather than
            by name, e.g. by a training callback; computed like ``options.measures``.
        option_fields: fields of :class:`~genbound.options.ReportOptions` changed from
            ``options`` (e.g. ``parts=("spectra",)``, ``n_train=1000``).

    A measure that cannot be computed (a GenboundError: no N, no base, no data) is
    recorded in ``skipped`` with the reason; so is a user measure that raises anything. A
    task that cannot run the checkpoint, or a checkpoint whose tensors cannot be read, fails
    the whole report (the GenboundError propagates).
    """
    options = options or ReportOptions()
    if option_fields:
        options = options.replace(**option_fields)
    n, n_source = n_train_of(ckpt, task, options.n_train)
    ctx = MeasureContext(ckpt, task, options, n, n_source, stage, progress)
    skipped: dict[str, str] = {}
    wanted = set(options.parts)
    own = [m for m in registered() if m.name not in PARTS or m.name in wanted]
    users, failed = _load_user_measures(options, extra_measures)
    skipped.update(failed)
    for m in compute_order(own + users):
        if m.needs_task and task is None:
            skipped[m.name] = NO_DATA
            continue
        with ctx.timed(m.name, shown=m.shown):
            try:
                result = m.compute(ctx)
                if result is not None:
                    ctx.results[m.name] = result
            except GenboundError as exc:
                # the checkpoint's own tensors, or a task that cannot run the checkpoint:
                # an error of the input, not a measure to skip
                if m.name == "spectra" or exc is ctx.task_failure:
                    raise
                skipped[m.name] = str(exc)
            except Exception as exc:
                if m.builtin:
                    raise
                log.warning("measure %s raised", m.name, exc_info=True)
                skipped[m.name] = f"raised {type(exc).__name__}: {exc}"
    results = dict(ctx.results)
    own_fields = {_FIELDS[k]: results.pop(k) for k in list(results) if k in _FIELDS}
    own_fields["landscapes"] = own_fields.get("landscapes") or {}
    settings = options.to_json()
    settings["measures"] = [getattr(m, "spec", m.name) for m in users]
    return Measures(
        spectra=own_fields.pop("spectra", None),
        **own_fields,
        task=task.description if task is not None else None,
        task_reference=task_reference,
        n_train=n,
        n_train_source=n_source,
        num_labels=getattr(task, "num_labels", None) if task is not None else None,
        skipped=skipped,
        warnings=tuple(ctx.warnings),
        seconds=ctx.seconds,
        settings=settings,
        results=results,
        user_measures=tuple(users),
    )


def _load_user_measures(
    options: ReportOptions, extra: Sequence[Any]
) -> tuple[list[Measure], dict[str, str]]:
    """The user measures the options and the installed entry points name, loaded in this
    process, then ``extra``; and those that failed to load (spec -> why)."""
    from genbound.measures.user import user_measures

    return user_measures(options.measures, extra)
