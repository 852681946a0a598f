"""Reports for many checkpoints: one JSON-serializable job per checkpoint, reuse by content.

A :class:`ReportJob` names a checkpoint, its report folder and its typed
:class:`~genbound.options.ReportOptions`; any process that can import genbound can run it
(:func:`run_report_job`), which is how :mod:`genbound.sweep` runs a sweep in local
processes, on a Dask cluster or on SLURM. A report is reused when its ``report.json`` was
computed from a checkpoint with the same content key and with the same settings (task,
options, base, adapter); who computed it (its ``provenance``) is not a setting.

:func:`run_report_jobs`, :func:`run_sweep` and :class:`SweepOutcome` live in
:mod:`genbound.sweep` and are importable from here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from genbound.checkpoint.native import MANIFEST, is_run_dir
from genbound.checkpoint.peft import is_peft_dir
from genbound.errors import GenboundError
from genbound.options import ReportOptions

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
        options: what the report is computed with (a mapping is read by
            :meth:`ReportOptions.from_json <genbound.options.ReportOptions.from_json>`).
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
    options: ReportOptions = field(default_factory=ReportOptions)
    base: str | None = None
    adapter: str | None = None
    force: bool = False
    trust_code: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for key in ("checkpoint", "out", "base"):
            value = getattr(self, key)
            if isinstance(value, os.PathLike):
                set_(self, key, os.fspath(value))
        if isinstance(self.options, Mapping):
            set_(self, "options", ReportOptions.from_json(self.options, where="report job options"))
        _check_job(self, "report job")

    @property
    def display_name(self) -> str:
        return self.name or Path(self.checkpoint).name

    def to_json(self) -> dict[str, Any]:
        """The job as a JSON object (:meth:`from_json` reads it back)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["options"] = self.options.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, where: str = "report job") -> ReportJob:
        """A job from :meth:`to_json`'s form; a GenboundError naming ``where`` and the key
        that is unknown, missing or of the wrong type."""
        if not isinstance(doc, Mapping):
            raise GenboundError(f"{where}: expected a JSON object; found {type(doc).__name__}.")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(doc) - set(known))
        if unknown:
            raise GenboundError(f"{where}: unknown key(s) {unknown}; expected some of {known}.")
        missing = [k for k in ("checkpoint", "out") if k not in doc]
        if missing:
            raise GenboundError(f"{where}: missing key(s) {missing}.")
        kw = dict(doc)
        if "options" in kw:
            kw["options"] = ReportOptions.from_json(kw["options"], where=f"{where} [key 'options']")
        _check_job_types(kw, where)
        return cls(**kw)


#: What each field of a :class:`ReportJob` must hold: (check, what is expected).
_JOB_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "checkpoint": (lambda v: isinstance(v, str) and bool(v), "a path"),
    "out": (lambda v: isinstance(v, str) and bool(v), "a path"),
    "task": (lambda v: v is None or isinstance(v, dict), "a task reference object or null"),
    "options": (lambda v: isinstance(v, ReportOptions), "report options"),
    "base": (lambda v: v is None or (isinstance(v, str) and bool(v)), "a path or null"),
    "adapter": (lambda v: v is None or isinstance(v, str), "an adapter name or null"),
    "force": (lambda v: isinstance(v, bool), "true or false"),
    "trust_code": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: isinstance(v, str), "a string"),
}


def _check_job_types(values: Mapping[str, Any], where: str) -> None:
    for key, value in values.items():
        ok, expected = _JOB_FIELDS[key]
        if not ok(value):
            raise GenboundError(f"{where} [key {key!r}]: expected {expected}; found {value!r}.")


def _check_job(job: ReportJob, where: str) -> None:
    _check_job_types({f.name: getattr(job, f.name) for f in fields(job)}, where)


def job_settings_key(job: ReportJob) -> str:
    """BLAKE2b of what besides the checkpoint decides a report: task, options, base, adapter
    (not who computes it, where or when), and the user measures installed where it is
    computed (entry points), so installing one recomputes the reports that lack it."""
    from genbound.measures.user import entry_point_specs

    settings = {
        "task": job.task,
        "options": job.options.to_json(),
        "base": job.base,
        "adapter": job.adapter,
    }
    installed = entry_point_specs()
    if installed:
        settings["entry_point_measures"] = installed
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


def run_report_job(
    job: ReportJob | Mapping[str, Any],
    *,
    stage=None,
    progress=None,
    executor: str = "local",
    worker: str = "main",
) -> tuple[str, bool]:
    """Run one job; returns (report folder, whether it was computed now rather than reused).

    ``stage`` and ``progress`` (in-process only) are passed to ``measure_checkpoint``; the
    task is loaded inside ``stage("loading the task")``. ``executor`` and ``worker`` say
    who computed the report (its ``provenance``, see :func:`provenance`); a reused report
    keeps the provenance it was written with.
    """
    from genbound.checkpoint import load_checkpoint
    from genbound.report.measures import measure_checkpoint
    from genbound.report.writer import write_report
    from genbound.tasks.reference import TaskReference, load_task

    job = job if isinstance(job, ReportJob) else ReportJob.from_json(job)
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
    started = _now()
    options = job.options
    ckpt = load_checkpoint(
        job.checkpoint,
        base=job.base,
        adapter=job.adapter,
        n_train=options.n_train,
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
    if task is not None:
        task = with_device(task, options.device)
        resolve = getattr(task, "for_checkpoint", None)
        if callable(resolve):  # a task that depends on the checkpoint's kind (--data)
            task = resolve(ckpt)
    hooks = {}  # measure_checkpoint's own defaults where none is given
    if stage is not None:
        hooks["stage"] = stage
    if progress is not None:
        hooks["progress"] = progress
    measures = measure_checkpoint(
        ckpt, options=options, task=task, task_reference=ref.to_json() if ref else None, **hooks
    )
    write_report(
        ckpt,
        out,
        measures,
        force=True,
        content_key=key,
        settings_key=settings,
        provenance=provenance(executor, worker, started, _now()),
    )
    return str(out), True


def provenance(executor: str, worker: str, started: str, finished: str) -> dict[str, Any]:
    """Who computed a report, where and when (``report.json``'s ``provenance``).

    Args:
        executor: ``"local"``, ``"dask"`` or ``"slurm"``.
        worker: ``"main"`` (the command's own process), ``"pool-<pid>"`` (a local worker
            process), a Dask worker's address or a SLURM job id.
        started, finished: ISO 8601 times in UTC (:func:`_now`), from loading the
            checkpoint to the measures being computed.
    """
    import socket

    from genbound import __version__

    return {
        "genbound_version": __version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "executor": executor,
        "worker": worker,
        "started": started,
        "finished": finished,
    }


def _now() -> str:
    """The time in UTC, ISO 8601 to the millisecond (``2026-05-09T07:35:25.123+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_device(device: str) -> None:
    """A GenboundError unless ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) is here."""
    import torch

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


def attempt_report_job(
    job: ReportJob | Mapping[str, Any],
    *,
    stage=None,
    progress=None,
    executor: str = "local",
    worker: str = "main",
) -> JobOutcome:
    """:func:`run_report_job`, with a failure returned as the outcome instead of raised (so
    one broken checkpoint of a sweep does not stop the others). Interrupts still propagate."""
    import traceback

    job = job if isinstance(job, ReportJob) else ReportJob.from_json(job)
    try:
        folder, computed = run_report_job(
            job, stage=stage, progress=progress, executor=executor, worker=worker
        )
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


#: Names that moved to :mod:`genbound.sweep.runner`, importable from here as before.
_RUNNER = ("run_report_jobs", "run_sweep", "SweepOutcome")


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        from genbound.sweep import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
