"""Sweeps: a report for every checkpoint of a folder, run here, on Dask or on SLURM.

* :func:`run_sweep` (:mod:`genbound.sweep.runner`): the reports, then their comparison;
  :func:`sweep_jobs` makes the jobs of a sweep.
* Executors (:mod:`genbound.sweep.executors`): :class:`LocalExecutor` (this process or a
  pool, ``--jobs N``), :class:`DaskExecutor` (``--executor dask --scheduler ADDRESS``),
  :class:`SlurmExecutor` (``--executor slurm``).
* :mod:`genbound.sweep.groups`: jobs sharing a base model run in one worker.

See docs/sweeps.md.
"""

from genbound.sweep.executors import (
    EXECUTORS,
    DaskExecutor,
    Executor,
    LocalExecutor,
    SlurmExecutor,
)
from genbound.sweep.runner import SweepOutcome, run_report_jobs, run_sweep, sweep_jobs

__all__ = [
    "EXECUTORS",
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "SlurmExecutor",
    "SweepOutcome",
    "run_report_jobs",
    "run_sweep",
    "sweep_jobs",
]
