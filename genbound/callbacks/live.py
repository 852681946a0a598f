"""A :class:`~genbound.checkpoint.Checkpoint` of a model while it trains, and a run folder of it.

:func:`live_checkpoint` saves the adapter being trained exactly as it would be saved to
disk (PEFT's ``save_pretrained``, or :meth:`AdapterHandle.save` for genbound's adapters)
into a temporary folder and reads it back with :func:`~genbound.load_checkpoint`, so the
live checkpoint is, by construction, the one ``genbound report`` would read at that step.
The loaders read saved heads and ``modules_to_save`` lazily from their files, so the
folder lives as long as the ``with`` block. Cost on MiniLM (12 LoRA layers and a head):
about 20 ms per call, 2 % of the data-free measures that follow.

:func:`write_live_run` writes a genbound run folder (``genbound.run/1``) of the model
with trajectory snapshots of its trainable parameters, for PCA landscapes; ``genbound
report`` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genbound.adapters.handle import AdapterHandle
from genbound.checkpoint import load_checkpoint
from genbound.checkpoint.manifest import Snapshot, save_run
from genbound.checkpoint.model import Checkpoint
from genbound.errors import GenboundError

#: What the callbacks track: a PEFT model, or the handle of a model adapted by genbound.
Trainable = nn.Module | AdapterHandle


def module_of(model: Trainable) -> nn.Module:
    """The ``nn.Module`` that trains (the handle's model for an :class:`AdapterHandle`)."""
    return model.model if isinstance(model, AdapterHandle) else model


def trainable_snapshot(model: Trainable) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter with ``requires_grad``, by its name in
    ``module_of(model).named_parameters()`` (the names PCA landscapes expect)."""
    return {
        n: p.detach().cpu().clone()
        for n, p in module_of(model).named_parameters()
        if p.requires_grad
    }


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _save(model: Trainable, folder: Path, base: str | os.PathLike | None, n_train: int | None):
    """Write the adapter of ``model`` into ``folder``; returns the folder to load."""
    if isinstance(model, AdapterHandle):
        # Without the handle's own trajectory: only the update is needed here.
        handle = dataclasses.replace(model, snapshots=[])
        return handle.save(folder, base_model=Path(base) if base else None, n_train=n_train)
    if _is_peft(model):
        name = model.active_adapter
        model.save_pretrained(str(folder), selected_adapters=[name])
        return folder if name == "default" else folder / name
    raise GenboundError(
        "genbound callbacks track a PEFT model (peft.PeftModel) or a genbound AdapterHandle "
        f"(from genbound.adapters.apply); found {type(model).__name__}."
    )


@contextlib.contextmanager
def live_checkpoint(
    model: Trainable,
    *,
    base: str | os.PathLike | None = None,
    n_train: int | None = None,
) -> Iterator[Checkpoint]:
    """The checkpoint ``model`` would save now, valid inside the ``with`` block.

    Args:
        model: a PEFT model (its active adapter) or a genbound :class:`AdapterHandle`.
        base: the base model folder; default: what the saved adapter names (PEFT's
            ``base_model_name_or_path`` when it is a local folder). A handle records it.
        n_train: N, recorded in the checkpoint.

    Nothing of ``model`` changes; the temporary folder is removed on exit.
    """
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="genbound-live-") as tmp:
        path = _save(model, Path(tmp) / "checkpoint", base, n_train)
        ckpt = load_checkpoint(path, base=base, n_train=n_train)
        try:
            yield ckpt
        finally:
            ckpt.close()


# -- run folders -------------------------------------------------------------------------


def checkpoint_updates(ckpt: Checkpoint) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The manifest's ``updates`` of a checkpoint (docs/checkpoint-format.md) and the
    tensors their links name (each update writes its own link:
    :meth:`~genbound.checkpoint.updates.Update.to_link`)."""
    tensors: dict[str, torch.Tensor] = {}
    updates = {
        name: {
            "param": u.param,
            "shape": list(u.shape),
            "transposed": u.transposed,
            "link": u.to_link(name, tensors),
        }
        for name, u in ckpt.updates.items()
    }
    return updates, tensors


def write_live_run(
    model: Trainable,
    run_dir: str | os.PathLike,
    *,
    snapshots: Sequence[Snapshot] = (),
    base: str | os.PathLike | None = None,
    n_train: int | None = None,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a genbound run folder of ``model`` as it is now, with its trajectory.

    Args:
        model: a PEFT model or a genbound :class:`AdapterHandle` (written by its ``save``).
        run_dir: destination (must not exist unless ``overwrite``).
        snapshots: trajectory snapshots (step, name -> tensor), names as in
            ``named_parameters()`` of the module that trains; stored in
            ``trajectory.safetensors`` as ``"<i>/<name>"``.
        base, n_train: as for :func:`live_checkpoint`; recorded in the manifest.
        metrics: recorded as the run's ``metrics`` (non-finite floats as strings).

    Both kinds are written by :func:`genbound.checkpoint.save_run`.
    """
    if isinstance(model, AdapterHandle):
        handle = dataclasses.replace(model, snapshots=[(s, dict(t)) for s, t in snapshots])
        return handle.save(
            run_dir,
            base_model=Path(base) if base else None,
            n_train=n_train,
            metrics=metrics,
            overwrite=overwrite,
        )
    with live_checkpoint(model, base=base, n_train=n_train) as ckpt:
        updates, tensors = checkpoint_updates(ckpt)
        return save_run(
            run_dir,
            variant=ckpt.variant,
            updates=updates,
            tensors=tensors,
            hparams=ckpt.hparams.as_dict() | {"targets": sorted(ckpt.hparams.targets)},
            base_model=ckpt.base.path if ckpt.base is not None else None,
            n_train=ckpt.n_train,
            seed=ckpt.seed,
            dtype=ckpt.dtype,
            metrics=metrics,
            snapshots=snapshots,
            overwrite=overwrite,
        )
