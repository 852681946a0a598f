"""Where a sweep's reports are computed: this machine, a Dask cluster or SLURM.

Every executor runs :class:`~genbound.report.batch.ReportJob` s and returns one
:class:`~genbound.report.batch.JobOutcome` per job, in job order, calling ``on_done`` as
each finishes. A job that fails, and a worker that dies under a group of jobs, become
failure outcomes naming the checkpoint; the other jobs go on.

Every report of a sweep is computed on one thread (torch and the BLAS libraries), so a
sweep's numbers are the same whichever executor ran it and however many workers it had.
Workers write each report into its folder atomically, so the output folder must be one
the workers share with the machine that started the sweep (as on any SLURM cluster).

* :class:`LocalExecutor`: this process, or a pool of worker processes (``--jobs N``).
* :class:`DaskExecutor`: an existing ``distributed`` cluster (``pip install 'genbound[dask]'``).
* :class:`SlurmExecutor`: SLURM jobs through submitit (``pip install 'genbound[slurm]'``).

The remote executors send groups of jobs that share a base model (see
:mod:`genbound.sweep.groups`); their workers must have genbound (and any module a
``--measure`` names) importable, and see the checkpoints at the same paths.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from genbound.errors import GenboundError
from genbound.report.batch import JobOutcome, ReportJob, attempt_report_job
from genbound.sweep.groups import plan_groups

log = logging.getLogger(__name__)

OnDone = Callable[[JobOutcome], None]
#: ``stage(name)``: a context manager around one stage of a report (in-process only).
Stage = Callable[[str], Any]

#: Executor names, as ``report.json``'s ``provenance.executor`` records them.
EXECUTORS = ("local", "dask", "slurm")


class Executor(Protocol):
    """Runs report jobs somewhere; ``name`` is one of :data:`EXECUTORS`."""

    name: str

    def run(
        self,
        jobs: Sequence[ReportJob],
        *,
        stage: Stage | None = None,
        on_done: OnDone | None = None,
    ) -> list[JobOutcome]:
        """One outcome per job, in job order (``stage``: only where jobs run in-process)."""
        ...


#: One group at a time per process: the thread settings are process-wide (a Dask worker
#: with several threads would otherwise run one group on another's restored thread count).
_one_group_at_a_time = threading.Lock()


def run_group(docs: Sequence[dict[str, Any]], executor: str) -> list[JobOutcome]:
    """Run jobs (as :meth:`ReportJob.to_json` documents) one after another in this worker
    process, on one thread; what a pool process, a Dask worker or a SLURM job runs."""
    from genbound.parallel import one_thread_each

    worker = worker_name(executor)
    with _one_group_at_a_time, one_thread_each():
        return [
            attempt_report_job(ReportJob.from_json(doc), executor=executor, worker=worker)
            for doc in docs
        ]


def worker_name(executor: str) -> str:
    """How ``provenance.worker`` names this process: a pool process ``pool-<pid>``, a Dask
    worker its address, a SLURM job its id."""
    if executor == "dask":
        from distributed import get_worker

        with contextlib.suppress(ValueError):  # not inside a Dask worker
            return get_worker().address
    if executor == "slurm":
        import submitit

        with contextlib.suppress(RuntimeError):  # not inside a submitit job
            return str(submitit.JobEnvironment().job_id)
    return f"pool-{os.getpid()}"


def portable(job: ReportJob) -> dict[str, Any]:
    """The job as JSON for another machine: its checkpoint, report folder and base model as
    absolute paths of this process (a worker's working directory is its own)."""
    doc = job.to_json()
    for key in ("checkpoint", "out", "base"):
        if doc[key] is not None:
            doc[key] = os.path.abspath(doc[key])
    return doc


def _worker_died(job: ReportJob, what: str, details: str | None = None) -> JobOutcome:
    return JobOutcome(
        job.display_name, job.out, error=f"internal error ({what})", internal=True, details=details
    )


def _require(module: str, extra: str, flag: str) -> Any:
    """``module`` imported, or a GenboundError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GenboundError(
            f"--executor {flag}: expected the Python package '{module}'; found it is not "
            f"installed. Install it with: pip install 'genbound[{extra}]'"
        ) from None


@dataclass
class LocalExecutor:
    """This machine: in this process (``workers=1``, with ``stage`` spinners), or in a pool
    of ``workers`` processes, one job at a time each.

    A worker process that dies (killed for lack of memory, say) fails the job it ran.
    """

    workers: int = 1
    name: ClassVar[str] = "local"

    def run(
        self,
        jobs: Sequence[ReportJob],
        *,
        stage: Stage | None = None,
        on_done: OnDone | None = None,
    ) -> list[JobOutcome]:
        if self.workers <= 1 or len(jobs) <= 1:
            return self._in_process(jobs, stage, on_done)
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        out: dict[int, JobOutcome] = {}
        with ProcessPoolExecutor(self.workers) as pool:
            futures = {
                pool.submit(run_group, [job.to_json()], self.name): i for i, job in enumerate(jobs)
            }
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    (out[i],) = fut.result()
                except BrokenProcessPool:
                    out[i] = _worker_died(
                        jobs[i],
                        "a worker process died, e.g. killed for lack of memory; try fewer --jobs",
                    )
                if on_done:
                    on_done(out[i])
        return [out[i] for i in range(len(jobs))]

    def _in_process(
        self, jobs: Sequence[ReportJob], stage: Stage | None, on_done: OnDone | None
    ) -> list[JobOutcome]:
        from genbound.parallel import one_thread_each

        results = []
        with one_thread_each():
            for job in jobs:
                name = job.display_name
                res = attempt_report_job(
                    job,
                    stage=(lambda s, n=name: stage(f"{n}: {s}")) if stage else None,
                    executor=self.name,
                    worker="main",
                )
                results.append(res)
                if on_done:
                    on_done(res)
        return results


def _collect(
    jobs: Sequence[ReportJob],
    groups: Sequence[Sequence[int]],
    out: dict[int, JobOutcome],
    group: int,
    result: Callable[[], list[JobOutcome]],
    died: Callable[[BaseException], tuple[str, str | None]],
    on_done: OnDone | None,
) -> None:
    """Record the outcomes of ``groups[group]`` (``result()``), or a failure for each of its
    jobs when the task failed as a whole (``died(exc)``: what happened, details)."""
    members = groups[group]
    try:
        outcomes = result()
    except Exception as exc:
        what, details = died(exc)
        outcomes = [_worker_died(jobs[i], what, details) for i in members]
    for i, outcome in zip(members, outcomes, strict=True):
        out[i] = outcome
        if on_done:
            on_done(outcome)


@dataclass
class DaskExecutor:
    """An existing Dask ``distributed`` cluster at ``scheduler`` (``tcp://HOST:PORT``).

    Each group of jobs sharing a base model is one task; groups are sized so every worker
    process of the cluster gets work. A worker process runs one group at a time (start
    workers with ``--nthreads 1`` and as many ``--nworkers`` as reports should run at
    once). ``timeout`` (seconds) bounds the wait for the scheduler to answer and for a
    first worker to join it. A worker that dies under a task (Dask gives up after its
    ``allowed-failures`` retries: ``KilledWorker``) fails the task's jobs.
    """

    scheduler: str
    timeout: float = 10.0
    name: ClassVar[str] = "dask"

    def __post_init__(self) -> None:
        _require("distributed", "dask", "dask")

    def run(
        self,
        jobs: Sequence[ReportJob],
        *,
        stage: Stage | None = None,
        on_done: OnDone | None = None,
    ) -> list[JobOutcome]:
        from distributed import as_completed

        out: dict[int, JobOutcome] = {}
        with self._connect() as client:
            groups = plan_groups(jobs, len(client.nthreads()))
            tag = uuid.uuid4().hex[:8]
            futures = {
                client.submit(
                    run_group,
                    [portable(jobs[i]) for i in group],
                    self.name,
                    key=f"genbound-report-{tag}-{g}",
                    pure=False,
                ): g
                for g, group in enumerate(groups)
            }
            for fut in as_completed(futures, loop=client.loop):
                _collect(jobs, groups, out, futures[fut], fut.result, _dask_failure, on_done)
        return [out[i] for i in range(len(jobs))]

    def _connect(self):
        from distributed import Client

        try:
            client = Client(self.scheduler, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise GenboundError(
                f"--scheduler {self.scheduler}: expected a Dask scheduler answering there "
                f"within {self.timeout:g} s; found none ({_first_line(exc)}). Start one with "
                "'dask scheduler' and its workers with 'dask worker ADDRESS', or check the "
                "address."
            ) from None
        try:
            client.wait_for_workers(1, timeout=self.timeout)
        except (OSError, TimeoutError):
            client.close()
            raise GenboundError(
                f"--scheduler {self.scheduler}: expected at least one worker joined to the "
                f"Dask scheduler; found none within {self.timeout:g} s. Start workers with "
                f"'dask worker {self.scheduler}'."
            ) from None
        return client


def _dask_failure(exc: BaseException) -> tuple[str, str | None]:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (
            "the Dask worker running it died, e.g. killed for lack of memory; see the "
            "workers' logs",
            str(exc),
        )
    return f"the Dask task failed: {type(exc).__name__}: {_first_line(exc)}", _traceback(exc)


@dataclass
class SlurmExecutor:
    """SLURM jobs submitted through submitit from this machine (a login node).

    One job per group of jobs sharing a base model, as one job array; at most ``jobs``
    groups in all beyond one per base model. Each job asks for one task with one CPU,
    ``time_min`` minutes, ``mem_gb`` GB of memory (None: the partition's default) and
    ``gpus`` GPUs on ``partition`` (None: the default partition). submitit keeps its
    scripts, pickles and the jobs' logs in ``folder``, which the nodes must see.
    ``cluster="local"`` runs the jobs as processes of this machine through submitit's
    local executor instead (to try a setup without a cluster; the tests use it).

    A job that fails as a whole (timed out, cancelled, killed for memory) fails its
    checkpoints, naming the job and its log.
    """

    folder: str
    partition: str | None = None
    time_min: int = 60
    mem_gb: float | None = None
    gpus: int = 0
    jobs: int = 1
    cluster: str = "slurm"
    poll_seconds: float | None = None
    name: ClassVar[str] = "slurm"

    def __post_init__(self) -> None:
        _require("submitit", "slurm", "slurm")
        if self.cluster not in ("slurm", "local"):
            raise GenboundError(
                f"SLURM executor: expected cluster 'slurm' or 'local'; found {self.cluster!r}."
            )
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise GenboundError(
                "--executor slurm: expected SLURM's sbatch command on this machine; found none "
                "on PATH. Run genbound on a login node of the cluster."
            )

    def run(
        self,
        jobs: Sequence[ReportJob],
        *,
        stage: Stage | None = None,
        on_done: OnDone | None = None,
    ) -> list[JobOutcome]:
        import submitit
        from submitit.helpers import as_completed

        groups = plan_groups(jobs, self.jobs)
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        executor.update_parameters(
            name="genbound-report",
            timeout_min=self.time_min,
            mem_gb=self.mem_gb,
            gpus_per_node=self.gpus,
            cpus_per_task=1,
            tasks_per_node=1,
            nodes=1,
            slurm_partition=self.partition,
        )
        with executor.batch():
            submitted = [
                executor.submit(run_group, [portable(jobs[i]) for i in group], self.name)
                for group in groups
            ]
        index = {id(job): g for g, job in enumerate(submitted)}
        poll = self.poll_seconds or (0.5 if self.cluster == "local" else 15.0)
        out: dict[int, JobOutcome] = {}
        try:
            for job in as_completed(submitted, poll_frequency=poll):
                _collect(
                    jobs, groups, out, index[id(job)], job.result, _slurm_failure(job), on_done
                )
        except BaseException:  # interrupted: the jobs not yet done would run on unwatched
            for job in submitted:
                if not job.done():
                    with contextlib.suppress(Exception):
                        job.cancel(check=False)
            raise
        return [out[i] for i in range(len(jobs))]


def _slurm_failure(job: Any) -> Callable[[BaseException], tuple[str, str | None]]:
    def died(exc: BaseException) -> tuple[str, str | None]:
        log_file = Path(job.paths.stderr)
        return (
            f"SLURM job {job.job_id} failed: {type(exc).__name__}: {_first_line(exc)}; its "
            f"log is {log_file}",
            str(exc),
        )

    return died


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "(no message)"


def _traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
