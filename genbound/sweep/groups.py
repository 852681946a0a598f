"""Jobs that share a base model, run together: a worker then opens the base once.

A task sent to a Dask worker or a SLURM job is a list of jobs (a *group*) run one after
another in one process, where the base model's files, its fingerprint and the cached
activations of its frozen layers are memoized (see :mod:`genbound.checkpoint.base` and
:meth:`genbound.tasks.hf_text.TextClassificationTask.cached_batches`). Groups never mix
base models, and a base model with many checkpoints is split so that every slot of the
cluster has work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from genbound.checkpoint.native import MANIFEST
from genbound.checkpoint.peft import CONFIG
from genbound.report.batch import ReportJob, read_json


def base_reference(job: ReportJob) -> str | None:
    """What names the job's base model: ``--base`` (resolved), else the reference the
    checkpoint records (PEFT's ``base_model_name_or_path``, a run's ``base_model``), read
    as text and never followed; None when there is none or it cannot be read."""
    if job.base:
        return os.path.realpath(job.base)
    folder = Path(job.checkpoint)
    peft = read_json(folder / job.adapter / CONFIG if job.adapter else folder / CONFIG)
    if peft is not None and isinstance(peft.get("base_model_name_or_path"), str):
        return peft["base_model_name_or_path"]
    run = read_json(folder / MANIFEST)
    if run is not None and run.get("base_model") is not None:
        return json.dumps(run["base_model"], sort_keys=True, default=str)
    return None


def plan_groups(jobs: Sequence[ReportJob], slots: int) -> list[list[int]]:
    """Job indices in groups of one base model each, for ``slots`` workers running at once.

    Groups hold at most ``len(jobs) // slots`` jobs (at least one), so there are at least
    as many groups as slots when there are as many jobs; a base model's jobs are split into
    groups of near-equal size, in job order. A job whose base model is unknown is a group
    of its own.
    """
    by_base: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        by_base.setdefault(base_reference(job) or f"\0job {i}", []).append(i)
    size = max(1, len(jobs) // max(1, slots))
    groups = []
    for members in by_base.values():
        n = len(members)
        k = -(-n // size)
        groups.extend(members[j * n // k : (j + 1) * n // k] for j in range(k))
    return groups
