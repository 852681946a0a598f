"""Writing genbound run folders (``genbound.run/1``): the one manifest writer.

:func:`save_run` assembles ``genbound.json`` from a run's parts (variant, hyper-parameters,
updates, base model, data, N, seed, metrics, trajectory snapshots) and writes it with the
tensors through :func:`write_run`, which writes any manifest atomically and reads the
folder back before it becomes visible. Every producer of run folders calls these: an
:class:`~genbound.adapters.AdapterHandle`'s ``save`` and the callbacks'
:func:`~genbound.callbacks.write_live_run`. The JSON goes through
:func:`genbound.jsonio.dumps_json` (non-finite floats as ``"inf"``, ``"-inf"``, ``"nan"``).

This module imports nothing of genbound's training code, so the adapters import it
without a cycle. The schema and the reader are in :mod:`genbound.checkpoint.native`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from genbound.checkpoint.native import MANIFEST, SCHEMA, TENSORS, load_run
from genbound.errors import GenboundError
from genbound.io import atomic_directory, save_tensors
from genbound.jsonio import dumps_json

#: The trajectory file a run's snapshots are stored in.
TRAJECTORY = "trajectory.safetensors"

#: A trajectory snapshot: (optimisation step, parameter name -> tensor).
Snapshot = tuple[int, Mapping[str, torch.Tensor]]


def write_run(
    run_dir: str | os.PathLike,
    manifest: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    *,
    extra_files: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a run directory atomically.

    Args:
        run_dir: destination folder (must not exist unless ``overwrite``).
        manifest: the ``genbound.json`` content without ``schema`` and ``tensor_file``.
        tensors: every tensor the manifest's updates refer to, by key.
        extra_files: further safetensors files (e.g. ``{"trajectory.safetensors": {...}}``).

    The folder is read back (:func:`~genbound.checkpoint.native.load_run`) before it
    replaces ``run_dir``: a manifest genbound cannot read is an error and nothing is written.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not overwrite:
        raise GenboundError(f"{run_dir}: already exists; pass overwrite=True to replace it.")
    full = {"schema": SCHEMA, **manifest, "tensor_file": TENSORS}
    with atomic_directory(run_dir) as tmp:
        for name, content in {TENSORS: tensors, **(extra_files or {})}.items():
            save_tensors({k: v.detach().contiguous().cpu() for k, v in content.items()}, tmp / name)
        try:
            text = dumps_json(full)
        except TypeError as exc:
            raise GenboundError(
                f"{run_dir / MANIFEST}: cannot write the manifest; expected JSON values "
                f"(strings, numbers, lists, objects, tensors), found {exc}."
            ) from None
        (tmp / MANIFEST).write_text(text)
        try:  # validate what was written before it becomes visible
            load_run(tmp, base=None, base_arg=True)
        except GenboundError as exc:
            raise type(exc)(str(exc).replace(str(tmp), str(run_dir))) from None
    return run_dir


def save_run(
    run_dir: str | os.PathLike,
    *,
    variant: str,
    updates: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    hparams: Mapping[str, Any] | None = None,
    base_model: str | os.PathLike | Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    n_train: int | None = None,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
    metrics: Mapping[str, Any] | None = None,
    snapshots: Sequence[Snapshot] = (),
    overwrite: bool = False,
    subspace: Mapping[str, Any] | None = None,
    initial: Mapping[str, str] | None = None,
) -> Path:
    """Write a genbound run folder from its parts (docs/checkpoint-format.md).

    Args:
        run_dir: destination (must not exist unless ``overwrite``).
        variant: the adapter variant's registry name.
        updates: the manifest's ``updates`` (name -> ``{"param", "shape", "transposed",
            "link"}``), whose links name keys of ``tensors``.
        tensors: the update tensors, by key.
        hparams: the run's hyper-parameters.
        base_model: the original base model: a path (stored absolute) or a manifest
            reference ``{"path": ..., "python": "module:function"}``.
        data: a task reference, stored as is.
        n_train: N, the number of training examples.
        seed: the run's seed.
        dtype: the stored dtype of the trained tensors; default: the one floating dtype
            of ``tensors``, float32 when they have several.
        metrics: recorded as the run's ``metrics`` (non-finite floats as strings).
        snapshots: trajectory snapshots (step, name -> tensor), stored in
            ``trajectory.safetensors`` as ``"<i>/<name>"`` and listed under ``trajectory``.
        subspace: a subspace run's ``subspace`` field (its z and initial tensors are in
            ``tensors``; see :func:`genbound.adapters.subspace.save_fields`).
        initial: the ``initial`` field: trained factor (as ``trainable_tensors`` names it)
            -> the key in ``tensors`` of its value when its link started.
    """
    if isinstance(base_model, str | os.PathLike):
        base_model = {"path": str(Path(base_model).resolve())}
    manifest: dict[str, Any] = {
        "variant": variant,
        "hparams": dict(hparams) if hparams is not None else None,
        "base_model": dict(base_model) if base_model else None,
        "data": dict(data) if data is not None else None,
        "n_train": int(n_train) if n_train is not None else None,
        "seed": seed,
        "dtype": dtype if dtype is not None else stored_dtype(tensors),
        "metrics": dict(metrics or {}),
        "updates": dict(updates),
    }
    if subspace is not None:
        manifest["subspace"] = dict(subspace)
    if initial is not None:
        manifest["initial"] = dict(initial)
    extra = {}
    if snapshots:
        manifest["trajectory"] = {
            "file": TRAJECTORY,
            "steps": [int(step) for step, _ in snapshots],
            "params": list(snapshots[0][1]),
        }
        extra[TRAJECTORY] = {
            f"{i}/{name}": t for i, (_, snap) in enumerate(snapshots) for name, t in snap.items()
        }
    return write_run(run_dir, manifest, tensors, extra_files=extra, overwrite=overwrite)


def stored_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The one floating dtype of ``tensors``; float32 when they have none or several."""
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return floats.pop() if len(floats) == 1 else torch.float32
