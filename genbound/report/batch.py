"""Reports for many checkpoints: one JSON-serializable job per checkpoint, reuse by content.

A :class:`ReportJob` names a checkpoint, its report folder and the options; any worker
that can import genbound can run it (:func:`run_report_job`), so a sweep runs in local
processes today (``--jobs N``) and on a cluster engine without change. A report is reused
when its ``report.json`` was computed from a checkpoint with the same content key and with
the same settings (task, options, base, adapter).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genbound.checkpoint.native import MANIFEST, is_run_dir
from genbound.checkpoint.peft import is_peft_dir

log = logging.getLogger(__name__)

#: Files of a checkpoint folder that do not define its content.
_NOT_CONTENT = ("genbound-report", "demo-job.json")


def content_key(path: str | os.PathLike) -> str:
    """BLAKE2b over the names and bytes of a checkpoint's files (a folder's top-level files,
    or one file): equal keys, equal checkpoints."""
    p = Path(path)
    if not p.exists():
        from genbound.errors import input_error

        raise input_error(
            p, "checkpoint not found", expected="a checkpoint folder or file", found="no such path"
        )
    files = (
        sorted(f for f in p.iterdir() if f.is_file() and f.name not in _NOT_CONTENT)
        if p.is_dir()
        else [p]
    )
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def find_checkpoints(root: str | os.PathLike, *, max_depth: int = 3) -> list[Path]:
    """PEFT adapter folders and genbound run folders under ``root`` (not inside each other),
    in sorted order; ``root`` itself if it is one.

    Each checkpoint is listed once, by a path without symbolic links where there is one:
    links are followed only after the plain folders have been walked, and a link to a
    folder already seen (a loop back to ``root``, a second name of a checkpoint) is skipped.
    """
    root = Path(root)
    if is_peft_dir(root) or is_run_dir(root):
        return [root]
    found: list[Path] = []
    seen: set[Path] = {root.resolve()}

    def walk(d: Path, depth: int, links: bool) -> None:
        for sub in sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith(".")):
            link = sub.is_symlink()
            if sub.name == "genbound-report" or (link and not links):
                continue
            real = sub.resolve()
            if link and real in seen:  # a loop, or a second name of something walked
                continue
            if is_peft_dir(sub) or is_run_dir(sub):
                if real not in seen:
                    found.append(sub)
            elif depth < max_depth:
                walk(sub, depth + 1, links)
            seen.add(real)

    walk(root, 1, links=False)
    walk(root, 1, links=True)
    return sorted(found)


@dataclass(frozen=True)
class ReportJob:
    """One checkpoint's report: plain data, so it can be sent to any worker.

    Attributes:
        checkpoint: the checkpoint path.
        out: the report folder.
        task: a task reference (``{"task": ..., "kwargs": ...}``), or None for the
            checkpoint's own (a genbound run's ``data``), or none at all.
        options: keywords of :func:`genbound.report.measures.measure_checkpoint`
            (``parts``, ``mi_loss``, ``n_train``, ``curvature_examples``, ...).
        base, adapter: as for :func:`genbound.load_checkpoint`.
        force: recompute even if a report of the same content exists.
        trust_code: let the checkpoint's recorded task and base-model references run code
            that is not genbound's own (``--trust-code``).
        name: how progress lines and errors name the checkpoint (default: its folder name;
            a sweep uses its path relative to the sweep's root).
    """

    checkpoint: str
    out: str
    task: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    adapter: str | None = None
    force: bool = False
    trust_code: bool = False
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name or Path(self.checkpoint).name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def job_settings_key(job: ReportJob) -> str:
    """BLAKE2b of what besides the checkpoint decides a report: task, options, base, adapter."""
    settings = {"task": job.task, "options": job.options, "base": job.base, "adapter": job.adapter}
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def report_folder_names(names: Sequence[str]) -> list[str]:
    """One folder name per checkpoint of a sweep from its path relative to the sweep
    (``a/checkpoint-5`` -> ``a__checkpoint-5``); names that would coincide (``a/b`` and
    ``a__b``) get a short hash of their path, so no report overwrites another."""
    flat = [n.replace("/", "__") for n in names]
    taken = {f: flat.count(f) for f in flat}
    return [
        f if taken[f] == 1 else f"{f}-{hashlib.blake2b(n.encode(), digest_size=4).hexdigest()}"
        for f, n in zip(flat, names, strict=True)
    ]


def run_report_job(job: ReportJob | dict, *, stage=None, progress=None) -> tuple[str, bool]:
    """Run one job; returns (report folder, whether it was computed now rather than reused).

    ``stage`` and ``progress`` (in-process only) are passed to ``measure_checkpoint``; the
    task is loaded inside ``stage("loading the task")``.
    """
    from genbound.checkpoint import load_checkpoint
    from genbound.report.measures import measure_checkpoint
    from genbound.report.writer import write_report
    from genbound.tasks.reference import TaskReference, load_task

    job = job if isinstance(job, ReportJob) else ReportJob(**job)
    out = Path(job.out)
    key = content_key(job.checkpoint)
    settings = job_settings_key(job)
    old = read_json(out / "report.json")
    if (
        not job.force
        and old is not None
        and old.get("checkpoint", {}).get("content_key") == key
        and old.get("settings_key") == settings
    ):
        return str(out), False
    ckpt = load_checkpoint(
        job.checkpoint,
        base=job.base,
        adapter=job.adapter,
        n_train=job.options.get("n_train"),
        trust_code=job.trust_code,
    )
    ref_json = job.task if job.task is not None else ckpt.data
    task = ref = None
    if ref_json:
        # the job's task is the user's own choice; the checkpoint's needs genbound's own code
        # or trust_code
        trusted = job.task is not None or job.trust_code
        where = "task" if job.task is not None else f"{ckpt.path / MANIFEST} [key 'data.task']"
        ref = TaskReference.from_json(ref_json, where=where)
        with stage("loading the task") if stage is not None else contextlib.nullcontext():
            task = load_task(ref, where=where, trusted=trusted)
    options = dict(job.options)
    device = options.pop("device", None)
    if device is not None and task is not None:
        task = with_device(task, device)
    if stage is not None:
        options["stage"] = stage
    if progress is not None:
        options["progress"] = progress
    measures = measure_checkpoint(
        ckpt, task=task, task_reference=ref.to_json() if ref else None, **options
    )
    write_report(
        ckpt,
        out,
        measures,
        force=True,
        content_key=key,
        settings_key=settings,
        settings=job.options,
    )
    return str(out), True


def check_device(device: str) -> None:
    """A GenboundError unless ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) is here."""
    import torch

    from genbound.errors import GenboundError

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GenboundError(f"--device {device}: expected a CUDA device; found none.")
        if index and int(index) >= count:
            raise GenboundError(
                f"--device {device}: expected a CUDA device index below {count}; found {index}."
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise GenboundError(f"--device {device}: expected an Apple MPS device; found none.")
    elif kind not in ("cpu", "cuda", "mps"):
        raise GenboundError(f"--device {device}: expected cpu, cuda, cuda:N or mps.")


def with_device(task: Any, device: str) -> Any:
    """The task on ``device`` (a task with a ``device`` field); a clear error otherwise."""
    import dataclasses

    from genbound.errors import GenboundError

    check_device(device)
    if device == getattr(task, "device", "cpu"):
        return task
    if not (
        dataclasses.is_dataclass(task) and "device" in {f.name for f in dataclasses.fields(task)}
    ):
        raise GenboundError(
            f"--device {device}: the task {type(task).__name__} has no device field; it runs "
            "where it builds its model."
        )
    return dataclasses.replace(task, device=device)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@dataclass(frozen=True)
class JobOutcome:
    """What became of one :class:`ReportJob`.

    Attributes:
        name: the job's display name (its checkpoint's path relative to the sweep).
        folder: the report folder.
        computed: the report was computed now (False: reused, or failed).
        error: None on success; else one paragraph saying what went wrong.
        internal: the failure is not the input's fault (an error inside genbound).
        details: the traceback of an internal failure, for the log.
    """

    name: str
    folder: str
    computed: bool = False
    error: str | None = None
    internal: bool = False
    details: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def attempt_report_job(job: ReportJob | dict, *, stage=None, progress=None) -> JobOutcome:
    """:func:`run_report_job`, with a failure returned as the outcome instead of raised (so
    one broken checkpoint of a sweep does not stop the others). Interrupts still propagate."""
    import traceback

    from genbound.errors import GenboundError

    job = job if isinstance(job, ReportJob) else ReportJob(**job)
    try:
        folder, computed = run_report_job(job, stage=stage, progress=progress)
    except GenboundError as exc:
        return JobOutcome(job.display_name, job.out, error=str(exc))
    except Exception as exc:
        return JobOutcome(
            job.display_name,
            job.out,
            error=f"internal error ({type(exc).__name__}: {exc})",
            internal=True,
            details=traceback.format_exc(),
        )
    return JobOutcome(job.display_name, folder, computed)


def run_report_jobs(
    jobs: Sequence[ReportJob],
    *,
    workers: int = 1,
    stage=None,
    on_done: Callable[[JobOutcome], None] | None = None,
) -> list[JobOutcome]:
    """Run jobs in this process (``workers=1``, with ``stage`` spinners) or in a pool of
    ``workers`` processes sharing the cores; outcomes in job order. A job that fails does
    not stop the others: its outcome carries the error."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            name = job.display_name
            res = attempt_report_job(
                job, stage=(lambda s, n=name: stage(f"{n}: {s}")) if stage else None
            )
            results.append(res)
            if on_done:
                on_done(res)
        return results
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    out: dict[int, JobOutcome] = {}
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(attempt_report_job, job.to_json()): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                out[i] = fut.result()
            except BrokenProcessPool:
                out[i] = JobOutcome(
                    jobs[i].display_name,
                    jobs[i].out,
                    error="internal error (a worker process died, e.g. killed for lack of "
                    "memory; try fewer --jobs)",
                    internal=True,
                )
            if on_done:
                on_done(out[i])
    return [out[i] for i in range(len(jobs))]


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
    stage=None,
    on_done: Callable[[JobOutcome], None] | None = None,
) -> SweepOutcome:
    """Report on every job's checkpoint, then compare the reports that succeeded (keyed by
    their report folder's name) in ``sweep_dir``; failed jobs are in the outcome."""
    from genbound.report.sweep import write_sweep

    outcomes = run_report_jobs(jobs, workers=workers, stage=stage, on_done=on_done)
    docs = {
        Path(o.folder).name: doc
        for o in outcomes
        if o.ok and (doc := read_json(Path(o.folder) / "report.json")) is not None
    }
    sweep = write_sweep(Path(sweep_dir), docs) if docs else None
    return SweepOutcome(tuple(outcomes), sweep)
