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

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from genbound.demo.sweep import DemoConfig, TrainJob, train_variant
from genbound.errors import GenboundError
from genbound.jsonio import dumps_json
from genbound.report.measures import Stage, no_stage
from genbound.sweep import Executor, run_sweep, sweep_jobs

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


def _job_matches(run_dir: Path, job: TrainJob) -> bool:
    try:
        stored = json.loads((run_dir / JOB_FILE).read_text())
        return stored == json.loads(dumps_json(_job_json(job)))  # tuples as JSON lists
    except (OSError, json.JSONDecodeError):
        return False


#: Config fields that do not change what is trained.
_REPORT_ONLY = (
    "variants",
    "curvature_examples",
    "trace_products",
    "density_probes",
    "density_steps",
    "landscape_steps",
    "pacbayes_samples",
    "sharpness_examples",
    "sharpness_samples",
    "sharpness_ascent_steps",
    "sharpness_spaces",
)


def _job_json(job: TrainJob) -> dict:
    """What decides a run's training (a run folder holding the same is reused)."""
    config = {k: v for k, v in asdict(job.config).items() if k not in _REPORT_ONLY}
    return {"spec": asdict(job.spec), "config": config}


def run_demo(
    out: str | Path,
    config: DemoConfig,
    *,
    force: bool = False,
    stage: Stage = no_stage,
    on_done: Callable[[str, str], None] | None = None,
    executor: Executor | None = None,
) -> DemoResult:
    """Train (or reuse) every run of ``config``, report on each, write the sweep comparison.

    ``stage(name)`` wraps each step (a spinner in the CLI); ``on_done(step, run)`` is called
    after each training or report. The reports run on ``executor`` (default: this process,
    see :func:`genbound.sweep.run_sweep`).
    """
    out = Path(out)
    runs: dict[str, Path] = {}
    trained: list[str] = []
    for spec in config.variants:
        run_dir = out / "runs" / spec.name
        job = TrainJob(spec, config, str(run_dir))
        if force or not _job_matches(run_dir, job):
            with stage(f"training {spec.name}"):
                train_variant(job)
            (run_dir / JOB_FILE).write_text(dumps_json(_job_json(job)))
            trained.append(spec.name)
            if on_done:
                on_done("trained", spec.name)
        runs[spec.name] = run_dir
    jobs = sweep_jobs(runs, out, options=config.report_options(), force=force)

    def reported(o) -> None:
        if on_done:
            on_done("reported" if o.computed else "reused" if o.ok else "failed", o.name)

    result = run_sweep(jobs, out / "sweep", executor=executor, stage=stage, on_done=reported)
    internal = [o for o in result.failed if o.internal]
    if internal:  # an error inside genbound: keep its traceback for the log
        raise RuntimeError(f"demo: the report of {internal[0].name} failed\n{internal[0].details}")
    if result.failed:
        raise GenboundError(
            "demo: reports failed for " + "; ".join(f"{o.name}: {o.error}" for o in result.failed)
        )
    reports = {name: Path(o.folder) for name, o in zip(runs, result.outcomes, strict=True)}
    reported = [name for name, o in zip(runs, result.outcomes, strict=True) if o.computed]
    return DemoResult(runs, reports, result.sweep, tuple(trained), tuple(reported))
