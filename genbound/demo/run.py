"""Run the whole demo: train the sweep, report on every run, compare the runs.

Layout of the demo folder::

    runs/<name>/        genbound run folders (the trained checkpoints)
    reports/<name>/     report.json, report.md, quantized.safetensors per run
    sweep/              sweep.json, sweep.md, figures/measures_vs_gap.png

A run whose folder holds the same job (spec, config) is not trained again, and a report
whose ``report.json`` was computed from the same run content is not recomputed, so
re-running the demo after adding a variant costs that variant only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from genbound.checkpoint import load_checkpoint
from genbound.demo.sweep import DemoConfig, TrainJob, train_variant
from genbound.report import write_report
from genbound.report.measures import Stage, measure_checkpoint
from genbound.report.sweep import write_sweep
from genbound.tasks.reference import TaskReference, load_task

log = logging.getLogger(__name__)

JOB_FILE = "demo-job.json"


@dataclass(frozen=True)
class DemoResult:
    """Where everything went: run folders, report folders (by run name) and the sweep."""

    runs: dict[str, Path]
    reports: dict[str, Path]
    sweep: Path
    trained: tuple[str, ...]
    reported: tuple[str, ...]


def _nostage(name: str):
    return contextlib.nullcontext()


def content_key(run_dir: Path) -> str:
    """BLAKE2b of a run folder's manifest and tensors: a report is reused only for equal keys."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("genbound.json", "updates.safetensors"):
        with open(run_dir / name, "rb") as fh:
            for chunk in iter(lambda f=fh: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _job_matches(run_dir: Path, job: TrainJob) -> bool:
    try:
        return json.loads((run_dir / JOB_FILE).read_text()) == _job_json(job)
    except (OSError, json.JSONDecodeError):
        return False


def _job_json(job: TrainJob) -> dict:
    return {"spec": asdict(job.spec), "config": asdict(job.config) | {"variants": None}}


def run_demo(
    out: str | Path,
    config: DemoConfig,
    *,
    force: bool = False,
    stage: Stage = _nostage,
    on_done: Callable[[str, str], None] | None = None,
) -> DemoResult:
    """Train (or reuse) every run of ``config``, report on each, write the sweep comparison.

    ``stage(name)`` wraps each step (a spinner in the CLI); ``on_done(step, run)`` is called
    after each training or report.
    """
    out = Path(out)
    runs, reports, trained, reported = {}, {}, [], []
    for spec in config.variants:
        run_dir = out / "runs" / spec.name
        job = TrainJob(spec, config, str(run_dir))
        if force or not _job_matches(run_dir, job):
            with stage(f"training {spec.name}"):
                train_variant(job)
            (run_dir / JOB_FILE).write_text(json.dumps(_job_json(job), indent=2) + "\n")
            trained.append(spec.name)
            if on_done:
                on_done("trained", spec.name)
        runs[spec.name] = run_dir
    docs = {}
    for name, run_dir in runs.items():
        rep = out / "reports" / name
        key = content_key(run_dir)
        old = _read_json(rep / "report.json")
        if force or old is None or old.get("checkpoint", {}).get("content_key") != key:
            ckpt = load_checkpoint(run_dir)
            ref = TaskReference.from_json(ckpt.data, where=f"{run_dir}: data")
            task = load_task(ref, where=f"{run_dir}: data")
            measures = measure_checkpoint(
                ckpt,
                task=task,
                task_reference=ref.to_json(),
                curvature_examples=config.curvature_examples,
                landscape_steps=config.landscape_steps,
                seed=config.seed,
                stage=lambda s, n=name: stage(f"{n}: {s}"),
            )
            write_report(ckpt, rep, measures, force=True, content_key=key)
            reported.append(name)
            if on_done:
                on_done("reported", name)
        reports[name] = rep
        docs[name] = _read_json(rep / "report.json")
    sweep = write_sweep(out / "sweep", docs)
    return DemoResult(runs, reports, sweep, tuple(trained), tuple(reported))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
