"""Run a sweep: a report for every checkpoint, on any executor, then their comparison.

The command line (``genbound report FOLDER``), the demo and Python callers all run a sweep
through :func:`run_sweep`::

    from genbound.options import ReportOptions
    from genbound.report.batch import find_checkpoints
    from genbound.sweep import DaskExecutor, run_sweep, sweep_jobs

    found = find_checkpoints("runs")
    jobs = sweep_jobs({p.relative_to("runs").as_posix(): p for p in found}, "out",
                      options=ReportOptions(parts=("spectra", "mi")))
    result = run_sweep(jobs, "out/sweep", executor=DaskExecutor("tcp://10.0.0.5:8786"))
    for failed in result.failed:
        print(failed.name, failed.error)

Layout of ``out``: ``reports/<name>/`` (one report folder per checkpoint, see
:func:`~genbound.report.batch.report_folder_names`) and ``sweep/`` (``sweep.json``,
``sweep.md`` and figures).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genbound.report.batch import JobOutcome, ReportJob, read_json, report_folder_names
from genbound.sweep.executors import Executor, LocalExecutor, Stage


def sweep_jobs(
    checkpoints: Mapping[str, str | os.PathLike], out: str | os.PathLike, **fields: Any
) -> list[ReportJob]:
    """One job per checkpoint (by name: its path in the sweep, ``a/checkpoint-5``), each
    writing ``out/reports/<folder>`` (``a__checkpoint-5``, see
    :func:`~genbound.report.batch.report_folder_names`); ``fields`` are the other fields
    of every :class:`~genbound.report.batch.ReportJob` (``options``, ``task``, ``force``, ...)."""
    names = list(checkpoints)
    folders = report_folder_names(names)
    return [
        ReportJob(
            os.fspath(checkpoints[name]),
            os.fspath(Path(out, "reports", folder)),
            name=name,
            **fields,
        )
        for name, folder in zip(names, folders, strict=True)
    ]


def run_report_jobs(
    jobs: Sequence[ReportJob],
    *,
    workers: int = 1,
    executor: Executor | None = None,
    stage: Stage | None = None,
    on_done: Callable[[JobOutcome], None] | None = None,
) -> list[JobOutcome]:
    """Run jobs on ``executor`` (default: :class:`LocalExecutor` with ``workers``
    processes, this one when ``workers=1``); outcomes in job order. A job that fails does
    not stop the others: its outcome carries the error."""
    executor = executor if executor is not None else LocalExecutor(workers)
    return executor.run(list(jobs), stage=stage, on_done=on_done)


@dataclass(frozen=True)
class SweepOutcome:
    """A sweep's reports and comparison: ``outcomes`` in job order, ``sweep`` the comparison
    folder (None when no report succeeded)."""

    outcomes: tuple[JobOutcome, ...]
    sweep: Path | None

    @property
    def failed(self) -> tuple[JobOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)


def run_sweep(
    jobs: Sequence[ReportJob],
    sweep_dir: str | os.PathLike,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    stage: Stage | None = None,
    on_done: Callable[[JobOutcome], None] | None = None,
) -> SweepOutcome:
    """Report on every job's checkpoint (see :func:`run_report_jobs`), then compare the
    reports that succeeded (keyed by their report folder's name) in ``sweep_dir``; failed
    jobs are in the outcome."""
    from genbound.report.sweep import write_sweep

    outcomes = run_report_jobs(
        jobs, workers=workers, executor=executor, stage=stage, on_done=on_done
    )
    docs = {
        Path(o.folder).name: doc
        for o in outcomes
        if o.ok and (doc := read_json(Path(o.folder) / "report.json")) is not None
    }
    sweep = write_sweep(Path(sweep_dir), docs) if docs else None
    return SweepOutcome(tuple(outcomes), sweep)
